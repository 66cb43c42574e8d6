//! Unpacking archives into the cache, safely.
//!
//! An archive comes from outside the server, so nothing in it is trusted: every entry's path must
//! be relative and stay inside the target (no `/`, no `..`), only regular files and folders are
//! written (no symbolic or hard links, no devices, no FIFOs), the archive and what it unpacks to
//! are bounded, and every file must match the manifest's size and sha256 before the folder is
//! used. Entries are written into a fresh temporary folder inside the cache, which is renamed to
//! the archive's sha256 only once all of that holds; on any failure it is removed.

use std::path::{Component, Path, PathBuf};

use crate::entries::{write_under, Scan};
use crate::manifest::{sha256_file, Manifest, MANIFEST_PATH};
use crate::StoreError;

/// Largest manifest read.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// Bounds on what an archive may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest archive file, in bytes.
    pub max_archive_bytes: u64,
    /// Most bytes an archive may unpack to.
    pub max_unpacked_bytes: u64,
    /// Most entries (files and folders) in an archive.
    pub max_entries: usize,
    /// Most bytes an archive may unpack to per byte of its own size (beyond a floor of
    /// [`MIN_UNPACK_ROOM`]): a 66 KB archive of zeros must not fill the disk with gigabytes
    /// however large `max_unpacked_bytes` is. Model weights barely compress, so honest archives
    /// stay far below it.
    pub max_expansion: u64,
    /// Longest time a download of an archive may take, in seconds.
    pub download_timeout_s: u64,
}

/// What any archive may unpack to, whatever its own size, within `max_unpacked_bytes`.
pub const MIN_UNPACK_ROOM: u64 = 16 << 20;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_archive_bytes: 32 << 30,
            max_unpacked_bytes: 64 << 30,
            max_entries: 100_000,
            max_expansion: 100,
            download_timeout_s: 600,
        }
    }
}

/// An archive unpacked and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// The archive file (or `no-archive` folder).
    pub file: PathBuf,
    /// SHA-256 of the archive file (for a folder: of its manifest), which names the cache folder.
    pub sha256: String,
    /// The model folder: for an archive file, its folder in the cache.
    pub dir: PathBuf,
    /// The archive's manifest.
    pub manifest: Manifest,
}

/// Unpacks `archive` into `cache/<sha256>` (or reuses that folder when an earlier run unpacked
/// it), verifies every file against the manifest, and returns where it is. A `no-archive` folder
/// is verified in place.
pub fn unpack(archive: &Path, cache: &Path, limits: &Limits) -> Result<Unpacked, StoreError> {
    if crate::mar::is_mar(archive) {
        return crate::mar::unpack(archive, cache, limits);
    }
    if archive.is_dir() {
        let manifest = Manifest::read(archive, archive)?;
        manifest.verify(archive, archive)?;
        return Ok(Unpacked {
            file: archive.to_path_buf(),
            sha256: sha256_file(&archive.join(MANIFEST_PATH))?,
            dir: archive.to_path_buf(),
            manifest,
        });
    }
    unpack_file(
        archive,
        cache,
        limits,
        &|tmp, room| {
            extract(archive, tmp, limits, room)?;
            let manifest = Manifest::read(tmp, archive)?;
            manifest.verify(tmp, archive)?;
            Ok(manifest)
        },
        &|dir, _| cached(dir, archive),
    )
}

/// Unpacks one kind of archive file: `extract(tmp, room)` writes it into a fresh folder and
/// returns its verified manifest; `recheck(dir, room)` checks a cached copy against the archive.
/// The folder is `cache/<sha256 of the file>`, reused when its copy checks out and unpacked
/// again when it does not; a failure leaves nothing behind.
pub(crate) fn unpack_file(
    archive: &Path,
    cache: &Path,
    limits: &Limits,
    extract: &dyn Fn(&Path, u64) -> Result<Manifest, StoreError>,
    recheck: &dyn Fn(&Path, u64) -> Result<Manifest, StoreError>,
) -> Result<Unpacked, StoreError> {
    let size = std::fs::metadata(archive)
        .map_err(StoreError::io(archive))?
        .len();
    check_size(archive, size, limits)?;
    let room = room(size, limits);
    let sha256 = sha256_file(archive)?;
    std::fs::create_dir_all(cache).map_err(StoreError::io(cache))?;
    let dir = cache.join(&sha256);
    let unpacked = |dir: PathBuf, manifest| Unpacked {
        file: archive.to_path_buf(),
        sha256: sha256.clone(),
        dir,
        manifest,
    };
    if dir.is_dir() {
        match recheck(&dir, room) {
            Ok(manifest) => {
                crate::cache::touch(&dir);
                return Ok(unpacked(dir, manifest));
            }
            Err(e) => {
                // The cache is ours: a changed copy is unpacked again from the archive.
                tracing::warn!(archive = %archive.display(), error = %e, "cached copy of the archive changed; unpacking it again");
                std::fs::remove_dir_all(&dir).map_err(StoreError::io(&dir))?;
            }
        }
    }
    let tmp = temporary(cache, &sha256);
    let manifest = match extract(&tmp, room) {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process unpacked the same archive at the same time: theirs is as good, once
        // checked like any cached copy.
        if !dir.is_dir() {
            return Err(StoreError::io(&dir)(e));
        }
        recheck(&dir, room)?;
    }
    Ok(unpacked(dir, manifest))
}

