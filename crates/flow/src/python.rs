//! Jina executors written in Python, run unchanged: each replica is a worker process that imports
//! the executor's `py_modules` and instantiates its class (with ferroserve's `jina`/`docarray`
//! shims when the real packages are not installed), and documents travel to it through the
//! runtime's scheduler like any executor's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferroserve_backend_python::{
    Outbox, Reply, Worker as PyWorker, WorkerSpec, DEFAULT_TIMEOUT_READY,
};
use ferroserve_core::{Health, Result};
use ferroserve_runtime::scheduler::{Phases, Watch, Worker};
use serde_json::{json, Map, Value};

use crate::spec::{DynamicBatchingSpec, ExecutorSpec};
use crate::work::{split, DocJob};
use crate::{DocTensor, Document};

/// How Python executors are run: the interpreter when the YAML names none, and whether
/// `install_requirements` may install packages.
#[derive(Debug, Clone)]
pub struct PythonOptions {
    /// The interpreter (`--python`). Default: `python3` on `PATH`.
    pub python: PathBuf,
    /// Whether `install_requirements: true` installs the executor's `requirements.txt` into the
    /// interpreter (the server's explicit opt-in, `--install-requirements`).
    pub install_requirements: bool,
}

impl Default for PythonOptions {
    fn default() -> Self {
        Self {
            python: PathBuf::from("python3"),
            install_requirements: false,
        }
    }
}

/// Which endpoints the executor's class has handlers for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Handlers {
    endpoints: BTreeSet<String>,
    /// A bare `@requests`: it serves every endpoint not named.
    default: bool,
    /// What `@dynamic_batching` says, by endpoint.
    pub batching: BTreeMap<String, DynamicBatchingSpec>,
}

impl Handlers {
    fn from_ready(ready: &Map<String, Value>) -> Result<Self, String> {
        let endpoints = ready
            .get("endpoints")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let default = ready
            .get("default")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let batching = match ready.get("dynamic_batching") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(v) => serde_json::from_value::<BTreeMap<String, DecoratorBatching>>(v.clone())
                .map_err(|e| format!("the worker described @dynamic_batching as {v} ({e})"))?
                .into_iter()
                .filter_map(|(k, b)| {
                    Some((
                        k,
                        DynamicBatchingSpec {
                            preferred_batch_size: b.preferred_batch_size?.max(1),
                            timeout: b.timeout.unwrap_or(10_000),
                        },
                    ))
                })
                .collect(),
        };
        Ok(Self {
            endpoints,
            default,
            batching,
        })
    }

    fn handles(&self, endpoint: &str) -> bool {
        self.default || self.endpoints.contains(endpoint)
    }

    /// The endpoints named by handlers (others go to the default handler).
    pub fn named(&self) -> &BTreeSet<String> {
        &self.endpoints
    }
}

#[derive(serde::Deserialize)]
struct DecoratorBatching {
    preferred_batch_size: Option<usize>,
    timeout: Option<u64>,
}

/// What starting the replicas of a Python executor takes.
pub(crate) struct PythonExecutorSpec {
    pub name: String,
    pub python: PathBuf,
    pub cwd: PathBuf,
    pub load: Map<String, Value>,
    pub env: Vec<(String, String)>,
    /// `CUDA_VISIBLE_DEVICES` of each replica in turn (`RR`), if set so.
    pub devices: Option<Vec<String>>,
    pub timeout_ready: Option<Duration>,
    pub health: Health,
}

impl PythonExecutorSpec {
    /// Reads what `spec` says about a Python executor (`uses` a class in `py_modules`).
    pub fn new(spec: &ExecutorSpec, base: &Path, options: &PythonOptions) -> Result<Self, String> {
        let name = spec.name.clone().unwrap_or_default();
        let mut modules = Vec::with_capacity(spec.py_modules.len());
        for m in &spec.py_modules {
            let path = base.join(m);
            if !path.is_file() {
                return Err(format!("py_modules: {} does not exist", path.display()));
            }
            let path = path
                .canonicalize()
                .map_err(|e| format!("py_modules: {}: {e}", path.display()))?;
            modules.push(Value::from(path.display().to_string()));
        }
        // A relative path (`.venv/bin/python`) is the YAML file's; a bare name is looked up on PATH.
        let python = match &spec.python {
            Some(p) if p.is_relative() && p.components().count() > 1 => base.join(p),
            Some(p) => p.clone(),
            None => options.python.clone(),
        };
        if spec.install_requirements {
            install_requirements(&name, &spec.py_modules, base, &python, options)?;
        }
        let mut env = Vec::new();
        let mut devices = None;
        for (k, v) in &spec.env {
            if k == "CUDA_VISIBLE_DEVICES" && v.trim() == "RR" {
                let gpus = visible_gpus();
                if gpus.is_empty() {
                    tracing::warn!("executor '{name}': CUDA_VISIBLE_DEVICES: RR, but this machine shows no GPU; its replicas run without one");
                } else {
                    devices = Some(gpus);
                }
            } else {
                env.push((k.clone(), v.clone()));
            }
        }
        let mut load = Map::new();
        load.insert("kind".into(), "jina".into());
        load.insert("uses".into(), spec.uses.clone().into());
        load.insert("py_modules".into(), Value::Array(modules));
        load.insert("uses_with".into(), Value::Object(spec.uses_with.clone()));
        load.insert("metas".into(), json!({"name": name, "workspace": null}));
        Ok(Self {
            name,
            python,
            cwd: base.to_path_buf(),
            load,
            env,
            devices,
            timeout_ready: match spec.timeout_ready {
                None => Some(DEFAULT_TIMEOUT_READY),
                Some(-1) => None,
                Some(ms) => Some(Duration::from_millis(ms.max(0) as u64)),
            },
            health: Health::default(),
        })
    }

