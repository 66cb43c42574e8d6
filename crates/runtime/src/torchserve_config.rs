//! TorchServe's model archive, read as a model configuration: `MAR-INF/MANIFEST.json` (the
//! handler, the serialized file, the model file) and the archive's `model-config.yaml`
//! (`configFile`): workers, batching, timeout and devices. Keys that have no meaning here are
//! logged once when the model loads, not refused.
//!
//! The built-in `image_classifier` handler on a TorchScript file is served natively: the model
//! is exported to ONNX (backend `torchscript`) and TorchServe's processing runs in Rust as the
//! `image-classification` task. Every other handler (a file of the user's, or another built-in)
//! runs in Python workers with TorchServe's handler contract (backend `torchserve`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::config::{Autoscaling, Devices, DynamicBatching, ModelConfig, TensorDecl};
use ferroserve_core::{DataType, Device};
use ferroserve_tasks::TaskKind;

/// Where the manifest sits inside a version folder.
pub const MANIFEST: &str = ferroserve_store::mar::MAR_MANIFEST;

/// The input name the exported TorchScript image model takes (Triton's `pytorch_libtorch`
/// naming).
const IMAGE_INPUT: &str = "INPUT__0";

/// Most images a native `image_classifier` runs at once when `model-config.yaml` sets no
/// batching of its own.
const NATIVE_BATCH: usize = 8;

/// `MAR-INF/MANIFEST.json`'s `model` object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MarModel {
    /// The model's name.
    pub model_name: String,
    /// TorchServe's version string.
    pub model_version: Option<String>,
    /// The weights: a TorchScript file, or a state dict for `model_file`'s class.
    pub serialized_file: Option<String>,
    /// A built-in handler's name, or a Python file (optionally `file.py:function`).
    pub handler: Option<String>,
    /// An eager-mode model's Python file (with `serialized_file` as its state dict).
    pub model_file: Option<String>,
    /// The archive's `requirements.txt`.
    pub requirements_file: Option<String>,
    /// The archive's `model-config.yaml`.
    pub config_file: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    model: MarModel,
}

/// TorchServe's built-in handlers (`ts.torch_handler`).
const BUILTIN_HANDLERS: &[&str] = &[
    "image_classifier",
    "image_segmenter",
    "object_detector",
    "text_classifier",
    "base_handler",
    "vision_handler",
    "text_handler",
    "dali_image_classifier",
];

/// Largest `batchSize` taken.
const MAX_BATCH: u64 = 4096;
/// Longest `maxBatchDelay` and `responseTimeout` taken: a week, in milliseconds.
const MAX_MS: u64 = 7 * 24 * 3600 * 1000;

/// Whether `handler` names one of TorchServe's built-in handlers.
pub fn is_builtin_handler(handler: &str) -> bool {
    BUILTIN_HANDLERS.contains(&handler)
}

/// `model-config.yaml` keys read below; the others are logged as ignored.
const READ: &[&str] = &[
    "minWorkers",
    "maxWorkers",
    "batchSize",
    "maxBatchDelay",
    "responseTimeout",
    "deviceType",
    "deviceIds",
    "handler",
];

/// Workers of an archive whose `model-config.yaml` sets none (TorchServe's
/// `default_workers_per_model`), set once by the server at start; 1 when never set.
static DEFAULT_WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Sets the replicas of archives whose `model-config.yaml` sets no `minWorkers` (TorchServe's
/// `default_workers_per_model`). Only the first call counts: it is a server-wide setting.
pub fn set_default_workers(n: usize) {
    let _ = DEFAULT_WORKERS.set(n.max(1));
}

/// Whether a file name is a TorchScript file's (`.pt`, `.pth`, `.torchscript`).
pub fn is_torchscript_file(name: &str) -> bool {
    [".pt", ".pth", ".torchscript"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Checks that a path the manifest names stays inside the archive: relative, without `..`.
fn inside(path: &str) -> Result<(), &'static str> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err("must be a path inside the archive, not an absolute one");
    }
    if p.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err("must stay inside the archive (no '..')");
    }
    Ok(())
}

/// Largest `model-config.yaml` read.
const MAX_MODEL_CONFIG_BYTES: u64 = 1 << 20;

/// Whether `version_dir` holds an unpacked TorchServe archive.
pub fn is_archive(version_dir: &Path) -> bool {
    version_dir.join(MANIFEST).is_file()
}

/// The archive's `model` object.
pub fn manifest(version_dir: &Path) -> Result<MarModel, String> {
    let path = version_dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice::<Manifest>(&text)
        .map(|m| m.model)
        .map_err(|e| format!("{MANIFEST}: {e}"))
}

