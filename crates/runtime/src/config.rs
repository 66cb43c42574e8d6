//! `model.yaml`: the one schema that configures a model.
//!
//! Every field is optional; a folder with only `model.onnx` serves with the defaults below.
//! Unknown or mistyped keys are errors that name the file, the key's path and the nearest
//! valid key, because a silently ignored typo (`thread: 4`) is the hardest bug to find.
//!
//! ```yaml
//! # models/minilm/model.yaml
//! backend: onnx           # inferred from the folder when left out (model.onnx: onnx)
//! model_file: model.onnx  # file inside each version folder
//! replicas: 2             # two sessions, each serving one batch at a time
//! threads: 1              # ONNX Runtime intra-op threads per replica
//! devices: [cpu]          # or [cuda:0, cuda:1], or round-robin
//! max_batch_size: 32      # rows per batch; 0 turns batching off
//! dynamic_batching:
//!   preferred_batch_size: [8, 16, 32]
//!   max_queue_delay_us: 500
//!   max_queue_size: 256
//!   default_timeout_ms: 2000
//!   preserve_ordering: false
//! pad:                    # pad token inputs of different lengths to the longest in the batch
//!   input_ids: 0
//!   attention_mask: 0
//!   token_type_ids: 0
//! task: text-embedding    # a built-in task around the model (see ferroserve_tasks::config)
//! text:
//!   pooling: mean
//!   max_batch_tokens: 16384
//! autoscaling:            # Ray Serve's rule, between these bounds (replaces replicas)
//!   min_replicas: 1
//!   max_replicas: 4
//!   target_ongoing_requests: 2
//! ```
//!
//! A generative model is a Hugging Face checkpoint folder served by the candle backend:
//!
//! ```yaml
//! # models/t5/model.yaml (beside config.json, model.safetensors, tokenizer.json)
//! task: summarization
//! generation: {num_beams: 2, max_length: 60}   # defaults for requests that leave them out
//! ```
//!
//! The backend is inferred from the folder when `backend:` is left out, as Triton infers it from
//! the file name: each backend compiled in is asked, in turn, whether a version folder holds a
//! model it serves for the task (`model.onnx`: onnx; a checkpoint's `config.json` with
//! safetensors, or a diffusers `model_index.json`: candle). A folder with no `model.yaml` that
//! holds a diffusers pipeline or a T5 checkpoint (`config.json` naming
//! `T5ForConditionalGeneration`) is recognised with its task.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::autoscale::Autoscaling;
pub use ferroserve_core::Device;
use ferroserve_tasks::config::{
    ClassificationConfig, ImageConfig, TaskConfig, TaskKind, TextConfig,
};
use serde::Deserialize;

/// File name of a model's configuration inside its folder.
pub const CONFIG_FILE: &str = "model.yaml";

/// Device placement of a model's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DevicesRepr")]
pub enum Devices {
    /// Replica `i` runs on entry `i mod len` of the list.
    List(Vec<Device>),
    /// Replica `i` runs on GPU `i mod n`, `n` being the GPUs this process can see (Jina's
    /// `CUDA_VISIBLE_DEVICES=RR`).
    RoundRobin,
}

