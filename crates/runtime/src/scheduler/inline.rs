//! Running a cheap request on the task that submitted it.
//!
//! A queued request costs two thread hand-offs: the submitting task wakes a replica thread,
//! which computes and wakes the task again. When requests come one at a time, the replica
//! thread is asleep at each one, and for a model whose run takes a few microseconds (a no-op, a
//! small ONNX graph) waking it and being woken cost more than the compute. So when the queue is
//! empty and nothing runs, requests arrive less often than every [`MIN_INTERVAL`], the request
//! is small and not batched or ordered, recent requests took less than [`MAX_COST`] each, and a
//! replica's worker that computes in this process is free, the submitting task runs the worker
//! itself. Everything else (batches, slow or out-of-process workers, a busy model) goes through
//! the queue.
//!
//! Why not at high rates too: there the replica thread is awake and finds the next request
//! queued, so the hand-off is cheap and its compute overlaps the network work of the server's
//! other threads. Measured on 2 cores (BENCHMARKS.md, table 2c): running no-op requests inline
//! at any rate lost 10-15% of throughput at 8 and 32 clients; with the rate rule, 1 client gets
//! 15% more requests/s for 31% less server CPU each, and 8 and 32 clients are unchanged.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferroserve_core::{Error, Result};
use tokio::sync::oneshot;

use super::queue::{Pending, TAKEN};
use super::{Admission, Job, Scheduler, Worker};

/// Requests that took longer than this (a smoothed average of recent ones) run on replica
/// threads: an async server thread must not be held much longer than a system call.
pub(super) const MAX_COST: Duration = Duration::from_micros(50);

/// Requests that arrive more often than this (a smoothed average) go through the queue.
pub(super) const MIN_INTERVAL: Duration = Duration::from_micros(50);

/// Requests with more input than this run on replica threads whatever the model costs, as
/// their compute likely grows with their size; so do those with more than twice the input of
/// the requests measured (but at least [`SMALL_BYTES`]), so that a large input to a model with
/// dynamic shapes, whose cost was learnt on small ones, does not hold a server thread.
pub(super) const MAX_BYTES: usize = 64 * 1024;

/// Input that may always run inline on a cheap model, whatever the measured requests carried.
pub(super) const SMALL_BYTES: usize = 1024;

/// A replica's worker, which its thread and submitting tasks take turns to run.
pub(super) struct Slot<J: Job> {
    /// `None` once the replica has stopped.
    worker: Mutex<Option<Box<dyn Worker<J>>>>,
    /// Whether the worker computes in this process and may run on any thread.
    in_process: bool,
}

impl<J: Job> Slot<J> {
    pub fn new(worker: Box<dyn Worker<J>>) -> Self {
        Self {
            in_process: worker.in_process(),
            worker: Mutex::new(Some(worker)),
        }
    }

    /// Runs `f` on the worker, waiting for a submitting task that is running it.
    pub fn run(&self, f: impl FnOnce(&mut dyn Worker<J>)) {
        let mut worker = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = worker.as_mut() {
            f(w.as_mut());
        }
    }

    /// Whether the replica is to stop. Asked under the queue's lock, so it never waits for
    /// the worker: one that a submitting task is running is not stopping (only workers of
    /// several threads of one process stop this way, and they do not compute in process).
    pub fn retiring(&self) -> bool {
        match self.worker.try_lock() {
            Ok(w) => w.as_ref().is_none_or(|w| w.retiring()),
            Err(_) => false,
        }
    }

    /// Whether the replica has stopped and dropped its worker.
    pub fn stopped(&self) -> bool {
        self.worker.try_lock().is_ok_and(|w| w.is_none())
    }

