//! One Ray Serve deployment on ferroserve's runtime: its replicas are Python worker processes,
//! each serving `max_ongoing_requests` requests at once (one scheduler thread, a "slot", per
//! request it may run), behind the runtime's one scheduler (bounded queue, `@serve.batch`
//! batching, metrics) and, with `autoscaling_config`, the runtime's one autoscaler.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferroserve_backend_python::{Calls, Frame, Payload, SharedWorker, WorkerSpec};
use ferroserve_core::{Error, Health, Result};
use ferroserve_runtime::autoscale::{Autoscaler, Load, Scaled};
use ferroserve_runtime::scheduler::{
    Admission, BatchPolicy, Job, Phases, Scheduler, Watch, Worker,
};
use ferroserve_runtime::{Autoscaling, Runtime};
use serde_json::{json, Map, Value};

use super::options::{DeploymentOptions, Replicas};

/// An HTTP answer from an ingress deployment.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The headers, in order, as the application set them.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// What a deployment answers one request with.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A method's result, pickled.
    Value(Vec<u8>),
    /// An ingress's HTTP answer.
    Http(HttpReply),
    /// The user's code raised: `Type: message`, and the pickled exception when it pickles.
    Raised {
        /// `Type: message`.
        error: String,
        /// The exception, pickled, for a handle caller to raise again.
        exception: Option<Vec<u8>>,
    },
}

/// A request to a deployment.
pub(crate) enum RayJob {
    /// `handle.method.remote(...)`: the pickled `(args, kwargs)`.
    Call { method: String, args: Vec<u8> },
    /// An HTTP request for an ingress (the scope as PROTOCOL.md has it).
    Http { scope: Value, body: Bytes },
}

impl Job for RayJob {
    type Output = Answer;
    /// The method: only calls to one `@serve.batch` method share a batch.
    type Key = String;
}

/// What the application's code says about one deployment (the describing worker's answer).
#[derive(Debug, Clone, Default)]
pub struct Described {
    /// Its name.
    pub name: String,
    /// Served as an ASGI application (`@serve.ingress`).
    pub asgi: bool,
    /// A function deployment, or a class with `__call__`.
    pub callable: bool,
    /// Its methods a handle may call.
    pub methods: BTreeSet<String>,
    /// Its `@serve.batch` methods: (max_batch_size, batch_wait_timeout_s).
    pub batch: BTreeMap<String, (usize, f64)>,
    /// The options the code set.
    pub options: Map<String, Value>,
    /// The deployments bound among its arguments.
    pub handles: Vec<String>,
}

impl Described {
    /// Reads one entry of the `deployments` list of the describing worker's `ready`.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let m = v
            .as_object()
            .ok_or_else(|| format!("a deployment described as {v}"))?;
        let name = m
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a deployment without a name")?
            .to_string();
        let strings = |k: &str| -> Vec<String> {
            m.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut batch = BTreeMap::new();
        if let Some(b) = m.get("batch").and_then(Value::as_object) {
            for (method, spec) in b {
                let size = spec
                    .get("max_batch_size")
                    .and_then(Value::as_u64)
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("deployment '{name}': @serve.batch on {method} needs max_batch_size of at least 1"))?;
                let wait = spec
                    .get("batch_wait_timeout_s")
                    .and_then(Value::as_f64)
                    .filter(|w| w.is_finite() && *w >= 0.0 && *w < 3600.0)
                    .ok_or_else(|| format!("deployment '{name}': @serve.batch on {method} needs batch_wait_timeout_s between 0 and 3600"))?;
                batch.insert(method.clone(), (size as usize, wait));
            }
        }
        Ok(Self {
            asgi: m.get("asgi").and_then(Value::as_bool).unwrap_or(false),
            callable: m.get("callable").and_then(Value::as_bool).unwrap_or(false),
            methods: strings("methods").into_iter().collect(),
            batch,
            options: m
                .get("options")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            handles: strings("handles"),
            name,
        })
    }
}

/// Health checks failed in a row after which a replica is restarted (Ray's threshold).
const UNHEALTHY_AFTER: u32 = 3;

/// How to start one replica's worker: the spec without the replica's own settings.
pub(crate) struct ReplicaSpec {
    pub base: WorkerSpec,
    pub calls: Arc<dyn Calls>,
    /// `CUDA_VISIBLE_DEVICES` of each replica in turn, when it takes GPUs.
    pub gpus: Option<Vec<String>>,
}