impl Default for Devices {
    fn default() -> Self {
        Devices::List(vec![Device::Cpu])
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DevicesRepr {
    One(String),
    List(Vec<String>),
}

impl TryFrom<DevicesRepr> for Devices {
    type Error = String;

    fn try_from(r: DevicesRepr) -> Result<Self, String> {
        match r {
            DevicesRepr::One(s) if s == "round-robin" => Ok(Devices::RoundRobin),
            DevicesRepr::One(s) => Ok(Devices::List(vec![s.parse()?])),
            DevicesRepr::List(v) if v.is_empty() => {
                Err("devices must name at least one device".to_string())
            }
            DevicesRepr::List(v) => v
                .iter()
                .map(|s| s.parse())
                .collect::<Result<_, _>>()
                .map(Devices::List),
        }
    }
}

/// Dynamic batching: how requests wait to be combined (Triton's and Jina's field names).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DynamicBatching {
    /// Batch sizes to aim for: a batch is dispatched as soon as its rows reach the largest
    /// preferred size that fits. Default: none (dispatch at `max_batch_size` or the delay).
    pub preferred_batch_size: Vec<usize>,
    /// How long the oldest request may wait for others to join its batch, in microseconds.
    /// Default: 0 (take what is queued right now).
    pub max_queue_delay_us: u64,
    /// Requests that may wait in this model's queue; more are refused with 503 at once.
    /// Default: the server's `--max-queue-size`.
    pub max_queue_size: Option<usize>,
    /// A request still queued after this many milliseconds is answered 504 without running.
    /// Default: none (a request's own `timeout` parameter, in microseconds, still applies).
    pub default_timeout_ms: Option<u64>,
    /// Answer requests in the order they arrived, holding back one that finishes before an
    /// earlier one (with several replicas, or when an earlier request is slower). Default: false.
    pub preserve_ordering: bool,
}

/// Which of a model's version folders are served (Triton's `version_policy`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "VersionPolicyRepr")]
pub enum VersionPolicy {
    /// Every version folder (`version_policy: all`).
    #[default]
    All,
    /// The N highest versions (`version_policy: {latest: N}`).
    Latest(usize),
    /// These versions, where they exist (`version_policy: {specific: [1, 3]}`).
    Specific(Vec<u64>),
}

/// `version_policy` as written: `all`, or a mapping with one of `latest` and `specific`.
#[derive(Deserialize)]
#[serde(untagged)]
enum VersionPolicyRepr {
    Word(String),
    Map {
        latest: Option<usize>,
        specific: Option<Vec<u64>>,
    },
}

impl TryFrom<VersionPolicyRepr> for VersionPolicy {
    type Error = String;

    fn try_from(r: VersionPolicyRepr) -> Result<Self, String> {
        const EXPECTED: &str = "version_policy must be all, {latest: N} or {specific: [versions]}";
        match r {
            VersionPolicyRepr::Word(w) if w == "all" => Ok(VersionPolicy::All),
            VersionPolicyRepr::Map {
                latest: Some(0),
                specific: None,
            } => Err("version_policy latest must be at least 1".into()),
            VersionPolicyRepr::Map {
                latest: Some(n),
                specific: None,
            } => Ok(VersionPolicy::Latest(n)),
            VersionPolicyRepr::Map {
                latest: None,
                specific: Some(v),
            } if !v.is_empty() => Ok(VersionPolicy::Specific(v)),
            _ => Err(EXPECTED.into()),
        }
    }
}

impl VersionPolicy {
    /// The versions of `found` (ascending) to serve.
    pub fn select(&self, found: impl DoubleEndedIterator<Item = u64>) -> Vec<u64> {
        match self {
            VersionPolicy::All => found.collect(),
            VersionPolicy::Latest(n) => {
                let mut v: Vec<u64> = found.rev().take(*n).collect();
                v.reverse();
                v
            }
            VersionPolicy::Specific(wanted) => found.filter(|v| wanted.contains(v)).collect(),
        }
    }
}

/// When a model is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadPolicy {
    /// When the server starts (or the model is registered).
    #[default]
    Eager,
    /// On its first request; it may be unloaded again when idle and the memory budget needs room.
    Lazy,
}

