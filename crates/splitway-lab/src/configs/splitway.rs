//! The splitway configurations: a relay in `ingress`, transparent (nftables
//! TPROXY installed by the relay) for one server address, and a relay in
//! `egress` that connects to the server. The ablation variants differ only in
//! `[features]`. Each variant gets its own server address, ports, marks and
//! routing table, so all of them coexist.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{Ctx, Running};
use crate::topology::Topology;

/// `[features]` of the relay config (KTCP's improvements).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Features {
    pub early_syn: bool,
    pub worker_pools: bool,
    pub conn_pool: bool,
    pub turbo_start: bool,
    pub fast_open: bool,
    /// Flows cross the relay legs as streams on warm lanes
    /// (`[[peer]] legs = "mux"`, on both ends of every leg), not a leg each.
    pub lanes: bool,
    /// BBR congestion control on the lanes (`[[peer]] congestion`).
    pub lanes_bbr: bool,
    /// The lanes paced together at the link's rate (`[[peer]] lane_pacing`).
    pub lanes_paced: bool,
    /// The egress bounds its server connections' receive windows
    /// (`[[peer]] bound_server_windows`).
    pub lanes_server_window: bool,
    /// The egress's server connections start with a receive window of this
    /// many segments (`[limits] server_initial_window_segments`; names
    /// ending in `-rwnd1` or `-rwnd2`).
    pub server_rwnd: Option<u32>,
    /// ... only for server connections opened in a burst of this many
    /// (`[limits] server_initial_window_burst`; 0: unset).
    pub server_rwnd_burst: usize,
    /// The lane scheduler's age weight (`[[peer]] lane_age_weight`; names
    /// ending in `-ageN`; 0: unset, equal shares).
    pub lanes_age: u32,
}

/// The feature set of each splitway configuration (the paper's ablation:
/// each improvement switched on in turn, then all).
pub fn features_of(name: &str) -> Option<Features> {
    // Any lanes configuration with an age-weighted scheduler: `-age8`.
    if let Some((base, w)) = name.rsplit_once("-age") {
        let w: u32 = w.parse().ok().filter(|w| (2..=64).contains(w))?;
        let f = features_of(base)?;
        return f.lanes.then_some(Features { lanes_age: w, ..f });
    }
    // Both `-win` and `-rwnd2`, in a name short enough for the relays'
    // node names (host + configuration ≤ 32 characters).
    if let Some(base) = name.strip_suffix("-winr2") {
        return Some(Features {
            server_rwnd: Some(2),
            ..features_of(&format!("{base}-win"))?
        });
    }
    // As -winr2, the small window only in bursts of 4 connections.
    if let Some(base) = name.strip_suffix("-winb2") {
        return Some(Features {
            server_rwnd: Some(2),
            server_rwnd_burst: 4,
            ..features_of(&format!("{base}-win"))?
        });
    }
    for n in [1, 2] {
        if let Some(base) = name.strip_suffix(&format!("-rwnd{n}")) {
            return Some(Features {
                server_rwnd: Some(n),
                ..features_of(base)?
            });
        }
    }
    let name = if modules_of(name).is_empty() {
        name
    } else {
        "splitway"
    };
    if let Some(cc) = name.strip_prefix("splitway-mux") {
        let (cc, win) = match cc.strip_suffix("-win") {
            Some(cc) => (cc, true),
            None => (cc, false),
        };
        if !matches!(cc, "" | "-bbr" | "-paced" | "-bbr-paced") {
            return None;
        }
        return Some(Features {
            lanes: true,
            lanes_bbr: cc.starts_with("-bbr"),
            lanes_paced: cc.ends_with("-paced"),
            lanes_server_window: win,
            ..features_of("splitway")?
        });
    }
    let mut f = Features::default();
    let steps = [
        "splitway-basic",
        "+pool-workers",
        "+early-syn",
        "+conn-pool",
        "splitway",
    ];
    let n = steps.iter().position(|s| *s == name)?;
    f.worker_pools = n >= 1;
    // Early SYN comes with Fast Open: the leg started on the client's SYN
    // carries its header (the destination) in its own SYN, as Miniproxy
    // does; the testbed enables TFO in every namespace (only relays opt in).
    f.early_syn = n >= 2;
    f.fast_open = n >= 2;
    f.conn_pool = n >= 3;
    f.turbo_start = n >= 4;
    Some(f)
}

