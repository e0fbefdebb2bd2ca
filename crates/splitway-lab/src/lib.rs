//! The emulated-WAN laboratory behind `splitway lab` (placeholder: being built).

/// Command-line arguments of `splitway lab`.
#[derive(Debug, clap::Args)]
pub struct LabArgs {}

/// Run the lab with the given arguments.
pub fn run(_args: LabArgs) -> anyhow::Result<()> {
    anyhow::bail!("the lab is not built yet")
}
