//! One replica's worker, kept alive: started with the user's interpreter, restarted with
//! backoff after it dies, hangs past a deadline or breaks the protocol, and stopped gracefully
//! (the user's finaliser runs) when the replica goes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferroserve_core::{Error, Health, Result};
use serde_json::{Map, Value};

use crate::frame::{Outbox, Reply};
use crate::process::{CallError, Process};

/// How long a worker may take to load the user's code when nothing says (Jina's default
/// `timeout_ready`).
pub const DEFAULT_TIMEOUT_READY: Duration = Duration::from_secs(600);
/// Failed restarts in a row after which the model is marked unavailable.
const MAX_FAILED_STARTS: u32 = 3;
/// Longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long the user's finaliser may take when the replica stops.
const FINALISE_GRACE: Duration = Duration::from_secs(10);
/// Buffers of at least this many bytes travel through shared memory.
pub(crate) const SHM_THRESHOLD: usize = 64 * 1024;

/// How to start a worker and what to load in it.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The interpreter (a path, or a name looked up on `PATH`).
    pub python: PathBuf,
    /// Its working folder.
    pub cwd: PathBuf,
    /// Environment variables set for it on top of the server's (`CUDA_VISIBLE_DEVICES`, a Flow's
    /// `env`).
    pub env: Vec<(String, String)>,
    /// The `load` message (see `PROTOCOL.md`) without its `op`.
    pub load: Map<String, Value>,
    /// How long starting and loading may take; `None` waits forever.
    pub timeout_ready: Option<Duration>,
    /// What it serves, for logs and messages (`model 'add_sub'`).
    pub name: String,
    /// Which replica it is.
    pub replica: usize,
}

/// When a failed worker may be started again: deaths and failed starts since the last answer,
/// and when the last one happened, give the backoff.
#[derive(Debug, Default)]
pub(crate) struct Restarts {
    failures: u32,
    failed_at: Option<Instant>,
}

impl Restarts {
    /// The worker answered: the next failure starts the backoff afresh.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// The worker died, hung or broke the protocol.
    pub fn failed(&mut self) {
        self.failures += 1;
        self.failed_at = Some(Instant::now());
    }

    /// Waits out the backoff before a restart, or says to retry when `deadline` comes first.
    pub fn wait(&self, deadline: Option<Instant>, name: &str) -> Result<()> {
        let Some(at) = self.failed_at else {
            return Ok(());
        };
        let shift = self.failures.saturating_sub(1).min(6);
        let wait = (Duration::from_millis(250) * (1u32 << shift)).min(MAX_BACKOFF);
        let until = at + wait;
        if deadline.is_some_and(|d| d < until) {
            return Err(Error::unavailable(format!(
                "{name}: the Python worker is restarting after a failure; retry shortly"
            )));
        }
        if let Some(left) = until.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
        Ok(())
    }

    /// A restart failed: counts it, marks `health` failed once restarts keep failing, and
    /// returns the error for the request that wanted the worker.
    pub fn start_failed(&mut self, name: &str, why: &str, health: &Health) -> Error {
        self.failed();
        let message = format!(
            "{name}: the Python worker could not be restarted ({} failures in a row): {why}",
            self.failures
        );
        tracing::error!("{message}");
        if self.failures >= MAX_FAILED_STARTS {
            health.fail(message.clone());
        }
        Error::unavailable(message)
    }
}

/// A replica's worker process, restarted when it fails.
pub struct Worker {
    spec: WorkerSpec,
    live: Option<Process>,
    ready: Map<String, Value>,
    restarts: Restarts,
    health: Health,
}

impl Worker {
    /// Starts the worker and waits until it loaded the user's code. A worker that cannot start
    /// or load is `Unavailable` with the reason (its last lines included). `health` is marked
    /// failed when later restarts keep failing.
    pub fn start(spec: WorkerSpec, health: Health) -> Result<Self> {
        let process =
            Process::start(&spec).map_err(|e| Error::unavailable(format!("{}: {e}", spec.name)))?;
        tracing::info!(
            pid = process.pid(),
            "{} replica {}: Python worker ready",
            spec.name,
            spec.replica
        );
        Ok(Self {
            ready: process.ready.clone(),
            live: Some(process),
            spec,
            restarts: Restarts::default(),
            health,
        })
    }

    /// What the worker said when it was ready (the first time).
    pub fn ready(&self) -> &Map<String, Value> {
        &self.ready
    }

    /// The process id of the worker, while one runs.
    pub fn pid(&self) -> Option<u32> {
        self.live.as_ref().map(Process::pid)
    }

    /// Sends the request `build` makes and reads the answer `op` with `read`, waiting until
    /// `deadline` at most. The user's exception is `Internal` naming it; a worker that died is
    /// `Internal` with its last lines, one that passed the deadline `DeadlineExceeded`; both are
    /// restarted before the next call.
    pub fn call<T>(
        &mut self,
        build: impl FnOnce(&mut Outbox<'_>) -> std::io::Result<Map<String, Value>>,
        op: &str,
        read: impl FnOnce(&Reply<'_>) -> std::result::Result<T, String>,
        deadline: Option<Instant>,
    ) -> Result<T> {
        let name = self.spec.name.clone();
        let process = self.live_process(deadline)?;
        let outcome = process.call(build, op, read, deadline);
        let error = match outcome {
            Ok(t) => {
                self.restarts.succeeded();
                return Ok(t);
            }
            Err(CallError::User { error, traceback }) => {
                self.restarts.succeeded();
                tracing::warn!("{name} replica {}: the Python code raised:\n{traceback}", self.spec.replica);
                return Err(Error::internal(format!("{name} raised {error}")));
            }
            Err(CallError::Refused(why)) => {
                return Err(Error::too_large(format!(
                    "{name}: the request cannot be handed to the Python worker: {why}"
                )));
            }
            Err(CallError::Died(why)) => Error::internal(format!("{name}: {why}; it is being restarted")),
            Err(CallError::Hung) => Error::deadline_exceeded(format!(
                "{name}: the Python worker did not answer before the request's deadline; it was killed and is being restarted"
            )),
            Err(CallError::Malformed(what)) => Error::internal(format!(
                "{name}: the Python worker sent {what}; it was killed and is being restarted"
            )),
        };
        tracing::error!("{} replica {}: {error}", self.spec.name, self.spec.replica);
        self.live = None;
        self.restarts.failed();
        Err(error)
    }

    /// The running process, starting a new one (after the backoff) when the last one failed.
    fn live_process(&mut self, deadline: Option<Instant>) -> Result<&mut Process> {
        if self.live.is_none() {
            self.restarts.wait(deadline, &self.spec.name)?;
            match Process::start(&self.spec) {
                Ok(p) => {
                    tracing::info!(
                        pid = p.pid(),
                        "{} replica {}: Python worker restarted",
                        self.spec.name,
                        self.spec.replica
                    );
                    self.health.recover();
                    self.live = Some(p);
                }
                Err(why) => {
                    return Err(self
                        .restarts
                        .start_failed(&self.spec.name, &why, &self.health))
                }
            }
        }
        self.live
            .as_mut()
            .ok_or_else(|| Error::internal("the Python worker is not running"))
    }
}

impl Drop for Worker {
    /// Stops the worker gracefully: the user's finaliser runs (within a grace period).
    fn drop(&mut self) {
        if let Some(p) = self.live.take() {
            p.stop(FINALISE_GRACE);
        }
    }
}
