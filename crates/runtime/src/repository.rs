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

use crate::config::{ConfigError, ModelConfig};

/// A model folder found in the repository, before anything is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    /// The folder's name, which is the model's name.
    pub name: String,
    /// The folder.
    pub dir: PathBuf,
}

/// A model folder's configuration and the model file of each version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLayout {
    /// Parsed `model.yaml` (or defaults).
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
        });
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

impl ModelSource {
    /// Reads the folder's configuration and finds its versions.
    ///
    /// Numeric sub-folders that contain the model file are versions. A model file directly in
    /// the folder is version 1, unless a folder `1/` exists too, which wins.
    pub fn layout(&self) -> Result<ModelLayout, LayoutError> {
        let config = ModelConfig::load(&self.dir)?;
        let io = |e: std::io::Error| LayoutError::Io {
            dir: self.dir.clone(),
            reason: e.to_string(),
        };
        let mut versions = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let Some(version) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let file = entry.path().join(&config.model_file);
            if file.is_file() {
                versions.insert(version, file);
            }
        }
        let bare = self.dir.join(&config.model_file);
        if bare.is_file() {
            versions.entry(1).or_insert(bare);
        }
        if versions.is_empty() {
            return Err(LayoutError::NoModelFile {
                file: config.model_file.clone(),
                dir: self.dir.clone(),
            });
        }
        Ok(ModelLayout { config, versions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
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

        let a = models[0].layout().unwrap();
        assert_eq!(a.versions.keys().copied().collect::<Vec<_>>(), [1, 3]);
        let b = models[1].layout().unwrap();
        assert_eq!(b.versions.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(matches!(
            models[2].layout(),
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
            m.layout()
                .unwrap()
                .versions
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [2]
        );
    }
}
