//! The sink and the load generators. Everything here runs on the load core.
//!
//! Sink protocol: the client's first 100 bytes pick the mode. `B…`: bulk,
//! everything after is discarded (splice to /dev/null). Anything else: echo
//! mode, every 100-byte request gets a 100-byte reply until EOF.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::sys;

pub const MSG: usize = 100;

pub struct Sink {
    pub addr: SocketAddr,
    pub bulk_bytes: Arc<AtomicU64>,
}

/// Start the sink on its own thread (current-thread runtime).
pub fn start_sink(addr: SocketAddr) -> anyhow::Result<Sink> {
    let bulk = Arc::new(AtomicU64::new(0));
    let std_l = {
        let s = TcpSocket::new_v4()?;
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s
    };
    let b = bulk.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("sink runtime");
            rt.block_on(async move {
                let l = match std_l.listen(8192) {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let b = b.clone();
                    tokio::spawn(async move {
                        let _ = serve(s, b).await;
                    });
                }
            });
        })?;
    rx.recv()??;
    Ok(Sink {
        addr,
        bulk_bytes: bulk,
    })
}

async fn serve(mut s: TcpStream, bulk: Arc<AtomicU64>) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = [0u8; MSG];
    s.read_exact(&mut buf).await?;
    if buf[0] == b'B' {
        let std = s.into_std()?;
        std.set_nonblocking(false)?;
        std::thread::spawn(move || drain(std, bulk));
        return Ok(());
    }
    loop {
        s.write_all(&buf).await?;
        if s.read_exact(&mut buf).await.is_err() {
            return Ok(());
        }
    }
}

/// Bulk sink: socket → pipe → /dev/null, counting bytes.
fn drain(s: StdStream, bulk: Arc<AtomicU64>) {
    let Ok(pipe) = sys::Pipe::new(1 << 20) else {
        return;
    };
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    loop {
        let n = match sys::splice(s.as_raw_fd(), pipe.w, 1 << 20) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        bulk.fetch_add(n as u64, Ordering::Relaxed);
        let mut left = n;
        while left > 0 {
            match sys::splice(pipe.r, null.as_raw_fd(), left) {
                Ok(m) if m > 0 => left -= m,
                _ => return,
            }
        }
    }
}

/// One long flow to `addr` for `dur` (blocking; sendfile from a memfd so the
/// sender costs little). Returns when done.
pub fn bulk_send(addr: SocketAddr, dur: Duration) -> anyhow::Result<u64> {
    let mut s = StdStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut hdr = [b'x'; MSG];
    hdr[0] = b'B';
    s.write_all(&hdr)?;
    const LEN: usize = 4 << 20;
    let fd = sys::pattern_memfd(LEN)?;
    let end = Instant::now() + dur;
    let mut sent = 0u64;
    let mut use_write = false;
    let buf: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    while Instant::now() < end {
        if use_write {
            s.write_all(&buf[..1 << 20])?;
            sent += 1 << 20;
            continue;
        }
        let mut off: i64 = 0;
        while (off as usize) < LEN {
            let want = LEN - off as usize;
            match sys::sendfile(s.as_raw_fd(), fd, &mut off, want) {
                Ok(n) => sent += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    use_write = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    s.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(sent)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram")
}

fn exchange(s: &mut StdStream) -> std::io::Result<()> {
    let req = [b'E'; MSG];
    let mut rep = [0u8; MSG];
    s.write_all(&req)?;
    s.read_exact(&mut rep)
}

/// Sequential request/reply on one persistent connection. Nanoseconds.
pub fn latency_persistent(addr: SocketAddr, n: usize) -> anyhow::Result<Histogram<u64>> {
    let mut s = StdStream::connect(addr)?;
    s.set_nodelay(true)?;
    for _ in 0..200 {
        exchange(&mut s)?;
    }
    let mut h = hist();
    for _ in 0..n {
        let t = Instant::now();
        exchange(&mut s)?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    Ok(h)
}

/// Sequential connect + request/reply + close. Nanoseconds.
pub fn latency_newconn(addr: SocketAddr, n: usize) -> anyhow::Result<Histogram<u64>> {
    let mut h = hist();
    for i in 0..n + 100 {
        let t = Instant::now();
        let mut s = StdStream::connect(addr)?;
        s.set_nodelay(true)?;
        exchange(&mut s)?;
        let ns = t.elapsed().as_nanos() as u64;
        drop(s);
        if i >= 100 {
            h.record(ns)?;
        }
    }
    Ok(h)
}

pub struct RateResult {
    pub conns: u64,
    pub errors: u64,
    pub secs: f64,
    pub hist: Histogram<u64>,
}

/// `conc` workers doing connect / 100 B request / 100 B reply / close until
/// `warm + dur`; counts only after `warm`.
pub fn conn_rate(
    addr: SocketAddr,
    conc: usize,
    warm: Duration,
    dur: Duration,
) -> anyhow::Result<RateResult> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let start = Instant::now();
        let t0 = start + warm;
        let t1 = t0 + dur;
        let mut tasks = Vec::new();
        for _ in 0..conc {
            tasks.push(tokio::spawn(async move {
                let mut h = hist();
                let (mut ok, mut err) = (0u64, 0u64);
                let req = [b'E'; MSG];
                let mut rep = [0u8; MSG];
                loop {
                    let t = Instant::now();
                    if t >= t1 {
                        break;
                    }
                    let r: std::io::Result<()> = async {
                        let mut s = TcpStream::connect(addr).await?;
                        s.set_nodelay(true)?;
                        s.write_all(&req).await?;
                        s.read_exact(&mut rep).await?;
                        Ok(())
                    }
                    .await;
                    let e = Instant::now();
                    if t >= t0 && e <= t1 {
                        match r {
                            Ok(()) => {
                                ok += 1;
                                let _ = h.record((e - t).as_nanos() as u64);
                            }
                            Err(_) => err += 1,
                        }
                    } else if r.is_err() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                (ok, err, h)
            }));
        }
        let mut res = RateResult {
            conns: 0,
            errors: 0,
            secs: dur.as_secs_f64(),
            hist: hist(),
        };
        for t in tasks {
            let (ok, err, h) = t.await?;
            res.conns += ok;
            res.errors += err;
            res.hist.add(&h)?;
        }
        Ok(res)
    })
}

/// Open up to `n` connections (each does one request/reply so both legs
/// exist), call `measure` while they are held, then close them. Stops
/// opening at the first batch with a failure (a relay out of fds); returns
/// how many were held.
pub fn hold<T>(
    addr: SocketAddr,
    n: usize,
    measure: impl FnOnce() -> T,
) -> anyhow::Result<(usize, T)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut held = Vec::with_capacity(n);
        let conc = 64;
        let mut failed = false;
        while held.len() < n && !failed {
            let batch = conc.min(n - held.len());
            let mut tasks = Vec::new();
            for _ in 0..batch {
                tasks.push(tokio::spawn(async move {
                    let fut = async {
                        let mut s = TcpStream::connect(addr).await?;
                        s.set_nodelay(true)?;
                        let req = [b'E'; MSG];
                        let mut rep = [0u8; MSG];
                        s.write_all(&req).await?;
                        s.read_exact(&mut rep).await?;
                        Ok::<_, std::io::Error>(s)
                    };
                    match tokio::time::timeout(Duration::from_secs(3), fut).await {
                        Ok(r) => r,
                        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                    }
                }));
            }
            for t in tasks {
                match t.await? {
                    Ok(s) => held.push(s),
                    Err(_) => failed = true,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let v = measure();
        let k = held.len();
        drop(held);
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok((k, v))
    })
}
