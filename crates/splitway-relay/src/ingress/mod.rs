//! Proxy ingresses: a client names its destination in a SOCKS5 or HTTP
//! CONNECT handshake instead of being intercepted.
//!
//! [`serve`] runs one accepted connection: the protocol's handshake
//! ([`socks5`], [`http_connect`]; the parsing is sans-IO in
//! `splitway_core`), resolution of a host name here at the ingress, the
//! listener's allow list, then the same next-hop opening as any client
//! (`flow::next_hop`: route table, pooled leg with the header sent, backups)
//! and the protocol's success reply; from there it is an ordinary split
//! connection. Every refusal gets the protocol's error reply and is counted
//! in `splitway_proxy_refused_total{kind,reason}`.

pub mod http_connect;
pub mod socks5;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use splitway_core::proxy::{Target, Users};
use splitway_core::route::AllowList;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::flow::{self, HopError, Legs, Split};
use crate::metrics::LegKind;
use crate::ratelimit::RateLimit;
use crate::state::{FlowEntry, Shared, Snapshot};

static REFUSE_LOG: RateLimit = RateLimit::new(5);

/// Which proxy protocol a listener speaks; the address is its `listen`
/// key, used to find its settings in the current config.
#[derive(Debug, Clone, Copy)]
pub enum Proto {
    Socks5(SocketAddr),
    HttpConnect(SocketAddr),
}

impl Proto {
    pub fn kind(self) -> &'static str {
        match self {
            Proto::Socks5(_) => "socks5",
            Proto::HttpConnect(_) => "http_connect",
        }
    }
}

/// A listener's settings, taken from the snapshot a connection started
/// with (so a reload can change users and allow lists).
pub(crate) struct Settings {
    pub users: Users,
    pub allow: Option<AllowList>,
    pub handshake: Duration,
    pub max_head: usize,
}

impl Settings {
    fn of(snap: &Snapshot, proto: Proto) -> Option<Settings> {
        let cfg = &snap.cfg;
        let (common, max_head) = match proto {
            Proto::Socks5(a) => (cfg.socks5.iter().find(|s| s.listen == a)?.common(), 0),
            Proto::HttpConnect(a) => {
                let h = cfg.http_connect.iter().find(|h| h.listen == a)?;
                (h.common(), h.max_head_bytes)
            }
        };
        Some(Settings {
            users: common.user_list(),
            allow: common.allow_list(),
            handshake: Duration::from_millis(common.handshake_timeout_ms),
            max_head,
        })
    }
}

/// Why a handshake or what follows it did not lead to forwarding; each
/// protocol turns it into its own reply.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The relay is at `max_connections` or the listener is gone.
    Busy,
    /// The host name did not resolve.
    Resolve,
    /// The listener's allow list does not have the destination.
    NotAllowed,
    /// The next hop could not be opened.
    Hop(HopError),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::Resolve => "resolve_failed",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Hop(e) => e.reason(),
        }
    }
}

/// A handshake that ended without a destination: the reply to send (if
/// any) and the metrics label.
#[derive(Debug)]
pub(crate) struct Failed {
    pub reason: &'static str,
    pub reply: Option<Vec<u8>>,
}

/// A completed handshake: where to go, and the client's bytes that came
/// after the request (sent on once the next hop is open).
pub(crate) struct Request {
    pub target: Target,
    pub early: Vec<u8>,
}

/// One connection accepted on a proxy listener.
pub fn serve(
    shared: Arc<Shared>,
    down: TcpStream,
    peer: SocketAddr,
    proto: Proto,
) -> impl std::future::Future<Output = ()> + Send {
    flow::set_up_and_run(Box::pin(set_up(shared, down, peer, proto)))
}

async fn set_up(
    shared: Arc<Shared>,
    mut down: TcpStream,
    peer: SocketAddr,
    proto: Proto,
) -> Option<Split> {
    let active = shared.track();
    let kind = proto.kind();
    let m = &shared.metrics;
    m.accepted.with_label_values(&[kind]).inc();
    let snap = shared.snapshot();
    let start = Instant::now();
    let Some(settings) = Settings::of(&snap, proto) else {
        // The listener left the config in a reload; it closes with the
        // next restart.
        refuse(&shared, &mut down, proto, peer, None, Refusal::Busy).await;
        return None;
    };
    let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
        m.failed.with_label_values(&["max_connections"]).inc();
        refuse(&shared, &mut down, proto, peer, None, Refusal::Busy).await;
        return None;
    };
    let handshake = async {
        match proto {
            Proto::Socks5(_) => socks5::handshake(&mut down, &settings).await,
            Proto::HttpConnect(_) => http_connect::handshake(&mut down, &settings).await,
        }
    };
    let mut request = match tokio::time::timeout(settings.handshake, handshake).await {
        Ok(Ok(r)) => r,
        Ok(Err(f)) => {
            count(&shared, proto, f.reason);
            if let Some(reply) = f.reply {
                close_with(&mut down, &reply).await;
            }
            return None;
        }
        Err(_) => {
            count(&shared, proto, "handshake_timeout");
            flow::reset(down);
            return None;
        }
    };
    let target = request.target.clone();
    let opened = open(&shared, &snap, &settings, &request.target).await;
    let (dst, mut up, up_kind, chain) = match opened {
        Ok(Up::Leg(dst, up, kind, chain)) => (dst, up, kind, chain),
        Ok(Up::Lane(h)) => {
            // As below: the client's early bytes first, then the reply.
            let sent = h.send(&request.early)
                && match proto {
                    Proto::Socks5(_) => socks5::succeeded(&mut down).await.is_ok(),
                    Proto::HttpConnect(_) => http_connect::succeeded(&mut down).await.is_ok(),
                };
            if !sent {
                count(&shared, proto, "client_gone");
                h.reset(splitway_core::frame::AbortCode::Reset);
                flow::reset(down);
                return None;
            }
            crate::lane::run_stream(&shared, &snap, down, h, start).await;
            drop(permit);
            return None;
        }
        Err(r) => {
            refuse(&shared, &mut down, proto, peer, Some(&target), r).await;
            return None;
        }
    };
    // The client's early bytes first, then the success reply: the
    // destination gets the request as soon as it can. On a module leg they
    // are the chain's first input (encoded when the flow starts).
    let plan = chain.map(|spec| {
        crate::modules::ModulePlan::new(&snap, &up, spec, true)
            .with_early(std::mem::take(&mut request.early))
    });
    let sent = async {
        if !request.early.is_empty() {
            up.write_all(&request.early).await?;
        }
        match proto {
            Proto::Socks5(_) => socks5::succeeded(&mut down).await,
            Proto::HttpConnect(_) => http_connect::succeeded(&mut down).await,
        }
    };
    if sent.await.is_err() {
        count(&shared, proto, "client_gone");
        flow::reset(down);
        flow::reset(up);
        return None;
    }
    m.setup_seconds.observe(start.elapsed().as_secs_f64());
    let entry = FlowEntry::new(kind, peer, dst, down, up);
    let legs = Legs {
        down: LegKind::Client,
        up: up_kind,
        since: start,
    };
    Split::new(shared, snap, entry, legs, permit, active)
        .or_run_modules(plan)
        .await
}

