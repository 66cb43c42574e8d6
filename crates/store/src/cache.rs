//! Keeping the archive cache from growing without bound.
//!
//! The cache holds `<sha256>/` (an unpacked archive), `models/<name>-<key>/` (links merging
//! several archives' versions of one model), `downloads/` (archives fetched from allow-listed
//! URLs) and, while they are written, `.unpack-*` folders and `.partial` downloads. Folders a
//! served model uses are never removed. Beyond those:
//!
//! - [`release`] removes one model's folders when it is unregistered or fails to load;
//! - [`sweep`] removes leftovers of processes that died mid-way, and unused folders, least
//!   recently used first, while the cache is over its size limit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Folders younger than this are left alone by [`sweep`]: another thread may have just
/// unpacked one for a model that is not in place yet.
const YOUNGEST_SWEPT: Duration = Duration::from_secs(600);

/// What a sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Folders and files removed.
    pub removed: Vec<PathBuf>,
    /// Bytes they held.
    pub freed: u64,
    /// Bytes the cache holds now (counted only when there is a limit; 0 otherwise).
    pub size: u64,
}

/// Removes `dir` (a model folder inside `cache`) and, for a folder of links, the archive
/// folders it links to, unless a path in `in_use` still needs them. Paths outside the cache are
/// never touched.
pub fn release(cache: &Path, dir: &Path, in_use: &[PathBuf]) -> Vec<PathBuf> {
    let keep = needed(cache, in_use);
    let mut removed = Vec::new();
    let Some(top) = cache_folder(cache, dir) else {
        return removed;
    };
    for folder in std::iter::once(top.clone()).chain(linked(cache, &top)) {
        if !keep.contains(&folder) && std::fs::remove_dir_all(&folder).is_ok() {
            removed.push(folder);
        }
    }
    removed
}

/// Removes what dead processes left half-written, and, while the cache holds more than
/// `max_bytes`, the least recently used folders no path in `in_use` needs.
pub fn sweep(cache: &Path, in_use: &[PathBuf], max_bytes: Option<u64>) -> Swept {
    let keep = needed(cache, in_use);
    let mut out = Swept::default();
    let mut candidates = Vec::new();
    for parent in [
        cache.to_path_buf(),
        cache.join("models"),
        cache.join("downloads"),
    ] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if parent == cache && matches!(name.as_str(), "models" | "downloads") {
                continue;
            }
            // Sizes matter only against a limit; without one, nothing is read below.
            let size = if max_bytes.is_some() {
                disk_size(&path)
            } else {
                0
            };
            if name.starts_with('.') {
                if writer_pid(&name).is_some_and(|pid| !alive(pid)) {
                    if remove(&path) {
                        out.removed.push(path);
                        out.freed += size;
                    }
                    continue;
                }
            } else if !keep.contains(&path) {
                let used = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                candidates.push((used, path, size));
            }
            out.size += size;
        }
    }
    let Some(limit) = max_bytes else {
        return out;
    };
    candidates.sort();
    let now = SystemTime::now();
    for (used, path, size) in candidates {
        if out.size <= limit {
            break;
        }
        if now.duration_since(used).unwrap_or_default() < YOUNGEST_SWEPT {
            continue;
        }
        if remove(&path) {
            out.size -= size;
            out.freed += size;
            out.removed.push(path);
        }
    }
    out
}

/// Marks `dir` as just used, for [`sweep`]'s least-recently-used order.
pub(crate) fn touch(dir: &Path) {
    let _ = std::fs::File::open(dir).and_then(|f| f.set_modified(SystemTime::now()));
}

/// The cache folders that `in_use` (model folders) need: each one inside the cache, and the
/// archive folders its links point to.
fn needed(cache: &Path, in_use: &[PathBuf]) -> HashSet<PathBuf> {
    let mut keep = HashSet::new();
    for dir in in_use {
        if let Some(top) = cache_folder(cache, dir) {
            keep.extend(linked(cache, &top));
            keep.insert(top);
        }
    }
    keep
}

/// The folder directly under the cache (or under `models/` or `downloads/`) that holds `dir`.
fn cache_folder(cache: &Path, dir: &Path) -> Option<PathBuf> {
    let rel = dir.strip_prefix(cache).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?.as_os_str().to_owned();
    let folder = cache.join(&first);
    if first == "models" || first == "downloads" {
        return Some(folder.join(parts.next()?.as_os_str()));
    }
    Some(folder)
}

