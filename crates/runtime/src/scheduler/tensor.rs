//! Tensors on model backends as a kind of scheduler work: how a request is admitted (its rows,
//! its padded width, what it must share with a batch) and how a replica runs a batch (merged
//! along dimension 0, computed, split back).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroserve_core::{Backend, Error, InferRequest, NamedTensor, Result, RunContext, Signature};

use super::batch::{self, BatchKey};
use super::{Admission, BatchPolicy, Job, Phases, Watch, Worker};

impl Job for InferRequest {
    /// A batch can fail as a whole (the scheduler's `Err`) or request by request (a backend
    /// that takes requests one by one answers each with its own result).
    type Output = Result<Vec<NamedTensor>>;
    type Key = BatchKey;

    fn input_bytes(&self) -> Option<usize> {
        Some(self.inputs.iter().map(|t| t.tensor.data().len()).sum())
    }
}

/// How a model version batches its requests.
#[derive(Debug, Clone)]
pub(crate) struct TensorBatching {
    /// Model name, for messages.
    pub model: String,
    /// The batch policy; `None` (or `max_rows` 0) runs every request alone.
    pub policy: Option<Arc<BatchPolicy>>,
    /// Pad values of inputs whose non-batch dimensions may differ.
    pub pad: Arc<BTreeMap<String, f64>>,
    /// The model's outputs, for splitting batches.
    pub signature: Arc<Signature>,
}

impl TensorBatching {
    /// Checks `request` against the batch limits and says how it joins the queue.
    pub fn admit(&self, request: &InferRequest) -> Result<Admission<BatchKey>> {
        let timeout = timeout_of(request)?;
        let Some(policy) = self.policy.as_ref().filter(|p| p.max_rows > 0) else {
            return Ok(Admission {
                timeout,
                ..Admission::alone()
            });
        };
        let rows = batch::rows(request)?;
        if rows > policy.max_rows {
            return Err(Error::invalid(format!(
                "the request has {rows} rows but model '{}' takes at most {} per batch (max_batch_size)",
                self.model, policy.max_rows
            )));
        }
        let width = batch::padded_width(request, &self.pad);
        if let Some(budget) = policy.max_tokens {
            if rows * width > budget {
                return Err(Error::too_large(format!(
                    "the request has {rows} rows of {width} tokens, more than model '{}' takes in one batch ({budget}, max_batch_tokens)",
                    self.model
                )));
            }
        }
        Ok(Admission {
            rows,
            width,
            batch: Some((BatchKey::of(request, &self.pad), policy.clone())),
            timeout,
        })
    }

    /// A replica on `backend`.
    pub fn worker(&self, backend: Box<dyn Backend>) -> Box<BackendWorker> {
        Box::new(BackendWorker {
            backend,
            pad: self.pad.clone(),
            signature: self.signature.clone(),
        })
    }
}

/// The request's own `timeout` parameter, in microseconds (Triton's convention).
fn timeout_of(request: &InferRequest) -> Result<Option<Duration>> {
    match request.parameters.get("timeout") {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|us| Some(Duration::from_micros(us)))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "parameter 'timeout' must be a whole number of microseconds, got {v}"
                ))
            }),
    }
}

/// One replica of a model: its backend, and how batches are merged and split for it.
pub(crate) struct BackendWorker {
    backend: Box<dyn Backend>,
    pad: Arc<BTreeMap<String, f64>>,
    signature: Arc<Signature>,
}

impl Worker<InferRequest> for BackendWorker {
    fn in_process(&self) -> bool {
        self.backend.in_process()
    }

    /// Runs one request as it is, or several merged into one batch and split again.
    fn run(
        &mut self,
        requests: Vec<InferRequest>,
        watch: &Watch<'_>,
        phases: &mut Phases,
    ) -> Result<Vec<Result<Vec<NamedTensor>>>> {
        if self.backend.takes_requests() {
            let gone = |i: usize| watch.is_cancelled(i);
            let parameters = requests.first().map(|r| r.parameters.clone());
            let parameters = parameters.unwrap_or_default();
            let context = RunContext::new(&parameters, &gone).with_deadline(watch.deadline());
            let requests: Vec<&InferRequest> = requests.iter().collect();
            let t = Instant::now();
            let out = self.backend.run_requests(&requests, &context);
            phases.infer = t.elapsed();
            return out;
        }
        if let [only] = requests.as_slice() {
            let gone = |_row: usize| watch.is_cancelled(0);
            let progress = |_row: usize| only.progress.as_ref();
            let context = RunContext::new(&only.parameters, &gone)
                .with_progress(&progress)
                .with_deadline(watch.deadline());
            let t = Instant::now();
            let out = self.backend.run_with(&only.inputs, &only.outputs, &context);
            phases.infer = t.elapsed();
            return Ok(vec![Ok(out?)]);
        }
        let t = Instant::now();
        let requests: Vec<&InferRequest> = requests.iter().collect();
        let (inputs, parts) = batch::merge(&requests, &self.pad)?;
        phases.input = t.elapsed();
        // Batch row → the request it came from, to tell the backend whose client has gone.
        let owner: Vec<usize> = parts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| std::iter::repeat_n(i, p.rows))
            .collect();
        let gone = |row: usize| owner.get(row).is_some_and(|&i| watch.is_cancelled(i));
        let progress = |row: usize| owner.get(row).and_then(|&i| requests[i].progress.as_ref());
        let context = RunContext::new(&requests[0].parameters, &gone)
            .with_progress(&progress)
            .with_deadline(watch.deadline());
        let t = Instant::now();
        let outputs = self
            .backend
            .run_with(&inputs, &requests[0].outputs, &context);
        phases.infer = t.elapsed();
        let t = Instant::now();
        let split = batch::split(outputs?, &parts, &self.signature);
        phases.output = t.elapsed();
        Ok(split?.into_iter().map(Ok).collect())
    }
}
