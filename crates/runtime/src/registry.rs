//! The loaded models and their versions, and the path of one inference through them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ferroserve_backend_onnx::{OnnxBackend, OnnxRuntime, SessionOptions};
use ferroserve_core::{
    Backend, DataType, Device, Error, InferRequest, InferResponse, NamedTensor, Result, Signature,
};
use ferroserve_tasks::{Files, Task, TaskInput, TaskKind, TaskOutput};
use serde::Serialize;

use crate::catalog::{Catalog, Origin};
use crate::config::{BackendKind, Devices, ModelConfig};
use crate::metrics::{Metrics, ModelMetrics};
use crate::pool::CpuPool;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::validate;

/// Model requests of one task request queued at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Name of the platform ONNX models report in their metadata (Triton's name for it).
pub const ONNX_PLATFORM: &str = "onnxruntime_onnx";
/// Name of the platform candle models report in their metadata.
pub const CANDLE_PLATFORM: &str = "candle";

/// Settings that apply to every model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Requests that may wait in one model version's queue, unless its `model.yaml` says
    /// otherwise; more are refused at once with [`Error::Overloaded`]. Also bounds the jobs
    /// waiting for the task preprocessing pool.
    pub max_queue_size: usize,
    /// Threads that decode images and tokenise text for tasks. Default: the machine's cores.
    pub task_threads: Option<usize>,
    /// Bytes of model weights (estimated from their files, times replicas) that may be loaded
    /// at once on each device. Loading past it first unloads the least recently used idle lazy
    /// models holding memory there; a load that cannot fit fails. Default: none.
    pub memory_budget: crate::MemoryBudget,
    /// Element counts a request may carry.
    pub request_limits: crate::RequestLimits,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            max_queue_size: 1024,
            task_threads: None,
            memory_budget: crate::MemoryBudget::default(),
            request_limits: crate::RequestLimits::default(),
        }
    }
}

/// Settings that take the place of a model folder's `model.yaml` ones when a Deployment loads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replicas.
    pub replicas: Option<usize>,
    /// Device placement.
    pub devices: Option<Devices>,
}

/// A task's answer, and the version that gave it.
#[derive(Debug, Clone)]
pub struct TaskAnswer {
    /// Version that answered.
    pub model_version: String,
    /// The answer, one entry per input item.
    pub output: TaskOutput,
}

/// A model's description, as the protocol's metadata endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Versions that are ready, ascending.
    pub versions: Vec<String>,
    /// Backend platform, e.g. `onnxruntime_onnx`.
    pub platform: String,
    /// Inputs, in the model's order.
    pub inputs: Vec<ferroserve_core::TensorSpec>,
    /// Outputs, in the model's order.
    pub outputs: Vec<ferroserve_core::TensorSpec>,
}

/// Whether a model version can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModelState {
    /// Loaded and serving.
    Ready,
    /// Failed to load; the reason says why.
    Unavailable,
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version, or `None` when the model folder itself is unusable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// State.
    pub state: ModelState,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How a model version is configured, for the protocol's model-configuration endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfigInfo {
    /// Model name.
    pub name: String,
    /// Backend platform, e.g. `onnxruntime_onnx`.
    pub platform: String,
    /// Inputs and outputs as the model file declares them (with the batch dimension).
    pub signature: Signature,
    /// Rows per batch when the server batches the model, else 0.
    pub max_batch_size: usize,
    /// The dynamic batching settings, when batching is on.
    pub dynamic_batching: Option<crate::config::DynamicBatching>,
    /// The queue bound in force.
    pub max_queue_size: usize,
    /// Where each replica runs.
    pub devices: Vec<Device>,
    /// The model file's name.
    pub model_file: String,
    /// The built-in task around the model, if any.
    pub task: Option<ferroserve_tasks::TaskKind>,
}

