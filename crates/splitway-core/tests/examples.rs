//! Every relay config directly under `examples/` loads and validates.
//! (Subfolders such as `examples/lab/` hold other kinds of files.)

use std::path::Path;

use splitway_core::config::Config;

fn tomls(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn every_example_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files = Vec::new();
    tomls(&root, &mut files);
    assert!(
        files.len() >= 2,
        "expected example configs in {}",
        root.display()
    );
    for f in files {
        if let Err(e) = Config::load(&f) {
            panic!("{}: {e}", f.display());
        }
    }
}