/// The configuration of a model whose version folder `version_dir` is an unpacked archive.
pub(crate) fn read(version_dir: &Path) -> Result<ModelConfig, String> {
    let model = manifest(version_dir)?;
    let mut config = ModelConfig::default();
    let handler = model
        .handler
        .clone()
        .unwrap_or_else(|| "base_handler".into());
    let handler_file = model
        .handler
        .as_ref()
        .map(|h| h.split(':').next().unwrap_or(h).to_string());
    for (key, value) in [
        ("serializedFile", model.serialized_file.as_ref()),
        ("modelFile", model.model_file.as_ref()),
        ("requirementsFile", model.requirements_file.as_ref()),
        ("configFile", model.config_file.as_ref()),
        ("handler", handler_file.as_ref()),
    ] {
        if let Some(v) = value {
            inside(v).map_err(|why| format!("{MANIFEST}: {key} '{v}' {why}"))?;
        }
    }
    let torchscript = model.model_file.is_none()
        && model
            .serialized_file
            .as_deref()
            .is_some_and(is_torchscript_file);
    if handler == "image_classifier" && torchscript {
        config.backend = Some("torchscript".into());
        config.model_file = model.serialized_file.clone();
        config.task = Some(TaskKind::ImageClassification);
        config.inputs = vec![TensorDecl {
            name: IMAGE_INPUT.into(),
            datatype: DataType::Fp32,
            dims: vec![3, 224, 224],
        }];
    } else {
        if !BUILTIN_HANDLERS.contains(&handler.split(':').next().unwrap_or_default())
            && !handler.contains(".py")
            && !handler.contains(':')
        {
            tracing::info!(
                "{}: handler '{handler}' is neither a built-in handler nor a .py file; it is imported as a module",
                version_dir.display()
            );
        }
        config.backend = Some("torchserve".into());
        config.handler = Some(handler);
    }
    // TorchServe's batchSize defaults to 1: a request is one row.
    config.max_batch_size = Some(1);
    config.replicas = DEFAULT_WORKERS.get().copied().unwrap_or(1);
    if let Some(file) = &model.config_file {
        apply_model_config(&version_dir.join(file), &mut config)?;
    }
    if config.task.is_some() {
        // Natively no handler sees a batch, and each image's answer is the same in one: so
        // concurrent requests share ONNX Runtime's runs, without waiting for each other.
        config.max_batch_size = Some(NATIVE_BATCH.max(config.batch_limit()));
        let db = config
            .dynamic_batching
            .get_or_insert_with(DynamicBatching::default);
        db.max_queue_delay_us = 0;
        db.preferred_batch_size.clear();
    }
    Ok(config)
}

