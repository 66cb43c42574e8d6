//! An inference request and its response, independent of any wire format.

use crate::{NamedTensor, Progress};

/// Free-form request parameters (the protocol's `parameters` object).
pub type Parameters = serde_json::Map<String, serde_json::Value>;

/// One inference request, already decoded from the wire.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    /// Client-chosen identifier, echoed in the response.
    pub id: Option<String>,
    /// Input tensors by name.
    pub inputs: Vec<NamedTensor>,
    /// Outputs to return; empty means all of them.
    pub outputs: Vec<String>,
    /// Request-level parameters.
    pub parameters: Parameters,
    /// Where the backend reports the request's progress, when its client streams the answer
    /// (see [`crate::RunContext::report`]). Not part of what a batch must share.
    pub progress: Option<Progress>,
}

/// The answer to an [`InferRequest`].
#[derive(Debug, Clone)]
pub struct InferResponse {
    /// Model that answered.
    pub model_name: String,
    /// Version that answered.
    pub model_version: String,
    /// The request's `id`, echoed.
    pub id: Option<String>,
    /// Output tensors, in the order they were requested (or the model's order).
    pub outputs: Vec<NamedTensor>,
}
