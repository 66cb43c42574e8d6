//! What the runtime answers besides tensors: task answers and the repository index.

use serde::Serialize;

use ferroserve_tasks::TaskOutput;

/// A task's answer, and the version that gave it.
#[derive(Debug, Clone)]
pub struct TaskAnswer {
    /// Version that answered.
    pub model_version: String,
    /// The answer, one entry per input item.
    pub output: TaskOutput,
}

/// Whether a model version can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModelState {
    /// Loaded and serving.
    Ready,
    /// Failed to load; the reason says why.
    Unavailable,
}

impl ModelState {
    /// `READY` or `UNAVAILABLE`, as the repository index writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version, or `None` when the model folder itself is unusable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// State.
    pub state: ModelState,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