/// Refuses an archive file over the size limit.
pub(crate) fn check_size(archive: &Path, size: u64, limits: &Limits) -> Result<(), StoreError> {
    if size > limits.max_archive_bytes {
        return Err(StoreError::TooLarge {
            archive: archive.to_path_buf(),
            reason: format!(
                "{size} bytes, over the limit of {} bytes",
                limits.max_archive_bytes
            ),
        });
    }
    Ok(())
}

/// Most bytes an archive of `size` bytes may unpack to.
pub(crate) fn room(size: u64, limits: &Limits) -> u64 {
    limits.max_unpacked_bytes.min(
        size.saturating_mul(limits.max_expansion)
            .max(MIN_UNPACK_ROOM),
    )
}

/// A fresh folder name in the cache to unpack into, renamed once the archive checks out.
pub(crate) fn temporary(cache: &Path, sha256: &str) -> PathBuf {
    cache.join(format!(
        ".unpack-{sha256}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ))
}

/// The manifest of the cached copy `dir` of `archive`, once the copy is checked: its manifest
/// must be the archive's own, byte for byte (a folder someone else put in the cache under the
/// archive's checksum is not trusted for holding a manifest that matches itself), and its files
/// must match it.
fn cached(dir: &Path, archive: &Path) -> Result<Manifest, StoreError> {
    let own = crate::archive::manifest_bytes(archive)?;
    let copy = crate::manifest::read_bounded(&dir.join(MANIFEST_PATH))?;
    if own != copy {
        return Err(StoreError::Tampered {
            archive: archive.to_path_buf(),
            file: MANIFEST_PATH.into(),
            reason: "in the cache differs from the archive's".into(),
        });
    }
    let manifest = Manifest::parse(&own, archive)?;
    manifest.verify(dir, archive)?;
    Ok(manifest)
}

/// Writes the archive's entries under `target` (which must not exist), checking each.
/// At most `max_unpacked` bytes of file contents are written.
fn extract(
    archive: &Path,
    target: &Path,
    limits: &Limits,
    max_unpacked: u64,
) -> Result<(), StoreError> {
    let file = std::fs::File::open(archive).map_err(StoreError::io(archive))?;
    let decoder = zstd::Decoder::new(file).map_err(StoreError::io(archive))?;
    std::fs::create_dir(target).map_err(StoreError::io(target))?;
    Scan::new(archive, limits, max_unpacked).tar(
        decoder,
        "a ferroserve archive (a zstd-compressed tar)",
        &mut write_under(archive, target),
    )
}

/// The entry's path if it is relative and stays inside the target folder.
pub(crate) fn safe_relative(raw: &str) -> Result<PathBuf, &'static str> {
    let path = Path::new(raw);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("paths with '..' are not allowed"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed")
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("an entry needs a name");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{create, ArchiveSpec};

    fn model(dir: &Path) -> PathBuf {
        let m = dir.join("src/m");
        std::fs::create_dir_all(m.join("1")).unwrap();
        std::fs::write(m.join("1/model.onnx"), b"weights").unwrap();
        std::fs::write(m.join("labels.json"), b"[\"a\"]").unwrap();
        m
    }

    fn far(dir: &Path) -> PathBuf {
        create(&ArchiveSpec {
            model_name: "m".into(),
            model_path: model(dir),
            export_path: dir.join("store"),
            task: Some("image-classification".into()),
            ..ArchiveSpec::default()
        })
        .unwrap()
    }

    /// A zstd tar with the given raw entries `(path, type, contents, link target)`.
    fn raw_archive(path: &Path, entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) {
        let file = std::fs::File::create(path).unwrap();
        let enc = zstd::Encoder::new(file, 1).unwrap();
        let mut tar = tar::Builder::new(enc);
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Written into the raw header so the builder's own path checks cannot refuse it.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            tar.append(&h, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn round_trip_and_reuse() {
        let tmp = tempfile::tempdir().unwrap();
        let far = far(tmp.path());
        let cache = tmp.path().join("cache");
        let a = unpack(&far, &cache, &Limits::default()).unwrap();
        assert_eq!(a.manifest.model_name, "m");
        assert_eq!(a.manifest.model_version, 1);
        assert_eq!(a.manifest.task.as_deref(), Some("image-classification"));
        assert_eq!(
            std::fs::read(a.dir.join("1/model.onnx")).unwrap(),
            b"weights"
        );
        assert!(std::fs::read_to_string(a.dir.join("model.yaml"))
            .unwrap()
            .contains("task: image-classification"));
        assert_eq!(a.dir, cache.join(&a.sha256));
        // A changed cached copy is replaced from the archive.
        std::fs::write(a.dir.join("1/model.onnx"), b"changed").unwrap();
        let b = unpack(&far, &cache, &Limits::default()).unwrap();
        assert_eq!(
            std::fs::read(b.dir.join("1/model.onnx")).unwrap(),
            b"weights"
        );
        assert_eq!(crate::archive::inspect(&far).unwrap(), a.manifest);
    }

    #[test]
    fn a_forged_cached_copy_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let far = far(tmp.path());
        let cache = tmp.path().join("cache");
        let a = unpack(&far, &cache, &Limits::default()).unwrap();
        // Someone replaces the cached copy with other weights and a manifest that matches them.
        std::fs::write(a.dir.join("1/model.onnx"), b"forged").unwrap();
        let mut forged = a.manifest.clone();
        for f in &mut forged.files {
            if f.path == "1/model.onnx" {
                f.size = 6;
                f.sha256 = sha256_file(&a.dir.join("1/model.onnx")).unwrap();
            }
        }
        std::fs::write(
            a.dir.join(MANIFEST_PATH),
            serde_json::to_vec(&forged).unwrap(),
        )
        .unwrap();
        let b = unpack(&far, &cache, &Limits::default()).unwrap();
        assert_eq!(
            std::fs::read(b.dir.join("1/model.onnx")).unwrap(),
            b"weights"
        );
        assert_eq!(b.manifest, a.manifest);
    }

    #[test]
    fn a_manifest_naming_paths_outside_is_refused() {
        let mut m = crate::archive::inspect(&far(tempfile::tempdir().unwrap().path())).unwrap();
        for bad in ["../etc/passwd", "/etc/passwd"] {
            m.files[0].path = bad.into();
            let e =
                Manifest::parse(&serde_json::to_vec(&m).unwrap(), Path::new("x.far")).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn tampered_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let far = far(tmp.path());
        let manifest = crate::archive::inspect(&far).unwrap();
        let bad = tmp.path().join("bad.far");
        let json = serde_json::to_vec(&manifest).unwrap();
        raw_archive(
            &bad,
            &[
                (MANIFEST_PATH, tar::EntryType::Regular, &json, None),
                (
                    "model.yaml",
                    tar::EntryType::Regular,
                    b"task: image-classification\n",
                    None,
                ),
                ("labels.json", tar::EntryType::Regular, b"[\"a\"]", None),
                ("1/model.onnx", tar::EntryType::Regular, b"weighTs", None),
            ],
        );
        let cache = tmp.path().join("cache");
        let e = unpack(&bad, &cache, &Limits::default()).unwrap_err();
        assert!(
            matches!(&e, StoreError::Tampered { file, .. } if file == "1/model.onnx"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_dir(&cache).unwrap().count(),
            0,
            "nothing left in the cache"
        );
    }

    #[test]
    fn unsafe_entries_are_refused_without_writing_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let cases: [(&str, tar::EntryType, Option<&str>, &str); 5] = [
            ("../escape.txt", tar::EntryType::Regular, None, "'..'"),
            ("/tmp/abs.txt", tar::EntryType::Regular, None, "absolute"),
            (
                "1/link",
                tar::EntryType::Symlink,
                Some("../../../escape.txt"),
                "links",
            ),
            ("1/hard", tar::EntryType::Link, Some("/etc/passwd"), "links"),
            ("1/dev", tar::EntryType::Char, None, "device"),
        ];
        for (name, kind, link, why) in cases {
            let far = tmp.path().join("evil.far");
            raw_archive(&far, &[(name, kind, b"x", link)]);
            let e = unpack(&far, &cache, &Limits::default()).unwrap_err();
            assert!(
                matches!(&e, StoreError::Unsafe { entry, .. } if entry == name)
                    && e.to_string().contains(why),
                "{name}: {e}"
            );
            assert!(!tmp.path().join("escape.txt").exists());
            assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
        }
    }

    #[test]
    fn oversized_archives_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let far = far(tmp.path());
        let cache = tmp.path().join("cache");
        let small = Limits {
            max_archive_bytes: 16,
            ..Limits::default()
        };
        assert!(matches!(
            unpack(&far, &cache, &small),
            Err(StoreError::TooLarge { .. })
        ));
        // Unpacking stops at the limit on bytes written.
        let tight = Limits {
            max_unpacked_bytes: 100,
            ..Limits::default()
        };
        let big = tmp.path().join("big.far");
        raw_archive(
            &big,
            &[("1/model.onnx", tar::EntryType::Regular, &[0u8; 4096], None)],
        );
        let e = unpack(&big, &cache, &tight).unwrap_err();
        assert!(matches!(e, StoreError::TooLarge { .. }), "{e}");
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    }

    #[test]
    fn no_archive_folder_is_verified_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let out = create(&ArchiveSpec {
            model_name: "m".into(),
            model_path: model(tmp.path()),
            export_path: tmp.path().join("store"),
            format: crate::ArchiveFormat::NoArchive,
            ..ArchiveSpec::default()
        })
        .unwrap();
        let u = unpack(&out, &tmp.path().join("cache"), &Limits::default()).unwrap();
        assert_eq!(u.dir, out);
        std::fs::write(out.join("1/extra.txt"), b"?").unwrap();
        let e = unpack(&out, &tmp.path().join("cache"), &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("'1/extra.txt' is not listed"), "{e}");
    }
}
