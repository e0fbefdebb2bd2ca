//! Per-connection resources (copy buffers or splice pipes) kept ready in a
//! pool, so nothing is created on the connection path.
//!
//! With `features.worker_pools` on, the pool is filled to its high
//! watermark at start and topped up by a background task whenever it drops
//! below its low watermark; finished connections give their resources back
//! (pipes only if empty). With it off, every connection creates its own and
//! frees them at the end, which is what the setup-time histogram compares.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use splitway_core::config::{Config, Engine};
use splitway_core::pool::Watermarks;
use tokio::sync::{watch, Notify};

use crate::forward::EngineState;
use crate::sys::pipe::Pipe;

/// Default watermarks of the resource pool (in connections).
pub const LOW: usize = 16;
pub const HIGH: usize = 64;

pub struct Resources {
    enabled: bool,
    engine: Engine,
    buffer_bytes: usize,
    pipe_bytes: usize,
    marks: Watermarks,
    free: Mutex<Vec<EngineState>>,
    wake: Notify,
    gauge: prometheus::IntGauge,
}

impl Resources {
    pub fn new(cfg: &Config, gauge: prometheus::IntGauge) -> Arc<Resources> {
        Arc::new(Resources {
            enabled: cfg.features.worker_pools,
            engine: cfg.node.engine,
            buffer_bytes: cfg.node.buffer_bytes,
            pipe_bytes: cfg.node.pipe_bytes,
            marks: Watermarks::new(LOW, HIGH),
            free: Mutex::new(Vec::new()),
            wake: Notify::new(),
            gauge,
        })
    }

    fn create(&self) -> std::io::Result<EngineState> {
        Ok(match self.engine {
            Engine::Copy => EngineState::Copy {
                a_to_b: vec![0; self.buffer_bytes],
                b_to_a: vec![0; self.buffer_bytes],
            },
            Engine::Splice => EngineState::Splice {
                a_to_b: Pipe::new(self.pipe_bytes)?,
                b_to_a: Pipe::new(self.pipe_bytes)?,
            },
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<EngineState>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resources for one connection.
    pub fn get(&self) -> std::io::Result<EngineState> {
        if self.enabled {
            let (got, left) = {
                let mut free = self.lock();
                (free.pop(), free.len())
            };
            self.gauge.set(left as i64);
            if left < self.marks.low {
                self.wake.notify_one();
            }
            if let Some(e) = got {
                return Ok(e);
            }
        }
        self.create()
    }

    /// Give a connection's resources back.
    pub fn put(&self, e: EngineState) {
        if !self.enabled {
            return;
        }
        let clean = match &e {
            EngineState::Copy { .. } => true,
            EngineState::Splice { a_to_b, b_to_a } => {
                a_to_b.pending().ok() == Some(0) && b_to_a.pending().ok() == Some(0)
            }
        };
        let mut free = self.lock();
        if clean && free.len() < self.marks.high {
            free.push(e);
        }
        self.gauge.set(free.len() as i64);
    }

    pub fn available(&self) -> usize {
        self.lock().len()
    }

    /// Fill to the high watermark now, then keep it topped up.
    pub async fn refill_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if !self.enabled {
            return;
        }
        loop {
            let have = self.available();
            let n = self.marks.to_open(have, 0);
            for _ in 0..n {
                match self.create() {
                    Ok(e) => {
                        let mut free = self.lock();
                        free.push(e);
                        self.gauge.set(free.len() as i64);
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
