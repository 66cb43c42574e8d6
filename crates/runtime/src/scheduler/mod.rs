//! The scheduler every kind of work goes through: a bounded queue, dynamic batching, and a pool
//! of replica threads that each own a worker (a model version's backend, a Flow executor's
//! instance) and take the next batch when idle, so work always goes to a free replica. Deadlines,
//! withdrawal of abandoned requests, answer ordering and metrics are the same for all.
//!
//! A kind of work is a [`Job`] (what a request carries and is answered with) and a [`Worker`]
//! (one replica's compute). Tensors and model backends are one kind (`tensor`); Flow executors'
//! documents are another, in the Flow crate.

mod batch;
mod inline;
mod order;
mod queue;
mod replica;
mod tensor;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroserve_core::{Error, Result};
use tokio::sync::oneshot;

use self::inline::{Arrivals, Cost, Slot};
use self::order::Gate;
use self::queue::{Pending, Push, Queue, ABANDONED, QUEUED};
use self::replica::{Replica, Shared};
use crate::metrics::ModelMetrics;

pub use self::queue::BatchPolicy;
pub(crate) use self::tensor::TensorBatching;

/// A kind of request the scheduler queues.
pub trait Job: Send + 'static {
    /// What a request is answered with.
    type Output: Send + 'static;
    /// What requests must share to run in one batch.
    type Key: PartialEq + Send + Sync + 'static;

    /// Bytes of input the request carries, where that is cheap to tell. Only a request that
    /// says, and carries little, may run on the task that submitted it (see
    /// [`Worker::in_process`]); `None` always goes through the queue.
    fn input_bytes(&self) -> Option<usize> {
        None
    }
}

/// One replica's compute for a kind of job.
pub trait Worker<J: Job>: Send + 'static {
    /// Runs `batch` (one request when it is not batched) and answers each request, in order.
    /// `watch` says whose clients have gone and when the batch's earliest deadline passes, for
    /// work that can stop early or hang.
    fn run(
        &mut self,
        batch: Vec<J>,
        watch: &Watch<'_>,
        phases: &mut Phases,
    ) -> Result<Vec<J::Output>>;

    /// Whether this replica is to stop taking work (a worker that is one of several threads of
    /// one process, all stopping together; see [`Scheduler::retire_marked`]).
    fn retiring(&self) -> bool {
        false
    }

    /// Whether this worker computes in this process and may run on any thread, never waiting
    /// on another process. Then a small request that would otherwise wake an idle replica's
    /// thread runs on the submitting task's thread instead, while the queue is empty, nothing
    /// is batched or ordered, and recent requests took microseconds each.
    fn in_process(&self) -> bool {
        false
    }
}

/// What a worker may watch while it runs a batch.
pub struct Watch<'a> {
    cancelled: &'a (dyn Fn(usize) -> bool + Sync),
    deadline: Option<Instant>,
}

impl Watch<'_> {
    /// Whether the client of `batch[i]` has gone.
    pub fn is_cancelled(&self, i: usize) -> bool {
        (self.cancelled)(i)
    }

    /// When the earliest timeout of the batch's requests passes, if any set one; its client
    /// has been answered 504 by then (a worker that waits on another process gives up then).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// How one request joins the queue, decided by its kind of work before it is queued.
#[derive(Debug)]
pub struct Admission<K> {
    /// Rows it adds to a batch (documents, tensor rows; 0 when it runs alone).
    pub rows: usize,
    /// Elements per row the batch is padded to (tokens), for a token budget; else 0.
    pub width: usize,
    /// What it must share with others to join their batch, and how batches form; `None`: it
    /// runs alone.
    pub batch: Option<(K, Arc<BatchPolicy>)>,
    /// Its own timeout, if it set one (the scheduler's default applies too; the smaller wins).
    pub timeout: Option<Duration>,
}

impl<K> Admission<K> {
    /// A request that runs alone, with no timeout of its own.
    pub fn alone() -> Self {
        Self {
            rows: 0,
            width: 0,
            batch: None,
            timeout: None,
        }
    }
}

/// How a scheduler bounds and orders its queue.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerConfig {
    /// What kind of thing it serves (`model`, `executor`), for messages.
    pub kind: &'static str,
    /// Its name, for messages and thread names.
    pub name: String,
    /// Requests that may wait; more are refused at once.
    pub max_queue_size: usize,
    /// Timeout for requests that set none.
    pub default_timeout: Option<Duration>,
    /// Answer in arrival order, even when a later request finishes first.
    pub preserve_ordering: bool,
}

/// Runs one model version's (or one executor shard's) requests on its replicas.
pub struct Scheduler<J: Job> {
    shared: Arc<Shared<J>>,
    queue: Arc<Queue<J>>,
    /// The replicas' workers, for requests run inline; stopped ones are pruned on `add`.
    slots: RwLock<Vec<Arc<Slot<J>>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Replicas serving (started and not asked to retire).
    replicas: AtomicUsize,
    /// Replica threads started so far, for their names.
    started: AtomicUsize,
}

impl<J: Job> Scheduler<J> {
    /// A scheduler with no replica yet; [`Scheduler::add`] starts them. `metrics` are its
    /// queue depth, batch sizes, latencies and replica count. Outside the runtime, schedulers
    /// come from [`crate::Runtime::scheduler`].
    pub(crate) fn new(config: SchedulerConfig, metrics: ModelMetrics) -> Self {
        let config = Arc::new(config);
        let gate = config.preserve_ordering.then(|| Arc::new(Gate::default()));
        let queue = Arc::new(Queue::new(
            config.max_queue_size,
            metrics.queue_depth.clone(),
            gate.clone(),
        ));
        Self {
            shared: Arc::new(Shared {
                config,
                metrics,
                gate,
                cost: Cost::default(),
                arrivals: Arrivals::default(),
            }),
            queue,
            slots: RwLock::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
            replicas: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
        }
    }

