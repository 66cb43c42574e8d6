//! Writing archives (`ferroserve archive`) and reading their manifest (`--inspect`).
//!
//! An archive holds one model version as a model folder, exactly as the model repository lays
//! one out, plus the manifest:
//!
//! ```text
//! FAR-INF/MANIFEST.json   # name, version, task, created-on, archiver version, files + sha256
//! model.yaml              # the model's config (from --config, the folder, or written for --task)
//! 2/model.onnx            # the model file and every other file, in the version's folder
//! 2/index_to_name.json
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::manifest::{sha256_file, FileEntry, Manifest, FORMAT_VERSION, MANIFEST_PATH};
use crate::{StoreError, ARCHIVE_EXTENSION};

/// Name of a model's config file inside its folder.
const CONFIG_FILE: &str = "model.yaml";

/// Tasks served from checkpoint folders by the candle backend.
const GENERATIVE_TASKS: [&str; 2] = ["summarization", "text-to-image"];

/// Checks a `model.yaml`'s text, answering what is wrong with it.
pub type ConfigCheck = fn(&str) -> Result<(), String>;

/// What `ferroserve archive` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveFormat {
    /// One `NAME.far` file: a zstd-compressed tar.
    #[default]
    Far,
    /// A folder `NAME/` with the same contents, for stores on shared file systems.
    NoArchive,
}

/// What to archive, and where.
#[derive(Debug, Clone, Default)]
pub struct ArchiveSpec {
    /// The model's name (and the archive's file name).
    pub model_name: String,
    /// Version to record. Default: 1, or the highest version folder of a versioned model folder.
    pub version: Option<u64>,
    /// A model file, or a whole model folder (a repository entry or a checkpoint folder).
    pub model_path: PathBuf,
    /// Built-in task (`task:` in `model.yaml`).
    pub task: Option<String>,
    /// A `model.yaml` to use instead of the folder's.
    pub config: Option<PathBuf>,
    /// More files to put beside the model file (labels, tokenizer files).
    pub extra_files: Vec<PathBuf>,
    /// Folder to write the archive into.
    pub export_path: PathBuf,
    /// Archive file or plain folder.
    pub format: ArchiveFormat,
    /// Replace an existing archive of that name.
    pub force: bool,
    /// Checks the archive's `model.yaml` text before anything is written (the server's own
    /// parser, so a typo is found when archiving rather than when serving).
    pub validate: Option<ConfigCheck>,
}

