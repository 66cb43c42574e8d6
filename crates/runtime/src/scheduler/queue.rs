//! The bounded queue between request tasks and replica threads, and batch formation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

use super::order::{Gate, Reply};
use super::Job;

/// A request's claim state: exactly one of the waiting task (on timeout or disconnect) and a
/// replica (when it takes the request) wins the move away from `QUEUED`.
pub(crate) const QUEUED: u8 = 0;
pub(crate) const TAKEN: u8 = 1;
pub(crate) const ABANDONED: u8 = 2;

/// A request waiting for a replica.
pub(crate) struct Pending<J: Job> {
    pub request: J,
    /// Rows it adds to a batch (0 when it runs alone).
    pub rows: usize,
    /// Elements per row of its padded inputs (tokens), which the whole batch is padded to.
    pub width: usize,
    /// What it must share with others to join their batch, and how that batch is formed
    /// (`None`: it runs alone).
    pub batch: Option<(J::Key, Arc<BatchPolicy>)>,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
    pub state: Arc<AtomicU8>,
    pub reply: Reply<J::Output>,
    /// Arrival number, set when the queue accepts the request.
    pub seq: u64,
}

impl<J: Job> Pending<J> {
    fn claim(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn abandoned(&self) -> bool {
        self.state.load(Ordering::Acquire) == ABANDONED || self.reply.is_closed()
    }
}

/// What [`Queue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Accepted.
    Queued,
    /// Refused: the queue is at capacity.
    Full,
    /// Refused: the model is being unloaded or the server is shutting down.
    Closed,
}

/// How batches are formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most rows in one batch; 0 runs every request alone.
    pub max_rows: usize,
    /// A batch goes as soon as it has this many rows.
    pub target_rows: usize,
    /// How long the oldest request may wait for company.
    pub delay: Duration,
    /// Most rows × widest padded row in one batch (a token budget), when set.
    pub max_tokens: Option<usize>,
}

impl BatchPolicy {
    /// Whether a batch of `rows` rows padded to `width` stays within the limits.
    fn fits(&self, rows: usize, width: usize) -> bool {
        rows <= self.max_rows && self.max_tokens.is_none_or(|max| rows * width <= max)
    }
}

/// What a replica gets from [`Queue::next`].
pub(crate) enum Work<J: Job> {
    /// Requests to run together (one, when not batching).
    Batch(Vec<Pending<J>>),
    /// Requests whose deadline passed while queued: answer them, do not run them.
    Expired(Vec<Pending<J>>),
}

struct Inner<J: Job> {
    items: VecDeque<Pending<J>>,
    closed: bool,
    /// Arrival number of the next accepted request.
    next_seq: u64,
    /// Arrival numbers of abandoned requests swept out by the last step, for the ordering gate.
    swept: Vec<u64>,
    /// Replicas blocked in [`Queue::next`]; a push wakes them only when there are any, which
    /// spares a system call per request while every replica is busy.
    waiting: usize,
    /// Replicas asked to stop; the next ones to look for work (after finishing their batch)
    /// stop instead.
    retiring: usize,
}

/// What [`Inner::step`] decided.
enum Step<J: Job> {
    /// Work to hand out, or `None` when closed and empty.
    Done(Option<Work<J>>),
    /// Nothing to hand out yet: wait for a change, at most this long.
    Wait(Option<Duration>),
}

