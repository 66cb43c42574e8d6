//! The contract between the runtime and a compute backend.

use crate::{NamedTensor, Result, Signature};

/// One loaded instance of a model (a replica) that computes outputs from inputs.
///
/// A backend sees requests that the runtime already validated against [`Backend::signature`]:
/// every input is present, with the right data type and a shape that fits. It knows nothing of
/// HTTP, queues or batching. `run` takes `&mut self` because a replica runs one batch at a time;
/// concurrency comes from having several replicas.
pub trait Backend: Send {
    /// The model's inputs and outputs.
    fn signature(&self) -> &Signature;

    /// Computes the requested `outputs` (all of them when empty) for `inputs`.
    fn run(&mut self, inputs: &[NamedTensor], outputs: &[String]) -> Result<Vec<NamedTensor>>;
}
