//! The one owner of the kernel state a relay changes at run time for its
//! features: turbo-start routes ([`crate::turbo`]), the early-SYN queue
//! and its iptables rules ([`crate::syn_tap`]), and TCP_SAVE_SYN on the
//! transparent listeners.
//!
//! All of it lives on one thread of its own (`splitway-kernel`): the `ip`
//! and `iptables` processes it runs block for milliseconds, and no runtime
//! worker, which forwards bytes, may wait for them. Tasks talk to it through
//! [`Kernel`], whose calls are `async` and only wait for a reply.
//!
//! [`Kernel::apply`] never half-applies: everything that can fail (binding
//! the queue, adding the new rules) is done first, beside the running
//! state; only then are the new turbo routes pinned and the old rules and
//! routes removed. If a step fails, what it added is taken out again and
//! the running state is as it was.
//!
//! The nftables TPROXY table ([`crate::firewall`]) follows keys that only
//! change with a restart; it is installed at start and removed at exit.

use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use splitway_core::config::Config;
use splitway_core::pairing::FourTuple;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::syn_tap::{self, TapError, TapMetrics};
use crate::turbo::Turbo;

/// Why kernel state could not be changed; the running state is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("early-SYN queue: {0}")]
    Queue(#[source] TapError),
    #[error("early-SYN rules: {0}")]
    Rules(#[source] TapError),
    #[error("the kernel-state owner has stopped")]
    Stopped,
}

enum Job {
    Listeners(Vec<OwnedFd>),
    Apply(Box<Config>, oneshot::Sender<Result<(), KernelError>>),
    /// Remove everything; the thread ends.
    Teardown(oneshot::Sender<()>),
}

/// Where the SYN channel waits for the task that serves it.
#[derive(Default)]
struct SynSlot {
    rx: Mutex<Option<mpsc::Receiver<FourTuple>>>,
    ready: Notify,
}

/// Handle to the kernel-state thread.
pub struct Kernel {
    jobs: std::sync::mpsc::Sender<Job>,
    syn: Arc<SynSlot>,
    thread: Mutex<Option<JoinHandle<()>>>,
    tap_stop: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Kernel {
    /// Start the owner thread. Nothing is installed until [`Kernel::apply`].
    pub fn start(tap: TapMetrics) -> std::io::Result<Kernel> {
        let (tx, rx) = std::sync::mpsc::channel();
        let syn = Arc::new(SynSlot::default());
        let tap_stop = Arc::new(AtomicBool::new(false));
        let mut owner = Owner {
            tap,
            tap_stop: tap_stop.clone(),
            syn: syn.clone(),
            cleaned: false,
            queue_bound: false,
            rules: None,
            turbo: Turbo::default(),
            listeners: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("splitway-kernel".into())
            .spawn(move || owner.run(rx))?;
        Ok(Kernel {
            jobs: tx,
            syn,
            thread: Mutex::new(Some(thread)),
            tap_stop,
        })
    }

    /// The transparent listeners (copies of their fds), whose TCP_SAVE_SYN
    /// follows the early-SYN switch; give them before the first apply.
    pub fn set_transparent_listeners(&self, fds: Vec<OwnedFd>) {
        let _ = self.jobs.send(Job::Listeners(fds));
    }

    /// Drop the listener copies, so closing the listeners closes them.
    pub fn forget_listeners(&self) {
        let _ = self.jobs.send(Job::Listeners(Vec::new()));
    }

    /// Make the kernel state follow `cfg` (already validated).
    pub async fn apply(&self, cfg: &Config) -> Result<(), KernelError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Apply(Box::new(cfg.clone()), tx))
            .map_err(|_| KernelError::Stopped)?;
        rx.await.map_err(|_| KernelError::Stopped)?
    }

    /// Remove routes and rules, stop the tap, end the thread.
    pub async fn teardown(&self) {
        let (tx, rx) = oneshot::channel();
        self.tap_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if self.jobs.send(Job::Teardown(tx)).is_ok() {
            let _ = rx.await;
        }
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// The SYN channel, once, for the task that serves it: waits until
    /// the queue is bound (early SYN may be switched on only later).
    pub async fn take_syn_queue(&self) -> mpsc::Receiver<FourTuple> {
        loop {
            let notified = self.syn.ready.notified();
            if let Some(rx) = lock(&self.syn.rx).take() {
                return rx;
            }
            notified.await;
        }
    }
}

/// The state the thread owns.
struct Owner {
    tap: TapMetrics,
    tap_stop: Arc<AtomicBool>,
    syn: Arc<SynSlot>,
    /// Rules a crashed earlier run left were removed.
    cleaned: bool,
    queue_bound: bool,
    rules: Option<syn_tap::Rules>,
    turbo: Turbo,
    listeners: Vec<OwnedFd>,
}

impl Owner {
    fn run(&mut self, jobs: std::sync::mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Listeners(fds) => self.listeners = fds,
                Job::Apply(cfg, reply) => {
                    let _ = reply.send(self.apply(&cfg));
                }
                Job::Teardown(reply) => {
                    self.rules = None;
                    self.turbo = Turbo::default();
                    let _ = reply.send(());
                    return;
                }
            }
        }
        // Every handle is gone: the drops below remove rules and routes.
    }

    fn apply(&mut self, cfg: &Config) -> Result<(), KernelError> {
        if !self.cleaned {
            syn_tap::remove_rules(&cfg.node.name);
            self.cleaned = true;
        }
        let want_syn = cfg.features.early_syn && !cfg.transparent.is_empty();
        // 1. What can fail, beside the running state.
        if want_syn && !self.queue_bound {
            let rx = syn_tap::start_queue(cfg, self.tap.clone(), self.tap_stop.clone())
                .map_err(KernelError::Queue)?;
            self.queue_bound = true;
            *lock(&self.syn.rx) = Some(rx);
            self.syn.ready.notify_one();
        }
        let specs = syn_tap::rule_specs(cfg);
        let new_rules = match &self.rules {
            Some(r) if want_syn && r.specs() == specs.as_slice() => None,
            _ if want_syn => Some(syn_tap::install_rules(cfg).map_err(KernelError::Rules)?),
            _ => None,
        };
        // 2. Nothing below fails: swap in the new, then remove the old.
        let old_rules = match new_rules {
            Some(n) => self.rules.replace(n),
            None if !want_syn => self.rules.take(),
            None => None,
        };
        for l in &self.listeners {
            if let Err(e) = crate::sys::sockopt::set_save_syn(l, cfg.features.early_syn) {
                tracing::warn!(error = %e, "TCP_SAVE_SYN on a transparent listener");
            }
        }
        self.turbo.sync(cfg);
        drop(old_rules);
        Ok(())
    }
}
