//! Socket profiles: what each kind of leg gets.
//!
//! - Internet-facing legs (client → ingress, egress → server) keep default
//!   TCP behaviour. Only Nagle is turned off: a relay writes whatever it just
//!   received, and with Nagle the small tail of each chunk could wait a round
//!   trip for an ACK (the artefact SSH forwarding shows).
//! - Relay legs (between our own relays) are tuned: no Nagle, keep-alive so
//!   dead idle legs are noticed, and with turbo-start large socket buffers.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use crate::sys::sockopt;

/// Socket buffer size on relay legs with turbo-start.
pub const TURBO_BUFFER_BYTES: usize = 8 * 1024 * 1024;

pub fn internet(s: &impl AsFd) -> io::Result<()> {
    sockopt::set_nodelay(s)
}

pub fn relay_leg(s: &impl AsFd, turbo: bool) -> io::Result<()> {
    sockopt::set_nodelay(s)?;
    sockopt::set_keepalive(s, Duration::from_secs(30))?;
    if turbo {
        sockopt::set_buffers_force(s, TURBO_BUFFER_BYTES)?;
    }
    Ok(())
}
