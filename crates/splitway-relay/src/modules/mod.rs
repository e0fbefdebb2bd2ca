//! Stream modules on relay legs (issue 13): which flows use them, the
//! stores each peer pair shares, their metrics, and the engine that runs the
//! chains (`engine`). The modules themselves are sans-IO, in
//! `splitway-modules`.
//!
//! A route with `modules` makes the ingress open a framed (v2) per-flow leg
//! whose first frame names the chain ([`frames`]); the relay at the other
//! end of that leg runs the inverse chain on the same flow. Both directions
//! are encoded by the relay that sends them. Module legs use
//! `TCP_NOTSENT_LOWAT`; bytes a chain transforms pass through user space,
//! bytes it passes unchanged cross as spliced plain records (`engine`).

pub mod engine;
pub mod frames;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use prometheus::{IntCounterVec, Opts, Registry};
use splitway_core::config::Modules as ModulesConf;
use splitway_modules::chain::ModuleSettings;
use splitway_modules::compress::AdaptConfig;
use splitway_modules::{ChainSpec, DecoderChain, EncoderChain, Stores};
use tokio::net::TcpStream;

use crate::forward::{FlowReport, FlowTimeouts, Outcome};
use crate::ratelimit::RateLimit;
use crate::state::{Shared, Snapshot};
use crate::sys::sockopt;

/// What a flow with modules needs besides its two sockets.
#[derive(Debug, Clone)]
pub struct ModulePlan {
    pub spec: ChainSpec,
    /// Which of the flow's two sockets is the module leg: the ingress's leg
    /// is `up`, the far relay's is `down`.
    pub leg_is_up: bool,
    conf: ModulesConf,
    /// Bytes of the plain side already read (a proxy client's bytes sent
    /// with its request): encoded first.
    early: Vec<u8>,
}

impl ModulePlan {
    /// Plans the module engine for a flow whose module leg is `leg`, and
    /// gives the leg `TCP_NOTSENT_LOWAT` (revocation).
    pub fn new(snap: &Snapshot, leg: &TcpStream, spec: ChainSpec, leg_is_up: bool) -> ModulePlan {
        let conf = snap.cfg.modules.clone();
        let _ = sockopt::set_notsent_lowat(leg, conf.notsent_lowat_bytes);
        ModulePlan {
            spec,
            leg_is_up,
            conf,
            early: Vec::new(),
        }
    }

    /// The plain side's bytes already read, to be encoded before the rest.
    pub fn with_early(mut self, early: Vec<u8>) -> ModulePlan {
        self.early = early;
        self
    }

    /// Runs the flow; the report's directions are the flow's (`a_to_b`:
    /// down → up), whichever side the leg is.
    pub async fn run(
        self,
        shared: &Shared,
        down: &TcpStream,
        up: &TcpStream,
        t: FlowTimeouts,
    ) -> FlowReport {
        let (plain, leg) = if self.leg_is_up {
            (down, up)
        } else {
            (up, down)
        };
        let label = self.spec.label();
        let chains = leg.peer_addr().map_err(|e| e.to_string()).and_then(|peer| {
            let stores = shared.modules.stores(peer.ip(), &self.conf);
            let settings = settings(&self.conf);
            let enc =
                EncoderChain::new(&self.spec, &settings, &stores).map_err(|e| e.to_string())?;
            let dec = DecoderChain::new(&self.spec, &stores).map_err(|e| e.to_string())?;
            Ok((enc, dec))
        });
        let (enc, dec) = match chains {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(chain = %label, %error, "module chain not started");
                crate::forward::reset_both(down, up);
                return FlowReport {
                    a_to_b: 0,
                    b_to_a: 0,
                    outcome: Outcome::Reset,
                    first_b_to_a: None,
                };
            }
        };
        // Only chains that never transform splice: compress spliced while
        // raw crossed slow legs worse (docs/performance.md).
        let splice = self.conf.splice && enc.always_passes();
        let flow = engine::ModuleFlow {
            plain,
            leg,
            enc,
            dec,
            metrics: &shared.modules.metrics,
            chain: label.clone(),
            early: self.early,
            pipes: splice.then_some(&*shared.resources),
            notsent_lowat: self.conf.notsent_lowat_bytes,
        };
        let (mut report, cut) = flow.run(t).await;
        if let Some(cut) = cut {
            if cut.bad_input_reason().is_some() {
                if let Some(suppressed) = CUT_LOG.allow() {
                    tracing::warn!(chain = %label, error = %cut, suppressed, "module leg reset");
                }
            }
        }
        if !self.leg_is_up {
            std::mem::swap(&mut report.a_to_b, &mut report.b_to_a);
        }
        report
    }
}

