//! `splitway`: the relay binary. Subcommands (defined in `cli.rs`): `relay`
//! (run a node), `check` (validate a config), `ctl` (talk to a running
//! relay's admin API), and `lab` (the emulated-WAN laboratory) only when
//! built with the `lab` feature (`scripts/lab.sh` does): the binary users
//! deploy carries no lab and no delay line.

use anyhow::Context;
use clap::Parser;
use splitway_cli::cli::{Cli, Cmd};
use splitway_cli::ctl;
use splitway_core::config::{Config, LogFormat};

/// Colour in logs only for a person: stderr is a terminal and `NO_COLOR`
/// is unset or empty (<https://no-color.org>). A pipe, a file or journald
/// gets plain text, not escape sequences.
fn log_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Logs to stderr, filtered by `SPLITWAY_LOG` (a level, or
/// `target=level` pairs: `info`, `splitway_relay=debug,info`).
fn init_logs(format: LogFormat) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = match std::env::var("SPLITWAY_LOG") {
        Ok(spec) => spec.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("SPLITWAY_LOG={spec:?} ignored ({e}); logging at info");
            Targets::new().with_default(LevelFilter::INFO)
        }),
        Err(_) => Targets::new().with_default(LevelFilter::INFO),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(log_colour());
    match format {
        LogFormat::Human => tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(fmt.json().with_filter(filter))
            .init(),
    }
}

/// Install SIGTERM/SIGINT handlers now (so a signal that arrives while the
/// relay starts up is not fatal), and return a future that completes on one.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// Raise the soft open-files limit to the hard limit: every split
/// connection holds two sockets and, with splice, four pipe ends.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Worker shards: one per usable core (the CPU affinity mask counts, so
/// `taskset -c 0` means one), or `workers`. Each shard is a
/// single-threaded runtime with its own listeners (`splitway_relay::shards`);
/// this one, on the main thread, is shard 0 and also runs control, admin and
/// fleet tasks.
fn shard_count(flag: Option<usize>) -> usize {
    flag.or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("splitway-worker")
        .build()
}

/// Errors end the process with their chain of causes on one line, never a
/// backtrace, whatever `RUST_BACKTRACE` says.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `context: cause: cause…`, skipping a cause that its parent's message
/// already quotes (library errors often print their source too).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn run() -> anyhow::Result<()> {
    // Not a subcommand of this build (nor in its help, man pages and
    // completions), but a newcomer following docs/lab.md is told what to do.
    #[cfg(not(feature = "lab"))]
    if std::env::args_os().nth(1).is_some_and(|a| a == "lab") {
        anyhow::bail!(
            "this splitway is built without the lab (the relay users deploy carries none); \
             run ./scripts/lab.sh, or build it with `cargo build --release -p splitway --features lab`"
        );
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Relay {
            config,
            ready_file,
            workers,
        } => {
            let cfg =
                Config::load(&config).with_context(|| format!("loading {}", config.display()))?;
            init_logs(cfg.node.log_format);
            raise_fd_limit();
            let rt = runtime().context("starting the runtime")?;
            rt.block_on(async move {
                let stop = shutdown_signal()?;
                let opts = splitway_relay::RunOptions {
                    ready_file,
                    config_path: Some(config),
                    reload_on_sighup: true,
                    workers: shard_count(workers),
                };
                splitway_relay::run(cfg, opts, stop).await
            })
        }
        Cmd::Check { config } => {
            Config::load(&config).with_context(|| format!("loading {}", config.display()))?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Cmd::Ctl(args) => ctl::run(args),
        #[cfg(feature = "lab")]
        Cmd::Lab(args) => {
            init_logs(LogFormat::Human);
            splitway_lab::run(args)
        }
    }
}