    /// Takes the worker out for good, once nothing runs it.
    pub fn take(&self) -> Option<Box<dyn Worker<J>>> {
        self.worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Smoothed averages of what one request alone has been costing to compute, and of its input.
#[derive(Default)]
pub(super) struct Cost {
    /// Nanoseconds; 0 until the first request is measured.
    nanos: AtomicU64,
    /// Bytes of input of the requests measured.
    bytes: AtomicU64,
}

/// One more sample in a smoothed average (the first sample is the average).
fn smooth(average: &AtomicU64, sample: u64, first: bool) {
    // Threads that observe at once may lose one sample; an average does not need them all.
    let old = average.load(Ordering::Relaxed);
    let new = if first {
        sample
    } else {
        old - old / 8 + sample / 8
    };
    average.store(new, Ordering::Relaxed);
}

impl Cost {
    /// Counts a request with `bytes` of input that computed in `elapsed`.
    pub fn observe(&self, elapsed: Duration, bytes: usize) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        let first = self.nanos.load(Ordering::Relaxed) == 0;
        smooth(&self.bytes, bytes as u64, first);
        smooth(&self.nanos, ns, first);
    }

    /// Whether requests have been measured, are cheap enough to run inline, and a request of
    /// `bytes` is like them.
    pub fn cheap_for(&self, bytes: usize) -> bool {
        let ns = self.nanos.load(Ordering::Relaxed);
        let usual = self.bytes.load(Ordering::Relaxed).saturating_mul(2);
        let limit = usual.max(SMALL_BYTES as u64).min(MAX_BYTES as u64);
        ns != 0 && ns <= MAX_COST.as_nanos() as u64 && bytes as u64 <= limit
    }
}

/// A smoothed average of the time between requests.
pub(super) struct Arrivals {
    epoch: Instant,
    /// Nanoseconds after `epoch` of the latest request; 0 before the first.
    last: AtomicU64,
    /// Nanoseconds between the latest request and the one before.
    gap: AtomicU64,
    /// Nanoseconds between requests, smoothed.
    interval: AtomicU64,
}

impl Default for Arrivals {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            gap: AtomicU64::new(u64::MAX),
            interval: AtomicU64::new(u64::MAX),
        }
    }
}

impl Arrivals {
    /// Counts a request arriving `now`.
    pub fn observe(&self, now: Instant) {
        let at = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.last.swap(at, Ordering::Relaxed);
        if last == 0 {
            return;
        }
        let gap = at.saturating_sub(last);
        self.gap.store(gap, Ordering::Relaxed);
        let first = self.interval.load(Ordering::Relaxed) == u64::MAX;
        smooth(&self.interval, gap, first);
    }

    /// Whether requests come seldom enough that replica threads sleep between them: on
    /// average, and the latest one too, so that a burst goes through the queue from its
    /// second request on.
    pub fn sparse(&self) -> bool {
        let min = MIN_INTERVAL.as_nanos() as u64;
        self.gap.load(Ordering::Relaxed) >= min && self.interval.load(Ordering::Relaxed) >= min
    }
}