    /// Starts replica `replica` (of `replicas`) of shard `shard` (of `shards`).
    pub fn start(
        &self,
        shard: usize,
        shards: usize,
        replica: usize,
        replicas: usize,
    ) -> Result<PythonExecutor, String> {
        let mut load = self.load.clone();
        load.insert(
            "runtime_args".into(),
            json!({"name": self.name, "shard_id": shard, "shards": shards,
                   "replicas": replicas, "replica_id": replica}),
        );
        let mut env = self.env.clone();
        if let Some(d) = &self.devices {
            env.push(("CUDA_VISIBLE_DEVICES".into(), d[replica % d.len()].clone()));
        }
        let worker = PyWorker::start(
            WorkerSpec {
                python: self.python.clone(),
                cwd: self.cwd.clone(),
                env,
                load,
                timeout_ready: self.timeout_ready,
                name: format!("executor '{}'", self.name),
                replica,
            },
            self.health.clone(),
        )
        .map_err(|e| e.to_string())?;
        let handlers = Handlers::from_ready(worker.ready())?;
        Ok(PythonExecutor { worker, handlers })
    }
}

/// The GPUs a round-robin placement cycles through: `CUDA_VISIBLE_DEVICES` of the server when
/// set, else the NVIDIA driver's list.
pub(crate) fn visible_gpus() -> Vec<String> {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
    }
    let n = std::fs::read_dir("/proc/driver/nvidia/gpus").map_or(0, |d| d.count());
    (0..n).map(|i| i.to_string()).collect()
}

/// Installs the executor's `requirements.txt` (beside its first py_module) into `python` when
/// the server was started with the opt-in; otherwise says how.
fn install_requirements(
    name: &str,
    modules: &[String],
    base: &Path,
    python: &Path,
    options: &PythonOptions,
) -> Result<(), String> {
    let folder = modules
        .first()
        .and_then(|m| base.join(m).parent().map(Path::to_path_buf))
        .unwrap_or_else(|| base.to_path_buf());
    let file = folder.join("requirements.txt");
    if !file.is_file() {
        tracing::warn!(
            "executor '{name}': install_requirements is set, but {} does not exist",
            file.display()
        );
        return Ok(());
    }
    if !options.install_requirements {
        tracing::warn!(
            "executor '{name}': install_requirements is set, but packages are installed only when the server is started with --install-requirements; install them yourself with: {} -m pip install -r {}",
            python.display(),
            file.display()
        );
        return Ok(());
    }
    ferroserve_backend_python::pip_install(python, &file)
        .map_err(|e| format!("executor '{name}': {e}"))
}

/// One replica of a Python executor.
pub(crate) struct PythonExecutor {
    worker: PyWorker,
    pub handlers: Handlers,
}

impl Worker<DocJob> for PythonExecutor {
    fn run(
        &mut self,
        batch: Vec<DocJob>,
        watch: &Watch<'_>,
        phases: &mut Phases,
    ) -> Result<Vec<Vec<Document>>> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        if !self.handlers.handles(&first.endpoint) {
            return Ok(batch.into_iter().map(|j| j.docs).collect());
        }
        let sizes: Vec<usize> = batch.iter().map(|j| j.docs.len()).collect();
        let endpoint = first.endpoint.clone();
        let parameters = first.parameters.clone();
        let docs: Vec<Document> = batch.into_iter().flat_map(|j| j.docs).collect();
        let build = |outbox: &mut Outbox<'_>| {
            let wire = docs
                .iter()
                .map(|d| doc_out(outbox, d))
                .collect::<std::io::Result<Vec<_>>>()?;
            let mut h = Map::new();
            h.insert("op".into(), "docs".into());
            h.insert("endpoint".into(), endpoint.clone().into());
            h.insert("parameters".into(), Value::Object(parameters.clone()));
            h.insert("docs".into(), Value::Array(wire));
            Ok(h)
        };
        let read = |reply: &Reply<'_>| {
            reply
                .header
                .get("docs")
                .and_then(Value::as_array)
                .ok_or_else(|| "an answer without docs".to_string())?
                .iter()
                .map(|d| doc_in(reply, d))
                .collect::<Result<Vec<_>, String>>()
        };
        let t = Instant::now();
        let out = self.worker.call(build, "docs", read, watch.deadline())?;
        phases.infer = t.elapsed();
        split(out, sizes)
    }
}

