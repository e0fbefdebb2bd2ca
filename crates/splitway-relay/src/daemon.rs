//! The relay daemon: bind listeners, install rules, accept until told to
//! stop, then drain.
//!
//! [`run`] is the whole life of a relay, so tests and the binary start it
//! the same way and stop it with a future.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use splitway_core::config::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{Api, Role};
use crate::control::{Change, Control};
use crate::firewall::Firewall;
use crate::flow;
use crate::kernel::Kernel;
use crate::metrics::Metrics;
use crate::resources::Resources;
use crate::shards::Shards;
use crate::state::Shared;
use crate::syn_tap::TapMetrics;
use crate::sys::sockopt;

/// `splitway_syn_tap_errors_total`, registered once per relay.
fn tap_errors(m: &Metrics) -> prometheus::IntCounter {
    let c = prometheus::IntCounter::new(
        "splitway_syn_tap_errors_total",
        "Failed receives or verdicts on the early-SYN queue",
    )
    .expect("static metric definition");
    let _ = m.registry().register(Box::new(c.clone()));
    c
}

/// Options that are not part of the config file.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Written (with the pid) once listeners are bound and rules installed.
    pub ready_file: Option<PathBuf>,
    /// The config file, re-read on SIGHUP and `ctl reload`.
    pub config_path: Option<PathBuf>,
    /// Reload the config on SIGHUP.
    pub reload_on_sighup: bool,
    /// Worker shards (`--workers`): the caller's runtime and `workers - 1`
    /// threads, each accepting on its own listener (0 and 1: one, the
    /// caller's). See [`crate::shards`].
    pub workers: usize,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Transparent,
    Explicit(SocketAddr),
    Proxy(crate::ingress::Proto),
    Relay,
}

/// Listen on `addr` once per shard (with `SO_REUSEPORT` when there are
/// more: the kernel spreads connections over them), each socket set up by
/// `setup`. Port 0 is resolved by the first socket, the others join it.
fn bind(
    addr: SocketAddr,
    transparent: bool,
    shards: usize,
    setup: impl Fn(&socket2::Socket),
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let group = shards > 1;
    if group && addr.port() != 0 {
        sockopt::address_free(&addr).with_context(|| format!("cannot listen on {addr}"))?;
    }
    let mut out = Vec::with_capacity(shards);
    let mut at = addr;
    for _ in 0..shards.max(1) {
        let sock = sockopt::listener(&at, transparent, group, 4096)
            .with_context(|| format!("cannot listen on {at}"))?;
        // Client-facing listeners: accepted sockets inherit TCP_NODELAY (the
        // Internet-facing profile) from the listener, so it is set once here
        // instead of once per connection.
        crate::profile::internet(&sock).context("TCP_NODELAY on the listener")?;
        setup(&sock);
        if at.port() == 0 {
            at = sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .context("the listener's port")?;
        }
        out.push(std::net::TcpListener::from(sock));
    }
    Ok(out)
}

