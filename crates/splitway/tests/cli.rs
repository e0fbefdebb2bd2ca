//! The `splitway` binary as users deploy it: no lab or delay line linked in
//! (issue 12 §4), and logs without terminal colour codes unless stderr is a
//! terminal and `NO_COLOR` is unset (issue 18 §2). The log tests run a real
//! relay in a network namespace of their own (needs root; skipped otherwise).

use std::process::Stdio;

use splitway_netns::{unique_prefix, Netns};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_splitway")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The default build (what `cargo build -p splitway`, the package and the
/// README's quick start make) links neither the lab nor the delay line: no
/// symbol of either crate is in the binary, `lab` is not offered, and asking
/// for it says how to get a build that has it.
#[cfg(not(feature = "lab"))]
#[test]
fn the_relay_binary_carries_no_lab_and_no_delay_line() {
    let image = std::fs::read(bin()).expect("read the splitway binary");
    // The test profile keeps symbols, so any linked function of either crate
    // would show its crate name in its mangled symbol.
    assert!(
        image
            .windows(b"splitway_relay".len())
            .any(|w| w == b"splitway_relay"),
        "the check itself: the relay crate's symbols are found"
    );
    for krate in ["splitway_lab", "splitway_delayline"] {
        assert!(
            !image.windows(krate.len()).any(|w| w == krate.as_bytes()),
            "{krate} is linked into the relay binary"
        );
    }
    use std::process::Command;
    let help = Command::new(bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("relay"), "{help}");
    assert!(!help.contains("lab"), "--help offers the lab:\n{help}");
    let lab = Command::new(bin())
        .args(["lab", "--quick"])
        .output()
        .unwrap();
    assert!(!lab.status.success());
    let err = String::from_utf8_lossy(&lab.stderr);
    assert!(
        err.contains("--features lab") && err.contains("scripts/lab.sh"),
        "{err}"
    );
}

/// A relay config for a namespace of its own: only a leg listener on
/// loopback, enough to start and log.
const CONFIG: &str = r#"
[node]
name = "colour"
[auth]
keys = [{ id = 1, secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff" }]
[relay]
listen = "127.0.0.1:5565"
allow = [{ prefix = "127.0.0.1/32" }]
[[route]]
prefix = "127.0.0.0/8"
via = "direct"
"#;

/// Runs a relay until it is ready, then stops it with SIGTERM; `wrap` turns
/// the shell command into the program actually run (through a pty or not).
/// Returns everything the relay wrote to stderr (and, under `script`, the
/// terminal's output).
fn relay_output(ns: &Netns, dir: &std::path::Path, env: &[(&str, &str)], pty: bool) -> Vec<u8> {
    let cfg = dir.join("relay.toml");
    let ready = dir.join("relay.ready");
    let _ = std::fs::remove_file(&ready);
    std::fs::write(&cfg, CONFIG).unwrap();
    // The shell waits for the ready file, then stops the relay.
    let script = format!(
        "{bin} relay --config {cfg} --ready-file {ready} --workers 1 & pid=$!; \
         n=0; while [ ! -e {ready} ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done; \
         kill -TERM $pid; wait $pid",
        bin = bin(),
        cfg = cfg.display(),
        ready = ready.display(),
    );
    let mut cmd = if pty {
        // util-linux `script`: the relay's stderr is a terminal.
        let mut c = ns.command("script");
        c.args(["-qec", &script, "/dev/null"]);
        c
    } else {
        let mut c = ns.command("sh");
        c.args(["-c", &script]);
        c
    };
    cmd.env_remove("NO_COLOR")
        .env("SPLITWAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the relay");
    let mut all = out.stderr;
    all.extend_from_slice(&out.stdout);
    let text = String::from_utf8_lossy(&all);
    // (The relay removes its ready file when it stops: its log says it.)
    assert!(
        text.contains("ready") && text.contains("INFO"),
        "the relay did not log becoming ready (pty {pty}, env {env:?}):\n{text}"
    );
    all
}

fn has_escape(b: &[u8]) -> bool {
    b.contains(&0x1b)
}

#[test]
fn logs_carry_colour_codes_only_on_a_terminal_without_no_color() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let p = unique_prefix("swcol");
    let ns = Netns::create(&p).expect("create netns");
    let dir = std::env::temp_dir().join(format!("splitway-test-{p}"));
    std::fs::create_dir_all(&dir).unwrap();

    // To a pipe (as under systemd, journald, a log shipper): plain text.
    let piped = relay_output(&ns, &dir, &[], false);
    assert!(
        !has_escape(&piped),
        "escape sequences in logs written to a pipe:\n{}",
        String::from_utf8_lossy(&piped)
    );
    // To a terminal: colour (the check that the test can see it)...
    let tty = relay_output(&ns, &dir, &[], true);
    assert!(
        has_escape(&tty),
        "no colour on a terminal:\n{}",
        String::from_utf8_lossy(&tty)
    );
    // ...unless NO_COLOR is set.
    let no_color = relay_output(&ns, &dir, &[("NO_COLOR", "1")], true);
    assert!(
        !has_escape(&no_color),
        "colour on a terminal despite NO_COLOR:\n{}",
        String::from_utf8_lossy(&no_color)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