impl<J: Job> Scheduler<J> {
    /// Runs `request` here and now if it qualifies (see the module's doc); else gives it back
    /// to be queued.
    pub(super) fn try_inline(
        &self,
        request: J,
        admission: &Admission<J::Key>,
        now: Instant,
        deadline: Option<Instant>,
    ) -> std::result::Result<Result<J::Output>, J> {
        self.shared.arrivals.observe(now);
        let batched = admission
            .batch
            .as_ref()
            .is_some_and(|(_, p)| p.max_rows > 0);
        let cheap = request
            .input_bytes()
            .is_some_and(|b| self.shared.cost.cheap_for(b));
        // One already late is answered as the queue answers it (504, not run).
        let late = deadline.is_some_and(|d| d <= now);
        if batched
            || late
            || !cheap
            || self.shared.gate.is_some()
            || !self.shared.arrivals.sparse()
            || self.shared.metrics.inflight.get() > 0
            || !self.queue.is_idle()
        {
            return Err(request);
        }
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        for slot in slots.iter().filter(|s| s.in_process) {
            let Ok(mut worker) = slot.worker.try_lock() else {
                continue;
            };
            let Some(worker) = worker.as_mut().filter(|w| !w.retiring()) else {
                continue;
            };
            let (reply, mut answer) = oneshot::channel();
            let pending = Pending {
                request,
                rows: admission.rows,
                width: admission.width,
                batch: None,
                enqueued: now,
                deadline,
                state: Arc::new(AtomicU8::new(TAKEN)),
                reply,
                seq: 0,
            };
            self.shared.execute(worker.as_mut(), vec![pending]);
            return Ok(answer.try_recv().unwrap_or_else(|_| {
                Err(Error::internal(format!(
                    "{} '{}' computed without answering",
                    self.shared.config.kind, self.shared.config.name
                )))
            }));
        }
        Err(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::scheduler::{BatchPolicy, Phases, SchedulerConfig, Watch};

    /// A request that carries `bytes` of input.
    struct Probe {
        bytes: usize,
    }

    impl Job for Probe {
        type Output = String;
        type Key = ();

        fn input_bytes(&self) -> Option<usize> {
            Some(self.bytes)
        }
    }

    /// Answers each request with the name of the thread that ran it, after `delay`.
    struct Where {
        in_process: bool,
        delay: Duration,
    }

    impl Worker<Probe> for Where {
        fn run(&mut self, batch: Vec<Probe>, _: &Watch<'_>, _: &mut Phases) -> Result<Vec<String>> {
            std::thread::sleep(self.delay);
            let name = std::thread::current().name().unwrap_or("").to_string();
            Ok(batch.iter().map(|_| name.clone()).collect())
        }

        fn in_process(&self) -> bool {
            self.in_process
        }
    }

    fn scheduler(preserve_ordering: bool, worker: Where) -> Scheduler<Probe> {
        let s = Scheduler::new(
            SchedulerConfig {
                kind: "model",
                name: "probe".into(),
                max_queue_size: 64,
                default_timeout: None,
                preserve_ordering,
            },
            Metrics::new().model("probe", 1),
        );
        s.add(Box::new(worker)).unwrap();
        s
    }

    fn cheap(in_process: bool) -> Where {
        Where {
            in_process,
            delay: Duration::ZERO,
        }
    }

    /// Batches (and inline runs) computed so far.
    fn executions(s: &Scheduler<Probe>) -> u64 {
        let stats = &s.shared.metrics.stats;
        stats.execution_count.load(Ordering::Relaxed)
    }

    /// Where each of `n` requests, sent a millisecond apart, ran.
    async fn threads(
        s: &Scheduler<Probe>,
        n: usize,
        bytes: usize,
        admission: impl Fn() -> Admission<()>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            tokio::time::sleep(Duration::from_millis(1)).await;
            out.push(s.submit(Probe { bytes }, admission()).await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "current_thread")]
    async fn cheap_in_process_work_runs_on_the_submitting_thread_once_measured() {
        let s = scheduler(false, cheap(true));
        let here = std::thread::current().name().unwrap_or("").to_string();
        let ran = threads(&s, 4, 8, Admission::alone).await;
        // The first request is measured on the replica's thread; then it is known to be cheap.
        assert!(ran[0].starts_with("replica-probe-"), "{ran:?}");
        assert!(
            ran[1..].iter().all(|t| *t == here),
            "{ran:?} (test thread {here:?})"
        );
        assert_eq!(executions(&s), 4);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn everything_else_goes_through_the_replica_thread() {
        let replica_only = |ran: Vec<String>| {
            assert!(
                ran.iter().all(|t| t.starts_with("replica-probe-")),
                "{ran:?}"
            );
        };
        // A worker that waits on another process.
        replica_only(threads(&scheduler(false, cheap(false)), 4, 8, Admission::alone).await);
        // Answers kept in arrival order.
        replica_only(threads(&scheduler(true, cheap(true)), 4, 8, Admission::alone).await);
        // Large requests.
        replica_only(
            threads(
                &scheduler(false, cheap(true)),
                4,
                MAX_BYTES + 1,
                Admission::alone,
            )
            .await,
        );
        // Work that is not cheap.
        let slow = Where {
            in_process: true,
            delay: MAX_COST * 4,
        };
        replica_only(threads(&scheduler(false, slow), 4, 8, Admission::alone).await);
        // Batched requests, which wait for company in the queue.
        let policy = Arc::new(BatchPolicy {
            max_rows: 4,
            target_rows: 1,
            delay: Duration::ZERO,
            max_tokens: None,
        });
        let batched = || Admission {
            rows: 1,
            width: 0,
            batch: Some(((), policy.clone())),
            timeout: None,
        };
        replica_only(threads(&scheduler(false, cheap(true)), 4, 8, batched).await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn requests_that_come_close_together_go_through_the_replica_thread() {
        let s = scheduler(false, cheap(true));
        threads(&s, 2, 8, Admission::alone).await;
        let burst = (0..50).map(|_| s.submit(Probe { bytes: 8 }, Admission::alone()));
        let ran = futures_util::future::join_all(burst).await;
        let queued = ran
            .iter()
            .filter(|t| t.as_ref().unwrap().starts_with("replica-probe-"))
            .count();
        assert!(queued >= 45, "{ran:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn inputs_much_larger_than_the_measured_ones_go_through_the_replica_thread() {
        let s = scheduler(false, cheap(true));
        let here = std::thread::current().name().unwrap_or("").to_string();
        // Learnt on 8-byte requests: up to SMALL_BYTES still runs inline, more does not.
        threads(&s, 2, 8, Admission::alone).await;
        assert_eq!(threads(&s, 1, SMALL_BYTES, Admission::alone).await, [here]);
        let ran = threads(&s, 1, SMALL_BYTES + 1, Admission::alone).await;
        assert!(ran[0].starts_with("replica-probe-"), "{ran:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_late_on_arrival_is_refused_as_the_queue_refuses_it() {
        let s = scheduler(false, cheap(true));
        threads(&s, 2, 8, Admission::alone).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let late = Admission {
            timeout: Some(Duration::ZERO),
            ..Admission::alone()
        };
        let err = s.submit(Probe { bytes: 8 }, late).await.unwrap_err();
        assert_eq!(
            err.kind(),
            ferroserve_core::ErrorKind::DeadlineExceeded,
            "{err}"
        );
        assert_eq!(executions(&s), 2);
    }
}