/// The contents of `model.yaml`. Field defaults live in [`Default`] and nowhere else.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Backend that runs the model: `onnx`, `candle`, or another compiled in. Default: inferred
    /// from the folder (see the module's documentation).
    pub backend: Option<String>,
    /// Model file inside each numeric version folder (or beside `model.yaml` for a bare,
    /// unversioned model). Default: the backend's own: `model.onnx` for onnx; for candle, the
    /// checkpoint's `config.json` (summarization) or `model_index.json` (text-to-image), whose
    /// folder holds the rest of the checkpoint.
    pub model_file: Option<String>,
    /// Loaded instances of the model; each runs one batch at a time, and an idle replica takes
    /// the next batch. Default: 1 (with `autoscaling`, its `initial_replicas`).
    pub replicas: usize,
    /// Scale the replicas with the load, by Ray Serve's rule (`min_replicas`, `max_replicas`,
    /// `target_ongoing_requests`, `upscale_delay_s`, `downscale_delay_s`, ...). Default: off.
    pub autoscaling: Option<Autoscaling>,
    /// Intra-op threads ONNX Runtime uses in each replica. Default: the machine's cores divided
    /// by `replicas` (at least 1), so replicas together do not oversubscribe the cores.
    pub threads: Option<usize>,
    /// Threads for running independent operators in parallel. Default: unset (sequential
    /// execution, which is what most models want).
    pub inter_op_threads: Option<usize>,
    /// Where replicas run: `[cpu]`, `[cuda:0, cuda:1]` (replica `i` gets entry `i mod n`) or
    /// `round-robin` over the visible GPUs. Default: `[cpu]`.
    pub devices: Devices,
    /// Largest batch (sum of the requests' first dimensions) the model is given. Requests with
    /// more rows are refused. 0 means the model is not batched by the server. Default: 0, or 32
    /// when `dynamic_batching` is present.
    pub max_batch_size: Option<usize>,
    /// Combine concurrent requests into batches. Default: off.
    pub dynamic_batching: Option<DynamicBatching>,
    /// Inputs whose non-batch dimensions may differ between requests, with the value to pad
    /// them with up to the longest in the batch (token ids, attention masks). Default: none;
    /// text tasks pad the token inputs they fill with 0 on their own.
    pub pad: BTreeMap<String, f64>,
    /// A built-in task around the model: `image-classification`, `text-embedding` or
    /// `text-classification`. Default: none (a plain model: tensors in, tensors out).
    pub task: Option<TaskKind>,
    /// Image preprocessing for `image-classification` (resize, crop, normalisation).
    pub image: Option<ImageConfig>,
    /// Tokenising and pooling for the text tasks.
    pub text: Option<TextConfig>,
    /// Labels, softmax and top-k for the classification tasks.
    pub classification: Option<ClassificationConfig>,
    /// Generation defaults for `summarization`, by transformers' `generate` names (`num_beams`,
    /// `max_length`, `min_length`, `repetition_penalty`, `do_sample`, `temperature`, `top_k`,
    /// `top_p`, `seed`, ...: the candle backend's `generation::NAMES`); they win over the
    /// checkpoint's `generation_config.json`, and requests win over them. Read (and checked) by
    /// the backend.
    pub generation: Option<serde_yaml_ng::Value>,
    /// Image defaults for `text-to-image` (`height`, `width`, `num_inference_steps`,
    /// `guidance_scale`, `scheduler`); they win over the pipeline's own, and requests over them.
    /// Read (and checked) by the backend.
    pub diffusion: Option<serde_yaml_ng::Value>,
    /// Which version folders are served: `all`, `{latest: N}` or `{specific: [..]}`. Default:
    /// `all` (Triton's default is `latest: 1`).
    pub version_policy: VersionPolicy,
    /// `eager` (load at start) or `lazy` (load on the first request; evictable under
    /// `--memory-budget` when idle). Default: `eager`.
    pub load: LoadPolicy,
    /// The model's inputs, for backends that cannot read them from a model file (a Python
    /// `model.py`): `{name, datatype, dims}`, with `dims` as Triton writes them (without the
    /// batch dimension when `max_batch_size` is above 0). Default: none.
    pub inputs: Vec<TensorDecl>,
    /// The model's outputs, as `inputs`. Default: none.
    pub outputs: Vec<TensorDecl>,
    /// The Python interpreter of the model's workers (backend `python`): a virtual environment's
    /// `bin/python` with the model's own dependencies. Default: the server's `--python`, else
    /// `python3` on `PATH`.
    pub python: Option<PathBuf>,
    /// Milliseconds a Python worker may take to start and load the model (Jina's
    /// `timeout_ready`); -1 waits forever. Default: 600000.
    pub timeout_ready: Option<i64>,
    /// A TorchServe handler (backend `torchserve`): a built-in one's name (`image_segmenter`),
    /// or a Python file in the version folder (`my_handler.py`, `my_handler.py:handle`). Its
    /// requests are HTTP bodies on `/predictions/{model}`, and its answers what the handler
    /// returns. Default: none; a `.mar`'s manifest sets it.
    pub handler: Option<String>,
}

/// One input or output a model declares (Triton's `input`/`output` entries).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorDecl {
    /// The tensor's name.
    pub name: String,
    /// Its element type: `INT32`, `FP32`, `BYTES`, ... (Triton's `TYPE_INT32` spelling too).
    #[serde(deserialize_with = "datatype")]
    pub datatype: ferroserve_core::DataType,
    /// Its dimensions (`-1`: any size), without the batch dimension when the model batches.
    pub dims: Vec<i64>,
}

