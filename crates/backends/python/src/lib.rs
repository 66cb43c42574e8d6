//! Users' own Python code, run by ferroserve in worker processes: one process per replica, so
//! one model's GIL never holds back another and a crash in user code never takes the server
//! down. Queueing, batching, replicas, deadlines and protocols stay in Rust; the worker only
//! runs the user's class.
//!
//! - [`Worker`]: one replica's process, started with the model's interpreter, restarted with
//!   backoff when it dies, hangs past a deadline or breaks the protocol.
//! - [`SharedWorker`]: a replica's process that serves many requests at once (Ray Serve
//!   deployments), with the same restarts, and a way for the worker to call back into the server.
//! - [`TritonModel`]: a Triton Python-backend `model.py` (`TritonPythonModel`) as a
//!   [`ferroserve_core::Backend`] that takes batches as lists of requests, as Triton does.
//!
//! The worker's Python code ships inside this crate (see `PROTOCOL.md` for the wire format): the
//! user's interpreter needs only the user's own dependencies.

#![warn(missing_docs)]

mod code;
mod frame;
mod mux;
mod process;
mod requirements;
mod shm;
pub mod tensor;
mod triton;
mod worker;

pub use code::bundled;
pub use frame::{BufRef, Outbox, Reply};
pub use mux::{Calls, Channel, Frame, Payload, Responder, SharedWorker};
pub use requirements::pip_install;
pub use triton::{TritonModel, TritonSpec};
pub use worker::{Worker, WorkerSpec, DEFAULT_TIMEOUT_READY};
