//! `e2e`: the client fetches straight from the server; the relays only route.

use anyhow::Result;

use super::{Ctx, Running};

pub fn start(ctx: &Ctx) -> Result<Running> {
    Ok(Running {
        name: "e2e",
        base_url: format!("http://{}", ctx.tb.plan().server_addr()),
        detail: format!(
            "client -> server:80, routed through {} relay host(s)",
            ctx.topo.relays()
        ),
        children: Vec::new(),
        logs: Vec::new(),
        chain: 0,
    })
}