impl<J: Job> Inner<J> {
    /// One look at the queue: drop abandoned requests, hand out expired ones, and form a batch
    /// if one is due.
    fn step(&mut self, now: Instant) -> Step<J> {
        let mut expired = Vec::new();
        let mut i = 0;
        while i < self.items.len() {
            let p = &self.items[i];
            if p.abandoned() {
                let seq = p.seq;
                self.items.remove(i);
                self.swept.push(seq);
            } else if p.deadline.is_some_and(|d| d <= now) {
                if let Some(p) = self.items.remove(i).filter(Pending::claim) {
                    expired.push(p);
                }
            } else {
                i += 1;
            }
        }
        if !expired.is_empty() {
            return Step::Done(Some(Work::Expired(expired)));
        }
        if self.items.is_empty() {
            return if self.closed {
                Step::Done(None)
            } else {
                Step::Wait(None)
            };
        }
        // Groups of requests that may share a batch, in the order of their oldest member. The
        // first group that is due goes; one that is still waiting for company does not hold
        // back the groups behind it (another endpoint's batch, a request that runs alone).
        let mut seen: Vec<&J::Key> = Vec::new();
        let mut chosen: Option<Vec<usize>> = None;
        let mut wait: Option<Duration> = None;
        for (head, h) in self.items.iter().enumerate() {
            let Some((key, policy)) = h.batch.as_ref().filter(|(_, p)| p.max_rows > 0) else {
                chosen = Some(vec![head]);
                break;
            };
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            // Gather the requests that can share this group's batch, in arrival order.
            let mut picked = Vec::new();
            let mut rows = 0;
            let mut width = 0;
            // A companion that does not fit makes the batch as full as it can get: waiting
            // longer would not grow it.
            let mut full = false;
            for (idx, p) in self.items.iter().enumerate().skip(head) {
                if p.batch.as_ref().is_none_or(|(k, _)| k != key) {
                    continue;
                }
                if policy.fits(rows + p.rows, width.max(p.width)) {
                    picked.push(idx);
                    rows += p.rows;
                    width = width.max(p.width);
                } else if picked.is_empty() {
                    // Larger than a batch on its own (the caller allowed it): it runs alone.
                    picked.push(idx);
                    full = true;
                    break;
                } else {
                    full = true;
                }
            }
            let ready_at = h.enqueued + policy.delay;
            if full || rows >= policy.target_rows || now >= ready_at || self.closed {
                chosen = Some(picked);
                break;
            }
            let w = ready_at - now;
            wait = Some(wait.map_or(w, |x| x.min(w)));
        }
        if let Some(picked) = chosen {
            let mut batch = Vec::with_capacity(picked.len());
            for idx in picked.into_iter().rev() {
                if let Some(p) = self.items.remove(idx).filter(Pending::claim) {
                    batch.push(p);
                }
            }
            batch.reverse();
            if batch.is_empty() {
                // Abandoned between the sweep and now: look again.
                return Step::Wait(Some(Duration::ZERO));
            }
            return Step::Done(Some(Work::Batch(batch)));
        }
        // Wake when the first group is due, or earlier for a deadline.
        let wait = self
            .items
            .iter()
            .filter_map(|p| p.deadline)
            .map(|d| d.saturating_duration_since(now))
            .fold(wait, |w, d| Some(w.map_or(d, |w| w.min(d))));
        Step::Wait(wait)
    }
}

/// A bounded FIFO shared by one scheduler's replicas.
pub(crate) struct Queue<J: Job> {
    inner: Mutex<Inner<J>>,
    changed: Condvar,
    capacity: usize,
    /// Mirrors the queue's length; only written under the lock, so it never goes stale.
    depth: Gauge,
    /// With `preserve_ordering`: told about requests that leave the queue unanswered.
    gate: Option<Arc<Gate<J::Output>>>,
}