/// A document on the wire (see the worker's `PROTOCOL.md`).
fn doc_out(outbox: &mut Outbox<'_>, d: &Document) -> std::io::Result<Value> {
    let mut m = Map::new();
    m.insert("id".into(), d.id.clone().into());
    if let Some(t) = &d.text {
        m.insert("text".into(), t.clone().into());
    }
    if let Some(u) = &d.uri {
        m.insert("uri".into(), u.clone().into());
    }
    if let Some(b) = &d.blob {
        m.insert("blob".into(), outbox.put(b)?);
    }
    let mut array = |shape: &[usize], data: &[f32]| -> std::io::Result<Value> {
        // Straight from the document's values: the wire is little-endian FP32, as the machines
        // ferroserve runs on.
        Ok(json!({"shape": shape, "data": outbox.put(bytemuck::cast_slice(data))?}))
    };
    if let Some(t) = &d.tensor {
        m.insert("tensor".into(), array(&t.shape, &t.data)?);
    }
    if let Some(e) = &d.embedding {
        m.insert("embedding".into(), array(&[e.len()], e)?);
    }
    if !d.tags.is_empty() {
        m.insert("tags".into(), Value::Object(d.tags.clone()));
    }
    if !d.scores.is_empty() {
        m.insert("scores".into(), json!(d.scores));
    }
    for (key, list) in [("chunks", &d.chunks), ("matches", &d.matches)] {
        if !list.is_empty() {
            let docs = list
                .iter()
                .map(|c| doc_out(outbox, c))
                .collect::<std::io::Result<Vec<_>>>()?;
            m.insert(key.into(), Value::Array(docs));
        }
    }
    Ok(Value::Object(m))
}

/// A document the worker sent, checked.
fn doc_in(reply: &Reply<'_>, v: &Value) -> Result<Document, String> {
    let m = v
        .as_object()
        .ok_or_else(|| format!("a document that is not an object: {v}"))?;
    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    let array = |k: &str| -> Result<Option<DocTensor>, String> {
        let Some(a) = m.get(k).filter(|a| !a.is_null()) else {
            return Ok(None);
        };
        let shape = ferroserve_backend_python::tensor::shape(a)
            .ok_or_else(|| format!("{k} without a shape of whole numbers"))?;
        let bytes = reply.bytes(a.get("data").unwrap_or(&Value::Null))?;
        let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if count.and_then(|c| c.checked_mul(4)) != Some(bytes.len()) {
            return Err(format!("{k} of shape {shape:?} with {} bytes", bytes.len()));
        }
        // The wire is little-endian FP32, as the machines ferroserve runs on.
        let data = bytemuck::pod_collect_to_vec::<u8, f32>(bytes);
        Ok(Some(DocTensor { shape, data }))
    };
    let docs = |k: &str| -> Result<Vec<Document>, String> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(|d| doc_in(reply, d)).collect(),
            Some(other) => Err(format!("{k} that is not a list: {other}")),
        }
    };
    let blob = match m.get("blob").filter(|b| !b.is_null()) {
        None => None,
        Some(r) => Some(reply.bytes(r)?.to_vec()),
    };
    let scores = match m.get("scores") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(s)) => s
            .iter()
            .map(|(k, v)| {
                v.as_f64()
                    .map(|f| (k.clone(), f as f32))
                    .ok_or_else(|| format!("score '{k}' that is not a number"))
            })
            .collect::<Result<_, String>>()?,
        Some(other) => Err(format!("scores that are not an object: {other}"))?,
    };
    Ok(Document {
        id: text("id").ok_or("a document without an id")?,
        text: text("text"),
        uri: text("uri"),
        blob,
        tensor: array("tensor")?,
        embedding: array("embedding")?.map(|t| t.data),
        tags: match m.get("tags") {
            Some(Value::Object(t)) => t.clone(),
            _ => Map::new(),
        },
        scores,
        chunks: docs("chunks")?,
        matches: docs("matches")?,
        error: None,
    })
}
