//! TorchServe's model archives, as `torch-model-archiver` writes them: a zip `NAME.mar` (files at
//! the root and `MAR-INF/MANIFEST.json`), `--archive-format tgz` (a gzipped tar whose entries sit
//! under `NAME/`, also named `.mar` or `.tar.gz`), and `no-archive` folders.
//!
//! A `.mar` carries no checksums, so the cache folder is named by the archive's own sha256, and a
//! cached copy is trusted only once its files match the archive's entries again. The archive's
//! files become the model's version folder, `cache/<sha256>/<version>/`, which is what the
//! runtime reads (it configures the model from the manifest, see `ferroserve-runtime`).
//!
//! TorchServe versions are strings; ferroserve's are whole numbers. `modelVersion` `N`, `N.0`
//! and `N.0.0` are version `N`; any other string is refused with a message saying so, rather than
//! mapped to a number nobody would guess.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::entries::{write_under, Kind, Scan};
use crate::manifest::{files_under, sha256_file, FileEntry, Manifest, FORMAT_VERSION};
use crate::unpack::{Limits, Unpacked};
use crate::StoreError;

/// Where a `.mar` keeps its manifest.
pub const MAR_MANIFEST: &str = "MAR-INF/MANIFEST.json";

/// File extension of TorchServe's model archives.
pub const MAR_EXTENSION: &str = "mar";

/// The parts of `MAR-INF/MANIFEST.json` the store needs (the runtime reads the rest).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MarManifest {
    #[serde(default)]
    created_on: String,
    #[serde(default)]
    archiver_version: String,
    model: MarModel,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MarModel {
    model_name: String,
    #[serde(default)]
    model_version: Option<String>,
}

/// Whether `path` is a TorchServe archive: a `.mar` (or `.tar.gz`) file, or a folder with
/// `MAR-INF/MANIFEST.json`.
pub fn is_mar(path: &Path) -> bool {
    if path.is_dir() {
        return path.join(MAR_MANIFEST).is_file();
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".mar") || name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// The whole-number version of a TorchServe `modelVersion`: `N`, `N.0` or `N.0.0` is `N`
/// (absent: 1).
pub fn numeric_version(version: Option<&str>) -> Result<u64, String> {
    let Some(v) = version.map(str::trim) else {
        return Ok(1);
    };
    let mut parts = v.split('.');
    let major = parts.next().and_then(|p| p.parse::<u64>().ok());
    let rest_zero =
        parts.clone().count() <= 2 && parts.all(|p| p.chars().all(|c| c == '0') && !p.is_empty());
    match major {
        Some(n) if n > 0 && rest_zero => Ok(n),
        _ => Err(format!(
            "modelVersion '{v}' is not a whole number: ferroserve numbers versions 1, 2, 3, ...; archive it with --version N or N.0 (a later version gets a larger N)"
        )),
    }
}

/// Reads an archive's manifest bytes into the store's terms.
fn parse_manifest(bytes: &[u8], archive: &Path) -> Result<(MarManifest, u64), StoreError> {
    let bad = |reason: String| StoreError::Manifest {
        archive: archive.to_path_buf(),
        reason,
    };
    let m: MarManifest = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("{MAR_MANIFEST} is not TorchServe's manifest: {e}")))?;
    crate::check_model_name(&m.model.model_name)
        .map_err(|e| bad(format!("{MAR_MANIFEST}: {e}")))?;
    let version = numeric_version(m.model.model_version.as_deref())
        .map_err(|e| bad(format!("{MAR_MANIFEST}: {e}")))?;
    Ok((m, version))
}

fn store_manifest(m: &MarManifest, version: u64, files: Vec<FileEntry>) -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        model_name: m.model.model_name.clone(),
        model_version: version,
        task: None,
        created_on: m.created_on.clone(),
        archiver_version: format!("torch-model-archiver {}", m.archiver_version),
        files,
    }
}

/// Unpacks (or finds in the cache and re-checks) the TorchServe archive `archive`.
pub(crate) fn unpack(
    archive: &Path,
    cache: &Path,
    limits: &Limits,
) -> Result<Unpacked, StoreError> {
    if archive.is_dir() {
        return folder(archive, cache);
    }
    crate::unpack::unpack_file(
        archive,
        cache,
        limits,
        &|tmp, room| extract(archive, tmp, limits, room),
        &|dir, room| recheck(archive, dir, limits, room),
    )
}

