//! `nosplit`: the client connects to the ingress, which DNATs to the egress,
//! which DNATs to the server: the path of a relay overlay, one TCP connection
//! end to end (the paper's "Cloud NoSplit"). nftables rules in each relay
//! namespace, removed with the namespace.

use anyhow::{Context, Result};

use super::{Ctx, Running};

/// Port the DNAT chain listens on at the ingress and the egress.
pub const PORT: u16 = 8080;

fn dnat(ctx: &Ctx, node: &str, to: String) -> Result<()> {
    let me = ctx.addr(node);
    let rules = format!(
        "table ip swlab_nosplit {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {me} tcp dport {PORT} dnat to {to}
    }}
}}
"
    );
    let file = ctx.work.join(format!("nosplit-{node}.nft"));
    std::fs::write(&file, rules)?;
    ctx.tb
        .ns(node)
        .exec("nft", ["-f", &file.display().to_string()])
        .with_context(|| format!("installing the nosplit DNAT rule in {node}"))?;
    Ok(())
}

pub fn start(ctx: &Ctx) -> Result<Running> {
    let egress = ctx.addr("egress");
    let server = ctx.addr("server");
    dnat(ctx, "ingress", format!("{egress}:{PORT}"))?;
    dnat(ctx, "egress", format!("{server}:80"))?;
    Ok(Running {
        name: "nosplit",
        base_url: format!("http://{}:{PORT}", ctx.addr("ingress")),
        detail: format!(
            "client -> ingress:{PORT} -DNAT-> egress:{PORT} -DNAT-> server:80 (nftables)"
        ),
        children: Vec::new(),
        logs: Vec::new(),
        chain: 0,
    })
}
