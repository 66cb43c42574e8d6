//! The per-model-version scheduler: a bounded queue, dynamic batching, and a pool of replica
//! threads that each own a backend and take the next batch when idle (so work always goes to a
//! free replica, the least loaded one).

mod batch;
mod order;
mod queue;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroserve_core::{Backend, Error, InferRequest, NamedTensor, Result, RunContext, Signature};
use tokio::sync::oneshot;

use self::batch::BatchKey;
use self::order::{Gate, Reply};
use self::queue::{BatchPolicy, Pending, Push, Queue, Work, ABANDONED, QUEUED};
use crate::metrics::ModelMetrics;

/// How a scheduler batches and bounds its queue.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerConfig {
    /// Model name, for messages and thread names.
    pub model: String,
    /// Most rows per batch; 0 disables dynamic batching.
    pub max_batch_size: usize,
    /// A batch goes as soon as it has this many rows.
    pub target_rows: usize,
    /// How long the oldest request waits for others.
    pub max_queue_delay: Duration,
    /// Requests that may wait.
    pub max_queue_size: usize,
    /// Timeout for requests that set none.
    pub default_timeout: Option<Duration>,
    /// Pad values of inputs whose non-batch dimensions may differ.
    pub pad: BTreeMap<String, f64>,
    /// Answer in arrival order, even when a later request finishes first.
    pub preserve_ordering: bool,
    /// Most padded elements per row of the padded inputs (tokens) times rows in one batch.
    pub max_batch_tokens: Option<usize>,
}

/// Runs one model version's requests on its replicas.
pub(crate) struct Scheduler {
    config: Arc<SchedulerConfig>,
    queue: Arc<Queue>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    gate: Option<Arc<Gate>>,
    policy: BatchPolicy,
    signature: Arc<Signature>,
    metrics: ModelMetrics,
    /// Replicas serving (started and not asked to retire).
    replicas: AtomicUsize,
    /// Replica threads started so far, for their names.
    started: AtomicUsize,
}

impl Scheduler {
    /// Starts one thread per replica.
    pub fn start(
        config: SchedulerConfig,
        signature: Signature,
        replicas: Vec<Box<dyn Backend>>,
        metrics: ModelMetrics,
    ) -> Self {
        let config = Arc::new(config);
        let gate = config.preserve_ordering.then(|| Arc::new(Gate::default()));
        let queue = Arc::new(Queue::new(
            config.max_queue_size,
            metrics.queue_depth.clone(),
            gate.clone(),
        ));
        let policy = BatchPolicy {
            max_rows: config.max_batch_size,
            target_rows: config.target_rows,
            delay: config.max_queue_delay,
            max_tokens: config.max_batch_tokens,
        };
        let scheduler = Self {
            config,
            queue,
            workers: Mutex::new(Vec::new()),
            gate,
            policy,
            signature: Arc::new(signature),
            metrics,
            replicas: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
        };
        for backend in replicas {
            scheduler.add(backend);
        }
        scheduler
    }

    /// Starts a replica thread on `backend`; it takes the next batch like the others.
    pub fn add(&self, backend: Box<dyn Backend>) {
        let replica = Replica {
            backend,
            queue: self.queue.clone(),
            gate: self.gate.clone(),
            policy: self.policy.clone(),
            config: self.config.clone(),
            signature: self.signature.clone(),
            metrics: self.metrics.clone(),
        };
        let i = self.started.fetch_add(1, Ordering::AcqRel);
        let worker = std::thread::Builder::new()
            .name(format!("replica-{}-{i}", self.config.model))
            .spawn(move || replica.run())
            // Failing to start a thread means the process is out of resources; nothing to serve.
            .unwrap_or_else(|e| panic!("cannot start replica threads: {e}"));
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        workers.retain(|w| !w.is_finished());
        workers.push(worker);
        let n = self.replicas.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.replicas.set(n as i64);
    }

