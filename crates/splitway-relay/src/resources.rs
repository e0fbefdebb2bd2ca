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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use splitway_core::config::{Config, Engine};
use splitway_core::pool::Watermarks;
use tokio::sync::{watch, Notify};

use crate::forward::EngineState;
use crate::sys::pipe::Pipe;

/// Default watermarks of the resource pool (in buffers or pipes, one per
/// direction of a burst in flight).
pub const LOW: usize = 16;
pub const HIGH: usize = 64;

enum Free {
    Bufs(Vec<Vec<u8>>),
    Pipes(Vec<Pipe>),
}

impl Free {
    fn len(&self) -> usize {
        match self {
            Free::Bufs(v) => v.len(),
            Free::Pipes(v) => v.len(),
        }
    }
}

pub struct Resources {
    enabled: AtomicBool,
    engine: Engine,
    buffer_bytes: usize,
    pipe_bytes: usize,
    marks: Watermarks,
    free: Mutex<Free>,
    wake: Notify,
    gauge: prometheus::IntGauge,
}

impl Resources {
    pub fn new(cfg: &Config, gauge: prometheus::IntGauge) -> Arc<Resources> {
        let free = match cfg.node.engine {
            Engine::Copy => Free::Bufs(Vec::new()),
            Engine::Splice => Free::Pipes(Vec::new()),
        };
        Arc::new(Resources {
            enabled: AtomicBool::new(cfg.features.worker_pools),
            engine: cfg.node.engine,
            buffer_bytes: cfg.node.buffer_bytes,
            pipe_bytes: cfg.node.pipe_bytes,
            marks: Watermarks::new(LOW, HIGH),
            free: Mutex::new(free),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
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
            let mut free = self.lock();
            *free = match &*free {
                Free::Bufs(_) => Free::Bufs(Vec::new()),
                Free::Pipes(_) => Free::Pipes(Vec::new()),
            };
            self.gauge.set(0);
        }
    }

    pub fn get(self: &Arc<Self>) -> std::io::Result<EngineState> {
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
    pub fn put(&self, e: EngineState) {
        match e {
            EngineState::Copy {
                a_to_b,
                b_to_a,
                stock: Some(_),
            } => {
                for b in [a_to_b, b_to_a].into_iter().flatten() {
                    self.give_buf(b);
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
                        self.give_pipe(p);
                    }
                }
            }
            _ => {}
        }
    }

    fn after_take(&self, left: usize) {
        self.gauge.set(left as i64);
        if left < self.marks.low {
            self.wake.notify_one();
        }
    }

    /// A buffer for one burst.
    pub fn take_buf(&self) -> Vec<u8> {
        let (got, left) = {
            let mut free = self.lock();
            match &mut *free {
                Free::Bufs(v) => (v.pop(), v.len()),
                Free::Pipes(_) => (None, 0),
            }
        };
        self.after_take(left);
        got.unwrap_or_else(|| self.new_buf())
    }

    pub fn give_buf(&self, b: Vec<u8>) {
        let mut free = self.lock();
        if let Free::Bufs(v) = &mut *free {
            if self.enabled() && v.len() < self.marks.high && b.len() == self.buffer_bytes {
                v.push(b);
            }
            self.gauge.set(v.len() as i64);
        }
    }

    /// An empty pipe for one burst.
    pub fn take_pipe(&self) -> std::io::Result<Pipe> {
        let (got, left) = {
            let mut free = self.lock();
            match &mut *free {
                Free::Pipes(v) => (v.pop(), v.len()),
                Free::Bufs(_) => (None, 0),
            }
        };
        self.after_take(left);
        match got {
            Some(p) => Ok(p),
            None => self.new_pipe(),
        }
    }

    /// Give back a pipe the caller knows is empty.
    pub fn give_pipe(&self, p: Pipe) {
        let mut free = self.lock();
        if let Free::Pipes(v) = &mut *free {
            if self.enabled() && v.len() < self.marks.high {
                v.push(p);
            }
            self.gauge.set(v.len() as i64);
        }
    }

    pub fn available(&self) -> usize {
        self.lock().len()
    }

    /// Fill to the high watermark now, then keep it topped up.
    pub async fn refill_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let have = self.available();
            // Pipes cost syscalls to make (pipe2, F_SETPIPE_SZ): made ahead.
            // Buffers cost a malloc: kept when given back, never made ahead,
            // so an idle relay holds no buffer memory it has not needed.
            let n = if self.enabled() && self.engine == Engine::Splice {
                self.marks.to_open(have, 0)
            } else {
                0
            };
            for _ in 0..n {
                let made = match self.engine {
                    Engine::Copy => Ok(Free::Bufs(vec![self.new_buf()])),
                    Engine::Splice => self.new_pipe().map(|p| Free::Pipes(vec![p])),
                };
                match made {
                    Ok(Free::Bufs(mut b)) => {
                        if let Some(b) = b.pop() {
                            self.give_buf(b)
                        }
                    }
                    Ok(Free::Pipes(mut p)) => {
                        if let Some(p) = p.pop() {
                            self.give_pipe(p)
                        }
                    }
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