fn datatype<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ferroserve_core::DataType, D::Error> {
    let s = String::deserialize(d)?;
    parse_datatype(&s).map_err(serde::de::Error::custom)
}

/// A data type by its protocol name (`INT32`) or its configuration name (`TYPE_INT32`).
pub fn parse_datatype(s: &str) -> Result<ferroserve_core::DataType, String> {
    let bare = match s.strip_prefix("TYPE_") {
        Some("STRING") => "BYTES",
        Some(rest) => rest,
        None => s,
    };
    bare.parse().map_err(|_| {
        format!(
            "'{s}' is not a data type (BOOL, UINT8, INT32, INT64, FP16, FP32, FP64, BYTES, ...)"
        )
    })
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backend: None,
            model_file: None,
            replicas: 1,
            autoscaling: None,
            threads: None,
            inter_op_threads: None,
            devices: Devices::default(),
            max_batch_size: None,
            dynamic_batching: None,
            pad: BTreeMap::new(),
            task: None,
            image: None,
            text: None,
            classification: None,
            generation: None,
            diffusion: None,
            version_policy: VersionPolicy::All,
            load: LoadPolicy::Eager,
            inputs: Vec::new(),
            outputs: Vec::new(),
            python: None,
            timeout_ready: None,
            handler: None,
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
    /// Reads `dir/model.yaml`; without one, Triton's `dir/config.pbtxt` (the fields that
    /// matter, see [`crate::triton_config`]); without either, the newest version folder's
    /// TorchServe manifest and `model-config.yaml` (see [`crate::torchserve_config`]); without
    /// any, the defaults.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let file = dir.join(CONFIG_FILE);
        let read = |file: &Path| match std::fs::read_to_string(file) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ConfigError {
                file: file.to_path_buf(),
                message: format!("cannot read: {e}"),
            }),
        };
        let pbtxt = dir.join(crate::triton_config::FILE);
        if let Some(text) = read(&file)? {
            if pbtxt.is_file() {
                tracing::info!(
                    "{}: model.yaml configures the model; config.pbtxt beside it is not read",
                    dir.display()
                );
            }
            return Self::parse(&file, &text);
        }
        if let Some(text) = read(&pbtxt)? {
            return crate::triton_config::read(&text)
                .and_then(Self::checked)
                .map_err(|message| ConfigError {
                    file: pbtxt,
                    message,
                });
        }
        // A model store's TorchServe archive: its newest version folder is the unpacked `.mar`.
        let newest_archive = crate::backend::version_folders(dir)
            .ok()
            .and_then(|folders| {
                folders
                    .into_iter()
                    .rev()
                    .find(|(v, f)| v.is_some() && crate::torchserve_config::is_archive(f))
            });
        match newest_archive {
            Some((_, folder)) => crate::torchserve_config::read(&folder)
                .and_then(Self::checked)
                .map_err(|message| ConfigError {
                    file: folder.join(crate::torchserve_config::MANIFEST),
                    message,
                }),
            None => Ok(Self::default()),
        }
    }

    /// Reads a `model.yaml` kept apart from its model folder (`--model-config-dir`).
    pub fn load_file(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(file, &text)
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
        ferroserve_core::check_yaml_depth(text).map_err(fail)?;
        let config: ModelConfig =
            serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text))
                .map_err(|e| fail(describe(&e.path().to_string(), e.inner())))?;
        config.checked().map_err(fail)
    }

    /// Checks what serde cannot: fields that go together, bounds.
    fn checked(mut self) -> Result<Self, String> {
        let config = &mut self;
        let fail = |m: String| m;
        config.check_sections().map_err(fail)?;
        if let Some(file) = &config.model_file {
            if file.is_empty() || Path::new(file).components().count() != 1 {
                return Err(fail(format!(
                    "model_file must be a plain file name, got '{file}'"
                )));
            }
        }
        if config.threads == Some(0) || config.inter_op_threads == Some(0) {
            return Err(fail(
                "threads and inter_op_threads must be at least 1 (leave them out for the default)"
                    .into(),
            ));
        }
        if let Some(a) = &config.autoscaling {
            a.check().map_err(fail)?;
            if a.max_replicas > crate::MAX_REPLICAS {
                return Err(fail(format!(
                    "autoscaling.max_replicas must be at most {}",
                    crate::MAX_REPLICAS
                )));
            }
            if config.replicas != 1 {
                return Err(fail(
                    "set replicas or autoscaling, not both (autoscaling.initial_replicas sets the start)".into(),
                ));
            }
            // A model loads at least one replica (its signature comes from it); an idle one at
            // min_replicas 0 is let go by the autoscaler.
            config.replicas = a.initial().max(1);
        }
        if config.replicas == 0 || config.replicas > crate::MAX_REPLICAS {
            return Err(fail(format!(
                "replicas must be between 1 and {} (got {})",
                crate::MAX_REPLICAS,
                config.replicas
            )));
        }
        config.task_config().check().map_err(fail)?;
        if let Some(db) = &config.dynamic_batching {
            let max = config.batch_limit();
            if max == 0 {
                return Err(fail(
                    "dynamic_batching needs max_batch_size of at least 1".into(),
                ));
            }
            if let Some(p) = db.preferred_batch_size.iter().find(|&&p| p == 0 || p > max) {
                return Err(fail(format!(
                    "dynamic_batching.preferred_batch_size {p} must be between 1 and max_batch_size ({max})"
                )));
            }
            if db.max_queue_size == Some(0) {
                return Err(fail(
                    "dynamic_batching.max_queue_size must be at least 1".into(),
                ));
            }
        }
        if let Some(t) = config.timeout_ready {
            if t < -1 {
                return Err(fail(format!(
                    "timeout_ready is milliseconds, or -1 to wait forever (got {t})"
                )));
            }
        }
        for (what, list) in [("inputs", &config.inputs), ("outputs", &config.outputs)] {
            let mut seen = std::collections::BTreeSet::new();
            for t in list {
                if !seen.insert(&t.name) {
                    return Err(fail(format!("{what}: '{}' is declared twice", t.name)));
                }
                if let Some(d) = t.dims.iter().find(|&&d| d < -1) {
                    return Err(fail(format!(
                        "{what}: '{}' has dimension {d}; dimensions are sizes, or -1 for any",
                        t.name
                    )));
                }
            }
        }
        Ok(self)
    }

    /// Checks that the generative sections go with their task.
    fn check_sections(&self) -> Result<(), String> {
        if self.generation.is_some() && self.task != Some(TaskKind::Summarization) {
            return Err("the 'generation' section applies to task summarization".into());
        }
        if self.diffusion.is_some() && self.task != Some(TaskKind::TextToImage) {
            return Err("the 'diffusion' section applies to task text-to-image".into());
        }
        Ok(())
    }

    /// The task sections together.
    pub fn task_config(&self) -> TaskConfig {
        TaskConfig {
            kind: self.task,
            image: self.image.clone(),
            text: self.text.clone(),
            classification: self.classification.clone(),
        }
    }

    /// The effective `max_batch_size`: as set, else 32 with dynamic batching and 0 without.
    pub fn batch_limit(&self) -> usize {
        match (self.max_batch_size, &self.dynamic_batching) {
            (Some(n), _) => n,
            (None, Some(_)) => 32,
            (None, None) => 0,
        }
    }
}

