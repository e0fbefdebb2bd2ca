//! `e2e`: the client fetches straight from the server; the relays only route.

use anyhow::Result;

use super::{Ctx, Running};
use crate::topology::plan;

pub fn start(_ctx: &Ctx) -> Result<Running> {
    Ok(Running {
        name: "e2e",
        base_url: format!("http://{}", plan::host_addr("server")),
        detail: "client -> server:80, routed through ingress and egress".into(),
        children: Vec::new(),
        logs: Vec::new(),
    })
}
