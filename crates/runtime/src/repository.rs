//! The model repository on disk: one folder per model, numeric version folders inside.
//!
//! ```text
//! models/
//!   efficientnet/
//!     model.yaml          # optional
//!     1/model.onnx
//!     2/model.onnx
//!   simple/
//!     model.onnx          # a bare model file is version 1
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::backend::{version_folders, Backends, Detected};
use crate::config::{ConfigError, ModelConfig, CONFIG_FILE};

/// A model folder found in the repository, before anything is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    /// The folder's name, which is the model's name.
    pub name: String,
    /// The folder.
    pub dir: PathBuf,
    /// A `model.yaml` read instead of the folder's configuration (`--model-config-dir`).
    pub config_file: Option<PathBuf>,
}

/// A model folder's configuration and the model file of each version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLayout {
    /// Parsed `model.yaml` (or defaults), with what the folder implies filled in: the backend,
    /// the model file and, for a checkpoint that implies one, the task.
    pub config: ModelConfig,
    /// Version number → model file.
    pub versions: BTreeMap<u64, PathBuf>,
}

/// Why a model folder cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// `model.yaml` is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No model file anywhere it is looked for.
    #[error("no {file} in {dir} or in a numeric version folder inside it")]
    NoModelFile {
        /// Expected file name.
        file: String,
        /// The model folder.
        dir: PathBuf,
    },
    /// `version_policy` picks none of the versions there are.
    #[error("version_policy in {dir} serves none of its versions {found:?}")]
    NoVersionServed {
        /// Versions found.
        found: Vec<u64>,
        /// The model folder.
        dir: PathBuf,
    },
    /// The folder could not be listed.
    #[error("cannot read {dir}: {reason}")]
    Io {
        /// The folder.
        dir: PathBuf,
        /// The OS's message.
        reason: String,
    },
}

/// Lists the model folders under `root`, sorted by name. Hidden folders (`.name`) are skipped.
pub fn scan(root: &Path) -> std::io::Result<Vec<ModelSource>> {
    let mut models = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(path = %entry.path().display(), "skipping a model folder whose name is not UTF-8");
            continue;
        };
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        models.push(ModelSource {
            name,
            dir: entry.path(),
            config_file: None,
        });
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// Whether `root` is itself one model rather than a repository of model folders: KServe's
/// single-model layout, where `/mnt/models` holds the model's files (a model file,
/// `model.yaml`, `config.pbtxt`) or its numeric version folders. A repository holds only model
/// folders (hidden entries aside).
pub fn is_single_model(root: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_file() || (path.is_dir() && name.parse::<u64>().is_ok()) {
            return Ok(true);
        }
    }
    Ok(false)
}