/// Run a relay until `shutdown` completes, then stop accepting and let open
/// flows finish for up to `timeouts.shutdown_grace_secs`.
pub async fn run(
    cfg: Config,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Fleet mode: start from etcd, else the local cache, else the file.
    #[cfg(feature = "fleet")]
    let (cfg, fleet_start) = crate::fleet::bootstrap(cfg).await;
    #[cfg(not(feature = "fleet"))]
    if cfg.fleet.is_some() {
        anyhow::bail!(
            "[fleet]: this splitway was built without fleet mode (cargo feature `fleet`)"
        );
    }
    let shards = Shards::start(opts.workers.max(1)).context("starting the worker shards")?;
    let n = shards.count();
    let mut listeners: Vec<(Vec<std::net::TcpListener>, Kind)> = Vec::new();
    let plain = |_: &socket2::Socket| {};
    for t in &cfg.transparent {
        let v4 = t.prefixes.iter().any(|p| p.addr().is_ipv4());
        let v6 = t.prefixes.iter().any(|p| p.addr().is_ipv6());
        if v4 {
            let addr = SocketAddr::from(([0, 0, 0, 0], t.port));
            listeners.push((bind(addr, true, n, plain)?, Kind::Transparent));
        }
        if v6 {
            let addr = SocketAddr::from(([0u16; 8], t.port));
            listeners.push((bind(addr, true, n, plain)?, Kind::Transparent));
        }
    }
    for e in &cfg.explicit {
        listeners.push((bind(e.listen, false, n, plain)?, Kind::Explicit(e.target)));
    }
    for s in &cfg.socks5 {
        let proto = crate::ingress::Proto::Socks5(s.listen);
        listeners.push((bind(s.listen, false, n, plain)?, Kind::Proxy(proto)));
    }
    for h in &cfg.http_connect {
        let proto = crate::ingress::Proto::HttpConnect(h.listen);
        listeners.push((bind(h.listen, false, n, plain)?, Kind::Proxy(proto)));
    }
    if let Some(r) = &cfg.relay {
        let (turbo, fast_open) = (cfg.features.turbo_start, cfg.features.fast_open);
        let l = bind(r.listen, false, n, |l| {
            if turbo {
                // Accepted legs inherit the listener's buffers.
                let _ = sockopt::set_buffers_force(l, crate::profile::TURBO_BUFFER_BYTES);
            }
            if fast_open {
                let _ = sockopt::set_fastopen_listener(l, 4096);
            }
        })?;
        listeners.push((l, Kind::Relay));
    }
    if cfg.limits.server_initial_window_segments.is_some() {
        crate::sys::initial_window::ensure()
            .context("limits.server_initial_window_segments: the kernel program")?;
    }
    // `nft` and `ip` block: off the runtime's workers.
    let firewall = if cfg.transparent.is_empty() {
        None
    } else {
        let c = cfg.clone();
        Some(
            tokio::task::spawn_blocking(move || Firewall::install(&c))
                .await
                .context("installing nftables rules")?
                .context("installing nftables rules")?,
        )
    };
    let grace = Duration::from_secs(cfg.timeouts.shutdown_grace_secs);
    let name = cfg.node.name.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Metrics::new();
    metrics
        .connections_limit
        .set(i64::try_from(cfg.limits.max_connections).unwrap_or(i64::MAX));
    let resources = Resources::new(&cfg, metrics.resources_pooled.clone());
    tokio::spawn(resources.clone().refill_loop(stop_rx.clone()));
    let shared = Arc::new(Shared::new(
        cfg.clone(),
        opts.config_path.clone(),
        metrics,
        resources,
        stop_rx.clone(),
    ));
    shared.workers.store(n, Ordering::Relaxed);
    let transparent: Vec<_> = listeners
        .iter()
        .filter(|(_, k)| matches!(k, Kind::Transparent))
        .flat_map(|(group, _)| group.iter())
        .map(|l| std::os::fd::AsFd::as_fd(l).try_clone_to_owned())
        .collect::<Result<_, _>>()
        .context("copying a transparent listener's fd")?;
    let kernel = Arc::new(
        Kernel::start(TapMetrics {
            dropped: shared.metrics.early_syn.with_label_values(&["dropped"]),
            errors: tap_errors(&shared.metrics),
        })
        .context("starting the kernel-state thread")?,
    );
    kernel.set_transparent_listeners(transparent);
    let control = Control::start(shared.clone(), kernel.clone());
    control
        .apply(Change::Replace(Box::new(cfg)))
        .await
        .context("setting up features (early-SYN tap, turbo-start routes)")?;
    if !shared.snapshot().cfg.transparent.is_empty() {
        tokio::spawn(early_syn_loop(
            shared.clone(),
            kernel.clone(),
            stop_rx.clone(),
        ));
    }
    #[cfg(feature = "fleet")]
    crate::fleet::spawn(
        shared.clone(),
        control.clone(),
        fleet_start,
        stop_rx.clone(),
    );
    if opts.reload_on_sighup {
        tokio::spawn(sighup_loop(control.clone(), stop_rx.clone()));
    }
    let mut accept_tasks = JoinSet::new();
    for (group, kind) in listeners {
        let addr = group.first().and_then(|l| l.local_addr().ok());
        tracing::info!(node = %name, ?addr, ?kind, shards = group.len(), "listening");
        for (i, l) in group.into_iter().enumerate() {
            let accepted = shared
                .metrics
                .worker_accepted
                .with_label_values(&[&i.to_string()]);
            let task = accept_loop(l, kind, accepted, shared.clone(), stop_rx.clone());
            match shards.handle(i) {
                Some(h) => accept_tasks.spawn_on(task, h),
                None => accept_tasks.spawn(task),
            };
        }
    }
    let snap = shared.snapshot();
    let token = match &snap.cfg.admin {
        Some(admin) => crate::admin::token(admin)?,
        None => None,
    };
    let api = Arc::new(Api::new(shared.clone(), control.clone(), token));
    if let Some(admin) = &snap.cfg.admin {
        crate::admin::serve(&admin.listen, Role::Admin, api.clone(), stop_rx.clone())
            .await
            .with_context(|| format!("admin API on {}", admin.listen))?;
    }
    if let Some(m) = &snap.cfg.metrics {
        let listen = m.listen.to_string();
        crate::admin::serve(&listen, Role::Metrics, api, stop_rx.clone())
            .await
            .with_context(|| format!("metrics listener on {listen}"))?;
    }
    drop(snap);
    if let Some(path) = &opts.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing ready file {}", path.display()))?;
    }
    tracing::info!(node = %name, "ready");

    shutdown.await;
    tracing::info!(active = shared.active(), "shutting down: closing listeners");
    let _ = stop_tx.send(true);
    kernel.forget_listeners();
    while accept_tasks.join_next().await.is_some() {}
    if tokio::time::timeout(grace, shared.drained()).await.is_err() {
        // A flow cut here must not look complete: both of its sockets are
        // reset when the runtime drops its task (see `forward::Relay`);
        // linger 0 is set here too, so the reset holds however the process
        // ends.
        // Counted here, as `aborted`: the flows' tasks are dropped with the
        // runtime and never reach their own accounting (which, from now on,
        // counts nothing, so a flow that ends on its own meanwhile is not
        // counted twice).
        shared.aborting.store(true, Ordering::SeqCst);
        let log_each = shared.snapshot().cfg.node.log_connections;
        let cut = shared.with_flows(|flows| {
            for (_, e) in &flows {
                crate::forward::reset_both(&e.down, &e.up);
                if log_each {
                    tracing::info!(
                        peer = %e.peer, dst = %e.dst, outcome = "aborted",
                        "connection closed"
                    );
                }
            }
            flows.len()
        });
        shared.metrics.hot.completed[crate::forward::Outcome::Aborted.index()].inc_by(cut as u64);
        tracing::warn!(
            active = shared.active(),
            cut,
            "grace period over; resetting remaining flows"
        );
    }
    kernel.teardown().await;
    let _ = tokio::task::spawn_blocking(move || drop(firewall)).await;
    if let Some(path) = &opts.ready_file {
        let _ = std::fs::remove_file(path);
    }
    // Flows still on the other shards (cut above) go with their runtimes.
    drop(shards);
    tracing::info!("stopped");
    Ok(())
}

