//! ferroserve's Deployments and Flows (Jina's and Ray Serve's way of serving): documents go in,
//! through one executor (a Deployment) or a DAG of them (a Flow), and come out enriched.
//!
//! - [`Document`]: the unit that flows (text, blob, tensor, embedding, tags, scores, chunks).
//! - [`Executor`]: a processing step; users implement it and register it in [`Executors`] so
//!   YAML can name it. Models with a task are executors too, named by their folder, and so are
//!   Jina executor classes written in Python (`uses` a class in `py_modules`), run in worker
//!   processes ([`PythonOptions`]).
//! - [`spec::FlowSpec`]: the YAML of `ferroserve run`, checked (unknown keys, unknown or missing
//!   `needs`, cycles) before anything loads.
//! - [`Flow`]: the loaded executors and the DAG that runs a request through them.
//! - [`ray`]: Ray Serve applications (`ferroserve run module:attribute`): deployments in Python
//!   workers, handles and HTTP routed by Rust.

#![warn(missing_docs)]

mod autoscale;
mod deployment;
mod document;
mod executor;
mod flow;
mod python;
pub mod ray;
pub mod spec;
mod work;

pub use deployment::{DeploymentHandle, Handles};
pub use document::{DocError, DocTensor, Document};
pub use executor::{Constructor, Executor, ExecutorError, Executors, Init, Parameters};
pub use flow::{Flow, FlowError};
pub use python::PythonOptions;
