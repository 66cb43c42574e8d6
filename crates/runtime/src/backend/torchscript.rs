//! TorchScript files (`torch.jit.script` or `trace` output, `.pt`/`.pth`), served by the fastest
//! correct path: exported once to ONNX by a Python subprocess using the torch of the model's
//! interpreter (dynamic batch axis, input shapes from `inputs:`), checked here by running
//! TorchScript's own sample batches through ONNX Runtime, cached by the file's checksum, then run
//! by ONNX Runtime with the server's batching. When the export or the check fails, TorchScript
//! itself runs in Python workers and the log says why.
//!
//! A plain repository folder serves this way too (`1/model.pt` with `inputs`/`outputs` in
//! `model.yaml`, or Triton's `pytorch_libtorch` `config.pbtxt`, whose names are `INPUT__0`,
//! `OUTPUT__0`).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroserve_backend_python::{TritonModel, TritonSpec};
use ferroserve_core::{
    Backend, DataType, Error, NamedTensor, Result, Signature, Tensor, TensorSpec,
};
use ferroserve_tasks::TaskKind;
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;

use super::onnx::OnnxLoader;
use super::{BackendLoader, Detected, LoadSpec};
use crate::config::ModelConfig;

/// The model file of a folder that names none.
const MODEL_FILE: &str = "model.pt";
/// Changes when the export or its check changes, so older cached exports are redone.
const EXPORT_FORMAT: &str = "1";
/// Longest an export may take when the model sets no `timeout_ready`.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) struct TorchScriptLoader {
    pub onnx: Arc<OnnxLoader>,
    /// The server's default interpreter (`--python`).
    pub python: PathBuf,
    /// What each file's export came to, by cache key: the ONNX file, or why it runs in Python.
    /// Each slot is held while its file exports.
    exports: Mutex<HashMap<String, Arc<Mutex<Option<Exported>>>>>,
}

impl TorchScriptLoader {
    pub fn new(onnx: Arc<OnnxLoader>, python: PathBuf) -> Self {
        Self {
            onnx,
            python,
            exports: Mutex::new(HashMap::new()),
        }
    }

    fn file<'a>(&self, config: &'a ModelConfig) -> &'a str {
        config.model_file.as_deref().unwrap_or(MODEL_FILE)
    }
}

impl BackendLoader for TorchScriptLoader {
    fn name(&self) -> &'static str {
        "torchscript"
    }

    fn platform(&self) -> &'static str {
        "pytorch_libtorch"
    }

    fn triton_backend(&self) -> &'static str {
        "pytorch"
    }

    fn serves_task(&self, task: Option<TaskKind>) -> bool {
        self.onnx.serves_task(task)
    }

    fn detect(&self, folder: &Path, config: &ModelConfig) -> Option<Detected> {
        let file = self.file(config);
        let ours = crate::torchserve_config::is_torchscript_file(file)
            || config.backend.as_deref() == Some(self.name());
        (ours && folder.join(file).is_file()).then(|| Detected {
            model_file: file.to_string(),
            task: None,
        })
    }

    fn expected_file(&self, config: &ModelConfig) -> String {
        self.file(config).to_string()
    }

    fn check(&self, config: &ModelConfig) -> std::result::Result<(), String> {
        if config.batch_limit() == 0 {
            return Err("backend torchscript needs max_batch_size above 0: the first dimension of every input and output is the batch (declare dims without it)".into());
        }
        if config.inputs.is_empty() {
            return Err("backend torchscript needs the model's inputs declared (inputs: in model.yaml, input in config.pbtxt) to export and batch it: a TorchScript file does not say its input shapes".into());
        }
        match config.task {
            Some(t) if !self.serves_task(Some(t)) => Err(format!(
                "task {} does not run on a TorchScript file",
                t.as_str()
            )),
            _ => Ok(()),
        }
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Box<dyn Backend>> {
        let config = spec.config;
        let python = super::python::interpreter(config, spec.model_dir, &self.python);
        let key = cache_key(spec.file, config, &python)?;
        // One lock per file: replicas loading together export once, and other models' loads
        // do not wait behind an export.
        let slot = {
            let mut exports = self.exports.lock().unwrap_or_else(|p| p.into_inner());
            exports.entry(key.clone()).or_default().clone()
        };
        let exported = {
            let mut held = slot.lock().unwrap_or_else(|p| p.into_inner());
            match &*held {
                Some(done) => done.clone(),
                None => {
                    let result = self.export(spec, &python, &key);
                    // What the machine lacked is tried again on the next load.
                    if !matches!(result, Err(ExportError::Environment(_))) {
                        *held = Some(result.clone());
                    }
                    result
                }
            }
        };
        let why = match exported {
            Ok(onnx) => match self.onnx.load(&LoadSpec {
                file: &onnx,
                ..*spec
            }) {
                Ok(backend) => return Ok(backend),
                // No ONNX Runtime here (or not for this device): TorchScript still serves.
                Err(e) if e.kind() == ferroserve_core::ErrorKind::Unavailable => {
                    format!("the checked ONNX export cannot run here: {e}")
                }
                Err(e) => return Err(e),
            },
            Err(ExportError::Model(why) | ExportError::Environment(why)) => why,
        };
        if spec.replica == 0 {
            tracing::warn!(
                "model '{}': TorchScript runs in Python workers: {why}",
                spec.model
            );
        }
        fallback(spec, &python, &key)
    }
}

