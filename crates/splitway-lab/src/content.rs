//! Content kinds for the `modules` scenario (issue 13 §5): what the web
//! server serves besides the random files of [`crate::nginx`]. A real,
//! compressible corpus nobody here wrote (a tar of the Python standard
//! library Debian installs under `/usr/lib/python3.*`, made at lab start by
//! the `tar` program), and a new version of it with a few per cent of its
//! files changed. The same corpus downloaded again is the third kind (no
//! file of its own). Every file's SHA-256 is kept to check each download.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// What a download fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Incompressible bytes (nginx's `/<size>.bin`).
    Random,
    /// The corpus, first download since the relays started.
    Corpus,
    /// The same corpus again (content the relays have seen).
    Again,
    /// The corpus's new version (a few per cent of its files changed).
    Changed,
}

impl Kind {
    /// In the order a round downloads them: the corpus before its repeat
    /// and its new version.
    pub const ALL: [Kind; 4] = [Kind::Random, Kind::Corpus, Kind::Again, Kind::Changed];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Random => "random",
            Kind::Corpus => "corpus",
            Kind::Again => "again",
            Kind::Changed => "changed",
        }
    }
}

/// One file the web server serves: URL path, size, SHA-256.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Served {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The served files of every kind.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Contents {
    pub random: Served,
    pub corpus: Served,
    pub changed: Served,
    /// Where the corpus comes from, files in it, files changed in version 2.
    pub source: String,
    pub files: usize,
    pub files_changed: usize,
}

impl Contents {
    pub fn of(&self, k: Kind) -> &Served {
        match k {
            Kind::Random => &self.random,
            Kind::Corpus | Kind::Again => &self.corpus,
            Kind::Changed => &self.changed,
        }
    }
}

/// Every `n`-th file of the corpus is changed in version 2 (≈ 3 %).
pub const CHANGE_EVERY: usize = 33;

/// The newest `/usr/lib/python3.*` directory.
pub fn python_lib() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .context("reading /usr/lib")?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3."))
        })
        .collect();
    dirs.sort();
    dirs.pop()
        .context("no /usr/lib/python3.* to make the corpus from (install python3)")
}

/// Regular files under `dir`, sorted by path, relative to `dir`'s parent.
fn walk(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if meta.is_dir() {
            walk(&p, base, out)?;
        } else if meta.is_file() {
            if let Ok(rel) = p.strip_prefix(base) {
                out.push((rel.to_path_buf(), meta.len()));
            }
        }
    }
    Ok(())
}

/// The first files (in path order) whose tar entries fill about `target`
/// bytes; a file that would overshoot it by more than 5 % is passed over.
pub fn pick_files(all: &[(PathBuf, u64)], target: u64) -> Vec<PathBuf> {
    let mut total = 1024u64; // the end-of-archive blocks
    let mut out = Vec::new();
    for (p, len) in all {
        if total >= target {
            break;
        }
        let entry = 512 + len.div_ceil(512) * 512;
        if total + entry > target.saturating_add(target / 20) {
            continue;
        }
        total += entry;
        out.push(p.clone());
    }
    out
}

/// Version 2 of a file: a line inserted at the start and a span in the
/// middle rewritten (lengths and offsets after it change).
pub fn change(data: &[u8], k: usize) -> Vec<u8> {
    let mut v = format!("# splitway lab: version 2 of this file ({k})\n").into_bytes();
    let mid = data.len() / 2;
    v.extend_from_slice(&data[..mid]);
    v.extend_from_slice(format!("\n# changed in version 2, file {k}\n").as_bytes());
    let skip = (data.len() - mid).min(64);
    v.extend_from_slice(&data[mid + skip..]);
    v
}

pub fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn tar(dir: &Path, list: &Path, out: &Path) -> Result<()> {
    let st = Command::new("tar")
        .args(["--create", "--file"])
        .arg(out)
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--no-recursion",
            "--directory",
        ])
        .arg(dir)
        .arg("--files-from")
        .arg(list)
        .status()
        .context("running tar")?;
    if !st.success() {
        bail!("tar {} failed ({st})", out.display());
    }
    Ok(())
}

