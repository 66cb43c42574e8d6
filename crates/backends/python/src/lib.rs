//! Users' own Python code, run by ferroserve in worker processes: one process per replica, so
//! one model's GIL never holds back another and a crash in user code never takes the server
//! down. Queueing, batching, replicas, deadlines and protocols stay in Rust; the worker only
//! runs the user's class.
//!
//! - [`Worker`]: one replica's process, started with the model's interpreter, restarted with
//!   backoff when it dies, hangs past a deadline or breaks the protocol.
//! - [`TritonModel`]: a Triton Python-backend `model.py` (`TritonPythonModel`) as a
//!   [`ferroserve_core::Backend`] that takes batches as lists of requests, as Triton does.
//!
//! The worker's Python code ships inside this crate (see `PROTOCOL.md` for the wire format): the
//! user's interpreter needs only the user's own dependencies.

#![warn(missing_docs)]

mod code;
mod frame;
mod process;
mod requirements;
mod shm;
pub mod tensor;
mod triton;
mod worker;

pub use code::bundled;
pub use frame::{BufRef, Outbox, Reply};
pub use requirements::pip_install;
pub use triton::{TritonModel, TritonSpec};
pub use worker::{Worker, WorkerSpec, DEFAULT_TIMEOUT_READY};