impl ModelSource {
    /// Reads the folder's configuration, picks its backend (the one `model.yaml` names, else
    /// the first of `backends` that recognises a version folder) and finds its versions.
    ///
    /// Numeric sub-folders that contain the model file are versions. A model file directly in
    /// the folder is version 1, unless a folder `1/` exists too, which wins.
    pub fn layout(&self, backends: &Backends) -> Result<ModelLayout, LayoutError> {
        let mut config = match &self.config_file {
            Some(file) => ModelConfig::load_file(file)?,
            None => ModelConfig::load(&self.dir)?,
        };
        let io = |e: std::io::Error| LayoutError::Io {
            dir: self.dir.clone(),
            reason: e.to_string(),
        };
        let config_error = |message: String| {
            LayoutError::Config(ConfigError {
                file: self
                    .config_file
                    .clone()
                    .unwrap_or_else(|| self.dir.join(CONFIG_FILE)),
                message,
            })
        };
        let folders = version_folders(&self.dir).map_err(io)?;
        let first_match = |loader: &std::sync::Arc<dyn crate::backend::BackendLoader>| {
            folders.iter().find_map(|(_, f)| loader.detect(f, &config))
        };
        let (loader, detected): (_, Option<Detected>) = match &config.backend {
            Some(name) => {
                let loader = backends.named(name).map_err(config_error)?;
                (loader.clone(), first_match(loader))
            }
            None => {
                let candidates: Vec<_> = backends.for_task(config.task).collect();
                let found = candidates
                    .iter()
                    .find_map(|l| first_match(l).map(|d| ((*l).clone(), Some(d))));
                match (found, candidates.first()) {
                    (Some(found), _) => found,
                    // Nothing recognised: report what the first backend would have wanted.
                    (None, Some(first)) => ((*first).clone(), None),
                    (None, None) => {
                        return Err(config_error(format!(
                            "no backend of this server serves task {} (it has: {})",
                            config.task.map_or("none", |t| t.as_str()),
                            backends.names().collect::<Vec<_>>().join(", ")
                        )))
                    }
                }
            }
        };
        if config.task.is_none() {
            config.task = detected.as_ref().and_then(|d| d.task);
        }
        loader.check(&config).map_err(config_error)?;
        let Some(detected) = detected else {
            return Err(LayoutError::NoModelFile {
                file: loader.expected_file(&config),
                dir: self.dir.clone(),
            });
        };
        config.backend = Some(loader.name().to_string());
        config.model_file = Some(detected.model_file.clone());
        let mut versions = BTreeMap::new();
        for (number, folder) in &folders {
            let file = folder.join(&detected.model_file);
            if !file.is_file() {
                continue;
            }
            match number {
                Some(n) => {
                    versions.insert(*n, file);
                }
                None => {
                    versions.entry(1).or_insert(file);
                }
            }
        }
        let served = config.version_policy.select(versions.keys().copied());
        if served.is_empty() {
            return Err(LayoutError::NoVersionServed {
                found: versions.keys().copied().collect(),
                dir: self.dir.clone(),
            });
        }
        versions.retain(|v, _| served.contains(v));
        Ok(ModelLayout { config, versions })
    }
}