/// Accept on one shard's listener until told to stop; each connection's
/// flow runs on this shard.
async fn accept_loop(
    l: std::net::TcpListener,
    kind: Kind,
    accepted_here: prometheus::IntCounter,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // Registered with this shard's I/O driver.
    let l = match TcpListener::from_std(l) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register a listener; this shard accepts nothing");
            return;
        }
    };
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = l.accept() => r,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((sock, peer)) => {
                backoff = Duration::from_millis(5);
                accepted_here.inc();
                if shared.draining.load(std::sync::atomic::Ordering::SeqCst) {
                    shared.metrics.failed.with_label_values(&["draining"]).inc();
                    let _ = sockopt::set_linger_zero(&sock);
                    continue;
                }
                spawn_flow(sock, peer, kind, &shared);
            }
            Err(e) => {
                // Out of fds or memory: back off instead of spinning, and
                // come back by itself when resources free up.
                shared.metrics.accept_errors.inc();
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn spawn_flow(sock: TcpStream, peer: SocketAddr, kind: Kind, shared: &Arc<Shared>) {
    let shared = shared.clone();
    match kind {
        Kind::Transparent => match sockopt::original_dst(&sock) {
            Ok(dst) => {
                tokio::spawn(flow::client(shared, sock, peer, dst, "transparent"));
            }
            Err(e) => tracing::warn!(error = %e, "no original destination"),
        },
        Kind::Explicit(target) => {
            tokio::spawn(flow::client(shared, sock, peer, target, "explicit"));
        }
        Kind::Proxy(proto) => {
            tokio::spawn(crate::ingress::serve(shared, sock, peer, proto));
        }
        Kind::Relay => {
            tokio::spawn(flow::relay_leg(shared, sock, peer));
        }
    }
}

/// Start a leg for every SYN the tap reports; expire unclaimed ones. Waits
/// for the tap to be bound first: at start if early SYN is on, else when it
/// is first switched on at run time.
async fn early_syn_loop(shared: Arc<Shared>, kernel: Arc<Kernel>, mut stop: watch::Receiver<bool>) {
    let mut syns = tokio::select! {
        rx = kernel.take_syn_queue() => rx,
        _ = stop.changed() => return,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            t = syns.recv() => match t {
                Some(t) => flow::on_syn(&shared, t),
                None => return,
            },
            _ = tick.tick() => flow::expire_early(&shared),
            _ = stop.changed() => return,
        }
    }
}

/// Reload the config file on every SIGHUP.
async fn sighup_loop(control: Control, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP; reload only through the admin API");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => match control.apply(Change::Reload).await {
                Ok(msg) => tracing::info!("{msg}"),
                Err(e) => tracing::error!(error = %e, "reload refused; the running config stays"),
            },
            _ = stop.changed() => return,
        }
    }
}
