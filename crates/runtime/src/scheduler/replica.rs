//! Running a batch on a worker and answering its requests, and the replica thread's loop that
//! feeds its worker from the queue.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ferroserve_core::{Error, Result};

use super::inline::{Arrivals, Cost, Slot};
use super::order::{Gate, Reply};
use super::queue::{Pending, Queue, Work};
use super::{expired, Job, Phases, SchedulerConfig, Watch, Worker};
use crate::metrics::ModelMetrics;

/// What a scheduler's replica threads and its submitting tasks share to run batches.
pub(super) struct Shared<J: Job> {
    pub config: Arc<SchedulerConfig>,
    pub metrics: ModelMetrics,
    /// With `preserve_ordering`: where answers wait for earlier ones.
    pub gate: Option<Arc<Gate<J::Output>>>,
    /// What one request alone has been costing to compute.
    pub cost: Cost,
    /// How often requests come.
    pub arrivals: Arrivals,
}

impl<J: Job> Shared<J> {
    /// Sends an answer, through the ordering gate when answers keep arrival order.
    pub fn answer(&self, seq: u64, reply: Reply<J::Output>, result: Result<J::Output>) {
        match &self.gate {
            Some(gate) => gate.complete(seq, Some((reply, result))),
            None => {
                let _ = reply.send(result);
            }
        }
    }

    /// Runs `items` on `worker` as one batch and answers each of them, counting it in the
    /// metrics. A panic in the worker is answered as an error; the caller goes on.
    pub fn execute(&self, worker: &mut dyn Worker<J>, items: Vec<Pending<J>>) {
        let started = Instant::now();
        for p in &items {
            let waited = started.duration_since(p.enqueued);
            self.metrics.queue_seconds.observe(waited.as_secs_f64());
            self.metrics.stats.queue.add(waited);
        }
        let n = items.len() as i64;
        // A lone request's size, to learn what cheap requests look like.
        let alone = match items.as_slice() {
            [only] => only.request.input_bytes(),
            _ => None,
        };
        self.metrics.inflight.inc_by(n);
        let rows: usize = items.iter().map(|p| p.rows.max(1)).sum();
        let mut phases = Phases::default();
        let mut requests = Vec::with_capacity(items.len());
        let mut waiting = Vec::with_capacity(items.len());
        let deadline = items.iter().filter_map(|p| p.deadline).min();
        for p in items {
            requests.push(p.request);
            waiting.push((p.seq, p.reply));
        }
        let results = {
            let cancelled = |i: usize| waiting.get(i).is_some_and(|(_, r)| r.is_closed());
            let watch = Watch {
                cancelled: &cancelled,
                deadline,
            };
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                worker.run(requests, &watch, &mut phases)
            }))
            .unwrap_or_else(|_| {
                Err(Error::internal(format!(
                    "{} '{}' panicked while computing; the server is still running",
                    self.config.kind, self.config.name
                )))
            })
        };
        let results = match results {
            Ok(out) if out.len() != waiting.len() => Err(Error::internal(format!(
                "{} '{}' gave {} answers for {} requests",
                self.config.kind,
                self.config.name,
                out.len(),
                waiting.len()
            ))),
            other => other,
        };
        let elapsed = started.elapsed();
        // Only answers: a request refused at once (a wrong input) says nothing of the cost of
        // those that compute.
        if let (Some(bytes), Ok(_)) = (alone, &results) {
            self.cost.observe(elapsed, bytes);
        }
        let compute = elapsed.as_secs_f64();
        self.metrics.batch_size.observe(rows as f64);
        self.metrics.inflight.dec_by(n);
        let stats = &self.metrics.stats;
        stats.execution_count.fetch_add(1, Ordering::Relaxed);
        for _ in &waiting {
            self.metrics.compute_seconds.observe(compute);
            phases.record(stats);
        }
        match results {
            Ok(outputs) => {
                stats
                    .inference_count
                    .fetch_add(rows as u64, Ordering::Relaxed);
                for ((seq, reply), out) in waiting.into_iter().zip(outputs) {
                    self.answer(seq, reply, Ok(out));
                }
            }
            Err(e) => {
                for (seq, reply) in waiting {
                    self.answer(seq, reply, Err(e.clone()));
                }
            }
        }
    }
}

/// One replica thread: its worker's slot and the loop that feeds it.
pub(super) struct Replica<J: Job> {
    pub slot: Arc<Slot<J>>,
    pub queue: Arc<Queue<J>>,
    pub shared: Arc<Shared<J>>,
}

impl<J: Job> Replica<J> {
    pub fn run(self) {
        loop {
            let slot = &self.slot;
            let Some(work) = self.queue.next_unless(&|| slot.retiring()) else {
                // The worker ends on this thread, as it began, whoever ran it last.
                drop(slot.take());
                return;
            };
            match work {
                Work::Expired(items) => {
                    for p in items {
                        let waited = p.deadline.map(|d| d.saturating_duration_since(p.enqueued));
                        self.shared.answer(
                            p.seq,
                            p.reply,
                            Err(expired(&self.shared.config, waited)),
                        );
                    }
                }
                Work::Batch(items) => slot.run(|worker| self.shared.execute(worker, items)),
            }
        }
    }
}