impl TorchScriptLoader {
    /// The checked ONNX export of the file (from the cache, or made now), or why there is none.
    fn export(&self, spec: &LoadSpec<'_>, python: &Path, key: &str) -> Exported {
        let dir = cache_dir().join(key);
        let onnx = dir.join("model.onnx");
        if dir.join("checked").is_file() && onnx.is_file() {
            return Ok(onnx);
        }
        if let Ok(why) = std::fs::read_to_string(dir.join("failed")) {
            return Err(ExportError::Model(why));
        }
        let result = self.export_now(spec, python, &dir);
        let _ = std::fs::create_dir_all(&dir);
        match &result {
            Ok(_) => {
                let _ = std::fs::write(dir.join("checked"), b"");
            }
            // A failure that PyTorch itself reported is kept; one of the machine (no torch
            // installed, a timeout) is tried again on the next load.
            Err(ExportError::Model(why)) => {
                let _ = std::fs::write(dir.join("failed"), why);
            }
            Err(ExportError::Environment(_)) => {}
        }
        result
    }

    fn export_now(
        &self,
        spec: &LoadSpec<'_>,
        python: &Path,
        dir: &Path,
    ) -> std::result::Result<PathBuf, ExportError> {
        let env = ExportError::Environment;
        let script = ferroserve_backend_python::bundled("torchscript_export.py").map_err(env)?;
        let parent = cache_dir();
        std::fs::create_dir_all(&parent).map_err(|e| env(format!("{}: {e}", parent.display())))?;
        let work = tempfile::Builder::new()
            .prefix(".export-")
            .tempdir_in(&parent)
            .map_err(|e| env(format!("{}: {e}", parent.display())))?;
        let mut command = Command::new(python);
        command
            .arg(&script)
            .arg("--model")
            .arg(spec.file)
            .arg("--out")
            .arg(work.path());
        for t in &spec.config.inputs {
            let dims: Vec<String> = t.dims.iter().map(i64::to_string).collect();
            command.arg("--input").arg(format!(
                "{}:{}:{}",
                t.name,
                t.datatype.as_str(),
                dims.join(",")
            ));
        }
        for t in &spec.config.outputs {
            command.arg("--output").arg(&t.name);
        }
        let log = work.path().join("export.log");
        let log_file = std::fs::File::create(&log).map_err(|e| env(e.to_string()))?;
        let err_file = log_file.try_clone().map_err(|e| env(e.to_string()))?;
        tracing::info!(
            "model '{}': exporting {} to ONNX with {}",
            spec.model,
            spec.file.display(),
            python.display()
        );
        let mut child = command
            .current_dir(spec.model_dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| {
                env(format!(
                    "cannot start {} to export the TorchScript file: {e}",
                    python.display()
                ))
            })?;
        let limit = super::python::timeout_ready(spec.config).unwrap_or(EXPORT_TIMEOUT);
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(env(format!("exporting to ONNX took longer than {limit:?}")));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(env(e.to_string())),
            }
        };
        let report_path = work.path().join("report.json");
        let report: Report = match std::fs::read(&report_path) {
            Ok(bytes) if status.success() => serde_json::from_slice(&bytes)
                .map_err(|e| env(format!("the exporter's report is unreadable: {e}")))?,
            _ => {
                return Err(env(format!(
                    "the exporter failed ({status}); does {} have torch installed? It printed:\n{}",
                    python.display(),
                    tail(&log, 15)
                )))
            }
        };
        remember_outputs(dir, &report);
        if !report.ok {
            return Err(ExportError::Model(format!(
                "export to ONNX failed: {}",
                report.reason.unwrap_or_default()
            )));
        }
        let onnx = work.path().join("model.onnx");
        let mut backend = self
            .onnx
            .load(&LoadSpec {
                file: &onnx,
                ..*spec
            })
            .map_err(|e| {
                let why = format!("ONNX Runtime cannot load the export: {e}");
                // No ONNX Runtime library (or device) here is the machine's, not the model's.
                if e.kind() == ferroserve_core::ErrorKind::Unavailable {
                    ExportError::Environment(why)
                } else {
                    ExportError::Model(why)
                }
            })?;
        for (k, sample) in report.samples.iter().enumerate() {
            check_sample(backend.as_mut(), work.path(), sample).map_err(|e| {
                ExportError::Model(format!(
                    "the ONNX export differs from TorchScript on sample batch {k}: {e}"
                ))
            })?;
        }
        drop(backend);
        // Published whole: a folder in the cache is always a complete, checked export.
        let _ = std::fs::remove_dir_all(dir);
        let kept = work.keep();
        if let Err(e) = std::fs::rename(&kept, dir) {
            let _ = std::fs::remove_dir_all(&kept);
            return Err(env(format!("{}: {e}", dir.display())));
        }
        remember_outputs(dir, &report);
        tracing::info!(
            "model '{}': the ONNX export matches TorchScript; served by ONNX Runtime",
            spec.model
        );
        Ok(dir.join("model.onnx"))
    }
}

