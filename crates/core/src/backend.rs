//! The contract between the runtime and a compute backend.

use crate::{NamedTensor, Parameters, Result, Signature};

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

    /// [`Backend::run`] with what the runtime knows about the batch beyond its tensors: the
    /// requests' parameters, and which rows' clients have left. Backends whose work takes many
    /// steps (generation) override it to read parameters and to stop abandoned rows early; the
    /// default ignores both.
    fn run_with(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
        context: &RunContext<'_>,
    ) -> Result<Vec<NamedTensor>> {
        let _ = context;
        self.run(inputs, outputs)
    }
}

/// What a backend may learn about a batch besides its tensors (see [`Backend::run_with`]).
///
/// ```
/// use ferroserve_core::{Parameters, RunContext};
///
/// let parameters = Parameters::new();
/// let gone = |row: usize| row == 1;
/// let context = RunContext::new(&parameters, &gone);
/// assert!(!context.is_cancelled(0));
/// assert!(context.is_cancelled(1));
/// ```
pub struct RunContext<'a> {
    parameters: &'a Parameters,
    cancelled: &'a (dyn Fn(usize) -> bool + Sync),
}

impl<'a> RunContext<'a> {
    /// A context for a batch whose requests share `parameters`; `cancelled(row)` says whether
    /// the client that sent `row` has gone.
    pub fn new(parameters: &'a Parameters, cancelled: &'a (dyn Fn(usize) -> bool + Sync)) -> Self {
        Self {
            parameters,
            cancelled,
        }
    }

    /// A context with no parameters whose rows are never cancelled: what [`Backend::run`]
    /// means, for backends that implement it through [`Backend::run_with`].
    pub fn detached() -> RunContext<'static> {
        static NONE: std::sync::LazyLock<Parameters> = std::sync::LazyLock::new(Parameters::new);
        fn never(_: usize) -> bool {
            false
        }
        RunContext::new(&NONE, &never)
    }

    /// The parameters every request of the batch carries (batches only join requests whose
    /// parameters are equal).
    pub fn parameters(&self) -> &Parameters {
        self.parameters
    }

    /// Whether nobody waits any more for the output of batch row `row`.
    pub fn is_cancelled(&self, row: usize) -> bool {
        (self.cancelled)(row)
    }
}