/// Where a file of the archive comes from.
enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// Writes the archive `spec` describes and returns its path.
pub fn create(spec: &ArchiveSpec) -> Result<PathBuf, StoreError> {
    check_name(&spec.model_name)?;
    let (version, mut files) = collect(spec)?;
    let config = model_yaml(spec, &files)?;
    if let (Some(check), Some(yaml)) = (spec.validate, &config) {
        let text = String::from_utf8_lossy(yaml);
        check(&text).map_err(|e| StoreError::Invalid(format!("the archive's model.yaml: {e}")))?;
    }
    match config {
        Some(bytes) => {
            files.insert(CONFIG_FILE.to_string(), Source::Bytes(bytes));
        }
        None => {
            files.remove(CONFIG_FILE);
        }
    }
    let mut entries = Vec::with_capacity(files.len());
    for (path, source) in &files {
        let (size, sha256) = match source {
            Source::File(p) => (
                std::fs::metadata(p).map_err(StoreError::io(p))?.len(),
                sha256_file(p)?,
            ),
            Source::Bytes(b) => {
                use sha2::Digest;
                (b.len() as u64, hex::encode(sha2::Sha256::digest(b)))
            }
        };
        entries.push(FileEntry {
            path: path.clone(),
            size,
            sha256,
        });
    }
    let task = match files.get(CONFIG_FILE) {
        Some(Source::Bytes(b)) => task_of(b),
        _ => None,
    };
    let manifest = Manifest {
        format: FORMAT_VERSION,
        model_name: spec.model_name.clone(),
        model_version: version,
        task,
        created_on: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        archiver_version: env!("CARGO_PKG_VERSION").to_string(),
        files: entries,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| StoreError::Invalid(format!("cannot write the manifest: {e}")))?;
    std::fs::create_dir_all(&spec.export_path).map_err(StoreError::io(&spec.export_path))?;
    let out = match spec.format {
        ArchiveFormat::Far => spec
            .export_path
            .join(format!("{}.{ARCHIVE_EXTENSION}", spec.model_name)),
        ArchiveFormat::NoArchive => spec.export_path.join(&spec.model_name),
    };
    if std::fs::symlink_metadata(&out).is_ok() {
        if !spec.force {
            return Err(StoreError::Invalid(format!(
                "{} exists already; pass --force to replace it",
                out.display()
            )));
        }
        // An archive file is replaced by the rename below in one step, so a store being polled
        // never sees it missing; a folder cannot be, and goes first.
        if spec.format == ArchiveFormat::NoArchive {
            remove(&out)?;
        }
    }
    // Written beside the target and renamed, so a store never shows a half-written archive.
    let partial = spec.export_path.join(format!(
        ".{}.partial-{}",
        spec.model_name,
        std::process::id()
    ));
    let _ = remove(&partial);
    let written = match spec.format {
        ArchiveFormat::Far => write_far(&partial, &manifest_json, &files),
        ArchiveFormat::NoArchive => write_folder(&partial, &manifest_json, &files),
    };
    if let Err(e) = written {
        let _ = remove(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &out).map_err(StoreError::io(&out))?;
    Ok(out)
}

/// Reads the manifest of an archive file or `no-archive` folder without unpacking the files.
pub fn inspect(path: &Path) -> Result<Manifest, StoreError> {
    if path.is_dir() {
        return Manifest::read(path, path);
    }
    Manifest::parse(&manifest_bytes(path)?, path)
}

/// The manifest's bytes as an archive file holds them.
pub(crate) fn manifest_bytes(path: &Path) -> Result<Vec<u8>, StoreError> {
    let file = std::fs::File::open(path).map_err(StoreError::io(path))?;
    let decoder = zstd::Decoder::new(file).map_err(StoreError::io(path))?;
    let mut tar = tar::Archive::new(decoder);
    let not_archive = |e: std::io::Error| StoreError::Manifest {
        archive: path.to_path_buf(),
        reason: format!("not a ferroserve archive (a zstd-compressed tar): {e}"),
    };
    for entry in tar.entries().map_err(not_archive)? {
        let mut entry = entry.map_err(not_archive)?;
        if entry.path_bytes().as_ref() == MANIFEST_PATH.as_bytes() {
            let mut bytes = Vec::new();
            std::io::Read::by_ref(&mut entry)
                .take(crate::unpack::MAX_MANIFEST_BYTES)
                .read_to_end(&mut bytes)
                .map_err(not_archive)?;
            return Ok(bytes);
        }
    }
    Err(StoreError::Manifest {
        archive: path.to_path_buf(),
        reason: format!("no {MANIFEST_PATH} in it"),
    })
}

use std::io::Read as _;

fn check_name(name: &str) -> Result<(), StoreError> {
    crate::check_model_name(name).map_err(StoreError::Invalid)
}

/// The archive's files (path inside the model folder → source) and its version.
fn collect(
    spec: &ArchiveSpec,
) -> Result<(u64, std::collections::BTreeMap<String, Source>), StoreError> {
    let mut files = std::collections::BTreeMap::new();
    let path = &spec.model_path;
    let meta = std::fs::metadata(path).map_err(StoreError::io(path))?;
    let version;
    if meta.is_file() {
        version = spec.version.unwrap_or(1);
        files.insert(
            format!("{version}/{}", file_name(path)?),
            Source::File(path.clone()),
        );
    } else {
        let versions = version_folders(path)?;
        if versions.is_empty() {
            // A flat folder (a checkpoint, or model.onnx with its extras): it becomes one version.
            version = spec.version.unwrap_or(1);
            for rel in walk(path)? {
                let target = if rel == CONFIG_FILE {
                    rel.clone()
                } else {
                    format!("{version}/{rel}")
                };
                files.insert(target, Source::File(path.join(&rel)));
            }
        } else {
            version = match spec.version {
                Some(v) if versions.contains(&v) => v,
                Some(v) => {
                    return Err(StoreError::Invalid(format!(
                        "--version {v}: {} has version folders {versions:?}, not {v}",
                        path.display()
                    )))
                }
                None => versions.iter().copied().max().unwrap_or(1),
            };
            for rel in walk(path)? {
                files.insert(rel.clone(), Source::File(path.join(&rel)));
            }
        }
    }
    for extra in &spec.extra_files {
        let target = format!("{version}/{}", file_name(extra)?);
        if !extra.is_file() {
            return Err(StoreError::Invalid(format!(
                "extra file {} is not a file",
                extra.display()
            )));
        }
        if files
            .insert(target.clone(), Source::File(extra.clone()))
            .is_some()
        {
            return Err(StoreError::Invalid(format!(
                "extra file {} would replace {target}, which the model already has",
                extra.display()
            )));
        }
    }
    Ok((version, files))
}

/// The archive's `model.yaml`: `--config`, else the folder's, with `--task` set in it and, for
/// a single model file not named like the default, `model_file`. `None` when there is nothing
/// to say (defaults apply).
fn model_yaml(
    spec: &ArchiveSpec,
    files: &std::collections::BTreeMap<String, Source>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let text = match (&spec.config, files.get(CONFIG_FILE)) {
        (Some(p), _) => Some(std::fs::read_to_string(p).map_err(StoreError::io(p))?),
        (None, Some(Source::File(p))) => {
            Some(std::fs::read_to_string(p).map_err(StoreError::io(p))?)
        }
        _ => None,
    };
    let single_file = spec.model_path.is_file();
    if spec.task.is_none() && !single_file {
        return Ok(text.map(String::into_bytes));
    }
    let mut yaml: serde_yaml_ng::Value = match &text {
        Some(t) if !t.trim().is_empty() => serde_yaml_ng::from_str(t)
            .map_err(|e| StoreError::Invalid(format!("the model.yaml is not valid YAML: {e}")))?,
        _ => serde_yaml_ng::Value::Mapping(Default::default()),
    };
    let serde_yaml_ng::Value::Mapping(map) = &mut yaml else {
        return Err(StoreError::Invalid(
            "the model.yaml must be a mapping of settings".into(),
        ));
    };
    if let Some(task) = &spec.task {
        map.insert("task".into(), task.clone().into());
        // Generative tasks run on Hugging Face checkpoints, which only candle serves.
        if GENERATIVE_TASKS.contains(&task.as_str()) && !map.contains_key("backend") {
            map.insert("backend".into(), "candle".into());
        }
    }
    if single_file {
        let name = file_name(&spec.model_path)?;
        if name != "model.onnx" && !map.contains_key("model_file") {
            map.insert("model_file".into(), name.into());
        }
    }
    if map.is_empty() {
        return Ok(None);
    }
    serde_yaml_ng::to_string(&yaml)
        .map(|s| Some(s.into_bytes()))
        .map_err(|e| StoreError::Invalid(format!("cannot write model.yaml: {e}")))
}

fn task_of(yaml: &[u8]) -> Option<String> {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_slice(yaml).ok()?;
    value.get("task")?.as_str().map(str::to_string)
}

fn file_name(path: &Path) -> Result<String, StoreError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| StoreError::Invalid(format!("{} has no file name", path.display())))
}