impl ReplicaSpec {
    fn start(&self, n: usize, health: &Health) -> Result<Arc<SharedWorker>> {
        let mut spec = self.base.clone();
        spec.replica = n;
        if let Some(Value::String(name)) = spec.load.get("deployment").cloned() {
            spec.load
                .insert("replica_id".into(), format!("{name}#{n}").into());
        }
        if let Some(gpus) = &self.gpus {
            spec.env
                .push(("CUDA_VISIBLE_DEVICES".into(), gpus[n % gpus.len()].clone()));
        }
        SharedWorker::start(spec, self.calls.clone(), health.clone()).map(Arc::new)
    }
}

/// A replica: its worker, and the flag its slots stop on.
struct Replica {
    worker: Arc<SharedWorker>,
    retiring: Arc<AtomicBool>,
}

/// A deployment's replicas, as the autoscaler (or the fixed count) sets them.
pub(crate) struct Pool {
    name: Arc<str>,
    spec: ReplicaSpec,
    scheduler: Weak<Scheduler<RayJob>>,
    live: Arc<Mutex<Vec<Replica>>>,
    slots: usize,
    next: usize,
    config: Option<Autoscaling>,
    health: Health,
    /// Set when the deployment closes: the autoscaler stops with it.
    stopped: Arc<AtomicBool>,
}