/// The checked ONNX export, or why there is none.
type Exported = std::result::Result<PathBuf, ExportError>;

#[derive(Clone)]
enum ExportError {
    /// What the model is: PyTorch cannot export it, or the export computes something else.
    Model(String),
    /// What the machine lacks (no torch, no room, a timeout): worth trying again later.
    Environment(String),
}

#[derive(Deserialize)]
struct Report {
    ok: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    outputs: Vec<ReportTensor>,
    #[serde(default)]
    samples: Vec<Sample>,
}

#[derive(Deserialize)]
struct ReportTensor {
    name: String,
    datatype: String,
    /// The shape TorchScript gave it on the first sample batch, when it ran.
    #[serde(default)]
    shape: Option<Vec<usize>>,
}

/// Keeps the outputs TorchScript returned (name, type, rank), which a model that declares none
/// is served with if it runs in Python.
fn remember_outputs(dir: &Path, report: &Report) {
    let list: Vec<(String, String, usize)> = report
        .outputs
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let rank = t.shape.as_ref().map(Vec::len).or_else(|| {
                report
                    .samples
                    .first()?
                    .outputs
                    .get(i)
                    .map(|s| s.shape.len())
            })?;
            Some((t.name.clone(), t.datatype.clone(), rank))
        })
        .collect();
    if std::fs::create_dir_all(dir).is_ok() {
        let _ = std::fs::write(
            dir.join("outputs.json"),
            serde_json::to_vec(&list).unwrap_or_default(),
        );
    }
}

#[derive(Deserialize)]
struct Sample {
    inputs: Vec<SampleTensor>,
    outputs: Vec<SampleTensor>,
}

#[derive(Deserialize)]
struct SampleTensor {
    name: String,
    datatype: String,
    shape: Vec<usize>,
    file: String,
}

impl SampleTensor {
    fn load(&self, dir: &Path) -> std::result::Result<Tensor, String> {
        // Our exporter names files inside its own folder; nothing else is read.
        let rel = Path::new(&self.file);
        if !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!(
                "sample file '{}' is not inside the export folder",
                self.file
            ));
        }
        let bytes = std::fs::read(dir.join(rel)).map_err(|e| format!("{}: {e}", self.file))?;
        let dtype: DataType = self
            .datatype
            .parse()
            .map_err(|_| format!("unknown datatype {}", self.datatype))?;
        Tensor::new(dtype, self.shape.clone(), bytes.into()).map_err(|e| e.to_string())
    }
}