/// Scans the archive's entries (zip or gzipped tar, told by their first bytes).
fn scan(
    archive: &Path,
    limits: &Limits,
    room: u64,
    visit: &mut crate::entries::Visit<'_>,
) -> Result<(), StoreError> {
    let mut file = std::fs::File::open(archive).map_err(StoreError::io(archive))?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(StoreError::io(archive))?;
    std::io::Seek::rewind(&mut file).map_err(StoreError::io(archive))?;
    let scan = Scan::new(archive, limits, room);
    match &magic[..n] {
        [0x1f, 0x8b] => scan.tar(
            flate2::read::GzDecoder::new(std::io::BufReader::new(file)),
            "a TorchServe archive (a gzipped tar)",
            visit,
        ),
        _ => scan.zip(file, visit),
    }
}

/// Where the model's files sit among an archive's entries: the root, or the one folder `tgz`
/// archives put everything under.
fn root_of(paths: impl Iterator<Item = PathBuf> + Clone) -> Option<PathBuf> {
    if paths.clone().any(|p| p == Path::new(MAR_MANIFEST)) {
        return Some(PathBuf::new());
    }
    let mut tops = paths.map(|p| p.components().next().map(|c| PathBuf::from(c.as_os_str())));
    let first = tops.next()??;
    tops.all(|t| t.as_ref() == Some(&first)).then_some(first)
}

