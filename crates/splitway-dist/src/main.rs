//! `splitway-dist`: renders `splitway`'s command-line definition
//! (`splitway_cli::cli::Cli`, the one the binary parses with) into man pages
//! (clap_mangen: `splitway(1)` and one page per subcommand, `splitway-ctl-status(1)`
//! and so on) and shell completions (clap_complete: bash, zsh, fish), so they
//! never drift from the binary. The Debian package (`scripts/package.sh`)
//! installs what it writes; it is a build step, not part of the relay binary.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, ValueEnum};
use clap_complete::Shell;

#[derive(Debug, Parser)]
#[command(
    name = "splitway-dist",
    about = "Write splitway's man pages and shell completions"
)]
enum Args {
    /// Man pages: splitway.1 and one per subcommand, into DIR.
    Man { dir: PathBuf },
    /// Completions for bash (splitway.bash), zsh (_splitway) and fish
    /// (splitway.fish), into DIR; or one shell's to stdout with --shell.
    Completions {
        #[arg(required_unless_present = "shell")]
        dir: Option<PathBuf>,
        #[arg(long, value_enum)]
        shell: Option<CompletionShell>,
    },
    /// Both: DIR/man/ and DIR/completions/.
    All { dir: PathBuf },
}

/// The shells the package ships completions for.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl CompletionShell {
    const ALL: [CompletionShell; 3] = [Self::Bash, Self::Zsh, Self::Fish];

    fn shell(self) -> Shell {
        match self {
            Self::Bash => Shell::Bash,
            Self::Zsh => Shell::Zsh,
            Self::Fish => Shell::Fish,
        }
    }
}

fn command() -> clap::Command {
    splitway_cli::cli::Cli::command()
}

/// `splitway.1`, then one page per visible subcommand, recursively
/// (`splitway-ctl.1`, `splitway-ctl-peers.1`, ...; clap names them after
/// building the command). Returns the files written.
fn write_man(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_page(&cmd, dir, &mut written)?;
    Ok(written)
}

fn write_page(cmd: &clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let path = clap_mangen::Man::new(cmd.clone())
        .source(format!("splitway {}", env!("CARGO_PKG_VERSION")))
        .manual("splitway manual")
        .generate_to(dir)
        .with_context(|| format!("writing {}'s man page", cmd.get_name()))?;
    out.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, dir, out)?;
    }
    Ok(())
}

fn file_name(shell: CompletionShell) -> &'static str {
    match shell {
        CompletionShell::Bash => "splitway.bash",
        CompletionShell::Zsh => "_splitway",
        CompletionShell::Fish => "splitway.fish",
    }
}

fn write_completions(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for s in CompletionShell::ALL {
        let path = dir.join(file_name(s));
        let mut buf = Vec::new();
        clap_complete::generate(s.shell(), &mut command(), "splitway", &mut buf);
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn main() -> Result<()> {
    let written = match Args::parse() {
        Args::Man { dir } => write_man(&dir)?,
        Args::Completions {
            shell: Some(s),
            dir: None,
        } => {
            clap_complete::generate(
                s.shell(),
                &mut command(),
                "splitway",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Args::Completions { dir, .. } => {
            write_completions(dir.as_deref().context("a directory or --shell")?)?
        }
        Args::All { dir } => {
            let mut w = write_man(&dir.join("man"))?;
            w.extend(write_completions(&dir.join("completions"))?);
            w
        }
    };
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}
