//! The runtime itself: its settings, its parts, and the calls that concern the whole server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ferroserve_core::{ErrorKind, Result};

use crate::autoscale::Autoscaling;
use crate::backend::Backends;
use crate::catalog::Catalog;
use crate::config::Devices;
use crate::metrics::Metrics;
use crate::pool::CpuPool;
use crate::scheduler::{Job, Scheduler, SchedulerConfig};
use crate::table::ModelEntry;
use crate::version::Version;

/// Settings that apply to every model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Requests that may wait in one model version's queue, unless its `model.yaml` says
    /// otherwise; more are refused at once (`Overloaded`). Also bounds the jobs waiting for the
    /// task preprocessing pool, and the requests waiting for a Flow executor.
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Replicas.
    pub replicas: Option<usize>,
    /// Device placement.
    pub devices: Option<Devices>,
    /// Autoscaling (replaces `replicas`; its `initial_replicas` is the start).
    pub autoscaling: Option<Autoscaling>,
    /// A `model.yaml` kept apart from the model folder (`--model-config-dir`, a Kubernetes
    /// ConfigMap), read instead of the folder's own configuration.
    pub config_file: Option<PathBuf>,
}

/// The runtime: every model of the repository, and `infer` for frontends.
///
/// Frontends call [`Runtime::infer`] with a decoded request; the runtime picks the version,
/// validates the request against its signature, bounds the queue and runs the backend on a
/// replica thread so the async frontends never stall on compute.
pub struct Runtime {
    pub(crate) backends: Backends,
    pub(crate) options: RuntimeOptions,
    pub(crate) models: RwLock<BTreeMap<String, ModelEntry>>,
    pub(crate) ready: AtomicBool,
    /// Set when the server begins to shut down: readiness turns false so load balancers stop
    /// sending requests while those already sent finish.
    pub(crate) draining: AtomicBool,
    pub(crate) metrics: Metrics,
    /// Where models come from, for loading single models later and for polls.
    pub(crate) catalog: Mutex<Catalog>,
    /// One lock per model name, held while that model loads, so concurrent first requests to a
    /// lazy model load it once, and a reload never races another.
    pub(crate) model_locks: Mutex<std::collections::HashMap<String, Arc<Mutex<()>>>>,
    /// Held while a load checks the memory budget and loads, so two loads cannot both fit.
    pub(crate) budget_lock: Mutex<()>,
    /// Runs task pre- and post-processing.
    pub(crate) cpu: CpuPool,
}

impl Runtime {
    /// Creates an empty runtime that loads models with `backends`. Call
    /// [`Runtime::load_repository`] to fill it. Fails only when the preprocessing threads cannot
    /// be started.
    pub fn new(backends: Backends, options: RuntimeOptions) -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = CpuPool::new(
            options.task_threads.unwrap_or(cores),
            options.max_queue_size,
        )?;
        Ok(Self {
            backends,
            options,
            models: RwLock::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            metrics: Metrics::new(),
            catalog: Mutex::new(Catalog::new()),
            model_locks: Mutex::new(std::collections::HashMap::new()),
            budget_lock: Mutex::new(()),
            cpu,
        })
    }

    /// A scheduler for work that is not a repository model (a Flow executor's shard): the
    /// server's queue bound (`max_queue_size`), and the metrics of a model called `name` at
    /// version `group`. Add its replicas with [`Scheduler::add`].
    pub fn scheduler<J: Job>(&self, kind: &'static str, name: &str, group: u64) -> Scheduler<J> {
        self.scheduler_queueing(kind, name, group, self.options.max_queue_size)
    }

    /// [`Runtime::scheduler`] with a queue of its own size (a Ray deployment's
    /// `max_queued_requests`) instead of the server's `--max-queue-size`.
    pub fn scheduler_queueing<J: Job>(
        &self,
        kind: &'static str,
        name: &str,
        group: u64,
        max_queue_size: usize,
    ) -> Scheduler<J> {
        Scheduler::new(
            SchedulerConfig {
                kind,
                name: name.to_string(),
                max_queue_size,
                default_timeout: None,
                preserve_ordering: false,
            },
            self.metrics.model(name, group),
        )
    }

    /// The settings it was made with.
    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// The backends it loads models with.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// True once the repository has been loaded (models that failed do not hold the server
    /// back; they report their own readiness), until the server begins to drain.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    /// Turns readiness false for good: the server is shutting down, and load balancers should
    /// stop sending it requests while it finishes those it has.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether [`Runtime::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the server ready when models were loaded one by one rather than from a repository.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether `model` (at `version`, or its default version) can serve. Unknown models and
    /// versions are `NotFound`.
    pub fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool> {
        match self.peek(model, version) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::Unavailable => Ok(false),
            Err(e) => Err(e),
        }
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
        crate::version::stop(&versions);
    }
}