/// The stream modules (issue 13) of configuration `name`, on the first
/// relay's route: every improvement plus these.
pub fn modules_of(name: &str) -> &'static [&'static str] {
    match name {
        "splitway+compress" => &["compress"],
        "splitway+modules" => &["dedup", "compress"],
        "splitway+null" => &["null"],
        _ => &[],
    }
}

fn features_toml(f: &Features) -> String {
    format!(
        "[features]\nearly_syn = {}\nworker_pools = {}\nconn_pool = {}\nturbo_start = {}\nfast_open = {}\n",
        f.early_syn, f.worker_pools, f.conn_pool, f.turbo_start, f.fast_open
    )
}

/// A `[[peer]]`'s leg keys: lanes, with a stream window above the paper
/// path's bandwidth-delay product (so one stream alone is not held back)
/// and BBR if asked, or nothing (per-flow legs, the default).
fn legs_toml(f: &Features) -> String {
    if f.lanes {
        let cc = if f.lanes_bbr {
            "congestion = \"bbr\"\n"
        } else {
            ""
        };
        let paced = if f.lanes_paced {
            "lane_pacing = true\n"
        } else {
            ""
        };
        let win = if f.lanes_server_window {
            "bound_server_windows = true\n"
        } else {
            ""
        };
        let age = if f.lanes_age > 1 {
            format!("lane_age_weight = {}\n", f.lanes_age)
        } else {
            String::new()
        };
        format!("legs = \"mux\"\nlanes = 2\nstream_window_kib = 4096\n{cc}{paced}{win}{age}")
    } else {
        String::new()
    }
}

fn firewall_toml(n: usize, relay: usize) -> String {
    let k = (n * 16 + relay) as u32;
    format!(
        "[firewall]\ntproxy_mark = {}\nown_mark = {}\nroute_table = {}\nsyn_queue = {}\n",
        0x5157_1000 + k,
        0x5157_2000 + k,
        5200 + k,
        5200 + k
    )
}

/// A relay's node name: host and configuration, within the 32 characters
/// a node name may have. It must differ between the variants of one run
/// (the relay's nftables table is named after it), so a configuration name
/// too long for it is cut and ends in the variant's number `n`.
fn node_name(host: &str, tag: &str, n: usize) -> String {
    let full = format!("{host}-{tag}");
    if full.len() <= 32 {
        return full;
    }
    let end = format!("-{n}");
    let mut cut = full;
    cut.truncate(32 - end.len());
    format!("{}{end}", cut.trim_end_matches('-'))
}

/// The admin API port of variant `n`'s first relay, on its namespace's
/// loopback (the lab reads the relay's metrics there).
pub fn admin_port(n: usize) -> u16 {
    9900 + n as u16
}

/// The relay-leg port of variant `n`, and its TPROXY port at the ingress.
pub fn ports(n: usize) -> (u16, u16) {
    (5600 + n as u16, 15001 + n as u16)
}

