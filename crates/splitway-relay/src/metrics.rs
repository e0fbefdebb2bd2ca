//! The relay's counters, gauges and histograms, exported in Prometheus text
//! format. One [`Metrics`] per relay; names follow Prometheus conventions
//! (`splitway_..._total`, units in names).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// All of a relay's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Connections accepted, by listener kind (transparent, explicit, relay).
    pub accepted: IntCounterVec,
    pub active: IntGauge,
    /// `[limits].max_connections`, so dashboards and alerts can say how
    /// near `active` is to it.
    pub connections_limit: IntGauge,
    /// Finished split connections, by outcome.
    pub completed: IntCounterVec,
    /// Connections that never got to forwarding, by reason.
    pub failed: IntCounterVec,
    /// Bytes by direction (`upstream` = client to server) and kind of the
    /// socket they were read from (`leg`: see [`LegKind`]).
    pub bytes: IntCounterVec,
    /// Relay legs refused at the header, by reason.
    pub header_rejected: IntCounterVec,
    /// Accept (or leg header) to next hop ready.
    pub setup_seconds: Histogram,
    /// Accept (or leg header) to the first byte of the reply written back.
    pub ttfb_seconds: Histogram,
    /// Accept errors (e.g. out of file descriptors).
    pub accept_errors: IntCounter,
    /// Engine in use: 1 on the label of the configured one.
    pub engine: IntGaugeVec,
    /// Early-SYN events by result (started, late, hit, miss,
    /// fallback_bound, expired, failed).
    pub early_syn: IntCounterVec,
    /// Connection resources (buffer or pipe pairs) ready in the pool.
    pub resources_pooled: IntGauge,
    /// Connections moved from one next hop of their route to the next
    /// (`[[route]].backup`), by the hop left and the hop tried.
    pub failover: IntCounterVec,
    /// Proxy ingress (SOCKS5, HTTP CONNECT) requests refused, by listener
    /// kind and reason.
    pub proxy_refused: IntCounterVec,
    /// Connections accepted, by worker shard (`--workers`): how evenly the
    /// kernel spreads them over the shards' listeners.
    pub worker_accepted: IntCounterVec,
    /// Children of the vectors above that every connection touches,
    /// resolved once (a label lookup hashes and locks).
    pub hot: Hot,
}

/// What a socket of a split connection is, for the `leg` label of
/// `splitway_bytes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegKind {
    /// Accepted from a client (transparent or explicit listener).
    Client,
    /// Accepted from a peer relay (a relay leg, inbound).
    PeerIn,
    /// Opened to a peer relay (a relay leg, outbound).
    PeerOut,
    /// Opened straight to the destination.
    Server,
}

impl LegKind {
    pub const ALL: [LegKind; 4] = [
        LegKind::Client,
        LegKind::PeerIn,
        LegKind::PeerOut,
        LegKind::Server,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LegKind::Client => "client",
            LegKind::PeerIn => "peer_in",
            LegKind::PeerOut => "peer_out",
            LegKind::Server => "server",
        }
    }
}

/// Pre-resolved children of the per-connection counters.
#[derive(Clone)]
pub struct Hot {
    /// `accepted` for transparent, explicit, relay.
    pub accepted: [IntCounter; 3],
    /// `bytes`: upstream by the leg kind read from, then downstream.
    pub bytes_up: [IntCounter; 4],
    pub bytes_down: [IntCounter; 4],
    /// `completed` by [`crate::forward::Outcome`] (closed, reset, idle,
    /// half-close, engine error, aborted).
    pub completed: [IntCounter; crate::forward::Outcome::ALL.len()],
}

impl Hot {
    fn new(accepted: &IntCounterVec, bytes: &IntCounterVec, completed: &IntCounterVec) -> Hot {
        let leg = |dir: &str| LegKind::ALL.map(|k| bytes.with_label_values(&[dir, k.as_str()]));
        Hot {
            accepted: ["transparent", "explicit", "relay"]
                .map(|k| accepted.with_label_values(&[k])),
            bytes_up: leg("upstream"),
            bytes_down: leg("downstream"),
            completed: crate::forward::Outcome::ALL
                .map(|o| completed.with_label_values(&[o.as_str()])),
        }
    }

