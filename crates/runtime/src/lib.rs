//! The ferroserve runtime: where requests are checked, queued, batched and dispatched to models.
//!
//! Where each job lives:
//!
//! - [`repository`] and [`config`]: model folders on disk and `model.yaml`, the one documented
//!   schema for a model, which also reads Triton's `config.pbtxt` ([`triton_config`]) and
//!   TorchServe's archives ([`torchserve_config`]); [`backend`]: the backends as plug-ins ([`backend::BackendLoader`]),
//!   which recognise model folders and load replicas.
//! - [`Runtime`]: the model table (`table`), each loaded version (`version`) and its
//!   placement on devices (`placement`), the inference path (`infer`, `validate`), the
//!   scheduler every kind of work goes through (`scheduler`: a bounded queue, the batcher,
//!   the replica pool), and the autoscaler ([`autoscale`]).
//! - Lifecycle (`lifecycle`): models come from the repository, the model store (archives)
//!   and the management API; lazy models load on their first request; `poll` picks up changes;
//!   a memory budget unloads the least recently used idle lazy model when a load needs room.
//! - [`admin`]: Triton's admin answers (model configuration, statistics, repository access),
//!   built once for every frontend; `manage`: TorchServe's management operations.
//!
//! ```no_run
//! use ferroserve_runtime::{backend::Backends, Runtime, RuntimeOptions};
//!
//! let runtime = Runtime::new(Backends::builtin(&Default::default()), RuntimeOptions::default())?;
//! runtime.load_repository("examples/models".as_ref())?;
//! for row in runtime.index(false) {
//!     println!("{} {:?} {:?}", row.name, row.version, row.state);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod autoscale;
pub mod backend;
mod budget;
mod catalog;
pub mod config;
pub mod handler;
mod infer;
mod lifecycle;
mod manage;
pub mod metrics;
mod pbtxt;
mod placement;
mod pool;
pub mod repository;
mod response;
mod runtime;
pub mod scheduler;
mod table;
pub mod torchserve_config;
pub mod triton_config;
mod validate;
mod version;

pub use admin::{ModelConfigInfo, ModelMetadata, RepositoryAccess};
pub use autoscale::Autoscaling;
pub use budget::{parse_bytes, MemoryBudget};
pub use catalog::AccessPolicy;
pub use lifecycle::PollReport;
pub use manage::{
    ModelDescription, ModelList, ModelListItem, ScaleRequest, VersionDescription, MAX_REPLICAS,
};
pub use response::{IndexEntry, ModelState, TaskAnswer};
pub use runtime::{Overrides, Runtime, RuntimeOptions};
pub use validate::RequestLimits;

#[cfg(test)]
mod tests;
