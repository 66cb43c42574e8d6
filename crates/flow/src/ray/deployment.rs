//! One Ray Serve deployment on ferroserve's runtime: its replicas ([`super::pool`]) behind the
//! runtime's one scheduler (bounded queue, `@serve.batch` batching, metrics) and, with
//! `autoscaling_config`, the runtime's one autoscaler.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferroserve_core::{Error, Health, Result};
use ferroserve_runtime::autoscale::Autoscaler;
use ferroserve_runtime::scheduler::{Admission, BatchPolicy, Scheduler};
use ferroserve_runtime::Runtime;
use serde_json::Value;

use super::health::start_health_checks;
use super::options::{DeploymentOptions, Replicas};
use super::pool::{Pool, RayJob, Replica, ReplicaSpec};
use super::wire::{Answer, Described};

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
                report: runtime.metrics().deployment(&name),
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