/// A summary of every file under `dir`, or of the one file `dir` names (paths, sizes,
/// modification times; links followed): it changes when a file is added, removed or rewritten,
/// which is what a repository poll looks for.
pub fn fingerprint(dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut stack = Vec::new();
    let mut entries = Vec::new();
    let mut visit = |path: PathBuf, stack: &mut Vec<PathBuf>| {
        let Ok(meta) = std::fs::metadata(&path) else {
            return;
        };
        if meta.is_dir() {
            stack.push(path);
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            entries.push((path, meta.len(), mtime));
        }
    };
    visit(dir.to_path_buf(), &mut stack);
    while let Some(d) = stack.pop() {
        let Ok(list) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in list.flatten() {
            visit(entry.path(), &mut stack);
        }
    }
    entries.sort();
    entries.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Bytes of the weights a version loads: every file in the version's folder (recursively, for
/// checkpoint folders), or, for a model file directly in the model folder, every file of the
/// model folder but its numeric version folders.
pub fn weights_bytes(file: &Path, model_dir: &Path) -> u64 {
    let Some(parent) = file.parent() else {
        return 0;
    };
    let bare = parent == model_dir;
    let mut total = 0;
    let mut stack = vec![parent.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let version_folder = bare
                && d == parent
                && entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u64>().is_ok());
            match std::fs::metadata(entry.path()) {
                Ok(m) if m.is_dir() && !version_folder => stack.push(entry.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Backends {
        Backends::builtin(&Default::default())
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn a_folder_of_model_files_or_version_folders_is_one_model() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        touch(&root.join("resnet/1/model.onnx"));
        touch(&root.join(".cache/x"));
        assert!(!is_single_model(root).unwrap());
        let one = root.join("resnet");
        assert!(is_single_model(&one).unwrap());
        let bare = tmp.path().join("bare");
        touch(&bare.join("model.onnx"));
        assert!(is_single_model(&bare).unwrap());
    }

    #[test]
    fn a_separate_model_yaml_replaces_the_folders() {
        let tmp = tempfile::tempdir().unwrap();
        touch(&tmp.path().join("m/1/model.onnx"));
        std::fs::write(tmp.path().join("m/model.yaml"), "replicas: 2\n").unwrap();
        let config = tmp.path().join("config/m/model.yaml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, "replicas: 3\n").unwrap();
        let mut source = ModelSource {
            name: "m".into(),
            dir: tmp.path().join("m"),
            config_file: None,
        };
        assert_eq!(source.layout(&backends()).unwrap().config.replicas, 2);
        source.config_file = Some(config.clone());
        assert_eq!(source.layout(&backends()).unwrap().config.replicas, 3);
        std::fs::write(&config, "replicas: many\n").unwrap();
        let e = source.layout(&backends()).unwrap_err().to_string();
        assert!(e.contains("config/m/model.yaml"), "{e}");
        // Editing the separate file changes what a poll compares.
        let before = fingerprint(&config);
        std::fs::write(&config, "replicas: 10\n").unwrap();
        assert_ne!(before, fingerprint(&config));
    }

    #[test]
    fn finds_versions_and_bare_files() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("a/1/model.onnx"));
        touch(&root.path().join("a/3/model.onnx"));
        touch(&root.path().join("a/notes/model.onnx"));
        touch(&root.path().join("b/model.onnx"));
        std::fs::create_dir_all(root.path().join(".hidden")).unwrap();
        std::fs::create_dir_all(root.path().join("empty")).unwrap();

        let models = scan(root.path()).unwrap();
        let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "empty"]);

        let a = models[0].layout(&backends()).unwrap();
        assert_eq!(a.versions.keys().copied().collect::<Vec<_>>(), [1, 3]);
        let b = models[1].layout(&backends()).unwrap();
        assert_eq!(b.versions.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(matches!(
            models[2].layout(&backends()),
            Err(LayoutError::NoModelFile { .. })
        ));
    }

    #[test]
    fn version_policy_picks_versions() {
        let root = tempfile::tempdir().unwrap();
        for v in [1, 2, 5] {
            touch(&root.path().join(format!("m/{v}/model.onnx")));
        }
        let versions = |yaml: &str| {
            std::fs::write(root.path().join("m/model.yaml"), yaml).unwrap();
            scan(root.path()).unwrap()[0]
                .layout(&backends())
                .map(|l| l.versions.keys().copied().collect::<Vec<_>>())
        };
        assert_eq!(versions("").unwrap(), [1, 2, 5]);
        assert_eq!(versions("version_policy: all\n").unwrap(), [1, 2, 5]);
        assert_eq!(versions("version_policy: {latest: 1}\n").unwrap(), [5]);
        assert_eq!(versions("version_policy: {latest: 2}\n").unwrap(), [2, 5]);
        assert_eq!(
            versions("version_policy: {specific: [1, 5, 7]}\n").unwrap(),
            [1, 5]
        );
        assert!(matches!(
            versions("version_policy: {specific: [7]}\n"),
            Err(LayoutError::NoVersionServed { .. })
        ));
        assert!(versions("version_policy: {latest: 0}\n").is_err());
        assert!(versions("version_policy: newest\n").is_err());
    }

    #[test]
    fn a_named_backend_takes_any_model_file_and_an_unnamed_one_is_inferred() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("m/1/net.bin"));
        std::fs::write(
            root.path().join("m/model.yaml"),
            "backend: onnx\nmodel_file: net.bin\n",
        )
        .unwrap();
        let layout = scan(root.path()).unwrap()[0].layout(&backends()).unwrap();
        assert_eq!(layout.config.backend.as_deref(), Some("onnx"));
        assert_eq!(layout.versions.keys().copied().collect::<Vec<_>>(), [1]);
        // Without backend: a file that is not .onnx is nobody's.
        std::fs::write(root.path().join("m/model.yaml"), "model_file: net.bin\n").unwrap();
        assert!(matches!(
            scan(root.path()).unwrap()[0].layout(&backends()),
            Err(LayoutError::NoModelFile { .. })
        ));
    }

    #[test]
    fn model_file_from_config_is_used() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("m/2/net.onnx"));
        std::fs::write(root.path().join("m/model.yaml"), "model_file: net.onnx\n").unwrap();
        let m = &scan(root.path()).unwrap()[0];
        assert_eq!(
            m.layout(&backends())
                .unwrap()
                .versions
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [2]
        );
    }
}