impl ModelConfigInfo {
    /// `shape` as Triton's configuration writes dims: without the batch dimension when the server
    /// batches the model.
    pub fn dims(&self, shape: &[i64]) -> Vec<i64> {
        if self.max_batch_size > 0 {
            shape.get(1..).unwrap_or_default().to_vec()
        } else {
            shape.to_vec()
        }
    }
}

/// One loaded model version: its configuration (signature included) and the scheduler that
/// feeds its replicas.
pub(crate) struct Version {
    pub(crate) number: u64,
    scheduler: Scheduler,
    metrics: ModelMetrics,
    /// As clients see it: with a task, `signature` is the task's (images or text in).
    config: ModelConfigInfo,
    task: Option<Arc<Task>>,
    /// Most rows in one model request a task may make (0: no limit).
    task_rows: usize,
    /// How to load one more replica.
    recipe: Recipe,
    /// Estimated memory of one replica: its weight files.
    pub(crate) replica_bytes: u64,
    /// When it finished loading, and how long that took.
    pub(crate) loaded_at: std::time::SystemTime,
    pub(crate) load_ms: u64,
    /// Milliseconds since the Unix epoch of the last request that reached it.
    pub(crate) last_used: AtomicU64,
}

impl Version {
    /// Marks it used now (for least-recently-used eviction).
    fn touch(&self) {
        self.last_used.store(epoch_ms(), Ordering::Relaxed);
    }

    /// Estimated memory: the weight files times the replicas loaded.
    pub(crate) fn bytes(&self) -> u64 {
        self.replica_bytes * self.scheduler.replicas() as u64
    }

    /// [`Version::bytes`] by the device the replicas run on.
    pub(crate) fn device_bytes(&self) -> BTreeMap<Device, u64> {
        let mut config = self.recipe.config.clone();
        config.replicas = self.scheduler.replicas();
        let mut out = BTreeMap::new();
        if config.replicas == 0 {
            return out;
        }
        // The placement scaling gave them (a GPU list that cannot be read any more counts as
        // where the first replica runs).
        let devices = replica_devices(&config).unwrap_or_else(|_| {
            vec![self.config.devices.first().copied().unwrap_or(Device::Cpu); config.replicas]
        });
        for d in devices {
            *out.entry(d).or_insert(0) += self.replica_bytes;
        }
        out
    }

    /// Replicas loaded.
    pub(crate) fn replicas(&self) -> usize {
        self.scheduler.replicas()
    }

    /// `(requests queued, requests computing)`.
    pub(crate) fn load(&self) -> (usize, usize) {
        self.scheduler.load()
    }