/// Extracts into `tmp/<version>/`, returning the manifest with every file's checksum.
fn extract(archive: &Path, tmp: &Path, limits: &Limits, room: u64) -> Result<Manifest, StoreError> {
    let raw = tmp.join(".entries");
    std::fs::create_dir_all(&raw).map_err(StoreError::io(&raw))?;
    scan(archive, limits, room, &mut write_under(archive, &raw))?;
    let listed: Vec<PathBuf> = files_under(&raw)?.into_iter().map(PathBuf::from).collect();
    let root = root_of(listed.iter().cloned())
        .filter(|r| raw.join(r).join(MAR_MANIFEST).is_file())
        .ok_or_else(|| StoreError::Manifest {
            archive: archive.to_path_buf(),
            reason: format!("no {MAR_MANIFEST} in it; is it a TorchServe model archive?"),
        })?;
    let model = raw.join(&root);
    let bytes = crate::manifest::read_bounded(&model.join(MAR_MANIFEST))?;
    let (m, version) = parse_manifest(&bytes, archive)?;
    let target = tmp.join(version.to_string());
    std::fs::rename(&model, &target).map_err(StoreError::io(&target))?;
    let _ = std::fs::remove_dir_all(&raw);
    let files = files_under(tmp)?
        .into_iter()
        .map(|rel| {
            let path = tmp.join(&rel);
            let size = std::fs::metadata(&path)
                .map_err(StoreError::io(&path))?
                .len();
            Ok(FileEntry {
                sha256: sha256_file(&path)?,
                path: rel,
                size,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(store_manifest(&m, version, files))
}

/// Checks a cached copy against the archive's entries, read again: the same files, sizes and
/// checksums, nothing more.
fn recheck(archive: &Path, dir: &Path, limits: &Limits, room: u64) -> Result<Manifest, StoreError> {
    let mut entries: BTreeMap<PathBuf, (u64, String)> = BTreeMap::new();
    // Every entry that could be the manifest, by path: which one is depends on the root.
    let mut manifests: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    scan(
        archive,
        limits,
        room,
        &mut |rel: &Path, kind, reader: &mut dyn Read| {
            if kind == Kind::Dir {
                return Ok(0);
            }
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0u64;
            let keep = rel.ends_with(MAR_MANIFEST);
            let mut kept = Vec::new();
            loop {
                let k = reader.read(&mut buf).map_err(StoreError::io(archive))?;
                if k == 0 {
                    break;
                }
                hasher.update(&buf[..k]);
                if keep && kept.len() < crate::unpack::MAX_MANIFEST_BYTES as usize {
                    kept.extend_from_slice(&buf[..k]);
                }
                n += k as u64;
            }
            if keep {
                manifests.insert(rel.to_path_buf(), kept);
            }
            entries.insert(rel.to_path_buf(), (n, hex::encode(hasher.finalize())));
            Ok(n)
        },
    )?;
    let root = root_of(entries.keys().cloned()).ok_or_else(|| StoreError::Manifest {
        archive: archive.to_path_buf(),
        reason: format!("no {MAR_MANIFEST} in it"),
    })?;
    let bytes = manifests
        .remove(&root.join(MAR_MANIFEST))
        .ok_or_else(|| StoreError::Manifest {
            archive: archive.to_path_buf(),
            reason: format!("no {MAR_MANIFEST} in it"),
        })?;
    let (m, version) = parse_manifest(&bytes, archive)?;
    let files = entries
        .into_iter()
        .filter_map(|(path, (size, sha256))| {
            let rel = path.strip_prefix(&root).ok()?;
            Some(FileEntry {
                path: format!("{version}/{}", rel.to_string_lossy()),
                size,
                sha256,
            })
        })
        .collect();
    let manifest = store_manifest(&m, version, files);
    manifest.verify(dir, archive)?;
    Ok(manifest)
}

/// A `no-archive` folder: served where it is, through a version folder in the cache that links
/// to it (the operator's own store, like ferroserve's `no-archive` folders).
fn folder(archive: &Path, cache: &Path) -> Result<Unpacked, StoreError> {
    let bytes = crate::manifest::read_bounded(&archive.join(MAR_MANIFEST))?;
    let (m, version) = parse_manifest(&bytes, archive)?;
    let real = archive.canonicalize().map_err(StoreError::io(archive))?;
    let mut key = Sha256::new();
    key.update(real.to_string_lossy().as_bytes());
    key.update(&bytes);
    let sha256 = hex::encode(key.finalize());
    // Beside the folders that merge archives' versions, which the cache sweeps the same way.
    let dir = cache
        .join("models")
        .join(format!("{}-mar-{}", m.model.model_name, &sha256[..16]));
    let link = dir.join(version.to_string());
    if std::fs::read_link(&link).ok().as_deref() != Some(real.as_path()) {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        std::os::unix::fs::symlink(&real, &link).map_err(StoreError::io(&link))?;
    }
    let files = files_under(&real)?
        .into_iter()
        .map(|rel| {
            let path = real.join(&rel);
            let size = std::fs::symlink_metadata(&path)
                .map_err(StoreError::io(&path))?
                .len();
            Ok(FileEntry {
                path: format!("{version}/{rel}"),
                size,
                sha256: String::new(),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Unpacked {
        file: archive.to_path_buf(),
        sha256,
        dir,
        manifest: store_manifest(&m, version, files),
    })
}

/// The model name a TorchServe archive file or folder's manifest gives, without unpacking it
/// (for naming a model whose archive fails to unpack).
pub(crate) fn model_name(archive: &Path) -> Option<String> {
    let bytes = if archive.is_dir() {
        crate::manifest::read_bounded(&archive.join(MAR_MANIFEST)).ok()?
    } else {
        let mut found: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        let limits = Limits::default();
        let size = std::fs::metadata(archive).ok()?.len();
        let _ = scan(
            archive,
            &limits,
            crate::unpack::room(size, &limits),
            &mut |rel: &Path, kind, reader: &mut dyn Read| {
                if kind == Kind::File
                    && rel.ends_with(MAR_MANIFEST)
                    && rel.components().count() <= 3
                {
                    let mut bytes = Vec::new();
                    reader
                        .take(crate::unpack::MAX_MANIFEST_BYTES)
                        .read_to_end(&mut bytes)
                        .map_err(StoreError::io(archive))?;
                    found.insert(rel.to_path_buf(), bytes);
                }
                Ok(0)
            },
        );
        let root = root_of(found.keys().cloned())?;
        found.remove(&root.join(MAR_MANIFEST))?
    };
    serde_json::from_slice::<MarManifest>(&bytes)
        .ok()
        .map(|m| m.model.model_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn manifest(version: &str) -> String {
        format!(
            r#"{{"createdOn": "01/12/2026 10:00:00", "runtime": "python", "model": {{"modelName": "fancy", "serializedFile": "model.pt", "handler": "image_classifier", "modelVersion": "{version}"}}, "archiverVersion": "0.12.0"}}"#
        )
    }

    fn zip_mar(path: &Path, entries: &[(&str, &[u8], Option<u32>)]) {
        let file = std::fs::File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(file);
        for (name, data, mode) in entries {
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            if mode.is_some() {
                z.add_symlink(*name, std::str::from_utf8(data).unwrap(), options)
                    .unwrap();
                continue;
            }
            z.start_file(*name, options).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }

    #[test]
    fn versions_map_to_whole_numbers() {
        assert_eq!(numeric_version(Some("1.0")), Ok(1));
        assert_eq!(numeric_version(Some("3")), Ok(3));
        assert_eq!(numeric_version(Some("2.0.0")), Ok(2));
        assert_eq!(numeric_version(None), Ok(1));
        for bad in ["1.5", "0", "v1", "1.0.0.0", "1.", "2.1.0"] {
            assert!(numeric_version(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn zip_and_tgz_unpack_into_the_version_folder_and_are_rechecked() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let mar = tmp.path().join("fancy.mar");
        let m = manifest("2.0");
        zip_mar(
            &mar,
            &[
                ("model.pt", b"weights", None),
                ("index_to_name.json", b"{}", None),
                (MAR_MANIFEST, m.as_bytes(), None),
            ],
        );
        let u = crate::unpack::unpack(&mar, &cache, &Limits::default()).unwrap();
        assert_eq!(u.manifest.model_name, "fancy");
        assert_eq!(u.manifest.model_version, 2);
        assert_eq!(std::fs::read(u.dir.join("2/model.pt")).unwrap(), b"weights");
        // A tampered cached copy is replaced from the archive.
        std::fs::write(u.dir.join("2/model.pt"), b"forged!").unwrap();
        let again = crate::unpack::unpack(&mar, &cache, &Limits::default()).unwrap();
        assert_eq!(
            std::fs::read(again.dir.join("2/model.pt")).unwrap(),
            b"weights"
        );

        // tgz: everything under NAME/.
        let tgz = tmp.path().join("fancy-tgz.mar");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&tgz).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        for (name, data) in [
            ("fancy/model.pt", &b"weights"[..]),
            ("fancy/MAR-INF/MANIFEST.json", m.as_bytes()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, name, data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
        let t = crate::unpack::unpack(&tgz, &cache, &Limits::default()).unwrap();
        assert_eq!(std::fs::read(t.dir.join("2/model.pt")).unwrap(), b"weights");
        assert!(t.dir.join("2").join(MAR_MANIFEST).is_file());
        assert_eq!(model_name(&mar).as_deref(), Some("fancy"));
    }

    #[test]
    fn traversal_and_links_are_refused_without_writing_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let m = manifest("1.0");
        let cases: [(&str, Option<u32>, &str); 3] = [
            ("../escape.txt", None, "'..'"),
            ("/tmp/abs-escape.txt", None, "absolute"),
            ("link", Some(0o120_777), "links"),
        ];
        for (name, mode, why) in cases {
            let mar = tmp.path().join("evil.mar");
            zip_mar(
                &mar,
                &[
                    (MAR_MANIFEST, m.as_bytes(), None),
                    (name, b"../../escape.txt", mode),
                ],
            );
            let e = crate::unpack::unpack(&mar, &cache, &Limits::default()).unwrap_err();
            assert!(
                matches!(&e, StoreError::Unsafe { entry, .. } if entry == name)
                    && e.to_string().contains(why),
                "{name}: {e}"
            );
            assert!(!tmp.path().join("escape.txt").exists());
            assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
        }
        // No manifest: not a TorchServe archive.
        let plain = tmp.path().join("plain.mar");
        zip_mar(&plain, &[("model.pt", b"w", None)]);
        let e = crate::unpack::unpack(&plain, &cache, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains(MAR_MANIFEST), "{e}");
    }
}