/// Where a proxy flow goes next: a relay leg or the next hop itself, or a
/// stream on a lane to a `legs = "mux"` peer.
enum Up {
    /// A leg (with the route's module chain, if it has one).
    Leg(
        SocketAddr,
        TcpStream,
        LegKind,
        Option<splitway_modules::ChainSpec>,
    ),
    Lane(crate::lane::conn::StreamHandle),
}

/// Resolve `target` (a name: here, at the ingress), check the listener's
/// allow list, open the next hop (a stream on a lane when the first hop is
/// a mux peer with room). Of a name's addresses the first one that is
/// allowed and has a route is used.
async fn open(
    shared: &Shared,
    snap: &Snapshot,
    settings: &Settings,
    target: &Target,
) -> Result<Up, Refusal> {
    let candidates: Vec<SocketAddr> = match target {
        Target::Addr(a) => vec![*a],
        Target::Name { host, port } => {
            let lookup = tokio::net::lookup_host((host.as_str(), *port));
            match tokio::time::timeout(snap.connect_timeout(), lookup).await {
                Ok(Ok(addrs)) => addrs.collect(),
                _ => return Err(Refusal::Resolve),
            }
        }
    };
    if candidates.is_empty() {
        return Err(Refusal::Resolve);
    }
    let allowed = |a: &SocketAddr| settings.allow.as_ref().is_none_or(|l| l.permits(a));
    let routed = |a: &SocketAddr| snap.routes.lookup(a).is_some();
    let Some(dst) = candidates.iter().find(|a| allowed(a) && routed(a)).copied() else {
        return Err(if candidates.iter().any(|a| !allowed(a)) {
            Refusal::NotAllowed
        } else {
            Refusal::Hop(HopError::NoRoute)
        });
    };
    let hop_limit = crate::leg::DEFAULT_HOP_LIMIT + 1;
    // A route with modules takes a framed per-flow leg (not a lane).
    let chain = crate::modules::route_chain(snap, &dst);
    if chain.is_none() {
        if let Some(h) = crate::lane::stream_for(shared, snap, dst, hop_limit) {
            return Ok(Up::Lane(h));
        }
    }
    let ids = chain.as_ref().map(|c| c.ids()).unwrap_or_default();
    match flow::next_hop(shared, snap, dst, hop_limit, false, &ids).await {
        // A failover to `direct` carries no modules.
        Ok((up, kind)) => Ok(Up::Leg(
            dst,
            up,
            kind,
            chain.filter(|_| kind == LegKind::PeerOut),
        )),
        Err(e) => Err(Refusal::Hop(e)),
    }
}

fn count(shared: &Shared, proto: Proto, reason: &'static str) {
    shared
        .metrics
        .proxy_refused
        .with_label_values(&[proto.kind(), reason])
        .inc();
}

/// Send the protocol's error reply for `why`, count it, close.
async fn refuse(
    shared: &Shared,
    down: &mut TcpStream,
    proto: Proto,
    peer: SocketAddr,
    target: Option<&Target>,
    why: Refusal,
) {
    let reason = why.reason();
    count(shared, proto, reason);
    if let Some(suppressed) = REFUSE_LOG.allow() {
        let target = target.map(ToString::to_string).unwrap_or_default();
        tracing::warn!(kind = proto.kind(), %peer, %target, reason, suppressed, "proxy request refused");
    }
    let reply = match proto {
        Proto::Socks5(_) => socks5::refusal(&why).as_bytes().to_vec(),
        Proto::HttpConnect(_) => http_connect::refusal(&why).reply().to_vec(),
    };
    close_with(down, &reply).await;
}

/// Write an error reply and close with a FIN (bounded: a client that does
/// not read gets no more than a second).
async fn close_with(down: &mut TcpStream, reply: &[u8]) {
    let send = async {
        down.write_all(reply).await?;
        down.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
}
