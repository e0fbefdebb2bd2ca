//! Per-connection resources (copy buffers or splice pipes) kept ready in a
//! pool, so nothing is created on the connection path.
//!
//! With `features.worker_pools` on, buffers and pipes are *lent per burst*:
//! a direction takes one from the pool when its socket turns readable and
//! gives it back as soon as everything it read has been written out (HAProxy
//! does the same with its pipes). An idle connection then holds neither a
//! buffer nor a pipe (no memory, no pipe fds), and the pool only needs as
//! many as there are bursts in flight. The pipe pool is filled to its high
//! watermark at start and topped up by a background task whenever it drops
//! below its low watermark; a pipe goes back only if empty. Buffers are
//! made on demand (a malloc) and kept when given back, up to the high
//! watermark.
//! With it off, every connection creates its own pair and frees it at the
//! end, which is what the setup-time histogram compares. The switch can be
//! flipped at run time ([`Resources::set_enabled`]): connections take the
//! mode in force when they start; switching off frees the spares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use splitway_core::config::{Config, Engine};
use splitway_core::lend::Spares;
use splitway_core::pool::Watermarks;
use tokio::sync::{watch, Notify};

use crate::forward::{EngineState, Stock};
use crate::sys::pipe::Pipe;

/// Default watermarks of the resource pool (in buffers or pipes, one per
/// direction of a burst in flight).
pub const LOW: usize = 16;
pub const HIGH: usize = 64;

pub struct Resources {
    enabled: AtomicBool,
    engine: Engine,
    buffer_bytes: usize,
    pipe_bytes: usize,
    /// Spare buffers (copy engine) or pipes (splice engine): one of the two
    /// stays empty.
    bufs: Spares<Vec<u8>>,
    pipes: Spares<Pipe>,
    wake: Notify,
    gauge: prometheus::IntGauge,
}

impl Resources {
    pub fn new(cfg: &Config, gauge: prometheus::IntGauge) -> Arc<Resources> {
        let marks = Watermarks::new(LOW, HIGH);
        Arc::new(Resources {
            enabled: AtomicBool::new(cfg.features.worker_pools),
            engine: cfg.node.engine,
            buffer_bytes: cfg.node.buffer_bytes,
            pipe_bytes: cfg.node.pipe_bytes,
            bufs: Spares::new(marks),
            pipes: Spares::new(marks),
            wake: Notify::new(),
            gauge,
        })
    }

    fn new_buf(&self) -> Vec<u8> {
        vec![0; self.buffer_bytes]
    }

    fn new_pipe(&self) -> std::io::Result<Pipe> {
        Pipe::new(self.pipe_bytes)
    }

    /// Resources for one connection: with pools, an empty state that
    /// borrows from this pool per burst; without, its own pair.
    fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Switch lending on or off for connections that start from now on.
    /// Off frees the spares; on fills the pool again.
    pub fn set_enabled(&self, on: bool) {
        if self.enabled.swap(on, Ordering::SeqCst) == on {
            return;
        }
        if on {
            self.wake.notify_one();
        } else {
            drop(self.bufs.clear());
            drop(self.pipes.clear());
            self.gauge.set(0);
        }
    }

    pub fn get(self: &Arc<Self>) -> std::io::Result<EngineState<Resources>> {
        let enabled = self.enabled();
        let stock = enabled.then(|| self.clone());
        Ok(match self.engine {
            Engine::Copy => {
                let own = |_| (!enabled).then(|| self.new_buf());
                EngineState::Copy {
                    a_to_b: own(0),
                    b_to_a: own(1),
                    stock,
                }
            }
            Engine::Splice => {
                let (a_to_b, b_to_a) = if enabled {
                    (None, None)
                } else {
                    (Some(self.new_pipe()?), Some(self.new_pipe()?))
                };
                EngineState::Splice {
                    a_to_b,
                    b_to_a,
                    stock,
                }
            }
        })
    }

    /// Give back what a finished connection still holds.
    pub fn put(&self, e: EngineState<Resources>) {
        match e {
            EngineState::Copy {
                a_to_b,
                b_to_a,
                stock: Some(_),
            } => {
                for b in [a_to_b, b_to_a].into_iter().flatten() {
                    Stock::<Vec<u8>>::give(self, b);
                }
            }
            EngineState::Splice {
                a_to_b,
                b_to_a,
                stock: Some(_),
            } => {
                for p in [a_to_b, b_to_a].into_iter().flatten() {
                    // A flow cut short (timeout, reset) may leave bytes.
                    if p.pending().ok() == Some(0) {
                        Stock::<Pipe>::give(self, p);
                    }
                }
            }
            _ => {}
        }
    }

    /// Count what was taken; wake the refill task below the low watermark.
    fn took<T>(&self, spares: &Spares<T>) -> Option<T> {
        let t = spares.take();
        self.gauge.set(t.left as i64);
        if t.low {
            self.wake.notify_one();
        }
        t.spare
    }

    /// Keep `t` if lending is on and the pool is not full.
    fn keep<T>(&self, spares: &Spares<T>, t: T) {
        if self.enabled() {
            if let Ok(n) = spares.give(t) {
                self.gauge.set(n as i64);
            }
        }
    }

    pub fn available(&self) -> usize {
        self.bufs.len() + self.pipes.len()
    }

    /// Fill to the high watermark now, then keep it topped up.
    pub async fn refill_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            // Pipes cost syscalls to make (pipe2, F_SETPIPE_SZ): made ahead.
            // Buffers cost a malloc: kept when given back, never made ahead,
            // so an idle relay holds no buffer memory it has not needed.
            let n = if self.enabled() && self.engine == Engine::Splice {
                self.pipes.to_make()
            } else {
                0
            };
            for _ in 0..n {
                match self.new_pipe() {
                    Ok(p) => self.keep(&self.pipes, p),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot pre-create connection resources");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                _ = stop.changed() => return,
            }
        }
    }
}

/// Buffers of the copy engine: made on demand, kept when given back.
impl Stock<Vec<u8>> for Resources {
    fn take(&self) -> std::io::Result<Vec<u8>> {
        Ok(self.took(&self.bufs).unwrap_or_else(|| self.new_buf()))
    }

    fn give(&self, b: Vec<u8>) {
        if b.len() == self.buffer_bytes {
            self.keep(&self.bufs, b);
        }
    }
}

/// Pipes of the splice engine: made ahead, given back empty.
impl Stock<Pipe> for Resources {
    fn take(&self) -> std::io::Result<Pipe> {
        match self.took(&self.pipes) {
            Some(p) => Ok(p),
            None => self.new_pipe(),
        }
    }

    fn give(&self, p: Pipe) {
        self.keep(&self.pipes, p);
    }
}
