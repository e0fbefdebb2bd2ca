//! The copy engine: read into a user-space buffer, write it out.
//!
//! The reference engine: simple, portable, and what modules that inspect or
//! change bytes need. One buffer per direction (at least 16 KiB), borrowed
//! from the pool for each burst when there is one: taken when the socket has
//! data, given back once what was read is written out and the socket is
//! drained.

use std::future::poll_fn;
use std::io;

use tokio::net::TcpStream;

use super::FlowState;
use crate::resources::Resources;
use crate::sys::{self, sockopt};

/// Give the buffer back to the pool (if it came from one).
fn lend_back(slot: &mut Option<Vec<u8>>, stock: Option<&Resources>) {
    if let Some(stock) = stock {
        if let Some(b) = slot.take() {
            stock.give_buf(b);
        }
    }
}

/// Move bytes `src` → `dst` until EOF (then send FIN on `dst`) or an error.
/// `slot` holds the buffer: always (owned) without `stock`, only during a
/// burst with it.
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    slot: &mut Option<Vec<u8>>,
    stock: Option<&Resources>,
    flow: &FlowState,
    dir: usize,
) -> io::Result<()> {
    loop {
        poll_fn(|cx| src.poll_read_ready(cx)).await?;
        let buf = match (slot.as_mut(), stock) {
            (Some(b), _) => b,
            (None, Some(stock)) => slot.insert(stock.take_buf()),
            (None, None) => return Err(io::Error::other("copy engine without a buffer")),
        };
        let n = match sys::read_clearing(src, buf)? {
            Some(n) => n,
            None => {
                lend_back(slot, stock);
                continue;
            }
        };
        if n == 0 {
            lend_back(slot, stock);
            return sockopt::shutdown_write(dst);
        }
        let full = n == buf.len();
        let mut off = 0;
        while off < n {
            match dst.try_write(&buf[off..n]) {
                Ok(m) => off += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_fn(|cx| dst.poll_write_ready(cx)).await?
                }
                Err(e) => return Err(e),
            }
        }
        flow.add(dir, n);
        // A short read drained the socket: the burst is over.
        if !full {
            lend_back(slot, stock);
        }
    }
}
