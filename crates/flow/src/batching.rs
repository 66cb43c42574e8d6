//! Jina's `uses_dynamic_batching` for registered executors: the documents of concurrent requests
//! to one endpoint are gathered into one call, up to `preferred_batch_size` documents or until
//! the first request has waited `timeout` milliseconds, and the answer is split back.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use ferroserve_core::Error;
use tokio::sync::{mpsc, oneshot};

use crate::deployment::Deployment;
use crate::spec::DynamicBatchingSpec;
use crate::{Document, Parameters};

type Reply = oneshot::Sender<Result<Vec<Document>, Error>>;

struct Job {
    docs: Vec<Document>,
    parameters: Parameters,
    reply: Reply,
}

/// One endpoint's batcher; its task starts with the first request (inside the server's async
/// runtime) and ends with the deployment.
pub(crate) struct Batcher {
    config: DynamicBatchingSpec,
    /// Requests that may wait for a batch (the server's `--max-queue-size`).
    max_waiting: usize,
    jobs: OnceLock<mpsc::Sender<Job>>,
}

impl Batcher {
    pub fn new(config: DynamicBatchingSpec, max_waiting: usize) -> Self {
        Self {
            config,
            max_waiting: max_waiting.max(1),
            jobs: OnceLock::new(),
        }
    }

    /// Queues `docs` for the next batch of `endpoint` and waits for their share of the answer.
    pub async fn submit(
        &self,
        deployment: &Arc<Deployment>,
        endpoint: &str,
        docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, Error> {
        let jobs = self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.max_waiting);
            tokio::spawn(gather(
                Arc::downgrade(deployment),
                endpoint.to_string(),
                self.config,
                self.max_waiting,
                rx,
            ));
            tx
        });
        let (reply, answer) = oneshot::channel();
        jobs.try_send(Job {
            docs,
            parameters: parameters.clone(),
            reply,
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::overloaded(format!(
                "{} requests are waiting for a batch already; retry shortly",
                self.max_waiting
            )),
            mpsc::error::TrySendError::Closed(_) => Error::unavailable("the executor is stopping"),
        })?;
        answer
            .await
            .map_err(|_| Error::internal("the batch was dropped"))?
    }
}

/// Forms batches from `jobs` and hands each to the deployment, until the deployment is gone.
/// Requests with different parameters never share a batch.
async fn gather(
    deployment: Weak<Deployment>,
    endpoint: String,
    config: DynamicBatchingSpec,
    max_waiting: usize,
    mut jobs: mpsc::Receiver<Job>,
) {
    let timeout = Duration::from_millis(config.timeout);
    // Jobs that arrived while a batch with other parameters was forming.
    let mut held: VecDeque<Job> = VecDeque::new();
    loop {
        let first = match held.pop_front() {
            Some(j) => j,
            None => match jobs.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut count = first.docs.len();
        let mut batch = vec![first];
        let same = |a: &Parameters, b: &Parameters| a == b;
        let mut i = 0;
        while i < held.len() && count < config.preferred_batch_size {
            if same(&held[i].parameters, &batch[0].parameters) {
                if let Some(j) = held.remove(i) {
                    count += j.docs.len();
                    batch.push(j);
                }
            } else {
                i += 1;
            }
        }
        while count < config.preferred_batch_size {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(j) if same(&j.parameters, &batch[0].parameters) => {
                        count += j.docs.len();
                        batch.push(j);
                    }
                    Some(j) if held.len() < max_waiting => held.push_back(j),
                    Some(j) => {
                        let _ = j.reply.send(Err(Error::overloaded("too many requests with other parameters are waiting for a batch; retry shortly")));
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let Some(d) = deployment.upgrade() else {
            return;
        };
        let endpoint = endpoint.clone();
        // Run the batch beside the forming of the next one, so replicas work in parallel.
        tokio::spawn(async move {
            let parameters = batch[0].parameters.clone();
            let sizes: Vec<usize> = batch.iter().map(|j| j.docs.len()).collect();
            let mut replies = Vec::with_capacity(batch.len());
            let mut docs = Vec::with_capacity(sizes.iter().sum());
            for j in batch {
                docs.extend(j.docs);
                replies.push(j.reply);
            }
            let total = docs.len();
            match d.call_direct(&endpoint, docs, &parameters).await {
                Ok(out) if out.len() == total => {
                    let mut out = out.into_iter();
                    for (reply, n) in replies.into_iter().zip(sizes) {
                        let _ = reply.send(Ok(out.by_ref().take(n).collect()));
                    }
                }
                Ok(out) => {
                    let e = Error::internal(format!(
                        "the executor returned {} documents for a batch of {total}; with uses_dynamic_batching it must return one per document, in order",
                        out.len()
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
