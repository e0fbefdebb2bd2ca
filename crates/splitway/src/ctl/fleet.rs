//! `splitway ctl fleet`: the fleet as etcd sees it (every live relay, its
//! peers and their health) and the fleet-wide leg-key rotation. Talks to
//! etcd, not to a relay's admin API; needs the cargo feature `fleet`.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// A relay config whose `[fleet]` section says how to reach etcd
    /// (endpoints, prefix, TLS, user).
    #[arg(long, short, env = "SPLITWAY_CONFIG")]
    config: Option<PathBuf>,
    /// etcd endpoints instead of a config (comma-separated URLs).
    #[arg(long, value_delimiter = ',', env = "SPLITWAY_ETCD")]
    endpoints: Vec<String>,
    /// Key prefix of the fleet (with --endpoints).
    #[arg(long, default_value = "/splitway")]
    prefix: String,
    /// etcd user (with --endpoints); its password is read from --password-file.
    #[arg(long, requires = "password_file")]
    user: Option<String>,
    #[arg(long, requires = "user")]
    password_file: Option<PathBuf>,
    /// PEM CA bundle for TLS to etcd (with --endpoints).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for etcd's client-certificate auth.
    #[arg(long, requires_all = ["key_file", "ca_file"])]
    cert_file: Option<PathBuf>,
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<FleetCmd>,
}

#[derive(Debug, Subcommand)]
enum FleetCmd {
    /// Every live relay, its peers and their health (the default).
    List,
    /// Rotate the fleet's leg key: add it everywhere, sign with it, retire
    /// the others; waits for each step to reach every live relay.
    RotateKey {
        /// Id of the new key (0-255, not in use).
        id: u8,
        /// The secret, hex (at least 32 digits); default: 32 random bytes.
        #[arg(long, env = "SPLITWAY_NEW_KEY")]
        secret: Option<String>,
        /// Seconds between switching the signing key and retiring the old.
        #[arg(long, default_value_t = 2)]
        grace_secs: u64,
        /// Seconds each step may take to reach every live relay.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

#[cfg(not(feature = "fleet"))]
pub fn run(_: FleetArgs, _json: bool) -> anyhow::Result<()> {
    bail!("this splitway was built without fleet mode (cargo feature `fleet`)")
}

#[cfg(feature = "fleet")]
pub fn run(a: FleetArgs, json: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    use splitway_core::fleet::FleetConf;
    use splitway_relay::fleet::ops;
    use std::time::Duration;

    let conf: FleetConf = match (&a.config, a.endpoints.is_empty()) {
        (Some(path), true) => {
            let cfg = splitway_core::config::Config::load(path)?;
            cfg.fleet
                .with_context(|| format!("{}: no [fleet] section", path.display()))?
        }
        (None, false) => {
            let text = format!("endpoints = {:?}\nprefix = {:?}\n", a.endpoints, a.prefix);
            let mut c: FleetConf = toml::from_str(&text).context("fleet settings")?;
            c.user = a.user.clone();
            c.password_file = a.password_file.clone();
            c.ca_file = a.ca_file.clone();
            c.cert_file = a.cert_file.clone();
            c.key_file = a.key_file.clone();
            c.validate()?;
            c
        }
        _ => bail!("give either --config FILE or --endpoints URL,..."),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    match a.cmd.unwrap_or(FleetCmd::List) {
        FleetCmd::List => {
            let relays = rt.block_on(ops::list_with(&conf))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&relays)?);
            } else {
                print_list(&relays);
            }
        }
        FleetCmd::RotateKey {
            id,
            secret,
            grace_secs,
            timeout_secs,
        } => {
            let secret = match secret {
                Some(s) => s,
                None => {
                    use rand::RngCore;
                    let mut b = [0u8; 32];
                    rand::thread_rng().fill_bytes(&mut b);
                    hex::encode(b)
                }
            };
            match hex::decode(secret.trim()) {
                Ok(b) if b.len() >= 16 => {}
                _ => bail!("--secret: must be at least 32 hex digits (16 bytes)"),
            }
            rt.block_on(ops::rotate_key(
                &conf,
                id,
                secret.trim(),
                Duration::from_secs(grace_secs),
                Duration::from_secs(timeout_secs),
                &mut |step| println!("{step}"),
            ))?;
        }
    }
    Ok(())
}

#[cfg(feature = "fleet")]
fn print_list(relays: &[splitway_core::fleet::Presence]) {
    println!(
        "{:<16} {:<22} {:<8} {:>9} {:<7} {:<5} PEERS (name rtt pool idle/low/high, *: not live)",
        "RELAY", "ADDR", "VERSION", "REVISION", "KEYS", "SIGN"
    );
    let live: std::collections::HashSet<&str> = relays.iter().map(|p| p.node.as_str()).collect();
    for p in relays {
        let keys: Vec<String> = p.key_ids.iter().map(|k| k.to_string()).collect();
        let peers: Vec<String> = p
            .peers
            .iter()
            .map(|h| {
                let rtt = h
                    .rtt_us
                    .map(|u| {
                        if u < 1000 {
                            format!("{u}us")
                        } else {
                            format!("{:.1}ms", f64::from(u) / 1000.0)
                        }
                    })
                    .unwrap_or_else(|| "-".into());
                let mark = if live.contains(h.name.as_str()) {
                    ""
                } else {
                    "*"
                };
                format!(
                    "{}{mark} {rtt} {}/{}/{}",
                    h.name, h.pool_idle, h.pool_low, h.pool_high
                )
            })
            .collect();
        println!(
            "{:<16} {:<22} {:<8} {:>9} {:<7} {:<5} {}",
            p.node,
            p.addr.as_deref().unwrap_or("-"),
            p.version,
            p.revision,
            keys.join(","),
            p.send_key
                .map(|k| k.to_string())
                .unwrap_or_else(|| "-".into()),
            peers.join("; ")
        );
        if let Some(r) = &p.refused {
            println!("{:<16} refused: {r}", "");
        }
    }
}