static CUT_LOG: RateLimit = RateLimit::new(5);

/// The module chain of the route `dst` takes, if it has one.
pub fn route_chain(snap: &Snapshot, dst: &SocketAddr) -> Option<ChainSpec> {
    let route = snap.routes.lookup(dst)?;
    if route.modules.is_empty() {
        return None;
    }
    // The config checked the names.
    ChainSpec::from_names(&route.modules).ok()
}

/// Reads a framed leg's chain announcement; the error is the metric label.
pub async fn read_chain(leg: &mut TcpStream, timeout_ms: u64) -> Result<ChainSpec, &'static str> {
    let within = std::time::Duration::from_millis(timeout_ms).max(engine::CHAIN_TIMEOUT);
    let ids = crate::leg::read_chain(leg, within)
        .await
        .map_err(|e| e.reject_reason().unwrap_or("module_chain_missing"))?;
    ChainSpec::from_ids(&ids).map_err(|e| e.reason())
}

/// Module state a relay keeps across flows.
pub struct ModuleState {
    /// Dedup stores per peer relay (by its address), created on first use
    /// with the size configured then.
    stores: Mutex<HashMap<IpAddr, Stores>>,
    pub metrics: ModuleMetrics,
}

impl ModuleState {
    pub fn new(registry: &Registry) -> Self {
        ModuleState {
            stores: Mutex::new(HashMap::new()),
            metrics: ModuleMetrics::new(registry),
        }
    }

    /// The stores shared by every flow between this relay and `peer`.
    pub fn stores(&self, peer: IpAddr, conf: &ModulesConf) -> Stores {
        let mut map = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(peer)
            .or_insert_with(|| Stores::new(conf.dedup_store_mib << 20))
            .clone()
    }

    /// Bytes held by every dedup store (both kinds), for the gauge.
    pub fn store_bytes(&self) -> u64 {
        let map = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .map(|s| {
                let a = s
                    .dedup
                    .sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .bytes();
                let b = s
                    .dedup
                    .received
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .bytes();
                (a + b) as u64
            })
            .sum()
    }
}

/// The built-ins' settings from `[modules]`.
pub fn settings(conf: &ModulesConf) -> ModuleSettings {
    ModuleSettings {
        compress: AdaptConfig {
            min_level: conf.compress_min_level,
            max_level: conf.compress_max_level,
            start_level: 1.clamp(conf.compress_min_level, conf.compress_max_level),
            ..AdaptConfig::default()
        },
    }
}

/// Prometheus metrics of module legs.
#[derive(Clone)]
pub struct ModuleMetrics {
    /// Module legs reset because of bad input, by reason (`ModuleError` and
    /// frame reasons, `no_end`, `end_mismatch`).
    pub errors: IntCounterVec,
    /// Bytes through module chains, by chain and what (`plain_in`: read
    /// from the plain socket, `wire_out`: DATA payload sent on the leg,
    /// `wire_in`: DATA payload received, `plain_out`: decoded bytes).
    pub bytes: IntCounterVec,
    /// Flows with modules, by chain and outcome.
    pub flows: IntCounterVec,
}

impl ModuleMetrics {
    fn new(registry: &Registry) -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        ModuleMetrics {
            errors: vec(
                "splitway_module_errors_total",
                "Module legs reset because of bad input, by reason",
                &["reason"],
            ),
            bytes: vec(
                "splitway_module_bytes_total",
                "Bytes through module chains, by chain and stage of the path",
                &["chain", "what"],
            ),
            flows: vec(
                "splitway_module_flows_total",
                "Flows that ran module chains, by chain and outcome",
                &["chain", "outcome"],
            ),
        }
    }
}