    /// `accepted` child for a listener kind label.
    pub fn accepted(&self, kind: &str) -> &IntCounter {
        match kind {
            "transparent" => &self.accepted[0],
            "explicit" => &self.accepted[1],
            _ => &self.accepted[2],
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let accepted = counter_vec(
            "splitway_connections_accepted_total",
            "Connections accepted, by listener kind",
            &["kind"],
        );
        let completed = counter_vec(
            "splitway_connections_completed_total",
            "Split connections that ended, by outcome",
            &["outcome"],
        );
        let failed = counter_vec(
            "splitway_connections_failed_total",
            "Connections that failed before forwarding, by reason",
            &["reason"],
        );
        let bytes = counter_vec(
            "splitway_bytes_total",
            "Bytes forwarded, by direction and the kind of socket read from",
            &["direction", "leg"],
        );
        let header_rejected = counter_vec(
            "splitway_header_rejected_total",
            "Relay legs refused at the header, by reason",
            &["reason"],
        );
        let active = IntGauge::new(
            "splitway_connections_active",
            "Split connections being forwarded",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(active.clone()))
            .expect("unique metric name");
        let connections_limit = IntGauge::new(
            "splitway_connections_limit",
            "Concurrent split connections allowed ([limits].max_connections)",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(connections_limit.clone()))
            .expect("unique metric name");
        let setup_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "splitway_connection_setup_seconds",
                "Time from accept to the next hop being ready",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
        )
        .expect("static metric definition");
        registry
            .register(Box::new(setup_seconds.clone()))
            .expect("unique metric name");
        let ttfb_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "splitway_time_to_first_byte_seconds",
                "Time from accept (or a relay leg's header) to the first reply byte sent back",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )
        .expect("static metric definition");
        registry
            .register(Box::new(ttfb_seconds.clone()))
            .expect("unique metric name");
        let accept_errors = IntCounter::new("splitway_accept_errors_total", "Errors from accept()")
            .expect("static metric definition");
        registry
            .register(Box::new(accept_errors.clone()))
            .expect("unique metric name");
        let engine = IntGaugeVec::new(
            Opts::new("splitway_engine", "Forwarding engine in use"),
            &["engine"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(engine.clone()))
            .expect("unique metric name");
        let early_syn = counter_vec(
            "splitway_early_syn_total",
            "Early-SYN legs and their pairing, by result",
            &["result"],
        );
        // Every result exported from the start (at 0), so rates and alerts
        // see the first event too.
        for r in [
            "started",
            "late",
            "hit",
            "miss",
            "fallback_bound",
            "expired",
            "failed",
            "dropped",
        ] {
            early_syn.with_label_values(&[r]);
        }
        let failover = counter_vec(
            "splitway_route_failover_total",
            "Connections that failed over from one next hop of their route to the next",
            &["from", "to"],
        );
        let proxy_refused = counter_vec(
            "splitway_proxy_refused_total",
            "SOCKS5 / HTTP CONNECT requests refused with an error reply or closed, by kind and reason",
            &["kind", "reason"],
        );
        let worker_accepted = counter_vec(
            "splitway_worker_accepted_total",
            "Connections accepted, by worker shard (each shard has its own SO_REUSEPORT listener)",
            &["worker"],
        );
        let resources_pooled = IntGauge::new(
            "splitway_resources_pooled",
            "Per-connection buffer or pipe pairs ready in the pool",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(resources_pooled.clone()))
            .expect("unique metric name");
        Metrics {
            hot: Hot::new(&accepted, &bytes, &completed),
            ttfb_seconds,
            failover,
            proxy_refused,
            worker_accepted,
            resources_pooled,
            early_syn,
            registry,
            accepted,
            active,
            connections_limit,
            completed,
            failed,
            bytes,
            header_rejected,
            setup_seconds,
            accept_errors,
            engine,
        }
    }

    /// The registry, for modules that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
