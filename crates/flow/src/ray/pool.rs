//! A deployment's replicas: each a Python worker process serving `max_ongoing_requests`
//! requests at once, as that many scheduler threads ("slots") that stop together, grown and
//! shrunk by the fixed count or the runtime's autoscaler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use ferroserve_backend_python::{Calls, Payload, SharedWorker, WorkerSpec};
use ferroserve_core::{Health, Result};
use ferroserve_runtime::autoscale::{Load, Scaled};
use ferroserve_runtime::scheduler::{Job, Phases, Scheduler, Watch, Worker};
use ferroserve_runtime::Autoscaling;
use serde_json::{Map, Value};

use super::wire::{read_answer, Answer};

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
pub(crate) struct Replica {
    pub worker: Arc<SharedWorker>,
    retiring: Arc<AtomicBool>,
}

/// A deployment's replicas, as the autoscaler (or the fixed count) sets them.
pub(crate) struct Pool {
    pub name: Arc<str>,
    pub spec: ReplicaSpec,
    pub scheduler: Weak<Scheduler<RayJob>>,
    pub live: Arc<Mutex<Vec<Replica>>>,
    pub slots: usize,
    pub next: usize,
    pub config: Option<Autoscaling>,
    pub health: Health,
    /// Set when the deployment closes: the autoscaler stops with it.
    pub stopped: Arc<AtomicBool>,
}

impl Pool {
    pub fn grow(&mut self, scheduler: &Scheduler<RayJob>) -> Result<()> {
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
