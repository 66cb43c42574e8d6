//! `model.yaml`: the one schema that configures a model.
//!
//! Every field is optional; a folder with only `model.onnx` serves with the defaults below.
//! Unknown or mistyped keys are errors that name the file, the key's path and the nearest
//! valid key, because a silently ignored typo (`thread: 4`) is the hardest bug to find.
//!
//! ```yaml
//! # models/minilm/model.yaml
//! backend: onnx           # the only backend so far
//! model_file: model.onnx  # file inside each version folder
//! threads: 2              # ONNX Runtime intra-op threads for this model
//! inter_op_threads: 1     # parallel operator execution (unset: sequential)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// File name of a model's configuration inside its folder.
pub const CONFIG_FILE: &str = "model.yaml";

/// Which backend computes a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// ONNX Runtime (`model.onnx`).
    #[default]
    Onnx,
}

/// The contents of `model.yaml`. Field defaults live in [`Default`] and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Backend that runs the model. Default: `onnx`.
    pub backend: BackendKind,
    /// Model file inside each numeric version folder (or beside `model.yaml` for a bare,
    /// unversioned model). Default: `model.onnx`.
    pub model_file: String,
    /// Intra-op threads ONNX Runtime uses for one request. Default: unset, which lets ONNX
    /// Runtime use one thread per core.
    pub threads: Option<usize>,
    /// Threads for running independent operators in parallel. Default: unset (sequential
    /// execution, which is what most models want).
    pub inter_op_threads: Option<usize>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Onnx,
            model_file: "model.onnx".to_string(),
            threads: None,
            inter_op_threads: None,
        }
    }
}

/// A `model.yaml` that could not be read or understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, with the key's path and a suggestion when there is one.
    pub message: String,
}

impl ModelConfig {
    /// Reads `dir/model.yaml`, or returns the defaults when there is none.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let file = dir.join(CONFIG_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => Self::parse(&file, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ConfigError {
                file,
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Parses YAML text; `file` is only used in error messages.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let fail = |message: String| ConfigError {
            file: file.to_path_buf(),
            message,
        };
        // An empty file (or one with only comments) means "all defaults".
        if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        }) {
            return Ok(Self::default());
        }
        let config: ModelConfig =
            serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text))
                .map_err(|e| fail(describe(&e.path().to_string(), e.inner())))?;
        if config.model_file.is_empty() || Path::new(&config.model_file).components().count() != 1 {
            return Err(fail(format!(
                "model_file must be a plain file name, got '{}'",
                config.model_file
            )));
        }
        if config.threads == Some(0) || config.inter_op_threads == Some(0) {
            return Err(fail(
                "threads and inter_op_threads must be at least 1 (leave them out for the default)"
                    .into(),
            ));
        }
        Ok(config)
    }
}

/// Turns a serde error into a sentence with the key's path and, for an unknown key, the nearest
/// valid one.
fn describe(path: &str, err: &serde_yaml_ng::Error) -> String {
    let msg = err.to_string();
    if let Some(unknown) = UnknownField::parse(&msg) {
        // serde_path_to_error's path already ends with the unknown key.
        let key = if path.is_empty() || path == "." {
            unknown.field.clone()
        } else {
            path.to_string()
        };
        let valid = unknown.expected.join(", ");
        return match unknown.nearest() {
            Some(s) => {
                format!("unknown key '{key}': did you mean '{s}'? (valid keys here: {valid})")
            }
            None => format!("unknown key '{key}' (valid keys here: {valid})"),
        };
    }
    if path.is_empty() || path == "." {
        msg
    } else {
        format!("key '{path}': {msg}")
    }
}

/// The parts of serde's standard "unknown field" message.
struct UnknownField {
    field: String,
    expected: Vec<String>,
}

impl UnknownField {
    /// Parses serde's `unknown field `x`, expected one of `a`, `b`` (or `expected `a` or `b``,
    /// or `there are no fields`), the wording of `serde::de::Error::unknown_field`.
    fn parse(msg: &str) -> Option<Self> {
        let rest = msg.strip_prefix("unknown field `")?;
        let (field, rest) = rest.split_once('`')?;
        // Everything after the field name in backticks is a valid alternative; a location
        // suffix (" at line 2 column 1") has none.
        let expected = rest
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        Some(Self {
            field: field.to_string(),
            expected,
        })
    }

    fn nearest(&self) -> Option<&str> {
        self.expected
            .iter()
            .map(|c| (strsim::jaro_winkler(&self.field, c), c))
            .filter(|(score, _)| *score >= 0.7)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig, ConfigError> {
        ModelConfig::parse(Path::new("m/model.yaml"), text)
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("# nothing\n").unwrap(), ModelConfig::default());
    }

    #[test]
    fn fields_parse() {
        let c = parse("backend: onnx\nthreads: 2\nmodel_file: net.onnx\n").unwrap();
        assert_eq!(c.threads, Some(2));
        assert_eq!(c.model_file, "net.onnx");
    }

    #[test]
    fn unknown_key_names_file_key_and_suggestion() {
        let e = parse("thread: 2\n").unwrap_err().to_string();
        assert!(e.starts_with("m/model.yaml: unknown key 'thread'"), "{e}");
        assert!(e.contains("did you mean 'threads'?"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = parse("threads: many\n").unwrap_err().to_string();
        assert!(e.contains("key 'threads'"), "{e}");
    }

    #[test]
    fn unknown_backend_is_rejected() {
        let e = parse("backend: tensorflow\n").unwrap_err().to_string();
        assert!(e.contains("backend"), "{e}");
        assert!(e.contains("onnx"), "{e}");
    }

    #[test]
    fn model_file_cannot_escape_the_folder() {
        assert!(parse("model_file: ../x.onnx\n").is_err());
    }
}