/// The relay configs of splitway variant `n` on a chain, one per relay
/// (client side first), as a user would write them: the first relay
/// (`ingress`, or `relay` alone) intercepts the client's connections to the
/// server (`[[transparent]]`) and routes them to the next relay, each
/// `transit` routes them on, the last (`egress`) connects to the server
/// (`allow` + `via = "direct"`). Every relay lists its neighbours as
/// `[[peer]]`s (with the link's rate and RTT, for turbo-start), so both
/// directions of every relay leg start fast.
pub fn relay_configs(
    topo: &Topology,
    secret: &str,
    name: &str,
    f: &Features,
    n: usize,
) -> Vec<String> {
    let plan = topo.plan();
    let relays = topo.relays();
    let hosts = topo.hosts();
    let server = plan.server_alias(n);
    let (relay_port, tport) = ports(n);
    let tag: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let tag = tag.trim_matches('-');
    let auth = format!("[auth]\nkeys = [{{ id = 1, secret = \"{secret}\" }}]\n");
    (1..=relays)
        .map(|i| {
            let me = &hosts[i];
            let mut c = String::new();
            let _ = write!(
                c,
                "# generated by splitway lab: {name}, {me} (relay {i} of {relays})\n\
                 [node]\nname = \"{}\"\nlog_connections = true\n\n{auth}\n",
                node_name(me, tag, n)
            );
            if i == 1 {
                let _ = write!(
                    c,
                    "[[transparent]]\nport = {tport}\nprefixes = [\"{server}/32\"]\nports = [80, 443]\n\n\
                     [admin]\nlisten = \"127.0.0.1:{}\"\n\n",
                    admin_port(n)
                );
            } else {
                let listen = plan.left_alias(i, n).0;
                let _ = write!(c, "[relay]\nlisten = \"{listen}:{relay_port}\"\n");
                if i == relays {
                    let _ = writeln!(
                        c,
                        "allow = [{{ prefix = \"{server}/32\", ports = 80 }}, {{ prefix = \"{server}/32\", ports = 443 }}]"
                    );
                }
                // The previous relay only connects to us; as a peer,
                // turbo-start widens the windows toward it too
                // (downloads flow that way).
                let prev = &topo.links[i - 1];
                let _ = write!(
                    c,
                    "\n[[peer]]\nname = \"{}\"\naddr = \"{}:{relay_port}\"\nbandwidth_mbit = {}\nrtt_ms = {}\n{}\n",
                    hosts[i - 1],
                    plan.right_alias(i - 1, n).0,
                    prev.mbit,
                    prev.rtt_ms,
                    legs_toml(f)
                );
            }
            let via = if i < relays {
                let next = &topo.links[i];
                let _ = write!(
                    c,
                    "[[peer]]\nname = \"{}\"\naddr = \"{}:{relay_port}\"\nsource = \"{}\"\nbandwidth_mbit = {}\nrtt_ms = {}\n{}\n",
                    hosts[i + 1],
                    plan.left_alias(i + 1, n).0,
                    plan.right_alias(i, n).0,
                    next.mbit,
                    next.rtt_ms,
                    legs_toml(f)
                );
                hosts[i + 1].clone()
            } else {
                "direct".to_string()
            };
            let modules = modules_of(name);
            let modules = if i == 1 && i < relays && !modules.is_empty() {
                format!("modules = {modules:?}\n")
            } else {
                String::new()
            };
            let limits = match f.server_rwnd {
                Some(n) if i == relays => {
                    let burst = match f.server_rwnd_burst {
                        0 => String::new(),
                        b => format!("server_initial_window_burst = {b}\n"),
                    };
                    format!("[limits]\nserver_initial_window_segments = {n}\n{burst}\n")
                }
                _ => String::new(),
            };
            let _ = write!(
                c,
                "[[route]]\nprefix = \"{server}/32\"\nvia = \"{via}\"\n{modules}\n{}\n{}{limits}",
                features_toml(f),
                firewall_toml(n, i)
            );
            c
        })
        .collect()
}