/// The archive folders inside the cache that a folder of links points into. A link to a folder
/// outside the cache (a `no-archive` folder in the model store) is the operator's, never
/// counted, so it is never removed.
fn linked(cache: &Path, folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| cache_folder(cache, &target))
        .collect()
}

/// The process that is writing a `.unpack-<sha>-<pid>-<nanos>` folder or a `.<key>-<pid>.partial`
/// download.
fn writer_pid(name: &str) -> Option<u32> {
    let name = name.strip_suffix(".partial").unwrap_or(name);
    let mut parts = name.rsplit('-');
    let last = parts.next()?;
    if name.starts_with(".unpack-") {
        parts.next()?.parse().ok()
    } else {
        last.parse().ok()
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn remove(path: &Path) -> bool {
    let removed = if path.is_dir() && !path.is_symlink() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove from the archive cache");
            false
        }
    }
}

/// Bytes of the regular files under `path`, links not followed.
fn disk_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| disk_size(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(path: &Path, bytes: usize, age: Duration) {
        std::fs::create_dir_all(path).unwrap();
        std::fs::write(path.join("w"), vec![0u8; bytes]).unwrap();
        let when = SystemTime::now() - age;
        std::fs::File::open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    #[test]
    fn sweeps_least_recently_used_unused_folders_down_to_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();
        let hour = Duration::from_secs(3600);
        folder(&cache.join("old"), 1000, hour * 3);
        folder(&cache.join("older-in-use"), 1000, hour * 5);
        folder(&cache.join("mid"), 1000, hour * 2);
        folder(&cache.join("new"), 1000, Duration::ZERO);
        let swept = sweep(cache, &[cache.join("older-in-use/1")], Some(2500));
        assert_eq!(swept.removed, [cache.join("old"), cache.join("mid")]);
        assert_eq!(swept.size, 2000);
        assert!(cache.join("older-in-use").is_dir() && cache.join("new").is_dir());
        // Under the limit nothing unused goes.
        assert!(sweep(cache, &[], Some(10_000)).removed.is_empty());
    }

    #[test]
    fn leftovers_of_dead_writers_go_and_live_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();
        let dead = cache.join(".unpack-abc-999999999-1");
        let live = cache.join(format!(".unpack-abc-{}-1", std::process::id()));
        folder(&dead, 10, Duration::ZERO);
        folder(&live, 10, Duration::ZERO);
        std::fs::create_dir_all(cache.join("downloads")).unwrap();
        let partial = cache.join("downloads/.0123-999999999.partial");
        std::fs::write(&partial, b"x").unwrap();
        let swept = sweep(cache, &[], None);
        assert!(!dead.exists() && !partial.exists(), "{swept:?}");
        assert!(live.exists());
    }

    #[test]
    fn release_removes_a_merged_model_and_its_archives_unless_needed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();
        folder(&cache.join("a1"), 10, Duration::ZERO);
        folder(&cache.join("a2"), 10, Duration::ZERO);
        std::fs::create_dir_all(cache.join("models/m-1")).unwrap();
        std::os::unix::fs::symlink(cache.join("a1/1"), cache.join("models/m-1/1")).unwrap();
        std::os::unix::fs::symlink(cache.join("a2/2"), cache.join("models/m-1/2")).unwrap();
        let removed = release(cache, &cache.join("models/m-1"), &[cache.join("a2")]);
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!cache.join("models/m-1").exists() && !cache.join("a1").exists());
        assert!(cache.join("a2").exists());
        // Nothing outside the cache.
        let outside = tempfile::tempdir().unwrap();
        assert!(release(cache, outside.path(), &[]).is_empty());
        assert!(outside.path().exists());
        // Nor a store's no-archive folder that a folder of links in the cache points to.
        let store = outside.path().join("store");
        std::fs::create_dir_all(store.join("m")).unwrap();
        std::fs::create_dir_all(cache.join("models/m-2")).unwrap();
        std::os::unix::fs::symlink(store.join("m"), cache.join("models/m-2/1")).unwrap();
        release(cache, &cache.join("models/m-2"), &[]);
        assert!(!cache.join("models/m-2").exists());
        assert!(store.join("m").is_dir(), "the store is the operator's");
    }
}
