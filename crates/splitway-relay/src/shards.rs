//! Per-core runtimes ("shards"): one single-threaded tokio runtime per
//! worker, each accepting on its own `SO_REUSEPORT` listener, so a flow
//! lives and dies on the core whose listener the kernel gave it to.
//!
//! Shard 0 is the runtime [`crate::run`] is called in (the binary's main
//! thread): it also runs everything that is not a flow (control, admin API,
//! fleet, pool refills, the early-SYN tap's legs). Shards 1..n are threads
//! of their own. Unlike tokio's work-stealing runtime, no task moves
//! between threads, so a bulk flow's wake-ups stay on one core (with two
//! work-stealing workers one flow woke both: 12,421 sleeps per GB against
//! 662 with one; docs/performance.md, "All cores").
//!
//! A socket made on shard 0 and used by a flow on another shard (a pooled
//! leg, a leg the early-SYN tap opened) is moved to the flow's shard with
//! [`adopt`], so its readiness is not delivered by another core's driver.

use std::cell::Cell;
use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The shard this thread runs (0: the caller's runtime, and any thread
    /// that is not a shard).
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// The shard the current thread runs.
pub fn current() -> usize {
    SHARD.with(|s| s.get())
}

/// Register `s` with the current shard's I/O driver if it was made on
/// another one (shard 0 makes pooled and early legs). Costs two
/// `epoll_ctl`s, only on shards other than 0.
pub fn adopt(s: TcpStream) -> io::Result<TcpStream> {
    if current() == 0 {
        return Ok(s);
    }
    TcpStream::from_std(s.into_std()?)
}

/// One extra shard: its thread, its runtime's handle and the way to stop it.
struct Shard {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The shards of one relay: the caller's runtime (shard 0) and `n - 1`
/// threads. Dropping it stops the extra shards: their tasks (flows still
/// open) are dropped with their runtimes.
pub struct Shards {
    extra: Vec<Shard>,
}

/// How long a stopping shard waits for its blocking tasks.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

impl Shards {
    /// Start `n` shards in all (at least one: the caller's runtime).
    pub fn start(n: usize) -> io::Result<Shards> {
        let mut extra = Vec::with_capacity(n.saturating_sub(1));
        for i in 1..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("splitway-shard-{i}"))
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("splitway-shard-{i}"))
                .spawn(move || {
                    SHARD.with(|s| s.set(i));
                    // Tasks spawned through the handle run while this
                    // thread drives the runtime, until told to stop.
                    let _ = rt.block_on(stopped);
                    rt.shutdown_timeout(BLOCKING_GRACE);
                })?;
            extra.push(Shard {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Shards { extra })
    }

    /// Shards in all, the caller's included.
    pub fn count(&self) -> usize {
        self.extra.len() + 1
    }

    /// Shard `i`'s runtime; `None` for shard 0 (the caller's runtime: spawn
    /// there with `tokio::spawn`) and past the last.
    pub fn handle(&self, i: usize) -> Option<&Handle> {
        i.checked_sub(1)
            .and_then(|j| self.extra.get(j))
            .map(|s| &s.handle)
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        for s in &mut self.extra {
            if let Some(stop) = s.stop.take() {
                let _ = stop.send(());
            }
        }
        for s in &mut self.extra {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_runs_its_tasks_on_its_own_thread() {
        let shards = Shards::start(3).unwrap();
        assert_eq!(shards.count(), 3);
        assert!(shards.handle(0).is_none());
        assert!(shards.handle(3).is_none());
        let mut seen = Vec::new();
        for i in 1..3 {
            let h = shards.handle(i).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            h.spawn(async move {
                let _ = tx.send((current(), std::thread::current().name().map(String::from)));
            });
            seen.push(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        }
        assert_eq!(
            seen,
            vec![
                (1, Some("splitway-shard-1".to_string())),
                (2, Some("splitway-shard-2".to_string()))
            ]
        );
        assert_eq!(current(), 0);
    }

    #[test]
    fn dropping_the_shards_drops_their_tasks() {
        let shards = Shards::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // A task that never ends holds the sender: dropping the shard must
        // drop the task, and with it the sender.
        shards.handle(1).unwrap().spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(shards);
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_err());
    }

    #[test]
    fn adopt_moves_a_socket_to_the_shard_that_uses_it() {
        let shards = Shards::start(2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (listener, made) = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            (l, c)
        });
        // Made (and registered) on this runtime, used on shard 1, whose
        // own driver must now report its readiness: this runtime is not
        // driven while shard 1 waits.
        let (tx, rx) = std::sync::mpsc::channel();
        shards.handle(1).unwrap().spawn(async move {
            let s = adopt(made).unwrap();
            let mut buf = [0u8; 5];
            let r = tokio::time::timeout(Duration::from_secs(5), async {
                use tokio::io::AsyncReadExt;
                let mut s = s;
                s.read_exact(&mut buf).await.map(|_| buf)
            })
            .await;
            let _ = tx.send(matches!(r, Ok(Ok(b)) if &b == b"hello"));
        });
        let (mut peer, _) = rt.block_on(listener.accept()).unwrap();
        rt.block_on(async {
            use tokio::io::AsyncWriteExt;
            peer.write_all(b"hello").await.unwrap();
        });
        // This runtime is no longer driven: only shard 1's driver can
        // deliver the readiness.
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    }
}