fn start_relay(
    ctx: &Ctx,
    node: &str,
    name: &str,
    text: &str,
    n: usize,
) -> Result<(splitway_netns::ChildGuard, std::path::PathBuf)> {
    let conf = ctx.work.join(format!("relay-{n}-{node}.toml"));
    std::fs::write(&conf, text)?;
    let ready = ctx.work.join(format!("relay-{n}-{node}.ready"));
    let _ = std::fs::remove_file(&ready);
    let log = ctx
        .logs
        .join(format!("{}-{node}.log", name.trim_start_matches('+')));
    let bin = ctx.splitway_bin.display().to_string();
    let conf_s = conf.display().to_string();
    let ready_s = ready.display().to_string();
    let mut child = ctx.tb.spawn(
        node,
        &bin,
        &["relay", "--config", &conf_s, "--ready-file", &ready_s],
        &log,
    )?;
    let mut exited = None;
    let ok = splitway_netns::wait_until(Duration::from_secs(15), "the relay to be ready", || {
        if exited.is_none() {
            exited = child.try_wait();
        }
        exited.is_some() || ready.exists()
    });
    if let Some(st) = exited {
        bail!(
            "{name}: the {node} relay exited ({st}):\n{}",
            super::tail(&log, 15)
        );
    }
    ok.with_context(|| {
        format!(
            "{name}: the {node} relay did not get ready:\n{}",
            super::tail(&log, 15)
        )
    })?;
    Ok((child, log))
}