/// Runs one sample batch through ONNX Runtime and compares with TorchScript's outputs:
/// floats within 1e-4 + 1e-3·|expected|, everything else exactly.
fn check_sample(
    backend: &mut dyn Backend,
    dir: &Path,
    sample: &Sample,
) -> std::result::Result<(), String> {
    let inputs = sample
        .inputs
        .iter()
        .map(|t| {
            Ok(NamedTensor {
                name: t.name.clone(),
                tensor: t.load(dir)?,
            })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let names: Vec<String> = sample.outputs.iter().map(|t| t.name.clone()).collect();
    let got = backend.run(&inputs, &names).map_err(|e| e.to_string())?;
    for want in &sample.outputs {
        let expected = want.load(dir)?;
        let actual = got
            .iter()
            .find(|t| t.name == want.name)
            .ok_or_else(|| format!("no output {}", want.name))?;
        if actual.tensor.shape() != expected.shape() {
            return Err(format!(
                "output {} has shape {:?}, TorchScript's {:?}",
                want.name,
                actual.tensor.shape(),
                expected.shape()
            ));
        }
        let (a, e) = (floats(&actual.tensor), floats(&expected));
        match (a, e) {
            (Some(a), Some(e)) => {
                if let Some((i, (x, y))) = a.iter().zip(&e).enumerate().find(|(_, (x, y))| {
                    (*x - *y).abs() > 1e-4 + 1e-3 * y.abs() || x.is_nan() != y.is_nan()
                }) {
                    return Err(format!(
                        "output {} element {i} is {x}, TorchScript's {y}",
                        want.name
                    ));
                }
            }
            _ if actual.tensor.data() != expected.data() => {
                return Err(format!("output {} differs", want.name));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A floating-point tensor's values.
fn floats(t: &Tensor) -> Option<Vec<f64>> {
    let data = t.data();
    match t.dtype() {
        DataType::Fp32 => Some(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
        ),
        DataType::Fp64 => Some(
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        DataType::Fp16 => Some(
            data.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
        ),
        _ => None,
    }
}

/// TorchScript in Python workers (the bundled `ferroserve_torchscript.py`).
fn fallback(spec: &LoadSpec<'_>, python: &Path, key: &str) -> Result<Box<dyn Backend>> {
    let config = spec.config;
    let batch = config.batch_limit();
    let declared = |list: &[crate::config::TensorDecl]| -> Vec<TensorSpec> {
        list.iter()
            .map(|t| super::python::declared(t, batch))
            .collect()
    };
    let inputs = declared(&config.inputs);
    let outputs = if config.outputs.is_empty() {
        reported_outputs(key)
    } else {
        declared(&config.outputs)
    };
    if outputs.is_empty() {
        return Err(Error::invalid(format!(
            "model '{}': declare its outputs (outputs: in model.yaml) to serve the TorchScript file in Python workers",
            spec.model
        )));
    }
    let signature = Signature { inputs, outputs };
    let names = |list: &[TensorSpec]| list.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    let parameters = json!({
        "model_file": spec.file.display().to_string(),
        "inputs": serde_json::to_string(&names(&signature.inputs)).unwrap_or_default(),
        "outputs": serde_json::to_string(&names(&signature.outputs)).unwrap_or_default(),
        "batched": if batch > 0 { "1" } else { "0" },
        "device": if matches!(spec.device, ferroserve_core::Device::Cuda(_)) { "cuda" } else { "cpu" },
    });
    let adapter = ferroserve_backend_python::bundled("ferroserve_torchscript.py")
        .map_err(Error::unavailable)?;
    let version_dir = spec.file.parent().unwrap_or(spec.model_dir);
    let model = TritonModel::load(TritonSpec {
        model: spec.model,
        version: super::python::version_name(version_dir, spec.model_dir),
        model_py: &adapter,
        model_dir: spec.model_dir,
        config_json: super::python::triton_json(spec.model, config, &signature, parameters)
            .to_string(),
        signature,
        python: python.to_path_buf(),
        timeout_ready: super::python::timeout_ready(config),
        device: spec.device,
        replica: spec.replica,
        health: spec.health.clone(),
    })?;
    Ok(Box::new(model))
}

/// The outputs the exporter saw TorchScript return, when the model declares none: their names,
/// types, and shapes past the batch dimension (any size).
fn reported_outputs(key: &str) -> Vec<TensorSpec> {
    let Ok(bytes) = std::fs::read(cache_dir().join(key).join("outputs.json")) else {
        return Vec::new();
    };
    let Ok(list) = serde_json::from_slice::<Vec<(String, String, usize)>>(&bytes) else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|(name, datatype, rank)| {
            let datatype = datatype.parse().ok()?;
            Some(TensorSpec {
                name,
                datatype,
                shape: vec![-1; rank],
            })
        })
        .collect()
}

/// Where exports are cached: `$FERROSERVE_HOME/torchscript`.
fn cache_dir() -> PathBuf {
    ferroserve_core::default_home().join("torchscript")
}

/// The file's checksum with everything else the export depends on.
fn cache_key(file: &Path, config: &ModelConfig, python: &Path) -> Result<String> {
    let mut hasher = sha2::Sha256::new();
    let mut f = std::fs::File::open(file)
        .map_err(|e| Error::invalid(format!("{}: {e}", file.display())))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::invalid(format!("{}: {e}", file.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    for t in config.inputs.iter().chain(&config.outputs) {
        hasher.update(format!("{}:{}:{:?};", t.name, t.datatype.as_str(), t.dims).as_bytes());
    }
    hasher.update(python.as_os_str().as_encoded_bytes());
    hasher.update(EXPORT_FORMAT.as_bytes());
    Ok(hex::encode(&hasher.finalize()[..16]))
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    ferroserve_core::last_lines(&std::fs::read_to_string(path).unwrap_or_default(), n)
}
