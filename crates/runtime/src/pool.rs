//! The CPU pool that runs task pre- and post-processing (image decoding and resizing,
//! tokenising, pooling) off the async runtime's threads.
//!
//! Requests beyond the bound are refused at once with [`ErrorKind::Overloaded`](ferroserve_core::ErrorKind::Overloaded), as a full model
//! queue is, so a flood of large images cannot pile up unbounded work.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use ferroserve_core::{Error, Result};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// A fixed set of threads (a rayon pool, so a job can split its items across them) with a
/// bounded number of jobs admitted at once.
pub(crate) struct CpuPool {
    pool: rayon::ThreadPool,
    slots: Arc<Semaphore>,
    capacity: usize,
}

impl CpuPool {
    /// `threads` workers; at most `capacity` task requests admitted at once.
    pub fn new(threads: usize, capacity: usize) -> std::io::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("task-cpu-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            pool,
            slots: Arc::new(Semaphore::new(capacity.max(1))),
            capacity: capacity.max(1),
        })
    }

    /// Admits one task request, or refuses at once when `capacity` are in already. The
    /// admission is held from preprocessing through postprocessing, so a request that got in is
    /// not refused halfway, after its model ran.
    pub fn admit(&self) -> Result<Admission> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map(Admission)
            .map_err(|_| {
                Error::overloaded(format!(
                    "{} requests are being preprocessed already; retry shortly",
                    self.capacity
                ))
            })
    }

    /// Runs `job` on the pool for an admitted request and waits for it. A job whose caller went
    /// away before it started is skipped; one that runs gets a function that says whether the
    /// caller has gone since, to stop early.
    pub async fn run<R, F>(&self, _admitted: &Admission, job: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&(dyn Fn() -> bool + Sync)) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.pool.spawn(move || {
            if tx.is_closed() {
                return;
            }
            let gone = || tx.is_closed();
            let result =
                std::panic::catch_unwind(AssertUnwindSafe(|| job(&gone))).unwrap_or_else(|_| {
                    Err(Error::internal(
                        "preprocessing panicked; the server is still running",
                    ))
                });
            let _ = tx.send(result);
        });
        rx.await
            .map_err(|_| Error::internal("the preprocessing pool stopped"))?
    }
}

/// A task request's place in the pool, from [`CpuPool::admit`].
pub(crate) struct Admission(#[allow(dead_code)] OwnedSemaphorePermit);