impl Pool {
    fn grow(&mut self, scheduler: &Scheduler<RayJob>) -> Result<()> {
        let worker = self.spec.start(self.next, &self.health)?;
        self.next += 1;
        let retiring = Arc::new(AtomicBool::new(false));
        for _ in 0..self.slots {
            scheduler.add(Box::new(Slot {
                worker: worker.clone(),
                retiring: retiring.clone(),
                name: self.name.clone(),
            }))?;
        }
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Replica { worker, retiring });
        Ok(())
    }

    fn shrink(&mut self, scheduler: &Scheduler<RayJob>) {
        let gone = self.live.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(r) = gone {
            // Its slots finish what they run, then let go of the worker, which then stops.
            r.retiring.store(true, Ordering::Release);
            scheduler.retire_marked(self.slots);
        }
    }

    fn count(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Scaled for Pool {
    fn config(&self) -> Option<Autoscaling> {
        self.config.clone()
    }

    fn load(&self) -> Option<Load> {
        if self.stopped.load(Ordering::Acquire) {
            return None;
        }
        let s = self.scheduler.upgrade()?;
        let (queued, running) = s.load();
        Some(Load {
            ongoing: queued + running,
            waiting: queued,
            replicas: self.count(),
        })
    }

    fn scale_to(&mut self, n: usize) -> std::result::Result<usize, String> {
        let Some(scheduler) = self.scheduler.upgrade() else {
            return Ok(0);
        };
        while self.count() < n {
            self.grow(&scheduler).map_err(|e| e.to_string())?;
        }
        while self.count() > n {
            self.shrink(&scheduler);
        }
        Ok(self.count())
    }
}

/// One of the requests a replica runs at once.
struct Slot {
    worker: Arc<SharedWorker>,
    retiring: Arc<AtomicBool>,
    /// The deployment's name, for logs.
    name: Arc<str>,
}

impl Worker<RayJob> for Slot {
    fn run(
        &mut self,
        batch: Vec<RayJob>,
        watch: &Watch<'_>,
        phases: &mut Phases,
    ) -> Result<Vec<Answer>> {
        let count = batch.len();
        let mut payload = Payload::default();
        let mut header = Map::new();
        let mut calls = Vec::with_capacity(count);
        for job in batch {
            match job {
                RayJob::Http { scope, body } => {
                    header.insert("op".into(), "http".into());
                    header.insert("scope".into(), scope);
                    header.insert("body".into(), payload.put(&body));
                }
                // A batch's calls share their method (the batch key).
                RayJob::Call { method, args } => {
                    header.insert("op".into(), "call".into());
                    header.insert("method".into(), method.into());
                    calls.push(payload.put(&args));
                }
            }
        }
        if !calls.is_empty() {
            header.insert("calls".into(), Value::Array(calls));
        }
        let t = Instant::now();
        let frame = self.worker.request(header, payload, watch.deadline())?;
        phases.infer = t.elapsed();
        read_answer(&frame, count, &self.name)
    }

    fn retiring(&self) -> bool {
        self.retiring.load(Ordering::Acquire)
    }
}

/// The answers of a worker's reply to a batch of `count` requests.
fn read_answer(frame: &Frame, count: usize, name: &str) -> Result<Vec<Answer>> {
    let broken = |what: String| Error::internal(format!("the Python worker sent {what}"));
    match frame.op() {
        "result" => {
            let results = frame
                .header
                .get("results")
                .and_then(Value::as_array)
                .ok_or_else(|| broken("a result without results".into()))?;
            if results.len() != count {
                return Err(broken(format!(
                    "{} results for {count} calls",
                    results.len()
                )));
            }
            results
                .iter()
                .map(|r| frame.bytes_at(r).map(|b| Answer::Value(b.to_vec())))
                .collect::<std::result::Result<_, _>>()
                .map_err(broken)
        }
        "http_response" => {
            let status = frame
                .header
                .get("status")
                .and_then(Value::as_u64)
                .filter(|s| (100..=999).contains(s))
                .ok_or_else(|| broken("an HTTP answer without a status".into()))?;
            let headers = frame
                .header
                .get("headers")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|h| {
                            let pair = h.as_array()?;
                            Some((
                                pair.first()?.as_str()?.to_string(),
                                pair.get(1)?.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let body = Bytes::copy_from_slice(frame.bytes("body").map_err(broken)?);
            Ok(vec![Answer::Http(HttpReply {
                status: status as u16,
                headers,
                body,
            })])
        }
        "error" => {
            let error = frame
                .header
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("an unnamed error")
                .to_string();
            if let Some(tb) = frame.header.get("traceback").and_then(Value::as_str) {
                tracing::warn!(target: "ferroserve::python", "deployment '{name}': the Python code raised:\n{tb}");
            }
            let exception = frame.bytes("exception").ok().map(<[u8]>::to_vec);
            Ok((0..count)
                .map(|_| Answer::Raised {
                    error: error.clone(),
                    exception: exception.clone(),
                })
                .collect())
        }
        other => Err(broken(format!("an answer '{other}'"))),
    }
}

/// A deployment, built and serving.
pub struct RayDeployment {
    /// Its name.
    pub name: String,
    /// What its code says.
    pub described: Described,
    scheduler: Arc<Scheduler<RayJob>>,
    batch: BTreeMap<String, Arc<BatchPolicy>>,
    replicas: Arc<Mutex<Vec<Replica>>>,
    stopped: Arc<AtomicBool>,
}

impl RayDeployment {
    /// Starts the deployment's replicas (and its autoscaler and health checks).
    pub(crate) fn start(
        described: Described,
        options: &DeploymentOptions,
        spec: ReplicaSpec,
        runtime: &Runtime,
    ) -> std::result::Result<Self, String> {
        let name = described.name.clone();
        let queue = options
            .max_queued_requests
            .unwrap_or(runtime.options().max_queue_size)
            .max(1);
        let scheduler =
            Arc::new(runtime.scheduler_queueing::<RayJob>("deployment", &name, 1, queue));
        let live: Arc<Mutex<Vec<Replica>>> = Arc::default();
        let health = Health::default();
        let stopped = Arc::new(AtomicBool::new(false));
        let mut replicas = Pool {
            name: name.as_str().into(),
            spec,
            scheduler: Arc::downgrade(&scheduler),
            live: live.clone(),
            slots: options.max_ongoing_requests,
            next: 0,
            config: match &options.replicas {
                Replicas::Auto(a) => Some(a.clone()),
                Replicas::Fixed(_) => None,
            },
            health,
            stopped: stopped.clone(),
        };
        for _ in 0..options.initial_replicas() {
            replicas.grow(&scheduler).map_err(|e| e.to_string())?;
        }
        if replicas.config.is_some() {
            Autoscaler {
                name: name.clone(),
                target: Box::new(replicas),
                gauges: runtime.metrics().deployment(&name),
            }
            .start()
            .map_err(|e| format!("cannot start the autoscaler: {e}"))?;
        }
        let batch = described
            .batch
            .iter()
            .map(|(method, &(size, wait))| {
                (
                    method.clone(),
                    Arc::new(BatchPolicy {
                        max_rows: size,
                        target_rows: size,
                        delay: Duration::from_secs_f64(wait),
                        max_tokens: None,
                    }),
                )
            })
            .collect();
        if described.methods.contains("check_health") {
            start_health_checks(
                &name,
                Arc::downgrade(&live),
                options.health_check_period,
                options.health_check_timeout,
                stopped.clone(),
            );
        }
        Ok(Self {
            name,
            described,
            scheduler,
            batch,
            replicas: live,
            stopped,
        })
    }

    /// Calls `method` with the pickled `(args, kwargs)`, through the queue (and its batching).
    pub async fn call(&self, method: &str, args: Vec<u8>) -> Result<Answer> {
        let known = method == "__call__" && self.described.callable
            || self.described.methods.contains(method);
        if !known {
            return Err(Error::not_found(format!(
                "deployment '{}' has no method '{method}'",
                self.name
            )));
        }
        let admission = match self.batch.get(method) {
            Some(policy) => Admission {
                rows: 1,
                width: 0,
                batch: Some((method.to_string(), policy.clone())),
                timeout: None,
            },
            None => Admission::alone(),
        };
        let job = RayJob::Call {
            method: method.to_string(),
            args,
        };
        self.observed(self.scheduler.submit(job, admission)).await
    }

    /// Awaits one request, counting its latency and outcome in the deployment's metrics.
    async fn observed(
        &self,
        work: impl std::future::Future<Output = Result<Answer>>,
    ) -> Result<Answer> {
        let started = Instant::now();
        let answer = work.await;
        let ok = match &answer {
            Ok(Answer::Raised { .. }) | Err(_) => false,
            Ok(Answer::Http(reply)) => reply.status < 500,
            Ok(Answer::Value(_)) => true,
        };
        self.scheduler.record_request(started.elapsed(), ok);
        answer
    }

    /// Serves an HTTP request (an ingress: `@serve.ingress`, `__call__`, or a function).
    pub async fn http(&self, scope: Value, body: Bytes) -> Result<Answer> {
        if !self.serves_http() {
            return Err(Error::not_found(format!(
                "deployment '{}' has no __call__ and no @serve.ingress application, so it takes no HTTP requests",
                self.name
            )));
        }
        let job = RayJob::Http { scope, body };
        self.observed(self.scheduler.submit(job, Admission::alone()))
            .await
    }

    /// Whether it answers HTTP requests.
    pub fn serves_http(&self) -> bool {
        self.described.asgi || self.described.callable
    }

    /// Replicas running now.
    pub fn replica_count(&self) -> usize {
        self.replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Stops taking requests; replicas finish what is queued, then stop.
    pub fn close(&self) {
        self.stopped.store(true, Ordering::Release);
        self.scheduler.close();
    }

    /// Waits for the replicas' threads to end (after [`RayDeployment::close`]), then stops
    /// their workers.
    pub fn join(&self) {
        self.scheduler.join();
        self.replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Calls each idle replica's `check_health` every `period`; a replica that raises or does not
/// answer within `timeout` [`UNHEALTHY_AFTER`] times in a row is restarted, as Ray restarts
/// unhealthy replicas. Busy replicas are skipped, and a late answer never kills a request in
/// flight: a long request on a sync method holds the replica's event loop, and that is no
/// sickness.
fn start_health_checks(
    name: &str,
    replicas: Weak<Mutex<Vec<Replica>>>,
    period: Duration,
    timeout: Duration,
    stopped: Arc<AtomicBool>,
) {
    let owned = name.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("health-{name}"))
        .spawn(move || {
            let mut failures: BTreeMap<usize, u32> = BTreeMap::new();
            loop {
            let name = &owned;
            std::thread::sleep(period);
            if stopped.load(Ordering::Acquire) {
                return;
            }
            let Some(live) = replicas.upgrade() else { return };
            let workers: Vec<Arc<SharedWorker>> = live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|r| r.worker.clone())
                .collect();
            drop(live);
            failures.retain(|k, _| workers.iter().any(|w| Arc::as_ptr(w) as usize == *k));
            for w in workers.into_iter().filter(|w| w.is_idle()) {
                let Value::Object(header) = json!({"op": "health"}) else {
                    continue;
                };
                let problem = match w.probe(header, Instant::now() + timeout) {
                    Ok(f) if f.op() == "error" => Some(format!(
                        "check_health raised {}",
                        f.header.get("error").and_then(Value::as_str).unwrap_or("")
                    )),
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                };
                let key = Arc::as_ptr(&w) as usize;
                match problem {
                    None => {
                        failures.remove(&key);
                    }
                    Some(why) => {
                        let n = failures.entry(key).or_insert(0);
                        *n += 1;
                        tracing::warn!("deployment '{name}': health check failed ({why}), {n} in a row");
                        if *n >= UNHEALTHY_AFTER {
                            tracing::error!("deployment '{name}': the replica failed {n} health checks in a row and is restarted");
                            failures.remove(&key);
                            w.restart();
                        }
                    }
                }
            }
        }
        });
    if let Err(e) = spawned {
        tracing::warn!("deployment '{name}': cannot start health checks: {e}");
    }
}