    pub(crate) fn config(&self) -> &ModelConfigInfo {
        &self.config
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What loading a replica of a version takes.
struct Recipe {
    file: std::path::PathBuf,
    config: ModelConfig,
    threads: usize,
}

pub(crate) enum VersionState {
    Ready(Arc<Version>),
    Unavailable(String),
}

/// Whether a model is loaded.
pub(crate) enum EntryState {
    /// Loaded, each version ready or failed.
    Loaded(BTreeMap<u64, VersionState>),
    /// Cannot serve: its folder is unusable, it failed to load, or it was unloaded.
    Unavailable(String),
    /// A lazy model not loaded yet, or unloaded to make room: the next request loads it.
    Unloaded,
}

/// A model the runtime knows: its state, where it came from, and how it is served.
pub(crate) struct ModelEntry {
    pub(crate) state: EntryState,
    pub(crate) origin: Origin,
    /// `load: lazy` in its config.
    pub(crate) lazy: bool,
    /// The version requests without one go to; the highest ready one when unset or not ready.
    pub(crate) default: Option<u64>,
    /// The last load or reload that failed, and why.
    pub(crate) last_error: Option<String>,
}

impl ModelEntry {
    /// The versions that loaded, ascending.
    pub(crate) fn ready(&self) -> impl DoubleEndedIterator<Item = &Arc<Version>> {
        self.state.ready()
    }

    /// The version requests without a version number go to.
    pub(crate) fn default_version(&self) -> Option<&Arc<Version>> {
        let chosen = self
            .default
            .and_then(|d| self.ready().find(|v| v.number == d));
        chosen.or_else(|| self.ready().next_back())
    }
}

impl EntryState {
    /// The versions that loaded, ascending.
    pub(crate) fn ready(&self) -> impl DoubleEndedIterator<Item = &Arc<Version>> {
        let versions = match self {
            EntryState::Loaded(v) => Some(v),
            EntryState::Unavailable(_) | EntryState::Unloaded => None,
        };
        versions
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter_map(|s| match s {
                VersionState::Ready(v) => Some(v),
                VersionState::Unavailable(_) => None,
            })
    }
}

/// The runtime: every model of the repository, and `infer` for frontends.
///
/// Frontends call [`Runtime::infer`] with a decoded request; the runtime picks the version,
/// validates the request against its signature, bounds the queue and runs the backend on a
/// blocking thread so the async frontends never stall on compute.
pub struct Runtime {
    onnx: OnnxRuntime,
    pub(crate) options: RuntimeOptions,
    pub(crate) models: RwLock<BTreeMap<String, ModelEntry>>,
    pub(crate) ready: AtomicBool,
    pub(crate) metrics: Metrics,
    /// Where models come from, for loading single models later and for polls.
    pub(crate) catalog: Mutex<Catalog>,
    /// One lock per model name, held while that model loads, so concurrent first requests to a
    /// lazy model load it once, and a reload never races another.
    pub(crate) model_locks: Mutex<std::collections::HashMap<String, Arc<Mutex<()>>>>,
    /// Held while a load checks the memory budget and loads, so two loads cannot both fit.
    pub(crate) budget_lock: Mutex<()>,
    /// Runs task pre- and post-processing.
    cpu: CpuPool,
}

impl Runtime {
    /// Creates an empty runtime. Call [`Runtime::load_repository`] to fill it. Fails only when
    /// the preprocessing threads cannot be started.
    pub fn new(onnx: OnnxRuntime, options: RuntimeOptions) -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = CpuPool::new(
            options.task_threads.unwrap_or(cores),
            options.max_queue_size,
        )?;
        Ok(Self {
            onnx,
            options,
            models: RwLock::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            metrics: Metrics::new(),
            catalog: Mutex::new(Catalog::new()),
            model_locks: Mutex::new(std::collections::HashMap::new()),
            budget_lock: Mutex::new(()),
            cpu,
        })
    }

    pub(crate) fn load_version(
        &self,
        model: &str,
        number: u64,
        file: &Path,
        model_dir: &Path,
        config: &ModelConfig,
    ) -> std::result::Result<Version, String> {
        let started = std::time::Instant::now();
        let devices = replica_devices(config)?;
        let placement = devices.clone();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = config
            .threads
            .unwrap_or_else(|| (cores / config.replicas).max(1));
        let recipe = Recipe {
            file: file.to_path_buf(),
            config: config.clone(),
            threads,
        };
        let mut replicas: Vec<Box<dyn Backend>> = Vec::with_capacity(config.replicas);
        for device in devices {
            replicas.push(self.backend(&recipe, device)?);
        }
        let signature = replicas[0].signature().clone();
        let files = Files::new(
            file.parent()
                .map(Path::to_path_buf)
                .into_iter()
                .chain([model_dir.to_path_buf()]),
        );
        let task = Task::load(&config.task_config(), &files, &signature)?.map(Arc::new);
        let mut pad = config.pad.clone();
        for (name, value) in task.iter().flat_map(|t| t.padded_inputs()) {
            pad.entry(name).or_insert(value);
        }
        check_batching(config, &pad, &signature)?;
        let batching = config.dynamic_batching.clone().unwrap_or_default();
        let max_batch_size = if config.dynamic_batching.is_some() {
            config.batch_limit()
        } else {
            0
        };
        let metrics = self.metrics.model(model, number);
        let max_queue_size = batching
            .max_queue_size
            .unwrap_or(self.options.max_queue_size);
        let info = ModelConfigInfo {
            name: model.to_string(),
            platform: match config.backend {
                BackendKind::Onnx => ONNX_PLATFORM,
                BackendKind::Candle => CANDLE_PLATFORM,
            }
            .to_string(),
            signature: task.as_ref().map_or(&signature, |t| t.signature()).clone(),
            max_batch_size,
            dynamic_batching: config.dynamic_batching.clone(),
            max_queue_size,
            devices: placement,
            model_file: config.model_file.clone(),
            task: config.task,
        };
        // A task splits requests into model requests that fit a batch, or the model's fixed
        // batch dimension when the server does not batch it.
        let task_rows = match signature.inputs.first().and_then(|s| s.shape.first()) {
            _ if max_batch_size > 0 => max_batch_size,
            Some(&n) if task.is_some() && n > 1 => {
                return Err(format!(
                "a task needs a model whose batch dimension is dynamic or 1, and this one's is {n}"
            ))
            }
            Some(&n) if n > 0 => n as usize,
            _ => 0,
        };
        let scheduler = Scheduler::start(
            SchedulerConfig {
                model: model.to_string(),
                max_batch_size,
                target_rows: batching
                    .preferred_batch_size
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or(max_batch_size),
                max_queue_delay: std::time::Duration::from_micros(batching.max_queue_delay_us),
                max_queue_size: batching
                    .max_queue_size
                    .unwrap_or(self.options.max_queue_size),
                default_timeout: batching
                    .default_timeout_ms
                    .map(std::time::Duration::from_millis),
                pad,
                preserve_ordering: batching.preserve_ordering,
                max_batch_tokens: task.as_ref().and_then(|t| t.max_batch_tokens()),
            },
            signature.clone(),
            replicas,
            metrics.clone(),
        );
        Ok(Version {
            number,
            scheduler,
            metrics,
            config: info,
            task,
            task_rows,
            replica_bytes: crate::repository::weights_bytes(&recipe.file, model_dir),
            recipe,
            loaded_at: std::time::SystemTime::now(),
            load_ms: started.elapsed().as_millis() as u64,
            last_used: AtomicU64::new(epoch_ms()),
        })
    }

    fn backend(
        &self,
        recipe: &Recipe,
        device: Device,
    ) -> std::result::Result<Box<dyn Backend>, String> {
        match recipe.config.backend {
            BackendKind::Onnx => Ok(Box::new(
                OnnxBackend::load(
                    &self.onnx,
                    &recipe.file,
                    SessionOptions {
                        device,
                        intra_op_threads: Some(recipe.threads),
                        inter_op_threads: recipe.config.inter_op_threads,
                    },
                )
                .map_err(|e| e.to_string())?,
            )),
            BackendKind::Candle => candle_backend(recipe, device),
        }
    }

    /// Sets the replicas of `model`'s default version to `replicas`: new ones are loaded (on
    /// the devices its placement gives them) before they take work; extra ones stop after the
    /// batch they are running, so no request fails. At 0, requests wait in the bounded queue for
    /// the next replica. Blocks while replicas load; returns the replicas now serving.
    pub fn scale(&self, model: &str, replicas: usize) -> Result<usize> {
        self.scale_version(model, None, replicas)
    }

    /// [`Runtime::scale`] for one version (or the default one).
    pub fn scale_version(
        &self,
        model: &str,
        version: Option<&str>,
        replicas: usize,
    ) -> Result<usize> {
        let v = self.resolve(model, version)?;
        // One change at a time per model, so two concurrent requests cannot both retire (or
        // add) from the same count.
        let lock = self.model_lock(model);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = v.scheduler.replicas();
        if replicas < current {
            v.scheduler.retire(current - replicas);
        } else if replicas > current {
            let mut config = v.recipe.config.clone();
            config.replicas = replicas;
            let devices = replica_devices(&config).map_err(Error::Unavailable)?;
            for device in devices.into_iter().skip(current) {
                let backend = self
                    .backend(&v.recipe, device)
                    .map_err(|e| Error::Unavailable(format!("model '{model}': {e}")))?;
                v.scheduler.add(backend);
            }
        }
        Ok(v.scheduler.replicas())
    }

    /// `model`'s default version's load: `(requests queued, requests computing, replicas)`.
    pub fn load_of(&self, model: &str) -> Result<(usize, usize, usize)> {
        let v = self.peek(model, None)?;
        let (queued, running) = v.scheduler.load();
        Ok((queued, running, v.scheduler.replicas()))
    }

    /// True once the repository has been loaded (models that failed do not hold the server
    /// back; they report their own readiness).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether `model` (at `version`, or its default version) can serve. Unknown models and
    /// versions are [`Error::NotFound`].
    pub fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool> {
        match self.peek(model, version) {
            Ok(_) => Ok(true),
            Err(Error::Unavailable(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The metadata of `model` at `version`, or at its default (highest ready) version.
    pub fn model_metadata(&self, model: &str, version: Option<&str>) -> Result<ModelMetadata> {
        let v = self.resolve(model, version)?;
        let versions = match version {
            Some(_) => vec![v.number.to_string()],
            None => self.ready_versions(model),
        };
        Ok(ModelMetadata {
            name: model.to_string(),
            versions,
            platform: v.config.platform.clone(),
            inputs: v.config.signature.inputs.clone(),
            outputs: v.config.signature.outputs.clone(),
        })
    }

    /// The configuration of `model` at `version` (or its default version).
    pub fn model_config(&self, model: &str, version: Option<&str>) -> Result<ModelConfigInfo> {
        Ok(self.resolve(model, version)?.config.clone())
    }

    /// Cumulative statistics of `model` at `version`; with no model, of every ready model
    /// version; with a model but no version, of each of its ready versions.
    pub fn statistics(
        &self,
        model: Option<&str>,
        version: Option<&str>,
    ) -> Result<Vec<crate::metrics::ModelStatistics>> {
        if let (Some(m), Some(_)) = (model, version) {
            let v = self.peek(m, version)?;
            return Ok(vec![v.metrics.stats.read(m, v.number)]);
        }
        if let Some(m) = model {
            if !self.read_models().contains_key(m) {
                return Err(Error::NotFound(format!("unknown model '{m}'")));
            }
        }
        let models = self.read_models();
        let mut out = Vec::new();
        for (name, entry) in models.iter() {
            if model.is_none_or(|m| m == name) {
                out.extend(entry.ready().map(|v| v.metrics.stats.read(name, v.number)));
            }
        }
        Ok(out)
    }

    /// Every model version and its state, sorted by name and version. With `ready_only`, only
    /// the ready ones.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let models = self.read_models();
        let mut rows = Vec::new();
        for (name, entry) in models.iter() {
            match &entry.state {
                EntryState::Unavailable(reason) => rows.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: ModelState::Unavailable,
                    reason: Some(reason.clone()),
                }),
                EntryState::Unloaded => rows.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: ModelState::Unavailable,
                    reason: Some("lazy: loads on its first request".into()),
                }),
                EntryState::Loaded(versions) => {
                    for (number, state) in versions {
                        let (state, reason) = match state {
                            VersionState::Ready(_) => (ModelState::Ready, None),
                            VersionState::Unavailable(r) => {
                                (ModelState::Unavailable, Some(r.clone()))
                            }
                        };
                        rows.push(IndexEntry {
                            name: name.clone(),
                            version: Some(number.to_string()),
                            state,
                            reason,
                        });
                    }
                }
            }
        }
        if ready_only {
            rows.retain(|r| r.state == ModelState::Ready);
        }
        rows
    }