/// Make the corpus (about `target` bytes) and its version 2 in `www`, next
/// to nginx's random file of `random_bytes` (already there); `scratch`
/// holds the changed tree.
pub fn prepare(www: &Path, scratch: &Path, target: u64, random_bytes: u64) -> Result<Contents> {
    let lib = python_lib()?;
    let base = lib.parent().unwrap_or(Path::new("/"));
    let mut all = Vec::new();
    walk(&lib, base, &mut all)?;
    let files = pick_files(&all, target);
    if files.is_empty() {
        bail!("{} has no files for the corpus", lib.display());
    }
    let list = scratch.join("corpus-files.txt");
    std::fs::create_dir_all(scratch)?;
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&list, names.join("\n") + "\n")?;
    let v1 = www.join("corpus-v1.tar");
    tar(base, &list, &v1)?;
    // Version 2: a copy of the tree with every CHANGE_EVERY-th file changed.
    let tree = scratch.join("corpus-v2");
    let _ = std::fs::remove_dir_all(&tree);
    let mut changed = 0;
    for (i, rel) in files.iter().enumerate() {
        let to = tree.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let data = std::fs::read(base.join(rel))
            .with_context(|| format!("reading {}", base.join(rel).display()))?;
        if i % CHANGE_EVERY == CHANGE_EVERY / 2 {
            std::fs::write(&to, change(&data, i))?;
            changed += 1;
        } else {
            std::fs::write(&to, &data)?;
        }
    }
    let v2 = www.join("corpus-v2.tar");
    tar(&tree, &list, &v2)?;
    let _ = std::fs::remove_dir_all(&tree);
    let served = |p: &Path, url: String| -> Result<Served> {
        Ok(Served {
            path: url,
            bytes: std::fs::metadata(p)?.len(),
            sha256: sha256_file(p)?,
        })
    };
    let random_path = www.join(format!("{random_bytes}.bin"));
    Ok(Contents {
        random: served(&random_path, crate::nginx::path_of(random_bytes))?,
        corpus: served(&v1, "/corpus-v1.tar".into())?,
        changed: served(&v2, "/corpus-v2.tar".into())?,
        source: lib.display().to_string(),
        files: files.len(),
        files_changed: changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_files_until_the_target_in_tar_blocks() {
        let all: Vec<(PathBuf, u64)> = (0..10)
            .map(|i| (PathBuf::from(format!("f{i}")), 1000))
            .collect();
        // each entry: 512 header + 1024 data
        let picked = pick_files(&all, 1024 + 3 * 1536);
        assert_eq!(picked.len(), 3);
        assert_eq!(pick_files(&all, 0).len(), 0);
        assert_eq!(pick_files(&all, u64::MAX).len(), 10);
        // a big file that would overshoot is passed over, later ones fit
        let mut big = all.clone();
        big.insert(1, (PathBuf::from("big"), 1 << 20));
        let picked = pick_files(&big, 1024 + 3 * 1536);
        assert_eq!(
            picked,
            [
                PathBuf::from("f0"),
                PathBuf::from("f1"),
                PathBuf::from("f2")
            ]
        );
    }

    #[test]
    fn a_changed_file_differs_and_keeps_most_bytes() {
        let data: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        let v2 = change(&data, 7);
        assert_ne!(v2, data);
        assert!(v2.starts_with(b"# splitway lab: version 2"));
        assert!(v2.ends_with(&data[data.len() - 1000..]));
        // short files change too
        assert_ne!(change(b"x", 1), b"x");
        assert!(!change(b"", 1).is_empty());
    }

    #[test]
    fn the_python_corpus_is_real_and_compressible_tar() {
        let Ok(lib) = python_lib() else {
            eprintln!("skipped: no /usr/lib/python3.*");
            return;
        };
        let dir = std::env::temp_dir().join(format!("swlab-content-{}", std::process::id()));
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("100.bin"), [7u8; 100]).unwrap();
        let c = prepare(&www, &dir.join("scratch"), 1 << 20, 100).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(c.source.starts_with(&lib.display().to_string()));
        assert!(
            (1 << 20..(1 << 20) + (2 << 20)).contains(&c.corpus.bytes),
            "{}",
            c.corpus.bytes
        );
        assert!(c.files > 10 && c.files_changed >= 1);
        assert_eq!(c.files_changed, (c.files + CHANGE_EVERY / 2) / CHANGE_EVERY);
        assert_ne!(c.corpus.sha256, c.changed.sha256);
        assert!(c.changed.bytes > c.corpus.bytes - 512 * c.files_changed as u64);
        assert_eq!(c.random.bytes, 100);
    }
}