/// Numeric sub-folders of a model folder.
fn version_folders(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(StoreError::io(dir))? {
        let entry = entry.map_err(StoreError::io(dir))?;
        if let Some(v) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        {
            if entry.path().is_dir() {
                versions.push(v);
            }
        }
    }
    Ok(versions)
}

/// Regular files under `dir` (links followed: archives hold files, never links), relative and
/// `/`-separated. Hidden entries are skipped; anything else that is not a file or folder is an
/// error.
fn walk(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&path).map_err(StoreError::io(&path))? {
            let entry = entry.map_err(StoreError::io(&path))?;
            let name = entry
                .file_name()
                .to_str()
                .map(str::to_string)
                .ok_or_else(|| {
                    StoreError::Invalid(format!(
                        "{} has a name that is not UTF-8",
                        entry.path().display()
                    ))
                })?;
            if name.starts_with('.') {
                continue;
            }
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::metadata(entry.path()).map_err(StoreError::io(entry.path()))?;
            if meta.is_dir() {
                stack.push((entry.path(), child));
            } else if meta.is_file() {
                out.push(child);
            } else {
                return Err(StoreError::Invalid(format!(
                    "{} is neither a file nor a folder",
                    entry.path().display()
                )));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn write_far(
    out: &Path,
    manifest: &[u8],
    files: &std::collections::BTreeMap<String, Source>,
) -> Result<(), StoreError> {
    let file = std::fs::File::create(out).map_err(StoreError::io(out))?;
    let encoder =
        zstd::Encoder::new(std::io::BufWriter::new(file), 3).map_err(StoreError::io(out))?;
    let mut tar = tar::Builder::new(encoder);
    let mut append = |path: &str, size: u64, reader: &mut dyn std::io::Read| {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, reader)
            .map_err(StoreError::io(out))
    };
    append(MANIFEST_PATH, manifest.len() as u64, &mut &manifest[..])?;
    for (path, source) in files {
        match source {
            Source::Bytes(b) => append(path, b.len() as u64, &mut &b[..])?,
            Source::File(p) => {
                let size = std::fs::metadata(p).map_err(StoreError::io(p))?.len();
                let mut f = std::fs::File::open(p).map_err(StoreError::io(p))?;
                append(path, size, &mut f)?;
            }
        }
    }
    let encoder = tar.into_inner().map_err(StoreError::io(out))?;
    let mut writer = encoder.finish().map_err(StoreError::io(out))?;
    writer.flush().map_err(StoreError::io(out))?;
    Ok(())
}

fn write_folder(
    out: &Path,
    manifest: &[u8],
    files: &std::collections::BTreeMap<String, Source>,
) -> Result<(), StoreError> {
    let write = |rel: &str, source: &Source| {
        let target = out.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(StoreError::io(parent))?;
        }
        match source {
            Source::Bytes(b) => std::fs::write(&target, b).map(|_| ()),
            Source::File(p) => std::fs::copy(p, &target).map(|_| ()),
        }
        .map_err(StoreError::io(&target))
    };
    write(MANIFEST_PATH, &Source::Bytes(manifest.to_vec()))?;
    for (rel, source) in files {
        write(rel, source)?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), StoreError> {
    let meta = std::fs::symlink_metadata(path).map_err(StoreError::io(path))?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
    .map_err(StoreError::io(path))
}