    /// Asks up to `n` replicas to stop after their current batch; returns how many will.
    pub fn retire(&self, n: usize) -> usize {
        let mut current = self.replicas.load(Ordering::Acquire);
        loop {
            let take = n.min(current);
            match self.replicas.compare_exchange(
                current,
                current - take,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.queue.retire(take);
                    self.metrics.replicas.set((current - take) as i64);
                    return take;
                }
                Err(now) => current = now,
            }
        }
    }

    /// Replicas serving.
    pub fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Acquire)
    }

    /// Requests queued, and requests being computed.
    pub fn load(&self) -> (usize, usize) {
        let queued = self.metrics.queue_depth.get().max(0) as usize;
        let running = self.metrics.inflight.get().max(0) as usize;
        (queued, running)
    }

    /// Queues `request` and waits for its outputs.
    ///
    /// Refuses at once when the queue is full ([`ErrorKind::Overloaded`](ferroserve_core::ErrorKind::Overloaded)); answers
    /// [`ErrorKind::DeadlineExceeded`](ferroserve_core::ErrorKind::DeadlineExceeded) without running it when its timeout passes while queued.
    /// Dropping the future withdraws a queued request.
    pub async fn submit(&self, request: InferRequest) -> Result<Vec<NamedTensor>> {
        let (rows, width, key) = if self.config.max_batch_size > 0 {
            let rows = batch::rows(&request)?;
            if rows > self.config.max_batch_size {
                return Err(Error::invalid(format!(
                    "the request has {rows} rows but model '{}' takes at most {} per batch (max_batch_size)",
                    self.config.model, self.config.max_batch_size
                )));
            }
            let width = batch::padded_width(&request, &self.config.pad);
            if let Some(budget) = self.config.max_batch_tokens {
                if rows * width > budget {
                    return Err(Error::too_large(format!(
                        "the request has {rows} rows of {width} tokens, more than model '{}' takes in one batch ({budget}, max_batch_tokens)",
                        self.config.model
                    )));
                }
            }
            (rows, width, Some(BatchKey::of(&request, &self.config.pad)))
        } else {
            (0, 0, None)
        };
        let timeout = timeout_of(&request)?
            .into_iter()
            .chain(self.config.default_timeout)
            .min();
        let now = Instant::now();
        let deadline = timeout.map(|t| now + t);
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, mut answer) = oneshot::channel();
        let pending = Pending {
            request,
            rows,
            width,
            key,
            enqueued: now,
            deadline,
            state: state.clone(),
            reply,
            seq: 0,
        };
        match self.queue.push(pending) {
            Push::Queued => {}
            Push::Full => {
                return Err(Error::overloaded(format!(
                    "model '{}' has {} requests queued already; retry shortly",
                    self.config.model, self.config.max_queue_size
                )))
            }
            Push::Closed => {
                return Err(Error::unavailable(format!(
                    "model '{}' is being unloaded",
                    self.config.model
                )))
            }
        }
        let _withdraw = Withdraw(state.clone());
        let result = match deadline {
            None => answer.await,
            Some(deadline) => {
                tokio::select! {
                    r = &mut answer => r,
                    () = tokio::time::sleep_until(deadline.into()) => {
                        if state.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                            return Err(expired(&self.config.model, timeout));
                        }
                        // A replica took it just now: it runs, so wait for its answer.
                        answer.await
                    }
                }
            }
        };
        result.map_err(|_| {
            Error::internal(format!(
                "model '{}' stopped before answering",
                self.config.model
            ))
        })?
    }

    /// Stops taking requests; replicas finish the queued ones, then their threads end.
    pub fn close(&self) {
        self.queue.close();
    }

    /// Waits for the replica threads to end (after [`Scheduler::close`]).
    pub fn join(&self) {
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }
}

/// On drop (client gone, or answered), marks a still-queued request abandoned so no replica
/// runs it.
struct Withdraw(Arc<AtomicU8>);

impl Drop for Withdraw {
    fn drop(&mut self) {
        let _ = self
            .0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
    }
}

