//! The ferroserve runtime: where requests are checked and dispatched to models.
//!
//! - [`repository`]: the model repository on disk (folders, versions).
//! - [`config`]: `model.yaml`, the one documented schema for a model.
//! - [`Runtime`]: the loaded models, their states, and `infer`, which every frontend calls.
//! - Lifecycle: models come from the repository, the model store (archives) and the
//!   management API; lazy models load on their first request; `poll` picks up changes; a memory
//!   budget unloads the least recently used idle lazy model when a load needs room.
//!
//! ```no_run
//! use ferroserve_backend_onnx::{library_path, OnnxRuntime};
//! use ferroserve_runtime::{Runtime, RuntimeOptions};
//!
//! let runtime = Runtime::new(OnnxRuntime::load(&library_path(None))?, RuntimeOptions::default())?;
//! runtime.load_repository("examples/models".as_ref())?;
//! for row in runtime.index(false) {
//!     println!("{} {:?} {:?}", row.name, row.version, row.state);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod budget;
mod catalog;
pub mod config;
mod lifecycle;
mod manage;
pub mod metrics;
mod pool;
mod registry;
pub mod repository;
mod scheduler;
mod validate;

pub use budget::{parse_bytes, MemoryBudget};
pub use catalog::AccessPolicy;
pub use lifecycle::PollReport;
pub use manage::{
    ModelDescription, ModelList, ModelListItem, ScaleRequest, VersionDescription, MAX_REPLICAS,
};
pub use registry::{
    IndexEntry, ModelConfigInfo, ModelMetadata, ModelState, Overrides, Runtime, RuntimeOptions,
    TaskAnswer, CANDLE_PLATFORM, ONNX_PLATFORM,
};
pub use validate::RequestLimits;