/// Maps the archive's `model-config.yaml` onto `config`.
fn apply_model_config(path: &Path, config: &mut ModelConfig) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_MODEL_CONFIG_BYTES + 1),
        &mut text,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_MODEL_CONFIG_BYTES {
        return Err(format!(
            "{}: larger than 1 MiB; a model-config.yaml is a few lines",
            path.display()
        ));
    }
    ferroserve_core::check_yaml_depth(&text)?;
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let map: Value = serde_json::to_value(&yaml).map_err(|e| e.to_string())?;
    let Some(map) = map.as_object() else {
        return Ok(());
    };
    for key in map.keys() {
        if !READ.contains(&key.as_str()) {
            tracing::info!(
                "model-config.yaml: '{key}' has no meaning in ferroserve and is ignored"
            );
        }
    }
    let whole = |key: &str| -> Result<Option<u64>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("model-config.yaml: {key} must be a whole number, got {v}")),
        }
    };
    let min = whole("minWorkers")?.map(|n| n.max(1) as usize);
    let max = whole("maxWorkers")?.map(|n| n as usize);
    match (min, max) {
        (Some(min), Some(max)) if max > min => {
            config.autoscaling = Some(Autoscaling {
                min_replicas: min,
                max_replicas: max,
                initial_replicas: Some(min),
                ..Autoscaling::default()
            });
        }
        (Some(n), _) | (None, Some(n)) => config.replicas = n.max(1),
        (None, None) => {}
    }
    // Milliseconds from a number of `unit`s, bounded so it cannot overflow.
    let millis = |key: &str, value: u64, unit: u64| {
        value
            .checked_mul(unit)
            .filter(|&ms| ms <= MAX_MS)
            .ok_or_else(|| format!("model-config.yaml: {key} {value} is longer than a week"))
    };
    if let Some(batch) = whole("batchSize")? {
        if batch == 0 || batch > MAX_BATCH {
            return Err(format!(
                "model-config.yaml: batchSize must be 1 to {MAX_BATCH}, got {batch}"
            ));
        }
        config.max_batch_size = Some(batch as usize);
        if batch > 1 {
            let delay = whole("maxBatchDelay")?.unwrap_or(100);
            config.dynamic_batching = Some(DynamicBatching {
                preferred_batch_size: vec![batch as usize],
                max_queue_delay_us: millis("maxBatchDelay", delay, 1)? * 1000,
                ..DynamicBatching::default()
            });
        }
    }
    if let Some(seconds) = whole("responseTimeout")? {
        let db = config
            .dynamic_batching
            .get_or_insert_with(DynamicBatching::default);
        db.default_timeout_ms = Some(millis("responseTimeout", seconds, 1000)?);
    }
    let gpu = match map.get("deviceType").and_then(Value::as_str) {
        None => None,
        Some("gpu") => Some(true),
        Some("cpu") => Some(false),
        Some(other) => {
            return Err(format!(
                "model-config.yaml: deviceType must be cpu or gpu, got '{other}'"
            ))
        }
    };
    let ids: Vec<u32> = match map.get("deviceIds") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect::<Option<_>>()
            .ok_or("model-config.yaml: deviceIds must be a list of GPU numbers")?,
        Some(v) => {
            return Err(format!(
                "model-config.yaml: deviceIds must be a list, got {v}"
            ))
        }
    };
    config.devices = match gpu {
        Some(false) => Devices::List(vec![Device::Cpu]),
        _ if !ids.is_empty() => Devices::List(ids.into_iter().map(Device::Cuda).collect()),
        Some(true) => Devices::RoundRobin,
        None => config.devices.clone(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dir: &Path, manifest: &str, model_config: Option<&str>) {
        std::fs::create_dir_all(dir.join("MAR-INF")).unwrap();
        std::fs::write(dir.join(MANIFEST), manifest).unwrap();
        if let Some(text) = model_config {
            std::fs::write(dir.join("model-config.yaml"), text).unwrap();
        }
    }

    #[test]
    fn image_classifier_on_torchscript_is_native() {
        let tmp = tempfile::tempdir().unwrap();
        archive(
            tmp.path(),
            r#"{"model": {"modelName": "m", "serializedFile": "model.pt", "handler": "image_classifier", "modelVersion": "1.0"}}"#,
            None,
        );
        let c = read(tmp.path()).unwrap();
        assert_eq!(c.backend.as_deref(), Some("torchscript"));
        assert_eq!(c.task, Some(TaskKind::ImageClassification));
        assert_eq!(c.model_file.as_deref(), Some("model.pt"));
        assert!(c.handler.is_none());
        assert_eq!(c.max_batch_size, Some(8));
        assert_eq!(c.dynamic_batching.map(|d| d.max_queue_delay_us), Some(0));
    }

    #[test]
    fn custom_handler_with_model_config() {
        let tmp = tempfile::tempdir().unwrap();
        archive(
            tmp.path(),
            r#"{"model": {"modelName": "m", "handler": "my_handler.py", "configFile": "model-config.yaml"}}"#,
            Some("minWorkers: 1\nmaxWorkers: 3\nbatchSize: 4\nmaxBatchDelay: 50\nresponseTimeout: 7\ndeviceType: gpu\ndeviceIds: [1, 0]\nparallelType: pp\n"),
        );
        let c = read(tmp.path()).unwrap();
        assert_eq!(c.backend.as_deref(), Some("torchserve"));
        assert_eq!(c.handler.as_deref(), Some("my_handler.py"));
        assert_eq!(c.replicas, 1);
        let a = c.autoscaling.unwrap();
        assert_eq!((a.min_replicas, a.max_replicas), (1, 3));
        assert_eq!(c.max_batch_size, Some(4));
        let db = c.dynamic_batching.unwrap();
        assert_eq!(db.max_queue_delay_us, 50_000);
        assert_eq!(db.default_timeout_ms, Some(7000));
        assert_eq!(
            c.devices,
            Devices::List(vec![Device::Cuda(1), Device::Cuda(0)])
        );
    }

    #[test]
    fn worker_bounds_autoscale_through_the_checked_config() {
        let tmp = tempfile::tempdir().unwrap();
        archive(
            &tmp.path().join("1"),
            r#"{"model": {"modelName": "m", "handler": "h.py", "configFile": "model-config.yaml"}}"#,
            Some("minWorkers: 2\nmaxWorkers: 4\n"),
        );
        let c = ModelConfig::load(tmp.path()).unwrap();
        let a = c.autoscaling.unwrap();
        assert_eq!((a.min_replicas, a.max_replicas, a.initial()), (2, 4, 2));
    }

    #[test]
    fn manifest_paths_stay_inside_the_archive() {
        let tmp = tempfile::tempdir().unwrap();
        for (key, value) in [
            ("configFile", "/dev/zero"),
            ("configFile", "../../etc/passwd"),
            ("requirementsFile", "../r.txt"),
            ("handler", "/abs/h.py:handle"),
        ] {
            archive(
                tmp.path(),
                &if key == "handler" {
                    format!(r#"{{"model": {{"modelName": "m", "handler": "{value}"}}}}"#)
                } else {
                    format!(
                        r#"{{"model": {{"modelName": "m", "handler": "h.py", "{key}": "{value}"}}}}"#
                    )
                },
                None,
            );
            let e = read(tmp.path()).unwrap_err();
            let shown = value.split(':').next().unwrap_or(value);
            assert!(e.contains(key) && e.contains(shown), "{e}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        archive(
            tmp.path(),
            r#"{"model": {"modelName": "m", "handler": "h.py", "configFile": "model-config.yaml"}}"#,
            Some("batchSize: four\n"),
        );
        assert!(read(tmp.path()).unwrap_err().contains("batchSize"));
    }
}
