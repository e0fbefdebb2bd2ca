//! The packet-filter rules that hand a link's forwarded traffic to its queues.
//!
//! Owns installing and removing, inside the link namespace, one rule per
//! direction and IP family in the `filter` table's `FORWARD` chain:
//! `-i IF_A -j NFQUEUE --queue-num BASE` and
//! `-i IF_B -j NFQUEUE --queue-num BASE+1`, through `iptables-nft` and
//! `ip6tables-nft` (the xtables `NFQUEUE` target; this kernel lacks nft's
//! native `queue` expression). There is deliberately no `--queue-bypass`:
//! when no emulator listens on a queue the kernel drops its packets, so a
//! dead emulator fails closed instead of passing traffic undelayed.

use std::process::{Command, Stdio};

use crate::DelayLineError;

/// The rules of one link, removed again by [`Rules::remove`].
#[derive(Debug)]
pub(crate) struct Rules {
    netns: String,
    installed: Vec<(&'static str, Vec<String>)>,
}

fn binary(family6: bool) -> &'static str {
    let (nft, legacy) = if family6 {
        ("ip6tables-nft", "ip6tables")
    } else {
        ("iptables-nft", "iptables")
    };
    let found = Command::new(nft)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if found {
        nft
    } else {
        legacy
    }
}

fn run_in(netns: &str, program: &str, args: &[String]) -> Result<(), DelayLineError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, program]).args(args);
    let desc = format!("ip netns exec {netns} {program} {}", args.join(" "));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DelayLineError::Spawn {
            cmd: desc.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(DelayLineError::Command {
            cmd: desc,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn spec(ifname: &str, queue: u16) -> Vec<String> {
    [
        "FORWARD",
        "-i",
        ifname,
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Check that `ifname` exists in `netns`.
pub(crate) fn check_interface(netns: &str, ifname: &str) -> Result<(), DelayLineError> {
    let out = Command::new("ip")
        .args(["-n", netns, "link", "show", "dev", ifname])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DelayLineError::Spawn {
            cmd: format!("ip -n {netns} link show dev {ifname}"),
            source,
        })?;
    if !out.status.success() {
        return Err(DelayLineError::NoInterface {
            netns: netns.to_string(),
            ifname: ifname.to_string(),
        });
    }
    Ok(())
}

impl Rules {
    /// Install the rules for both directions and both families. On failure
    /// whatever was installed is removed again.
    pub(crate) fn install(
        netns: &str,
        if_a: &str,
        if_b: &str,
        queue_base: u16,
        ipv6: bool,
    ) -> Result<Rules, DelayLineError> {
        let mut rules = Rules {
            netns: netns.to_string(),
            installed: Vec::new(),
        };
        let families: &[bool] = if ipv6 { &[false, true] } else { &[false] };
        for &f6 in families {
            let prog = binary(f6);
            for (ifname, q) in [(if_a, queue_base), (if_b, queue_base + 1)] {
                let s = spec(ifname, q);
                let mut args = vec!["-w".to_string(), "-I".to_string()];
                args.extend(s.iter().take(1).cloned());
                args.push("1".to_string());
                args.extend(s.iter().skip(1).cloned());
                run_in(netns, prog, &args)?;
                rules.installed.push((prog, s));
            }
        }
        Ok(rules)
    }

    /// Remove every installed rule; errors are ignored (the namespace may
    /// already be gone).
    pub(crate) fn remove(&mut self) {
        for (prog, s) in self.installed.drain(..).rev() {
            let mut args = vec!["-w".to_string(), "-D".to_string()];
            args.extend(s);
            let _ = run_in(&self.netns, prog, &args);
        }
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        self.remove();
    }
}