    /// Runs one inference on `model` at `version` (or the default version).
    ///
    /// The request is validated against the version's signature first; a request beyond the
    /// version's queue bound is refused at once with [`Error::Unavailable`]. Dropping the
    /// returned future while it waits for the replica withdraws the request.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferRequest,
    ) -> Result<InferResponse> {
        let v = self.resolve(model, version)?;
        let id = request.id.clone();
        let outputs = observed(&v, async {
            validate::cost(&request, &self.options.request_limits)?;
            validate::check(model, &v.config.signature, &request)?;
            match &v.task {
                None => v.scheduler.submit(request).await,
                Some(task) => {
                    let input = task.input_from_v2(&request)?;
                    let output = self.run_task_on(&v, task, input, &request).await?;
                    task.outputs_to_v2(output, &request.outputs)
                }
            }
        })
        .await?;
        Ok(InferResponse {
            model_name: model.to_string(),
            model_version: v.number.to_string(),
            id,
            outputs,
        })
    }

    /// The task of `model` at `version` (or the default version), or `None` for a plain model.
    pub fn task(&self, model: &str, version: Option<&str>) -> Result<Option<Arc<Task>>> {
        Ok(self.resolve(model, version)?.task.clone())
    }

    /// Runs `input` (images or texts) through the task of `model` at `version` (or the default
    /// version): preprocessing on the CPU pool, the model through its scheduler (batched with
    /// other requests), postprocessing on the CPU pool. A model without a task is
    /// [`Error::InvalidArgument`].
    pub async fn run_task(
        &self,
        model: &str,
        version: Option<&str>,
        input: TaskInput,
        parameters: ferroserve_core::Parameters,
    ) -> Result<TaskAnswer> {
        let v = self.resolve(model, version)?;
        let task = v.task.clone().ok_or_else(|| {
            Error::invalid(format!(
                "model '{model}' has no task (set task: in its model.yaml); send it tensors through the V2 API"
            ))
        })?;
        let request = InferRequest {
            parameters,
            ..Default::default()
        };
        let output = observed(&v, self.run_task_on(&v, &task, input, &request)).await?;
        Ok(TaskAnswer {
            model_version: v.number.to_string(),
            output,
        })
    }

    async fn run_task_on(
        &self,
        v: &Version,
        task: &Arc<Task>,
        input: TaskInput,
        request: &InferRequest,
    ) -> Result<TaskOutput> {
        use futures_util::{StreamExt, TryStreamExt};
        let admitted = self.cpu.admit()?;
        let rows = v.task_rows;
        let t = task.clone();
        let mut parameters = request.parameters.clone();
        let (prepared, parameters) = self
            .cpu
            .run(&admitted, move |gone| {
                t.prepare(input, rows, &mut parameters, gone)
                    .map(|p| (p, parameters))
            })
            .await?;
        // A few parts of one request in the queue at a time: enough to fill batches, without
        // letting one large request take the whole queue from everybody else.
        let outputs: Vec<Vec<NamedTensor>> = futures_util::stream::iter(prepared.requests)
            .map(|inputs| {
                v.scheduler.submit(InferRequest {
                    inputs,
                    parameters: parameters.clone(),
                    ..Default::default()
                })
            })
            .buffered(PARTS_IN_FLIGHT)
            .try_collect()
            .await?;
        let t = task.clone();
        let plan = prepared.plan;
        self.cpu
            .run(&admitted, move |_| t.finish(plan, outputs))
            .await
    }

    /// The server's metrics, for layers above the runtime that export their own (Flows).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The server's metrics in the OpenMetrics text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// Stops every model's queue and waits for the replicas to finish what was queued.
    ///
    /// Call it after the frontends stopped accepting requests.
    pub fn shutdown(&self) {
        let versions: Vec<Arc<Version>> = self
            .read_models()
            .values()
            .flat_map(ModelEntry::ready)
            .cloned()
            .collect();
        stop(&versions);
    }

    /// The version a request for `model` at `version` goes to, loading a lazy model first.
    pub(crate) fn resolve(&self, model: &str, version: Option<&str>) -> Result<Arc<Version>> {
        match self.find_version(model, version) {
            Err(Lazy) => {
                // Whatever the load's outcome, the request is answered from the state it left:
                // a version that loaded serves even if another failed.
                let loaded = crate::lifecycle::blocking(|| self.load_lazy(model));
                self.find_version(model, version).unwrap_or_else(|Lazy| {
                    Err(Error::Unavailable(match loaded {
                        Err(e) => e.to_string(),
                        Ok(()) => format!("model '{model}' was unloaded while it loaded; retry"),
                    }))
                })
            }
            Ok(found) => found,
        }
    }

    /// [`Runtime::resolve`] without loading: a lazy model not loaded is unavailable.
    fn peek(&self, model: &str, version: Option<&str>) -> Result<Arc<Version>> {
        self.find_version(model, version).unwrap_or_else(|Lazy| {
            Err(Error::Unavailable(format!(
                "model '{model}' is lazy and loads on its first request"
            )))
        })
    }

    fn find_version(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> std::result::Result<Result<Arc<Version>>, Lazy> {
        let models = self.read_models();
        let Some(entry) = models.get(model) else {
            return Ok(Err(Error::NotFound(format!("unknown model '{model}'"))));
        };
        let versions = match &entry.state {
            EntryState::Unavailable(reason) => {
                return Ok(Err(Error::Unavailable(format!(
                    "model '{model}' is not available: {reason}"
                ))))
            }
            EntryState::Unloaded => return Err(Lazy),
            EntryState::Loaded(versions) => versions,
        };
        Ok(self.pick(model, entry, versions, version))
    }

    fn pick(
        &self,
        model: &str,
        entry: &ModelEntry,
        versions: &BTreeMap<u64, VersionState>,
        version: Option<&str>,
    ) -> Result<Arc<Version>> {
        let Some(v) = version else {
            return entry.default_version().cloned().ok_or_else(|| {
                Error::Unavailable(format!("model '{model}' has no version that loaded"))
            });
        };
        let state = v
            .parse::<u64>()
            .ok()
            .and_then(|n| versions.get(&n))
            .ok_or_else(|| {
                let known: Vec<String> = versions.keys().map(u64::to_string).collect();
                Error::NotFound(format!(
                    "unknown version '{v}' of model '{model}' (versions: {})",
                    known.join(", ")
                ))
            })?;
        match state {
            VersionState::Ready(v) => Ok(v.clone()),
            VersionState::Unavailable(reason) => Err(Error::Unavailable(format!(
                "model '{model}' version {v} is not available: {reason}"
            ))),
        }
    }

    fn ready_versions(&self, model: &str) -> Vec<String> {
        self.read_models()
            .get(model)
            .map(|e| e.ready().map(|v| v.number.to_string()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn read_models(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelEntry>> {
        // A panic while holding the lock leaves the map itself intact; keep serving.
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_models(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The model is lazy and not loaded.
struct Lazy;

/// Awaits one client request on `v`, recording its latency and outcome.
async fn observed<T>(v: &Version, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let started = std::time::Instant::now();
    v.touch();
    v.metrics.stats.touch();
    let result = work.await;
    let elapsed = started.elapsed();
    v.metrics.request_seconds.observe(elapsed.as_secs_f64());
    if result.is_ok() {
        v.metrics.success.inc();
        v.metrics.stats.success.add(elapsed);
    } else {
        v.metrics.failure.inc();
        v.metrics.stats.fail.add(elapsed);
    }
    result
}

/// Stops the versions of a replaced or removed model once no request holds them any more (so
/// a request that found the old copy just before the swap still finishes on it), then waits
/// for their queued work.
pub(crate) fn retire(state: EntryState) {
    let versions: Vec<Arc<Version>> = state.ready().cloned().collect();
    drop(state);
    for v in &versions {
        // The map no longer holds it; every other holder is a request in flight.
        while Arc::strong_count(v) > 1 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    stop(&versions);
}

/// Closes the versions' queues, then waits for their replicas to finish what was queued.
fn stop(versions: &[Arc<Version>]) {
    for v in versions {
        v.scheduler.close();
    }
    for v in versions {
        v.scheduler.join();
    }
}

/// The device of each replica.
pub(crate) fn replica_devices(config: &ModelConfig) -> std::result::Result<Vec<Device>, String> {
    let n = config.replicas;
    match &config.devices {
        Devices::List(list) => Ok((0..n).map(|i| list[i % list.len()]).collect()),
        Devices::RoundRobin => {
            let gpus = visible_gpus();
            if gpus == 0 {
                return Err(
                    "devices: round-robin needs a visible GPU, and this machine shows none (CUDA_VISIBLE_DEVICES is empty or no NVIDIA driver is loaded)"
                        .to_string(),
                );
            }
            Ok((0..n).map(|i| Device::Cuda((i % gpus) as u32)).collect())
        }
    }
}

/// A candle replica of the checkpoint folder holding `recipe.file`, for its task.
fn candle_backend(
    recipe: &Recipe,
    device: Device,
) -> std::result::Result<Box<dyn Backend>, String> {
    use ferroserve_backend_candle::{DiffusionBackend, Seq2SeqBackend};
    let dir = recipe.file.parent().unwrap_or(Path::new("."));
    let gpu = match device {
        Device::Cpu => None,
        Device::Cuda(n) => Some(n as usize),
    };
    let device = ferroserve_backend_candle::device(gpu).map_err(|e| e.to_string())?;
    let config = &recipe.config;
    match config.task {
        Some(TaskKind::Summarization) => Ok(Box::new(
            Seq2SeqBackend::load(
                dir,
                &device,
                &config.generation.clone().unwrap_or_default(),
                None,
            )
            .map_err(|e| e.to_string())?,
        )),
        Some(TaskKind::TextToImage) => Ok(Box::new(
            DiffusionBackend::load(
                dir,
                &device,
                &config.diffusion.clone().unwrap_or_default(),
                recipe.threads,
            )
            .map_err(|e| e.to_string())?,
        )),
        other => Err(format!(
            "backend candle serves task summarization or text-to-image, not {}",
            other.map_or("none", TaskKind::as_str)
        )),
    }
}

/// GPUs this process can use: `CUDA_VISIBLE_DEVICES` when set, else the NVIDIA driver's list.
fn visible_gpus() -> usize {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return v.split(',').filter(|s| !s.trim().is_empty()).count();
    }
    std::fs::read_dir("/proc/driver/nvidia/gpus").map_or(0, |d| d.count())
}

/// Checks that a batched model really has a batch dimension, and that padding applies to
/// inputs that exist and can be padded.
fn check_batching(
    config: &ModelConfig,
    pad: &BTreeMap<String, f64>,
    signature: &Signature,
) -> std::result::Result<(), String> {
    for name in pad.keys() {
        let spec = signature
            .input(name)
            .ok_or_else(|| format!("pad names '{name}', which is not an input of the model"))?;
        if spec.datatype == DataType::Bytes {
            return Err(format!(
                "pad names '{name}', a BYTES input, which cannot be padded"
            ));
        }
    }
    if config.dynamic_batching.is_none() {
        return Ok(());
    }
    for spec in signature.inputs.iter().chain(&signature.outputs) {
        match spec.shape.first() {
            Some(-1) => {}
            _ => {
                return Err(format!(
                    "dynamic_batching needs a dynamic first dimension on every input and output, but '{}' has shape {:?} (set max_batch_size: 0 or remove dynamic_batching)",
                    spec.name, spec.shape
                ))
            }
        }
    }
    Ok(())
}
