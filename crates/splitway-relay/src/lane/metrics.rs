//! Metrics of lanes and their streams (`splitway_lane*`, `splitway_stream*`).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct LaneMetrics {
    /// Lanes running, by role (`initiator`, `acceptor`).
    pub lanes: IntGaugeVec,
    /// Initiator lanes ready (peer SETTINGS received), by peer.
    pub ready: IntGaugeVec,
    /// Lanes that ended before the peer's SETTINGS, by peer and reason: a
    /// v1 peer (reset), a peer down (connect), a timeout.
    pub refused: IntCounterVec,
    /// Lanes that ended after being ready, by role and reason.
    pub lost: IntCounterVec,
    /// Lanes ended by broken framing or SETTINGS, by reason.
    pub frame_errors: IntCounterVec,
    /// Stream rules a peer broke (the stream was reset), by reason.
    pub stream_faults: IntCounterVec,
    /// Streams opened, by role.
    pub streams_opened: IntCounterVec,
    /// Streams open now, by role.
    pub streams: IntGaugeVec,
    /// Streams that ended, by outcome (`closed`; `reset`: by this relay; `reset_by_peer`: by the peer or a lost lane).
    pub streams_ended: IntCounterVec,
    /// Flows toward a `legs = "mux"` peer that found no lane with room and
    /// took a per-flow leg, by peer.
    pub fallback: IntCounterVec,
    /// Bytes queued in lanes' schedulers, not yet framed.
    pub sched_queued_bytes: IntGauge,
    /// Bytes a stream carried (both directions), at its end.
    pub stream_bytes: Histogram,
    /// Sum of paced lanes' pacing rates, bytes/s, by role.
    pub pacing: IntGaugeVec,
    /// Streams opened at a client's SYN (early SYN), by result: `started`,
    /// `claimed` (its client was accepted), `expired` (never claimed: reset).
    pub early_streams: IntCounterVec,
}

impl LaneMetrics {
    pub fn new(m: &Metrics) -> LaneMetrics {
        let r = m.registry();
        let cv = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
            let _ = r.register(Box::new(v.clone()));
            v
        };
        let gv = |name: &str, help: &str, labels: &[&str]| {
            let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric");
            let _ = r.register(Box::new(v.clone()));
            v
        };
        let sched_queued_bytes = IntGauge::new(
            "splitway_lane_scheduler_queued_bytes",
            "Bytes queued in lane schedulers, not yet framed",
        )
        .expect("static metric");
        let _ = r.register(Box::new(sched_queued_bytes.clone()));
        let stream_bytes = Histogram::with_opts(
            HistogramOpts::new(
                "splitway_stream_bytes",
                "Bytes one stream carried, both directions, at its end",
            )
            .buckets(prometheus::exponential_buckets(1024.0, 4.0, 11).expect("static buckets")),
        )
        .expect("static metric");
        let _ = r.register(Box::new(stream_bytes.clone()));
        LaneMetrics {
            lanes: gv("splitway_lanes", "Lanes running, by role", &["role"]),
            ready: gv(
                "splitway_lanes_ready",
                "Lanes to a peer ready to carry streams",
                &["peer"],
            ),
            refused: cv(
                "splitway_lane_refused_total",
                "Lanes that ended before the peer's SETTINGS (v1 peer, peer down)",
                &["peer", "reason"],
            ),
            lost: cv(
                "splitway_lanes_lost_total",
                "Lanes that ended after they were ready, every stream reset",
                &["role", "reason"],
            ),
            frame_errors: cv(
                "splitway_frame_errors_total",
                "Lanes reset for broken framing, by reason",
                &["reason"],
            ),
            stream_faults: cv(
                "splitway_stream_faults_total",
                "Streams reset because the peer broke a stream rule",
                &["reason"],
            ),
            streams_opened: cv(
                "splitway_streams_opened_total",
                "Streams opened on lanes",
                &["role"],
            ),
            streams: gv("splitway_streams", "Streams open on lanes", &["role"]),
            streams_ended: cv(
                "splitway_streams_ended_total",
                "Streams that ended, by outcome",
                &["outcome"],
            ),
            fallback: cv(
                "splitway_lane_fallback_total",
                "Flows to a mux peer that took a per-flow leg (no lane ready or with room)",
                &["peer"],
            ),
            sched_queued_bytes,
            stream_bytes,
            pacing: gv(
                "splitway_lane_pacing_bytes_per_second",
                "Sum of the pacing rates of paced lanes (lane_pacing), bytes/s",
                &["role"],
            ),
            early_streams: {
                let v = cv(
                    "splitway_lane_early_streams_total",
                    "Streams opened at a client's SYN (early SYN), by result",
                    &["result"],
                );
                for r in ["started", "claimed", "expired"] {
                    v.with_label_values(&[r]);
                }
                v
            },
        }
    }
}
