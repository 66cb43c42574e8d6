//! One loaded model version: its replicas behind one scheduler, its task, what it tells clients
//! about itself, and how it grows, shrinks and retires.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};

use ferroserve_core::{
    Backend, DataType, Device, Error, ErrorKind, Health, InferRequest, NamedTensor, Result,
    Signature,
};
use ferroserve_tasks::{Files, Task};

use crate::admin::ModelConfigInfo;
use crate::autoscale::{Autoscaler, Autoscaling, Load, ScaleReport, Scaled};
use crate::backend::{BackendLoader, LoadSpec};
use crate::config::ModelConfig;
use crate::metrics::ModelMetrics;
use crate::placement;
use crate::runtime::Runtime;
use crate::scheduler::{BatchPolicy, Scheduler, SchedulerConfig, TensorBatching};

/// One loaded model version: its configuration (signature included) and the scheduler that
/// feeds its replicas.
pub(crate) struct Version {
    pub(crate) number: u64,
    pub(crate) scheduler: Arc<Scheduler<InferRequest>>,
    /// How its requests are admitted and batched.
    batching: TensorBatching,
    pub(crate) metrics: ModelMetrics,
    /// As clients see it: with a task, `signature` is the task's (images or text in).
    pub(crate) config: ModelConfigInfo,
    pub(crate) task: Option<Arc<Task>>,
    /// Most rows in one model request a task may make (0: no limit).
    pub(crate) task_rows: usize,
    /// How to load one more replica.
    recipe: Recipe,
    /// Estimated memory of one replica: its weight files.
    pub(crate) replica_bytes: u64,
    /// Whether its CPU replicas hold one copy of the weights between them (each loaded one
    /// said it uses the shared weights).
    cpu_weights_shared: AtomicBool,
    /// When it finished loading, and how long that took.
    pub(crate) loaded_at: std::time::SystemTime,
    pub(crate) load_ms: u64,
    /// Milliseconds since the Unix epoch of the last request that reached it.
    pub(crate) last_used: AtomicU64,
    /// Held while replicas are added or retired, so two changes (a management request and the
    /// autoscaler) never count from the same number.
    scaling: Mutex<()>,
    /// The autoscaling in force: `model.yaml`'s, or the bounds a management request set.
    autoscaling: Mutex<Option<Autoscaling>>,
    /// Whether its autoscaler thread runs.
    autoscaler: AtomicBool,
    /// Dropped with the version, which is what [`retire`] waits for.
    dropped: Mutex<Option<mpsc::SyncSender<()>>>,
    /// Whether its backend still says it can serve.
    pub(crate) health: Health,
}

/// What loading a replica of a version takes.
struct Recipe {
    loader: Arc<dyn BackendLoader>,
    model: String,
    file: PathBuf,
    model_dir: PathBuf,
    config: ModelConfig,
    threads: usize,
    health: Health,
    /// Replicas loaded so far, to number the next one.
    replicas: AtomicUsize,
}

impl Recipe {
    /// Loads a replica on `device` of a version that is to have `replicas` of them.
    fn load(&self, device: Device, replicas: usize) -> Result<Box<dyn Backend>> {
        self.loader.load(&LoadSpec {
            model: &self.model,
            file: &self.file,
            model_dir: &self.model_dir,
            config: &self.config,
            threads: self.threads,
            device,
            replica: self.replicas.fetch_add(1, Ordering::Relaxed),
            replicas,
            health: &self.health,
        })
    }
}

impl Version {
    /// Marks it used now (for least-recently-used eviction).
    pub(crate) fn touch(&self) {
        self.last_used.store(epoch_ms(), Ordering::Relaxed);
    }

    /// Estimated memory: the weight files times the replicas loaded (once for CPU replicas
    /// that share their weights).
    pub(crate) fn bytes(&self) -> u64 {
        self.device_bytes().values().sum()
    }

