//! Documents on executor instances as a kind of work for the runtime's scheduler: each shard
//! of a registered executor is one scheduler, its instances the replicas, so executors get the
//! same bounded queue, batching (Jina's `uses_dynamic_batching`), replica pool, withdrawal of
//! abandoned requests and metrics as models.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroserve_core::{Error, Result};
use ferroserve_runtime::scheduler::{Admission, BatchPolicy, Job, Phases, Watch, Worker};

use crate::spec::DynamicBatchingSpec;
use crate::{Document, Executor, ExecutorError, Parameters};

/// One request to an executor: documents for an endpoint.
pub(crate) struct DocJob {
    pub endpoint: String,
    pub docs: Vec<Document>,
    pub parameters: Parameters,
    /// The async runtime the request came from, entered while the executor runs so that its
    /// deployment handles can call other deployments.
    pub runtime: tokio::runtime::Handle,
}

impl Job for DocJob {
    type Output = Vec<Document>;
    /// Endpoint and parameters: only requests that agree on both share a batch.
    type Key = (String, Parameters);
}

/// How each endpoint's requests join the queue: batched for the endpoints with
/// `uses_dynamic_batching` (up to `preferred_batch_size` documents, or until the first has
/// waited `timeout` ms), alone otherwise.
pub(crate) struct Admissions {
    batched: BTreeMap<String, Arc<BatchPolicy>>,
    /// For an executor whose handlers are known (a Python class): the endpoints its handlers
    /// name. Any other endpoint goes to its default handler, batched as `/default` is.
    named: Option<BTreeSet<String>>,
    /// How long a request may take, queued and running (Jina's `timeout_send`).
    timeout: Option<Duration>,
}

impl Admissions {
    pub fn new(
        spec: &BTreeMap<String, DynamicBatchingSpec>,
        named: Option<BTreeSet<String>>,
        timeout: Option<Duration>,
    ) -> Self {
        let batched = spec
            .iter()
            .map(|(endpoint, b)| {
                let policy = BatchPolicy {
                    max_rows: b.preferred_batch_size.max(1),
                    target_rows: b.preferred_batch_size.max(1),
                    delay: Duration::from_millis(b.timeout),
                    max_tokens: None,
                };
                (endpoint.clone(), Arc::new(policy))
            })
            .collect();
        Self {
            batched,
            named,
            timeout,
        }
    }

    pub fn of(&self, job: &DocJob) -> Admission<(String, Parameters)> {
        let policy = self.batched.get(&job.endpoint).or_else(|| {
            let named = self.named.as_ref()?;
            if named.contains(&job.endpoint) {
                None
            } else {
                self.batched.get("/default")
            }
        });
        match policy {
            None => Admission {
                timeout: self.timeout,
                ..Admission::alone()
            },
            Some(policy) => Admission {
                rows: job.docs.len(),
                width: 0,
                batch: Some((
                    (job.endpoint.clone(), job.parameters.clone()),
                    policy.clone(),
                )),
                timeout: self.timeout,
            },
        }
    }
}

/// One instance of a registered executor.
pub(crate) struct ExecutorWorker(pub Box<dyn Executor>);

impl Worker<DocJob> for ExecutorWorker {
    fn run(
        &mut self,
        batch: Vec<DocJob>,
        _watch: &Watch<'_>,
        phases: &mut Phases,
    ) -> Result<Vec<Vec<Document>>> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        if !self.0.handles(&first.endpoint) {
            return Ok(batch.into_iter().map(|j| j.docs).collect());
        }
        let runtime = first.runtime.clone();
        let _entered = runtime.enter();
        let sizes: Vec<usize> = batch.iter().map(|j| j.docs.len()).collect();
        let mut jobs = batch.into_iter();
        let Some(first) = jobs.next() else {
            return Ok(Vec::new());
        };
        let (endpoint, parameters) = (first.endpoint, first.parameters);
        let mut docs = first.docs;
        for j in jobs {
            docs.extend(j.docs);
        }
        let t = Instant::now();
        let out = self
            .0
            .handle(&endpoint, docs, &parameters)
            .map_err(|e| match e {
                ExecutorError::BadInput(m) => Error::invalid(m),
                ExecutorError::Failed(m) => Error::internal(m),
            })?;
        phases.infer = t.elapsed();
        split(out, sizes)
    }
}

/// Splits the documents an executor returned for a batch back into its requests' (`sizes`
/// documents each), in order.
pub(crate) fn split(out: Vec<Document>, sizes: Vec<usize>) -> Result<Vec<Vec<Document>>> {
    if sizes.len() == 1 {
        return Ok(vec![out]);
    }
    let total: usize = sizes.iter().sum();
    if out.len() != total {
        return Err(Error::internal(format!(
            "the executor returned {} documents for a batch of {total}; with dynamic batching it must return one per document, in order",
            out.len()
        )));
    }
    let mut out = out.into_iter();
    Ok(sizes
        .into_iter()
        .map(|n| out.by_ref().take(n).collect())
        .collect())
}
