//! Shapes that exist only on the wire: answers the handlers build with `json!`, and the path
//! parameters of the model routes. Bodies with a Rust type of their own derive their schema
//! where that type is defined.
// The path structs are never built: they describe the parameters that `ModelPath` reads.
#![allow(dead_code)]

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

/// Every error: the status says the kind, `error` what was wrong.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub(crate) struct ErrorBody {
    /// What was wrong, naming the input, model or limit at fault.
    pub error: String,
}

/// `GET /v2/health/live`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Live {
    /// Always true: the server answers.
    pub live: bool,
}

/// `GET /v2/health/ready`: false while models load or the server drains.
#[derive(Serialize, ToSchema)]
pub(crate) struct Ready {
    /// Whether the server takes inference requests.
    pub ready: bool,
}

/// `GET /v2/models/{model}/ready`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ModelReady {
    /// The model.
    pub name: String,
    /// Whether it takes inference requests.
    pub ready: bool,
}

/// `GET /ping` (TorchServe's).
#[derive(Serialize, ToSchema)]
pub(crate) struct Ping {
    /// `Healthy` or `Unhealthy`.
    pub status: String,
}

/// The body of a repository load or unload (Triton's): empty, or `{}`; parameters (inline
/// configurations and files) are refused.
#[derive(Serialize, ToSchema)]
pub(crate) struct RepositoryChange {
    /// Must be absent or empty.
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An empty JSON object: the change is done.
#[derive(Serialize, ToSchema)]
pub(crate) struct Done {}

/// `{model}` of a model route.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ModelName {
    /// The model's name.
    pub model: String,
}

/// `{model}` and `{version}` of a versioned model route.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ModelVersion {
    /// The model's name.
    pub model: String,
    /// The version (a folder number of the model).
    pub version: String,
}

/// One server-sent event of a streamed answer: the generation's `event` names it (`token`,
/// `progress`, `done`, `error`) and `data` carries its JSON.
#[derive(Serialize, ToSchema)]
pub(crate) struct ServerSentEvent {
    /// The event's name.
    pub event: String,
    /// The event's JSON payload, as text.
    pub data: String,
}
