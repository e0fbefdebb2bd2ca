//! The `splitway` command line as a library: its definition ([`cli`]) and
//! `splitway ctl` ([`ctl`]). The binary (`main.rs`) runs it; `splitway-dist`
//! renders the same definition into man pages and shell completions, so they
//! never drift from the binary.

pub mod cli;
pub mod ctl;