    /// [`Version::bytes`] by the device the replicas run on.
    pub(crate) fn device_bytes(&self) -> BTreeMap<Device, u64> {
        let replicas = self.scheduler.replicas();
        if replicas == 0 {
            return BTreeMap::new();
        }
        // The placement scaling gave them (a GPU list that cannot be read any more counts as
        // where the first replica runs).
        let devices = placement::devices_for(&self.recipe.config, replicas).unwrap_or_else(|_| {
            vec![self.config.devices.first().copied().unwrap_or(Device::Cpu); replicas]
        });
        let shared = self.cpu_weights_shared.load(Ordering::Relaxed);
        crate::budget::weights_by_device(devices, self.replica_bytes, shared)
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

    /// Moves to `n` replicas: new ones load (on the devices the placement gives them) before
    /// they take work; extra ones stop after the batch they are running, so no request fails.
    /// Returns the replicas now serving.
    pub(crate) fn scale_to(&self, n: usize) -> Result<usize> {
        let held = self.scaling.lock().unwrap_or_else(|p| p.into_inner());
        self.scale_locked(n, held)
    }

    /// [`Version::scale_to`] for the autoscaler: `n` within the bounds in force when the change
    /// starts (a management request may have changed them since the decision), and nothing
    /// once autoscaling is off.
    fn autoscale_to(&self, n: usize) -> Result<usize> {
        let held = self.scaling.lock().unwrap_or_else(|p| p.into_inner());
        match self.autoscaling() {
            None => Ok(self.scheduler.replicas()),
            Some(a) => self.scale_locked(n.clamp(a.min_replicas, a.max_replicas), held),
        }
    }

    fn scale_locked(&self, n: usize, _held: std::sync::MutexGuard<'_, ()>) -> Result<usize> {
        let current = self.scheduler.replicas();
        if n < current {
            self.scheduler.retire(current - n);
        } else if n > current {
            let devices = placement::devices_for(&self.recipe.config, n)?;
            for device in devices.into_iter().skip(current) {
                // The model loaded before: a replica that does not load now is the server's
                // lack (memory, a device), not the client's mistake.
                let backend = self.recipe.load(device, n).map_err(|e| {
                    e.with_kind(ErrorKind::Unavailable)
                        .context(format_args!("model '{}'", self.recipe.model))
                })?;
                if device == Device::Cpu && !backend.shares_weights() {
                    self.cpu_weights_shared.store(false, Ordering::Relaxed);
                }
                self.scheduler.add(self.batching.worker(backend))?;
            }
        }
        Ok(self.scheduler.replicas())
    }

    /// Queues one model request and waits for its outputs.
    pub(crate) async fn submit(&self, request: InferRequest) -> Result<Vec<NamedTensor>> {
        if let Some(reason) = self.health.failure() {
            return Err(Error::unavailable(reason));
        }
        let admission = self.batching.admit(&request)?;
        self.scheduler.submit(request, admission).await?
    }

    /// The autoscaling in force.
    pub(crate) fn autoscaling(&self) -> Option<Autoscaling> {
        self.autoscaling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Turns autoscaling on with `config`, or off with `None`; starts the autoscaler's thread
    /// when it is not running. It stops by itself once autoscaling is off or the version is gone.
    pub(crate) fn set_autoscaling(
        self: &Arc<Self>,
        config: Option<Autoscaling>,
        report: ScaleReport,
    ) -> Result<()> {
        let on = config.is_some();
        // Under the lock that the thread also takes to decide to stop, so a thread that is
        // stopping cannot miss a new configuration.
        let mut slot = self.autoscaling.lock().unwrap_or_else(|p| p.into_inner());
        *slot = config;
        if on && !self.autoscaler.swap(true, Ordering::AcqRel) {
            Autoscaler {
                name: self.recipe.model.clone(),
                target: Box::new(VersionScaled(Arc::downgrade(self))),
                report,
            }
            .start()
            .map_err(|e| {
                self.autoscaler.store(false, Ordering::Release);
                Error::internal(format!("cannot start the autoscaler: {e}"))
            })?;
        }
        Ok(())
    }
}

/// A version's replicas, as the autoscaler sees them.
struct VersionScaled(Weak<Version>);

impl Scaled for VersionScaled {
    fn config(&self) -> Option<Autoscaling> {
        let v = self.0.upgrade()?;
        let slot = v.autoscaling.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            // Off: this thread stops, and a later request to turn it on starts a new one.
            v.autoscaler.store(false, Ordering::Release);
        }
        slot.clone()
    }

    fn load(&self) -> Option<Load> {
        let v = self.0.upgrade()?;
        let (queued, running) = v.load();
        Some(Load {
            ongoing: queued + running,
            waiting: queued,
            replicas: v.replicas(),
        })
    }

    fn scale_to(&mut self, n: usize) -> std::result::Result<usize, String> {
        match self.0.upgrade() {
            Some(v) => v.autoscale_to(n).map_err(|e| e.to_string()),
            None => Ok(0),
        }
    }
}

impl Drop for VersionScaled {
    /// An autoscaler thread that died (a panic) lets the next configuration start a new one.
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(v) = self.0.upgrade() {
                v.autoscaler.store(false, Ordering::Release);
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Runtime {
    /// Loads version `number` of `model` (its model file `file`) with its replicas, task and
    /// scheduler.
    pub(crate) fn load_version(
        &self,
        model: &str,
        number: u64,
        file: &Path,
        model_dir: &Path,
        config: &ModelConfig,
    ) -> Result<Version> {
        let started = std::time::Instant::now();
        let backend_name = config.backend.as_deref().unwrap_or_default();
        let loader = self
            .backends
            .named(backend_name)
            .map_err(Error::invalid)?
            .clone();
        let devices = placement::replica_devices(config)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = config
            .threads
            .unwrap_or_else(|| (cores / config.replicas).max(1));
        let recipe = Recipe {
            loader: loader.clone(),
            model: model.to_string(),
            file: file.to_path_buf(),
            model_dir: model_dir.to_path_buf(),
            config: config.clone(),
            threads,
            health: Health::default(),
            replicas: AtomicUsize::new(0),
        };
        let mut replicas: Vec<Box<dyn Backend>> = Vec::with_capacity(config.replicas);
        for &device in &devices {
            replicas.push(recipe.load(device, devices.len())?);
        }
        // One copy for the CPU replicas only when every one of them uses the shared weights.
        let cpu_weights_shared = devices
            .iter()
            .zip(&replicas)
            .filter(|(d, _)| **d == Device::Cpu)
            .all(|(_, r)| r.shares_weights());
        let signature = replicas
            .first()
            .map(|r| r.signature().clone())
            .ok_or_else(|| Error::invalid("a model loads at least one replica"))?;
        let files = Files::new(
            file.parent()
                .map(Path::to_path_buf)
                .into_iter()
                .chain([model_dir.to_path_buf()]),
        );
        let task = Task::load(&config.task_config(), &files, &signature)
            .map_err(Error::invalid)?
            .map(Arc::new);
        let mut pad = config.pad.clone();
        for (name, value) in task.iter().flat_map(|t| t.padded_inputs()) {
            pad.entry(name).or_insert(value);
        }
        check_batching(config, &pad, &signature).map_err(Error::invalid)?;
        let db = config.dynamic_batching.clone().unwrap_or_default();
        let max_batch_size = if config.dynamic_batching.is_some() {
            config.batch_limit()
        } else {
            0
        };
        let metrics = self.metrics.model(model, number);
        let max_queue_size = db.max_queue_size.unwrap_or(self.options.max_queue_size);
        let info = ModelConfigInfo {
            name: model.to_string(),
            backend: loader.name().to_string(),
            platform: loader.platform().to_string(),
            triton_backend: loader.triton_backend().to_string(),
            signature: task.as_ref().map_or(&signature, |t| t.signature()).clone(),
            max_batch_size,
            dynamic_batching: config.dynamic_batching.clone(),
            max_queue_size,
            devices,
            model_file: config.model_file.clone().unwrap_or_default(),
            task: config.task,
            version_policy: config.version_policy.clone(),
            handler: config.handler.clone(),
        };
        // A task splits requests into model requests that fit a batch, or the model's fixed
        // batch dimension when the server does not batch it.
        let task_rows = match signature.inputs.first().and_then(|s| s.shape.first()) {
            _ if max_batch_size > 0 => max_batch_size,
            Some(&n) if task.is_some() && n > 1 => {
                return Err(Error::invalid(format!(
                "a task needs a model whose batch dimension is dynamic or 1, and this one's is {n}"
            )))
            }
            Some(&n) if n > 0 => n as usize,
            _ => 0,
        };
        let batching = TensorBatching {
            model: model.to_string(),
            policy: (max_batch_size > 0).then(|| {
                Arc::new(BatchPolicy {
                    max_rows: max_batch_size,
                    target_rows: db
                        .preferred_batch_size
                        .iter()
                        .copied()
                        .max()
                        .unwrap_or(max_batch_size),
                    delay: std::time::Duration::from_micros(db.max_queue_delay_us),
                    max_tokens: task.as_ref().and_then(|t| t.max_batch_tokens()),
                })
            }),
            pad: Arc::new(pad),
            signature: Arc::new(signature),
        };
        let scheduler = Arc::new(Scheduler::new(
            SchedulerConfig {
                kind: "model",
                name: model.to_string(),
                max_queue_size,
                default_timeout: db.default_timeout_ms.map(std::time::Duration::from_millis),
                preserve_ordering: db.preserve_ordering,
            },
            metrics.clone(),
        ));
        for backend in replicas {
            scheduler.add(batching.worker(backend))?;
        }
        Ok(Version {
            number,
            scheduler,
            batching,
            metrics,
            config: info,
            task,
            task_rows,
            replica_bytes: crate::repository::weights_bytes(file, model_dir),
            cpu_weights_shared: AtomicBool::new(cpu_weights_shared),
            loaded_at: std::time::SystemTime::now(),
            load_ms: started.elapsed().as_millis() as u64,
            last_used: AtomicU64::new(epoch_ms()),
            scaling: Mutex::new(()),
            autoscaling: Mutex::new(None),
            autoscaler: AtomicBool::new(false),
            dropped: Mutex::new(None),
            health: recipe.health.clone(),
            recipe,
        })
    }
}

/// Stops the versions of a replaced or removed model once no request holds them any more (so
/// a request that found the old copy just before the swap still finishes on it), then waits
/// for their queued work.
pub(crate) fn retire(versions: Vec<Arc<Version>>) {
    let mut schedulers = Vec::with_capacity(versions.len());
    for v in versions {
        let (tx, rx) = mpsc::sync_channel::<()>(0);
        *v.dropped.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let scheduler = v.scheduler.clone();
        // The map no longer holds it; every other holder is a request in flight (or the
        // autoscaler, for a moment). The last one to let go drops the sender, which ends the
        // wait.
        drop(v);
        let _ = rx.recv();
        schedulers.push(scheduler);
    }
    for s in &schedulers {
        s.close();
    }
    for s in &schedulers {
        s.join();
    }
}

/// Closes the versions' queues, then waits for their replicas to finish what was queued.
pub(crate) fn stop(versions: &[Arc<Version>]) {
    for v in versions {
        v.scheduler.close();
    }
    for v in versions {
        v.scheduler.join();
    }
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