impl<J: Job> Queue<J> {
    pub fn new(capacity: usize, depth: Gauge, gate: Option<Arc<Gate<J::Output>>>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                closed: false,
                next_seq: 0,
                swept: Vec::new(),
                waiting: 0,
                retiring: 0,
            }),
            changed: Condvar::new(),
            capacity,
            depth,
            gate,
        }
    }

    /// Passes abandoned requests swept out of the queue to the ordering gate.
    fn release_swept(&self, inner: &mut Inner<J>) {
        for seq in inner.swept.drain(..) {
            if let Some(gate) = &self.gate {
                gate.complete(seq, None);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<J>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a request, or says why not.
    pub fn push(&self, mut p: Pending<J>) -> Push {
        let mut inner = self.lock();
        if inner.closed {
            return Push::Closed;
        }
        if inner.items.len() >= self.capacity {
            // Requests whose clients left still hold places until a replica passes them.
            let Inner { items, swept, .. } = &mut *inner;
            items.retain(|p| {
                let keep = !p.abandoned();
                if !keep {
                    swept.push(p.seq);
                }
                keep
            });
            self.release_swept(&mut inner);
            if inner.items.len() >= self.capacity {
                self.depth.set(inner.items.len() as i64);
                return Push::Full;
            }
        }
        p.seq = inner.next_seq;
        inner.next_seq += 1;
        inner.items.push_back(p);
        self.depth.set(inner.items.len() as i64);
        let wake = inner.waiting > 0;
        drop(inner);
        if wake {
            self.changed.notify_all();
        }
        Push::Queued
    }

    /// Stops accepting requests; replicas finish what is queued, then [`Queue::next`] returns
    /// `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Asks `n` replicas to stop once they finish what they are running (scaling down drains,
    /// it never drops a request).
    pub fn retire(&self, n: usize) {
        self.lock().retiring += n;
        self.changed.notify_all();
    }

    /// Wakes every waiting replica, so that those told to stop (see [`Queue::next_unless`])
    /// notice.
    pub fn wake(&self) {
        // Taking the lock first: a replica between its `stop` check and its wait holds it, so
        // it cannot miss this notification.
        drop(self.lock());
        self.changed.notify_all();
    }

    /// Whether nothing waits in the queue and it takes requests: a request that skips it then
    /// passes nobody (see `inline`).
    pub fn is_idle(&self) -> bool {
        let inner = self.lock();
        inner.items.is_empty() && !inner.closed
    }

    #[cfg(test)]
    pub fn next(&self) -> Option<Work<J>> {
        self.next_unless(&|| false)
    }

    /// Blocks until there is work for a replica: a batch formed under its requests' policy,
    /// or expired requests to answer. `None` once the queue is closed and empty, when this
    /// replica is to retire, or once `stop` says so (checked on every wake-up).
    pub fn next_unless(&self, stop: &dyn Fn() -> bool) -> Option<Work<J>> {
        let mut inner = self.lock();
        loop {
            if stop() {
                return None;
            }
            if inner.retiring > 0 {
                inner.retiring -= 1;
                return None;
            }
            let step = inner.step(Instant::now());
            self.release_swept(&mut inner);
            self.depth.set(inner.items.len() as i64);
            let timeout = match step {
                Step::Done(work) => return work,
                Step::Wait(timeout) => timeout,
            };
            inner.waiting += 1;
            inner = match timeout {
                None => self.changed.wait(inner).unwrap_or_else(|p| p.into_inner()),
                Some(t) => {
                    self.changed
                        .wait_timeout(inner, t)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            inner.waiting -= 1;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroserve_core::Result;
    use tokio::sync::oneshot;

    /// A made-up job: its rows are all there is to it, and its batch group a number.
    struct Rows;

    impl Job for Rows {
        type Output = ();
        type Key = u8;
    }

    fn pending(
        rows: usize,
        deadline: Option<Instant>,
        policy: &BatchPolicy,
    ) -> (Pending<Rows>, oneshot::Receiver<Result<()>>, Arc<AtomicU8>) {
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        (
            Pending {
                request: Rows,
                rows,
                width: 2,
                batch: Some((0, Arc::new(policy.clone()))),
                enqueued: Instant::now(),
                deadline,
                state: state.clone(),
                reply: tx,
                seq: 0,
            },
            rx,
            state,
        )
    }

    fn batching(max: usize, target: usize, delay_ms: u64) -> BatchPolicy {
        BatchPolicy {
            max_rows: max,
            target_rows: target,
            delay: Duration::from_millis(delay_ms),
            max_tokens: None,
        }
    }

    #[test]
    fn idle_means_empty_and_open() {
        let q = Queue::new(10, Gauge::default(), None);
        assert!(q.is_idle());
        let (p, _r, _) = pending(1, None, &batching(0, 0, 0));
        q.push(p);
        assert!(!q.is_idle());
        let q = Queue::<Rows>::new(10, Gauge::default(), None);
        q.close();
        assert!(!q.is_idle());
    }

    #[test]
    fn token_budget_bounds_rows_times_width() {
        let q = Queue::new(10, Gauge::default(), None);
        let mut keep = Vec::new();
        let policy = BatchPolicy {
            max_tokens: Some(60),
            ..batching(8, 8, 0)
        };
        for (rows, width) in [(2, 10), (2, 30), (1, 10)] {
            let (mut p, r, _) = pending(rows, None, &policy);
            p.width = width;
            q.push(p);
            keep.push(r);
        }
        // 2 rows of 10 fit; adding 2 rows of 30 would pad 4 rows to 30 = 120 > 60; the 1 row of
        // 10 still fits beside the first (3 × 10).
        let Some(Work::Batch(b)) = q.next() else {
            panic!()
        };
        assert_eq!(b.iter().map(|p| p.width).collect::<Vec<_>>(), [10, 10]);
        let Some(Work::Batch(b)) = q.next() else {
            panic!()
        };
        assert_eq!(b.iter().map(|p| p.width).collect::<Vec<_>>(), [30]);
    }

    #[test]
    fn full_queue_refuses() {
        let q = Queue::new(2, Gauge::default(), None);
        let p = batching(0, 0, 0);
        let (a, _ra, _) = pending(1, None, &p);
        let (b, _rb, _) = pending(1, None, &p);
        let (c, _rc, _) = pending(1, None, &p);
        assert_eq!(q.push(a), Push::Queued);
        assert_eq!(q.push(b), Push::Queued);
        assert_eq!(q.push(c), Push::Full);
    }

    #[test]
    fn abandoned_requests_free_their_place() {
        let q = Queue::new(1, Gauge::default(), None);
        let p = batching(0, 0, 0);
        let (a, ra, _) = pending(1, None, &p);
        q.push(a);
        drop(ra);
        let (b, _rb, _) = pending(1, None, &p);
        assert_eq!(q.push(b), Push::Queued);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn batches_up_to_the_row_limit_in_order() {
        let q = Queue::new(10, Gauge::default(), None);
        let mut keep = Vec::new();
        for rows in [2, 3, 2, 1, 7, 1] {
            let (p, r, _) = pending(rows, None, &batching(5, 5, 0));
            q.push(p);
            keep.push(r);
        }
        let Some(Work::Batch(b)) = q.next() else {
            panic!()
        };
        // 2 + 3 reach the limit; the 2 that follows does not fit, the 1 is not taken past it
        // because the limit is already reached.
        assert_eq!(b.iter().map(|p| p.rows).collect::<Vec<_>>(), [2, 3]);
        let Some(Work::Batch(b)) = q.next() else {
            panic!()
        };
        assert_eq!(b.iter().map(|p| p.rows).collect::<Vec<_>>(), [2, 1, 1]);
        // One larger than a batch runs alone.
        let Some(Work::Batch(b)) = q.next() else {
            panic!()
        };
        assert_eq!(b.iter().map(|p| p.rows).collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn waits_for_the_delay_unless_the_target_is_reached() {
        let q = Queue::new(10, Gauge::default(), None);
        let (p, _r, _) = pending(1, None, &batching(8, 4, 50));
        q.push(p);
        let started = Instant::now();
        let Some(Work::Batch(b)) = q.next() else {
            panic!()
        };
        assert_eq!(b.len(), 1);
        assert!(started.elapsed() >= Duration::from_millis(45));

        let mut keep = Vec::new();
        for _ in 0..4 {
            let (p, r, _) = pending(1, None, &batching(8, 4, 10_000));
            q.push(p);
            keep.push(r);
        }
        let started = Instant::now();
        let Some(Work::Batch(b)) = q.next() else {
            panic!()
        };
        assert_eq!(b.len(), 4);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_batch_waiting_for_company_does_not_hold_back_other_work() {
        let q = Queue::new(10, Gauge::default(), None);
        let slow = batching(8, 8, 10_000);
        let (a, _ra, _) = pending(1, None, &slow);
        q.push(a);
        // Behind it: one that runs alone, and a group of another key whose batch is full.
        let (mut alone, _rb, _) = pending(1, None, &slow);
        alone.batch = None;
        q.push(alone);
        let mut keep = Vec::new();
        for _ in 0..2 {
            let (mut b, r, _) = pending(1, None, &slow);
            b.batch = Some((1, Arc::new(batching(8, 2, 10_000))));
            q.push(b);
            keep.push(r);
        }
        let started = Instant::now();
        let Some(Work::Batch(got)) = q.next() else {
            panic!()
        };
        assert!(got[0].batch.is_none(), "the lone request went first");
        let Some(Work::Batch(got)) = q.next() else {
            panic!()
        };
        assert_eq!(got.len(), 2, "the other group, at its target, went next");
        assert!(got
            .iter()
            .all(|p| p.batch.as_ref().is_some_and(|(k, _)| *k == 1)));
        assert!(started.elapsed() < Duration::from_secs(5));
        // The first group still waits for its delay.
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn expired_requests_are_returned_unrun() {
        let q = Queue::new(10, Gauge::default(), None);
        let (p, _r, state) = pending(1, Some(Instant::now()), &batching(0, 0, 0));
        q.push(p);
        let Some(Work::Expired(e)) = q.next() else {
            panic!()
        };
        assert_eq!(e.len(), 1);
        assert_eq!(state.load(Ordering::Acquire), TAKEN);
    }

    #[test]
    fn closed_queue_drains_then_ends() {
        let q = Queue::new(10, Gauge::default(), None);
        let (p, _r, _) = pending(1, None, &batching(8, 8, 10_000));
        q.push(p);
        q.close();
        assert!(matches!(q.next(), Some(Work::Batch(_))));
        assert!(q.next().is_none());
        let (p, _r, _) = pending(1, None, &batching(8, 8, 10_000));
        assert_eq!(q.push(p), Push::Closed);
    }
}