    /// Starts a replica thread on `worker`; it takes the next batch like the others. Fails only
    /// when the process cannot start a thread.
    pub fn add(&self, worker: Box<dyn Worker<J>>) -> Result<()> {
        let slot = Arc::new(Slot::new(worker));
        let replica = Replica {
            slot: slot.clone(),
            queue: self.queue.clone(),
            shared: self.shared.clone(),
        };
        let i = self.started.fetch_add(1, Ordering::AcqRel);
        let worker = std::thread::Builder::new()
            .name(format!("replica-{}-{i}", self.shared.config.name))
            .spawn(move || replica.run())
            .map_err(|e| Error::unavailable(format!("cannot start a replica thread: {e}")))?;
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers.retain(|w| !w.is_finished());
        workers.push(worker);
        drop(workers);
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        slots.retain(|s| !s.stopped());
        slots.push(slot);
        let n = self.replicas.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.metrics.replicas.set(n as i64);
        Ok(())
    }

    /// Asks up to `n` replicas to stop after their current batch; returns how many will. (Until
    /// its thread takes its worker out, a stopping replica's worker may still run one request
    /// inline, as any free one may.)
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
                    self.shared.metrics.replicas.set((current - take) as i64);
                    return take;
                }
                Err(now) => current = now,
            }
        }
    }

    /// Counts `n` replicas as gone whose workers now say they are [`Worker::retiring`], and
    /// wakes them: each stops after its current batch.
    pub fn retire_marked(&self, n: usize) {
        let now = self
            .replicas
            .fetch_sub(n.min(self.replicas()), Ordering::AcqRel)
            .saturating_sub(n);
        self.shared.metrics.replicas.set(now as i64);
        self.queue.wake();
    }

    /// Replicas serving.
    pub fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Acquire)
    }

    /// Requests queued, and requests being computed.
    pub fn load(&self) -> (usize, usize) {
        let queued = self.shared.metrics.queue_depth.get().max(0) as usize;
        let running = self.shared.metrics.inflight.get().max(0) as usize;
        (queued, running)
    }

    /// Queues `request` as `admission` says and waits for its answer; or, for a cheap request
    /// while the model is quiet, runs it on a free replica's worker right here, on the caller's
    /// thread, before returning (see `inline.rs`).
    ///
    /// Refuses at once when the queue is full (`Overloaded`); answers `DeadlineExceeded`
    /// without running it when its timeout passes while queued (or has passed on arrival).
    /// Dropping the future withdraws a queued request.
    pub async fn submit(&self, request: J, admission: Admission<J::Key>) -> Result<J::Output> {
        let timeout = admission
            .timeout
            .into_iter()
            .chain(self.shared.config.default_timeout)
            .min();
        let now = Instant::now();
        let deadline = timeout.map(|t| now + t);
        let request = match self.try_inline(request, &admission, now, deadline) {
            Ok(answer) => return answer,
            Err(request) => request,
        };
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, mut answer) = oneshot::channel();
        let pending = Pending {
            request,
            rows: admission.rows,
            width: admission.width,
            batch: admission.batch,
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
                    "{} '{}' has {} requests queued already; retry shortly",
                    self.shared.config.kind,
                    self.shared.config.name,
                    self.shared.config.max_queue_size
                )))
            }
            Push::Closed => {
                return Err(Error::unavailable(format!(
                    "{} '{}' is being unloaded",
                    self.shared.config.kind, self.shared.config.name
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
                            return Err(expired(&self.shared.config, timeout));
                        }
                        // A replica took it just now: it runs, so wait for its answer.
                        answer.await
                    }
                }
            }
        };
        result.map_err(|_| {
            Error::internal(format!(
                "{} '{}' stopped before answering",
                self.shared.config.kind, self.shared.config.name
            ))
        })?
    }

    /// Counts one client request answered after `elapsed` (its latency and outcome), for work
    /// whose client requests are not counted elsewhere (a repository model's are counted by
    /// the runtime; a Ray deployment's here, once per HTTP request or handle call).
    pub fn record_request(&self, elapsed: Duration, ok: bool) {
        self.shared
            .metrics
            .request_seconds
            .observe(elapsed.as_secs_f64());
        if ok {
            self.shared.metrics.success.inc();
            self.shared.metrics.stats.success.add(elapsed);
        } else {
            self.shared.metrics.failure.inc();
            self.shared.metrics.stats.fail.add(elapsed);
        }
    }

    /// Stops taking requests; replicas finish the queued ones, then their threads end.
    pub fn close(&self) {
        self.queue.close();
    }

    /// Waits for the replica threads to end (after [`Scheduler::close`]).
    pub fn join(&self) {
        let workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl<J: Job> Drop for Scheduler<J> {
    /// A scheduler nobody can submit to any more lets its replicas finish and end.
    fn drop(&mut self) {
        self.queue.close();
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

fn expired(config: &SchedulerConfig, timeout: Option<Duration>) -> Error {
    let ms = timeout.map_or(0, |t| t.as_millis());
    Error::deadline_exceeded(format!(
        "the request waited {ms} ms in {} '{}''s queue, its timeout, and was not run",
        config.kind, config.name
    ))
}

/// Where a batch's compute time went: assembling the batch, the worker, splitting the outputs
/// (Triton's compute_input, compute_infer and compute_output).
#[derive(Debug, Default)]
pub struct Phases {
    /// Assembling the batch.
    pub input: Duration,
    /// The worker's compute.
    pub infer: Duration,
    /// Splitting the outputs.
    pub output: Duration,
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
