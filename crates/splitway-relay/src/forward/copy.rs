//! The copy engine: read into a user-space buffer, write it out.
//!
//! The reference engine: simple, portable, and what modules that inspect or
//! change bytes need. One buffer per direction (at least 16 KiB).

use std::io;

use tokio::net::TcpStream;

use super::FlowState;
use crate::sys::sockopt;

/// Move bytes `src` → `dst` until EOF (then send FIN on `dst`) or an error.
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    buf: &mut [u8],
    flow: &FlowState,
    dir: usize,
) -> io::Result<()> {
    loop {
        src.readable().await?;
        let n = match src.try_read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return sockopt::shutdown_write(dst);
        }
        let mut off = 0;
        while off < n {
            dst.writable().await?;
            match dst.try_write(&buf[off..n]) {
                Ok(m) => off += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        flow.add(dir, n);
    }
}
