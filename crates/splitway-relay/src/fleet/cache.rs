//! The local cache of the last applied fleet state: the etcd keys a relay
//! watches, as JSON, written atomically (temp file, fsync, rename) so a
//! relay restarted while etcd is down starts from what it last ran.
//! Holds leg keys: written mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use splitway_core::fleet::View;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("fleet cache {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fleet cache {path}: not a fleet cache: {reason}")]
    Format { path: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Write `view` to `path` atomically: readers see the old file or the new
/// one, never a part.
pub fn store(path: &Path, view: &View) -> Result<(), CacheError> {
    let text = serde_json::to_vec(view).map_err(|e| CacheError::Format {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(&text).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path)(e)
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Read the cache; `Ok(None)` if there is none yet.
pub fn load(path: &Path) -> Result<Option<View>, CacheError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| CacheError::Format {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_view_loads_back_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("sw-fleet-cache-{}", std::process::id()));
        let path = dir.join("sub/cache.json");
        assert!(load(&path).expect("no cache is fine").is_none());
        let mut v = View {
            revision: 42,
            ..View::default()
        };
        v.kv.insert("/p/auth/keys/1".into(), "00".into());
        store(&path, &v).expect("store");
        store(&path, &v).expect("store over an existing cache");
        assert_eq!(load(&path).expect("load"), Some(v));
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "only the cache itself: {names:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "keys are not readable by others");
        std::fs::write(&path, b"{half").expect("corrupt");
        assert!(matches!(load(&path), Err(CacheError::Format { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
