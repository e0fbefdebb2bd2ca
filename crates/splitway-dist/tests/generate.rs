//! `splitway-dist all DIR` writes a man page for `splitway` and for every
//! visible subcommand at every level, and bash, zsh and fish completions
//! that name every subcommand; nothing of the lab (not in the relay binary).

use std::path::Path;
use std::process::Command;

use clap::CommandFactory;

/// Every visible subcommand as its path: ["relay"], ["ctl", "peers"], ...
fn subcommands(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_string());
        out.push(path.clone());
        subcommands(sub, &path, out);
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A man page's text with roff's escaped hyphens (`\-`) plain.
fn read_man(p: &Path) -> String {
    read(p).replace("\\-", "-")
}

#[test]
fn man_pages_and_completions_name_every_subcommand() {
    let dir = std::env::temp_dir().join(format!("splitway-dist-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_splitway-dist"))
        .arg("all")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut subs = Vec::new();
    subcommands(&splitway_cli::cli::Cli::command(), &[], &mut subs);
    for want in [&["relay"][..], &["check"], &["ctl"], &["ctl", "reload"]] {
        assert!(
            subs.iter().any(|s| s == want),
            "the check itself: {want:?} in {subs:?}"
        );
    }

    // Man pages: splitway(1) lists the top-level subcommands; each
    // subcommand has its page, titled with its full name.
    let man = dir.join("man");
    let top = read_man(&man.join("splitway.1"));
    assert!(
        top.starts_with(".ie") || top.contains(".TH splitway 1"),
        "{top}"
    );
    let mut pages = 1;
    for path in &subs {
        let name = format!("splitway-{}", path.join("-"));
        let page = read_man(&man.join(format!("{name}.1")));
        assert!(page.contains(&format!(".TH {name} 1")), "{name}.1:\n{page}");
        // The synopsis spells the command as typed.
        assert!(
            page.contains(&format!("splitway {}", path.join(" "))),
            "{name}.1 has no synopsis for it:\n{page}"
        );
        if path.len() == 1 {
            assert!(
                top.contains(&format!("{name}(1)")),
                "splitway.1 lacks {name}"
            );
        }
        pages += 1;
    }
    let on_disk = std::fs::read_dir(&man).unwrap().count();
    assert_eq!(on_disk, pages, "one page per subcommand, plus splitway.1");

    // Completions: every subcommand name in each shell's script.
    let comp = dir.join("completions");
    for file in ["splitway.bash", "_splitway", "splitway.fish"] {
        let text = read(&comp.join(file));
        for path in &subs {
            let last = path.last().unwrap();
            assert!(
                text.contains(last.as_str()),
                "{file} does not complete {path:?}"
            );
        }
        assert!(!text.contains("lab"), "{file} offers the lab");
    }
    // Shells that are installed check their script's syntax.
    for (shell, args, file) in [
        ("bash", &["-n"][..], "splitway.bash"),
        ("zsh", &["-n"][..], "_splitway"),
        ("fish", &["--no-execute"][..], "splitway.fish"),
    ] {
        match Command::new(shell).args(args).arg(comp.join(file)).output() {
            Ok(o) => assert!(
                o.status.success(),
                "{shell} rejects {file}: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => eprintln!("note: {shell} not installed; {file} not syntax-checked"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