pub fn start(ctx: &Ctx, name: &'static str, f: Features, n: usize) -> Result<Running> {
    if !ctx.splitway_bin.exists() {
        bail!(
            "{name}: splitway binary {} not found",
            ctx.splitway_bin.display()
        );
    }
    let plan = *ctx.tb.plan();
    let relays = ctx.topo.relays();
    let server = plan.server_alias(n);
    ctx.tb.add_server_alias(server)?;
    for i in 1..=relays {
        if i > 1 {
            let (a, ifname) = plan.left_alias(i, n);
            ctx.tb.add_addr(i, a, &ifname)?;
        }
        if i < relays {
            let (a, ifname) = plan.right_alias(i, n);
            ctx.tb.add_addr(i, a, &ifname)?;
        }
    }
    let confs = relay_configs(ctx.topo, ctx.secret, name, &f, n);
    // Server side first: each relay may open pooled legs to the next at once.
    let mut children = Vec::new();
    let mut logs = Vec::new();
    for i in (1..=relays).rev() {
        let host = ctx.tb.host_name(i).to_string();
        let (child, log) = start_relay(ctx, &host, name, &confs[i - 1], n)?;
        children.push((format!("{host} relay"), child));
        logs.push(log);
    }
    if f.conn_pool && relays > 1 {
        // Let the pools of relay legs fill (one handshake on the longest leg).
        let longest = ctx.topo.links[1..relays]
            .iter()
            .map(|l| l.rtt_ms)
            .fold(0.0, f64::max);
        std::thread::sleep(Duration::from_millis((longest * 3.0) as u64 + 200));
    }
    let (relay_port, tport) = ports(n);
    logs.reverse();
    Ok(Running {
        name,
        base_url: format!("http://{server}"),
        detail: format!(
            "client -> {server}:80 intercepted at the {} (TPROXY :{tport}) -> {} relay(s), legs on :{relay_port} -> server; {:?}",
            ctx.tb.host_name(1),
            relays,
            f
        ),
        children,
        logs,
        chain: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitway_core::config::Config;

    #[test]
    fn generated_relay_configs_are_valid() {
        let topo = Topology::default();
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        for (n, name) in [
            "splitway-basic",
            "+pool-workers",
            "+early-syn",
            "+conn-pool",
            "splitway",
        ]
        .iter()
        .enumerate()
        {
            let f = features_of(name).unwrap();
            let c = relay_configs(&topo, secret, name, &f, n);
            assert_eq!(c.len(), 2);
            let (ing, egr) = (&c[0], &c[1]);
            let i = Config::parse(ing).unwrap_or_else(|e| panic!("{name} ingress: {e}\n{ing}"));
            let e = Config::parse(egr).unwrap_or_else(|e| panic!("{name} egress: {e}\n{egr}"));
            assert_eq!(i.features.early_syn, f.early_syn);
            assert_eq!(e.features.conn_pool, f.conn_pool);
            assert_eq!(i.peers[0].rtt_ms, 215.0);
            let dst = std::net::SocketAddr::new(topo.plan().server_alias(n).into(), 80);
            assert!(e.allow_list().permits(&dst));
            assert!(i.route_table().lookup(&dst).is_some());
        }
    }

    #[test]
    fn mux_variant_puts_both_ends_of_each_leg_on_lanes() {
        let topo = Topology::default();
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let f = features_of("splitway-mux").unwrap();
        for (k, text) in relay_configs(&topo, secret, "splitway-mux", &f, 1)
            .iter()
            .enumerate()
        {
            let c = Config::parse(text).unwrap_or_else(|e| panic!("relay {k}: {e}\n{text}"));
            assert!(!c.peers.is_empty());
            for p in &c.peers {
                assert_eq!(p.legs, splitway_core::config::LegMode::Mux, "{}", p.name);
                assert_eq!(p.lanes, 2);
                assert_eq!(p.congestion, None);
            }
        }
        let bbr = features_of("splitway-mux-bbr").unwrap();
        let text = relay_configs(&topo, secret, "splitway-mux-bbr", &bbr, 1).join("\n");
        assert_eq!(text.matches("congestion = \"bbr\"").count(), 2);
        let paced = features_of("splitway-mux-paced").unwrap();
        for text in relay_configs(&topo, secret, "splitway-mux-paced", &paced, 1) {
            let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(c.peers.iter().all(|p| p.lane_pacing), "{text}");
        }
        assert!(features_of("splitway-muxx").is_none());
        // Age weighting: any lanes configuration, with its weight on every
        // peer; long names still make valid node names.
        for (name, w) in [
            ("splitway-mux-bbr-age8", 8),
            ("splitway-mux-paced-winr2-age16", 16),
        ] {
            let f = features_of(name).unwrap();
            assert_eq!(f.lanes_age, w);
            for text in relay_configs(&topo, secret, name, &f, 1) {
                let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                assert!(c.peers.iter().all(|p| p.lane_age_weight == w), "{text}");
            }
        }
        assert!(features_of("splitway-age8").is_none(), "lanes only");
        assert!(features_of("splitway-mux-age1").is_none());
        assert!(features_of("splitway-mux-agex").is_none());
        // Every variant in one run: valid configs, and node names (which
        // name each relay's nftables table) distinct per host.
        let mut names = std::collections::HashSet::new();
        let variants = crate::configs::CATALOGUE
            .iter()
            .filter(|c| crate::configs::is_splitway(c.0));
        for (n, c) in variants.enumerate() {
            for t in relay_configs(&topo, secret, c.0, &features_of(c.0).unwrap(), n) {
                let parsed = Config::parse(&t).unwrap_or_else(|e| panic!("{}: {e}", c.0));
                assert!(
                    names.insert(parsed.node.name.clone()),
                    "{}",
                    parsed.node.name
                );
            }
        }
        let both = features_of("splitway-mux-bbr-paced").unwrap();
        assert!(both.lanes_bbr && both.lanes_paced && !both.lanes_server_window);
        let win = features_of("splitway-mux-paced-win").unwrap();
        assert!(win.lanes_paced && win.lanes_server_window && !win.lanes_bbr);
        for text in relay_configs(&topo, secret, "splitway-mux-paced-win", &win, 1) {
            let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(c.peers.iter().all(|p| p.bound_server_windows), "{text}");
        }
        assert!(features_of("splitway-mux-win-paced").is_none());
        let both = features_of("splitway-mux-paced-winr2").unwrap();
        assert!(both.lanes_paced && both.lanes_server_window && both.server_rwnd == Some(2));
        let gated = features_of("splitway-mux-paced-winb2").unwrap();
        assert_eq!(gated.server_rwnd_burst, 4);
        let c = relay_configs(&topo, secret, "splitway-mux-paced-winb2", &gated, 1);
        let e = Config::parse(&c[1]).unwrap_or_else(|e| panic!("{e}\n{}", c[1]));
        assert_eq!(e.limits.server_initial_window_burst, 4);
        assert_eq!(e.limits.server_initial_window_segments, Some(2));
        // -rwnd2: the egress alone gets the small initial server window.
        for (name, n) in [
            ("splitway-rwnd2", 2),
            ("splitway-mux-paced-rwnd2", 2),
            ("splitway-mux-paced-rwnd1", 1),
        ] {
            let f = features_of(name).unwrap();
            let base = features_of(&name[..name.len() - 6]).unwrap();
            assert_eq!(
                Features {
                    server_rwnd: None,
                    ..f
                },
                base,
                "{name}"
            );
            let c = relay_configs(&topo, secret, name, &f, 1);
            let parsed: Vec<Config> = c
                .iter()
                .map(|t| Config::parse(t).unwrap_or_else(|e| panic!("{name}: {e}\n{t}")))
                .collect();
            assert_eq!(parsed[0].limits.server_initial_window_segments, None);
            assert_eq!(parsed[1].limits.server_initial_window_segments, Some(n));
        }
        // Every catalogued lanes name makes relay configs that load (the
        // node name, host + configuration, fits its 32 characters).
        let chain = Topology::default();
        for (name, _) in crate::configs::CATALOGUE {
            if let Some(f) = features_of(name).filter(|f| f.lanes) {
                for text in relay_configs(&chain, secret, name, &f, 1) {
                    Config::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
                }
            }
        }
        let plain = features_of("splitway").unwrap();
        let text = relay_configs(&topo, secret, "splitway", &plain, 0).join("\n");
        assert!(!text.contains("legs ="), "per-flow legs stay the default");
    }

    #[test]
    fn module_configs_put_the_chain_on_the_ingress_route_only() {
        let topo = Topology::default();
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        for (name, want) in [
            ("splitway+modules", vec!["dedup", "compress"]),
            ("splitway+compress", vec!["compress"]),
            ("splitway+null", vec!["null"]),
            ("splitway", vec![]),
        ] {
            let f = features_of(name).unwrap();
            assert_eq!(f, features_of("splitway").unwrap(), "{name}");
            let c = relay_configs(&topo, secret, name, &f, 3);
            let i = Config::parse(&c[0]).unwrap_or_else(|e| panic!("{e}\n{}", c[0]));
            let e = Config::parse(&c[1]).unwrap_or_else(|e| panic!("{e}\n{}", c[1]));
            assert_eq!(i.routes[0].modules, want, "{name}");
            assert!(
                e.routes[0].modules.is_empty(),
                "the egress's route is direct"
            );
        }
    }

    #[test]
    fn chain_configs_route_hop_by_hop() {
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let f = features_of("splitway").unwrap();
        for relays in 1..=4 {
            let topo = Topology::chain(&vec![20.0; relays + 1], 100.0);
            let plan = topo.plan();
            let c = relay_configs(&topo, secret, "splitway", &f, 2);
            assert_eq!(c.len(), relays);
            let dst = std::net::SocketAddr::new(plan.server_alias(2).into(), 80);
            let parsed: Vec<Config> = c
                .iter()
                .map(|t| Config::parse(t).unwrap_or_else(|e| panic!("{e}\n{t}")))
                .collect();
            for (k, p) in parsed.iter().enumerate() {
                let i = k + 1;
                assert!(p.route_table().lookup(&dst).is_some(), "relay {i}");
                assert_eq!(p.features.turbo_start, f.turbo_start);
                assert_eq!(p.features.early_syn, f.early_syn);
                if i == 1 {
                    assert!(!p.transparent.is_empty());
                } else {
                    // listens where the previous relay's peer entry points
                    let prev = &parsed[k - 1];
                    let want = prev
                        .peers
                        .iter()
                        .find(|x| x.name == topo.hosts()[i])
                        .unwrap_or_else(|| panic!("relay {} has no peer for {i}", i - 1));
                    assert_eq!(p.relay.as_ref().map(|r| r.listen), Some(want.addr));
                }
                if i == relays {
                    // a lone relay connects for its own clients: no allow list
                    if relays > 1 {
                        assert!(p.allow_list().permits(&dst), "egress allows the server");
                    }
                    assert!(c[k].contains("via = \"direct\""));
                } else {
                    assert!(!p.allow_list().permits(&dst), "relay {i} is no exit");
                }
            }
        }
    }
}
