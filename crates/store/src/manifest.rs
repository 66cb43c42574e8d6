use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// Where the manifest lives inside an archive (and inside a `no-archive` folder).
pub const MANIFEST_PATH: &str = "FAR-INF/MANIFEST.json";

/// The manifest format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What an archive holds: the model it packages and a checksum of every file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format (1).
    pub format: u32,
    /// The model's name (`--models all` serves the archive under it).
    pub model_name: String,
    /// The model version the archive holds (its numeric version folder).
    pub model_version: u64,
    /// The built-in task, when the archive's `model.yaml` names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// When the archive was made, RFC 3339 (UTC).
    pub created_on: String,
    /// The ferroserve version that made it.
    pub archiver_version: String,
    /// Every file of the model folder, sorted by path.
    pub files: Vec<FileEntry>,
}

/// One file of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path inside the model folder, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the contents, lowercase hex.
    pub sha256: String,
}

impl Manifest {
    /// Reads and checks the manifest of an unpacked archive or `no-archive` folder.
    pub fn read(dir: &Path, archive: &Path) -> Result<Manifest, StoreError> {
        let path = dir.join(MANIFEST_PATH);
        let bytes = read_bounded(&path).map_err(|e| StoreError::Manifest {
            archive: archive.to_path_buf(),
            reason: format!("no readable {MANIFEST_PATH} ({e}); is it a ferroserve archive?"),
        })?;
        Self::parse(&bytes, archive)
    }

    /// Parses a manifest's JSON.
    pub fn parse(bytes: &[u8], archive: &Path) -> Result<Manifest, StoreError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| StoreError::Manifest {
                archive: archive.to_path_buf(),
                reason: format!("{MANIFEST_PATH} is not a valid manifest: {e}"),
            })?;
        let mut seen = std::collections::BTreeSet::new();
        for f in &manifest.files {
            let safe =
                crate::unpack::safe_relative(&f.path).map_err(|why| StoreError::Manifest {
                    archive: archive.to_path_buf(),
                    reason: format!("the manifest lists '{}': {why}", f.path),
                })?;
            if !seen.insert(safe) || f.path == MANIFEST_PATH {
                return Err(StoreError::Manifest {
                    archive: archive.to_path_buf(),
                    reason: format!("the manifest lists '{}' twice", f.path),
                });
            }
        }
        if manifest.format != FORMAT_VERSION {
            return Err(StoreError::Manifest {
                archive: archive.to_path_buf(),
                reason: format!(
                    "manifest format {} is not one this build reads ({FORMAT_VERSION})",
                    manifest.format
                ),
            });
        }
        Ok(manifest)
    }

    /// Checks that `dir` holds exactly the manifest's files with their sizes and checksums.
    /// The error names the first file that differs.
    pub fn verify(&self, dir: &Path, archive: &Path) -> Result<(), StoreError> {
        let tampered = |file: &str, reason: String| StoreError::Tampered {
            archive: archive.to_path_buf(),
            file: file.to_string(),
            reason,
        };
        let mut listed = std::collections::BTreeSet::new();
        for f in &self.files {
            listed.insert(f.path.as_str());
            let path = dir.join(&f.path);
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|_| tampered(&f.path, "is listed in the manifest but missing".into()))?;
            if !meta.is_file() {
                return Err(tampered(&f.path, "is not a regular file".into()));
            }
            if meta.len() != f.size {
                return Err(tampered(
                    &f.path,
                    format!("has {} bytes, the manifest says {}", meta.len(), f.size),
                ));
            }
            let sha = sha256_file(&path)?;
            if sha != f.sha256 {
                return Err(tampered(
                    &f.path,
                    format!("has sha256 {sha}, the manifest says {}", f.sha256),
                ));
            }
        }
        for rel in files_under(dir)? {
            if rel != MANIFEST_PATH && !listed.contains(rel.as_str()) {
                return Err(tampered(&rel, "is not listed in the manifest".into()));
            }
        }
        Ok(())
    }

    /// The total size of the model's files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A manifest file's bytes, refusing one over the size any real manifest has.
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, StoreError> {
    let file = std::fs::File::open(path).map_err(StoreError::io(path))?;
    let mut bytes = Vec::new();
    file.take(crate::unpack::MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(StoreError::io(path))?;
    if bytes.len() as u64 > crate::unpack::MAX_MANIFEST_BYTES {
        return Err(StoreError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("the manifest is larger than 16 MiB"),
        });
    }
    Ok(bytes)
}

/// SHA-256 of a file's contents, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, StoreError> {
    let mut file = std::fs::File::open(path).map_err(StoreError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(StoreError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Every entry under `dir` that is not a folder, as `/`-separated relative paths, sorted. Links
/// are listed, not followed.
pub(crate) fn files_under(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&path).map_err(StoreError::io(&path))? {
            let entry = entry.map_err(StoreError::io(&path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type().map_err(StoreError::io(entry.path()))?;
            if kind.is_dir() {
                stack.push((entry.path(), child));
            } else {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}
