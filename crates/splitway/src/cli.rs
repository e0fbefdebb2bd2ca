//! The command-line definition of `splitway` (clap): subcommands and their
//! flags. Only the definition: running it is `main.rs`'s job, rendering it
//! into man pages and completions is `splitway-dist`'s.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::ctl;

#[derive(Debug, Parser)]
#[command(
    name = "splitway",
    version,
    about = "Split-TCP relay for overlay networks",
    long_about = "Split-TCP relay for overlay networks. Relays run near each end of a long \
network path; each TCP connection is terminated at the first relay and carried to the last \
over authenticated, pooled relay-to-relay legs.",
    after_help = "Logs go to stderr, filtered by SPLITWAY_LOG (e.g. info, \
splitway_relay=debug,info); colour only when stderr is a terminal and NO_COLOR is unset."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a relay node.
    Relay {
        /// Config file (TOML); see docs/config.md.
        #[arg(long, short, value_hint = clap::ValueHint::FilePath)]
        config: PathBuf,
        /// Write this file (with the pid) once the relay is ready.
        #[arg(long, value_hint = clap::ValueHint::FilePath)]
        ready_file: Option<PathBuf>,
        /// Worker shards (default: one per core the process may run on):
        /// each a single-threaded runtime with its own SO_REUSEPORT
        /// listeners; a connection stays on the shard that accepted it.
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a config file and exit.
    Check {
        /// Config file (TOML) to validate.
        #[arg(long, short, value_hint = clap::ValueHint::FilePath)]
        config: PathBuf,
    },
    /// Talk to a running relay (status, peers, connections, reload...).
    Ctl(ctl::CtlArgs),
    /// Run the emulated-WAN laboratory (reproduces the KTCP paper's figures).
    #[cfg(feature = "lab")]
    Lab(splitway_lab::LabArgs),
}