/// Turns a serde error into a sentence with the key's path and, for an unknown key, the nearest
/// valid one. Every YAML file ferroserve reads reports its mistakes this way.
pub fn describe(path: &str, err: &serde_yaml_ng::Error) -> String {
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
        // serde_yaml_ng prefixes nested errors with their path ("dynamic_batching: unknown ...").
        const MARK: &str = "unknown field `";
        let rest = &msg[msg.find(MARK)? + MARK.len()..];
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
        assert_eq!(c.model_file.as_deref(), Some("net.onnx"));
        assert_eq!(c.backend.as_deref(), Some("onnx"));
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
    fn autoscaling_sets_the_starting_replicas_and_is_checked() {
        let c = parse("autoscaling: {min_replicas: 0, max_replicas: 3, initial_replicas: 2}\n")
            .unwrap();
        assert_eq!(c.replicas, 2);
        assert_eq!(c.autoscaling.unwrap().max_replicas, 3);
        // At zero, one replica still loads; the autoscaler lets it go when idle.
        assert_eq!(
            parse("autoscaling: {min_replicas: 0, max_replicas: 2}\n")
                .unwrap()
                .replicas,
            1
        );
        let e = |t: &str| parse(t).unwrap_err().to_string();
        assert!(e("replicas: 2\nautoscaling: {max_replicas: 3}\n").contains("not both"));
        assert!(e("autoscaling: {min_replicas: 3, max_replicas: 2}\n").contains("min_replicas"));
        assert!(e("autoscaling: {max_replicas: 1000}\n").contains("at most"));
        assert!(e("autoscaling: {max_replica: 2}\n").contains("did you mean 'max_replicas'?"));
    }

    #[test]
    fn batching_and_devices_parse() {
        let c = parse(
            "replicas: 2\ndevices: [cpu, cuda:1]\nmax_batch_size: 8\ndynamic_batching:\n  preferred_batch_size: [4, 8]\n  max_queue_delay_us: 100\npad: {input_ids: 0}\n",
        )
        .unwrap();
        assert_eq!(c.replicas, 2);
        assert_eq!(c.devices, Devices::List(vec![Device::Cpu, Device::Cuda(1)]));
        assert_eq!(c.batch_limit(), 8);
        assert_eq!(c.dynamic_batching.unwrap().preferred_batch_size, [4, 8]);
        assert_eq!(c.pad["input_ids"], 0.0);
        assert_eq!(
            parse("devices: round-robin\n").unwrap().devices,
            Devices::RoundRobin
        );
        assert_eq!(parse("dynamic_batching: {}\n").unwrap().batch_limit(), 32);
        assert_eq!(parse("threads: 1\n").unwrap().batch_limit(), 0);
    }

    #[test]
    fn batching_mistakes_are_named() {
        let e = |t: &str| parse(t).unwrap_err().to_string();
        assert!(e("devices: [tpu]\n").contains("unknown device 'tpu'"));
        assert!(e("replicas: 0\n").contains("replicas"));
        assert!(e("max_batch_size: 0\ndynamic_batching: {}\n").contains("max_batch_size"));
        assert!(
            e("max_batch_size: 4\ndynamic_batching: {preferred_batch_size: [8]}\n")
                .contains("preferred_batch_size 8")
        );
        let typo = e("dynamic_batching: {max_queue_delay: 5}\n");
        assert!(
            typo.contains("unknown key 'dynamic_batching.max_queue_delay'"),
            "{typo}"
        );
        assert!(
            typo.contains("did you mean 'max_queue_delay_us'?"),
            "{typo}"
        );
    }

    #[test]
    fn task_sections_parse_and_must_fit_the_task() {
        let c = parse("task: image-classification\nimage: {resize: {shorter_side: 256}, crop: 224, mean: [127, 127, 127], std: [128, 128, 128], scale: 1.0}\nclassification: {top_k: 3}\n").unwrap();
        assert_eq!(c.task, Some(TaskKind::ImageClassification));
        assert_eq!(c.image.unwrap().mean, [127.0; 3]);
        let e = |t: &str| parse(t).unwrap_err().to_string();
        assert!(e("task: text-embedding\nimage: {}\n").contains("'image' section does not apply"));
        assert!(e("text: {}\n").contains("needs a task"));
        assert!(e("task: image-classification\nimage: {resize: {}}\n").contains("shorter_side"));
        assert!(e("task: image-clasification\n").contains("image-classification"));
        for bad in [
            "image: {crop: 0}",
            "image: {crop: 100000}",
            "image: {max_pixels: 0}",
            "image: {std: [0, 1, 1]}",
            "classification: {top_k: 0}",
        ] {
            let msg = e(&format!("task: image-classification\n{bad}\n"));
            assert!(msg.contains("must"), "{bad}: {msg}");
        }
        assert!(e("task: text-classification\ntext: {pooling: cls}\n").contains("text-embedding"));
        let typo = e("task: text-embedding\ntext: {poolng: mean}\n");
        assert!(typo.contains("did you mean 'pooling'?"), "{typo}");
    }

    #[test]
    fn model_file_cannot_escape_the_folder() {
        assert!(parse("model_file: ../x.onnx\n").is_err());
    }
}