fn expired(model: &str, timeout: Option<Duration>) -> Error {
    let ms = timeout.map_or(0, |t| t.as_millis());
    Error::deadline_exceeded(format!(
        "the request waited {ms} ms in model '{model}''s queue, its timeout, and was not run"
    ))
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

/// One replica: a backend and the loop that feeds it.
struct Replica {
    backend: Box<dyn Backend>,
    queue: Arc<Queue>,
    gate: Option<Arc<Gate>>,
    policy: BatchPolicy,
    config: Arc<SchedulerConfig>,
    signature: Arc<Signature>,
    metrics: ModelMetrics,
}

impl Replica {
    /// Sends an answer, through the ordering gate when the model preserves ordering.
    fn answer(&self, seq: u64, reply: Reply, result: Result<Vec<NamedTensor>>) {
        match &self.gate {
            Some(gate) => gate.complete(seq, Some((reply, result))),
            None => {
                let _ = reply.send(result);
            }
        }
    }

    fn run(mut self) {
        while let Some(work) = self.queue.next(&self.policy) {
            match work {
                Work::Expired(items) => {
                    for p in items {
                        let waited = p.deadline.map(|d| d.saturating_duration_since(p.enqueued));
                        self.answer(p.seq, p.reply, Err(expired(&self.config.model, waited)));
                    }
                }
                Work::Batch(items) => self.run_batch(items),
            }
        }
    }

    fn run_batch(&mut self, items: Vec<Pending>) {
        let started = Instant::now();
        for p in &items {
            let waited = started.duration_since(p.enqueued);
            self.metrics.queue_seconds.observe(waited.as_secs_f64());
            self.metrics.stats.queue.add(waited);
        }
        let n = items.len() as i64;
        self.metrics.inflight.inc_by(n);
        let rows: usize = items.iter().map(|p| p.rows.max(1)).sum();
        let mut phases = Phases::default();
        let results =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.compute(&items, &mut phases)))
                .unwrap_or_else(|_| {
                    Err(Error::internal(format!(
                        "model '{}' panicked while computing",
                        self.config.model
                    )))
                });
        let elapsed = started.elapsed();
        let compute = elapsed.as_secs_f64();
        self.metrics.batch_size.observe(rows as f64);
        self.metrics.inflight.dec_by(n);
        let stats = &self.metrics.stats;
        stats.execution_count.fetch_add(1, Ordering::Relaxed);
        for _ in &items {
            self.metrics.compute_seconds.observe(compute);
            phases.record(stats);
        }
        match results {
            Ok(outputs) => {
                stats
                    .inference_count
                    .fetch_add(rows as u64, Ordering::Relaxed);
                for (p, out) in items.into_iter().zip(outputs) {
                    self.answer(p.seq, p.reply, Ok(out));
                }
            }
            Err(e) => {
                for p in items {
                    self.answer(p.seq, p.reply, Err(e.clone()));
                }
            }
        }
    }

    /// Runs one request as it is, or several merged into one batch and split again.
    fn compute(&mut self, items: &[Pending], phases: &mut Phases) -> Result<Vec<Vec<NamedTensor>>> {
        if let [only] = items {
            let r = &only.request;
            let gone = |_row: usize| only.reply.is_closed();
            let context = RunContext::new(&r.parameters, &gone);
            let t = Instant::now();
            let out = self.backend.run_with(&r.inputs, &r.outputs, &context);
            phases.infer = t.elapsed();
            return Ok(vec![out?]);
        }
        let t = Instant::now();
        let requests: Vec<&InferRequest> = items.iter().map(|p| &p.request).collect();
        let (inputs, parts) = batch::merge(&requests, &self.config.pad)?;
        phases.input = t.elapsed();
        // Batch row → the request it came from, to tell the backend whose client has gone.
        let owner: Vec<usize> = parts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| std::iter::repeat_n(i, p.rows))
            .collect();
        let gone = |row: usize| owner.get(row).is_some_and(|&i| items[i].reply.is_closed());
        let context = RunContext::new(&requests[0].parameters, &gone);
        let t = Instant::now();
        let outputs = self
            .backend
            .run_with(&inputs, &requests[0].outputs, &context);
        phases.infer = t.elapsed();
        let t = Instant::now();
        let split = batch::split(outputs?, &parts, &self.signature);
        phases.output = t.elapsed();
        split
    }
}

/// Where a batch's compute time went: assembling the batch, the backend, splitting the outputs
/// (Triton's compute_input, compute_infer and compute_output).
#[derive(Default)]
struct Phases {
    input: Duration,
    infer: Duration,
    output: Duration,
}

impl Phases {
    /// Adds one request's share; every request of a batch counts the whole batch's phases, and
    /// all three counts move together, as Triton's tools expect.
    fn record(&self, stats: &crate::metrics::Stats) {
        stats.compute_input.add(self.input);
        stats.compute_infer.add(self.infer);
        stats.compute_output.add(self.output);
    }
}
