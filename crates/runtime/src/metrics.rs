//! Prometheus metrics of the runtime and the process (names documented in the README).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    model: String,
    version: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    deployment: String,
}

type Histograms = Family<ModelLabels, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 50 µs to ~26 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

fn rows() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<ResultLabels, Counter>,
    request_seconds: Histograms,
    queue_seconds: Histograms,
    compute_seconds: Histograms,
    batch_size: Histograms,
    queue_depth: Family<ModelLabels, Gauge>,
    inflight: Family<ModelLabels, Gauge>,
    replicas: Family<ModelLabels, Gauge>,
    deployment_replicas: Family<DeploymentLabels, Gauge>,
    deployment_target: Family<DeploymentLabels, Gauge>,
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_bytes: Gauge,
    loads: Family<NameLabels, Counter>,
    evictions: Family<NameLabels, Counter>,
    model_bytes: Family<NameLabels, Gauge>,
    memory_used: Family<DeviceLabels, Gauge>,
    memory_budget: Family<DeviceLabels, Gauge>,
    /// Serialises scrapes, so the CPU counter's catch-up below is not done twice.
    scrape: Mutex<()>,
    /// Every autoscaler's decisions.
    scale_log: crate::autoscale::ScaleLog,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut m = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(seconds as fn() -> Histogram),
            queue_seconds: Family::new_with_constructor(seconds as fn() -> Histogram),
            compute_seconds: Family::new_with_constructor(seconds as fn() -> Histogram),
            batch_size: Family::new_with_constructor(rows as fn() -> Histogram),
            queue_depth: Family::default(),
            inflight: Family::default(),
            replicas: Family::default(),
            deployment_replicas: Family::default(),
            deployment_target: Family::default(),
            cpu_seconds: Counter::default(),
            resident_bytes: Gauge::default(),
            loads: Family::default(),
            evictions: Family::default(),
            model_bytes: Family::default(),
            memory_used: Family::default(),
            memory_budget: Family::default(),
            scrape: Mutex::new(()),
            scale_log: Default::default(),
            registry: Registry::with_prefix("ferroserve"),
        };
        m.registry.register(
            "requests",
            "Inference requests that reached a model, by result (success or failure)",
            m.requests.clone(),
        );
        m.registry.register(
            "request_duration_seconds",
            "Time from a request's arrival at the model to its response",
            m.request_seconds.clone(),
        );
        m.registry.register(
            "queue_duration_seconds",
            "Time a request waited in the model's queue",
            m.queue_seconds.clone(),
        );
        m.registry.register(
            "compute_duration_seconds",
            "Time the backend spent on the batch that carried a request",
            m.compute_seconds.clone(),
        );
        m.registry.register(
            "batch_size",
            "Rows (sum of first dimensions) in each batch given to the backend",
            m.batch_size.clone(),
        );
        m.registry.register(
            "queue_depth",
            "Requests waiting in the model's queue",
            m.queue_depth.clone(),
        );
        m.registry.register(
            "inflight_requests",
            "Requests being computed by a replica",
            m.inflight.clone(),
        );
        m.registry
            .register("replicas", "Loaded replicas", m.replicas.clone());
        m.registry.register(
            "deployment_replicas",
            "Instances of a Flow's deployment serving now",
            m.deployment_replicas.clone(),
        );
        m.registry.register(
            "deployment_target_replicas",
            "Instances the autoscaler wants for a Flow's deployment",
            m.deployment_target.clone(),
        );
        m.registry.register(
            "process_cpu_seconds",
            "CPU time used by the server process (user + system)",
            m.cpu_seconds.clone(),
        );
        m.registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            m.resident_bytes.clone(),
        );
        m.registry.register(
            "model_loads",
            "Times a model was loaded (at start, on request for lazy models, by the management API or a reload)",
            m.loads.clone(),
        );
        m.registry.register(
            "model_evictions",
            "Times an idle lazy model was unloaded to keep within the memory budget",
            m.evictions.clone(),
        );
        m.registry.register(
            "model_memory_bytes",
            "Estimated memory of a loaded model (its weight files times its replicas)",
            m.model_bytes.clone(),
        );
        m.registry.register(
            "memory_used_bytes",
            "Estimated memory of the loaded models on a device, counted against --memory-budget",
            m.memory_used.clone(),
        );
        m.registry.register(
            "memory_budget_bytes",
            "The --memory-budget of a device (0: none)",
            m.memory_budget.clone(),
        );
        m
    }

    /// Counts a load of `model` and records its estimated memory.
    pub(crate) fn loaded(&self, model: &str, bytes: u64) {
        let l = NameLabels {
            model: model.to_string(),
        };
        self.loads.get_or_create(&l).inc();
        self.model_bytes.get_or_create(&l).set(bytes as i64);
    }

    /// Records that `model` was unloaded; `evicted` when the memory budget made room.
    pub(crate) fn unloaded(&self, model: &str, evicted: bool) {
        let l = NameLabels {
            model: model.to_string(),
        };
        if evicted {
            self.evictions.get_or_create(&l).inc();
        }
        self.model_bytes.get_or_create(&l).set(0);
    }

    /// Sets the memory gauges of `device`.
    pub(crate) fn memory(&self, device: ferroserve_core::Device, used: u64, budget: Option<u64>) {
        let l = DeviceLabels {
            device: device.to_string(),
        };
        self.memory_used.get_or_create(&l).set(used as i64);
        self.memory_budget
            .get_or_create(&l)
            .set(budget.unwrap_or(0) as i64);
    }

    /// Handles for one model version, cheap to use on the request path.
    pub(crate) fn model(&self, model: &str, version: u64) -> ModelMetrics {
        let l = ModelLabels {
            model: model.to_string(),
            version: version.to_string(),
        };
        let result = |result| ResultLabels {
            model: l.model.clone(),
            version: l.version.clone(),
            result,
        };
        // Each handle in its own statement: `get_or_create` returns a read guard, and a second
        // call on the same family inserting while it lives would deadlock.
        let success = self.requests.get_or_create(&result("success")).clone();
        let failure = self.requests.get_or_create(&result("failure")).clone();
        let request_seconds = self.request_seconds.get_or_create(&l).clone();
        let queue_seconds = self.queue_seconds.get_or_create(&l).clone();
        let compute_seconds = self.compute_seconds.get_or_create(&l).clone();
        let batch_size = self.batch_size.get_or_create(&l).clone();
        let queue_depth = self.queue_depth.get_or_create(&l).clone();
        let inflight = self.inflight.get_or_create(&l).clone();
        let replicas = self.replicas.get_or_create(&l).clone();
        ModelMetrics {
            stats: Arc::default(),
            success,
            failure,
            request_seconds,
            queue_seconds,
            compute_seconds,
            batch_size,
            queue_depth,
            inflight,
            replicas,
        }
    }

    /// Where the autoscaler of `name` (a model or a Flow's deployment) reports: its replica
    /// gauges and the server's log of decisions.
    pub fn deployment(&self, name: &str) -> crate::autoscale::ScaleReport {
        let l = DeploymentLabels {
            deployment: name.to_string(),
        };
        crate::autoscale::ScaleReport {
            current: self.deployment_replicas.get_or_create(&l).clone(),
            target: self.deployment_target.get_or_create(&l).clone(),
            log: self.scale_log.clone(),
        }
    }

    /// The latest autoscaling decisions of every autoscaler, oldest first.
    pub fn scale_events(&self) -> Vec<crate::autoscale::ScaleEvent> {
        self.scale_log.events()
    }

    /// The metrics in the OpenMetrics text format (which Prometheus scrapes).
    pub fn encode(&self) -> String {
        let _guard = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = process::sample() {
            let seen = self.cpu_seconds.get();
            if p.cpu_seconds > seen {
                self.cpu_seconds.inc_by(p.cpu_seconds - seen);
            }
            self.resident_bytes.set(p.resident_bytes);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The metrics of one model version.
#[derive(Clone)]
pub(crate) struct ModelMetrics {
    /// Cumulative counts and durations in Triton's statistics shape.
    pub stats: Arc<Stats>,
    pub success: Counter,
    pub failure: Counter,
    pub request_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub compute_seconds: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: Gauge,
    pub inflight: Gauge,
    pub replicas: Gauge,
}

/// A count of events and their total duration.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    pub fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn read(&self) -> StatisticDuration {
        StatisticDuration {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// Cumulative statistics of one model version (Triton's model statistics).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub success: Tally,
    pub fail: Tally,
    pub queue: Tally,
    pub compute_input: Tally,
    pub compute_infer: Tally,
    pub compute_output: Tally,
    /// Rows inferred successfully.
    pub inference_count: AtomicU64,
    /// Backend executions.
    pub execution_count: AtomicU64,
    /// Milliseconds since the Unix epoch of the last request.
    pub last_inference_ms: AtomicU64,
}

impl Stats {
    /// Marks a request's arrival time as the last inference.
    pub fn touch(&self) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(ms, Ordering::Relaxed);
    }

    /// A snapshot for `name` at `version`, in Triton's nesting.
    pub fn read(&self, name: &str, version: u64) -> crate::admin::ModelStatistics {
        crate::admin::ModelStatistics {
            name: name.to_string(),
            version: version.to_string(),
            last_inference: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            inference_stats: crate::admin::InferStatistics {
                success: self.success.read(),
                fail: self.fail.read(),
                queue: self.queue.read(),
                compute_input: self.compute_input.read(),
                compute_infer: self.compute_infer.read(),
                compute_output: self.compute_output.read(),
            },
            batch_stats: Vec::new(),
        }
    }
}

/// A count and the total nanoseconds of the events counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, utoipa::ToSchema)]
pub struct StatisticDuration {
    /// Events.
    pub count: u64,
    /// Their total duration in nanoseconds.
    pub ns: u64,
}

/// CPU time and resident memory of this process, from `/proc` (Linux).
pub mod process {
    /// One reading.
    #[derive(Debug, Clone, Copy)]
    pub struct Sample {
        /// User + system CPU seconds since the process started.
        pub cpu_seconds: f64,
        /// Resident set size in bytes.
        pub resident_bytes: i64,
    }

    /// Reads `/proc/self`; `None` where there is no procfs.
    pub fn sample() -> Option<Sample> {
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let resident: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(Sample {
            cpu_seconds: (utime + stime) / ticks.max(1) as f64,
            resident_bytes: resident * page.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_model_and_process_metrics() {
        let m = Metrics::new();
        let h = m.model("simple", 1);
        h.success.inc();
        h.batch_size.observe(4.0);
        let text = m.encode();
        assert!(
            text.contains(
                "ferroserve_requests_total{model=\"simple\",version=\"1\",result=\"success\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("ferroserve_batch_size_count{model=\"simple\",version=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferroserve_process_resident_memory_bytes"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
