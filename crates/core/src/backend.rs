//! The contract between the runtime and a compute backend.

use std::time::Instant;

use crate::{Error, InferRequest, NamedTensor, Parameters, Partial, Progress, Result, Signature};

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

    /// Whether a batch reaches this backend as its requests, each with its own tensors (Triton's
    /// Python backend hands `execute(requests)` a list), instead of merged along the first
    /// dimension. Default: merged.
    fn takes_requests(&self) -> bool {
        false
    }

    /// Whether this backend computes in this process, on whatever thread calls it, and never
    /// waits on another process. The runtime may then run a small request of a model whose
    /// runs take microseconds on the server thread that received it, instead of waking the
    /// replica's thread and waiting for it to answer (two thread hand-offs that cost more than
    /// such a model's compute). A backend that talks to a worker process, which can hang until
    /// a deadline, keeps the default.
    fn in_process(&self) -> bool {
        false
    }

    /// Whether this replica computes with weights it shares with the model's other replicas on
    /// its device (one copy for all of them), for the memory accounting. Default: its own.
    fn shares_weights(&self) -> bool {
        false
    }

    /// Runs a batch of `requests` on a backend that [`Backend::takes_requests`]: one answer per
    /// request, in order, each its own result, so one request's error leaves the others' outputs.
    /// The outer error fails them all.
    fn run_requests(
        &mut self,
        requests: &[&InferRequest],
        context: &RunContext<'_>,
    ) -> Result<Vec<Result<Vec<NamedTensor>>>> {
        let _ = (requests, context);
        Err(Error::internal(
            "this backend takes merged batches, not requests one by one",
        ))
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
    progress: Option<&'a (dyn Fn(usize) -> Option<&'a Progress> + Sync)>,
    deadline: Option<Instant>,
}

impl<'a> RunContext<'a> {
    /// A context for a batch whose requests share `parameters`; `cancelled(row)` says whether
    /// the client that sent `row` has gone.
    pub fn new(parameters: &'a Parameters, cancelled: &'a (dyn Fn(usize) -> bool + Sync)) -> Self {
        Self {
            parameters,
            cancelled,
            progress: None,
            deadline: None,
        }
    }

    /// The same context, where `progress(row)` is the [`Progress`] of the request batch row
    /// `row` came from, if its client streams.
    pub fn with_progress(
        mut self,
        progress: &'a (dyn Fn(usize) -> Option<&'a Progress> + Sync),
    ) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The same context, for a batch whose earliest request must be answered by `deadline`.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// When the batch's earliest request times out, if one set a timeout: a backend that can
    /// hang (a worker process) stops waiting then.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
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

    /// Whether the client of batch row `row` streams, and so wants [`RunContext::report`]s.
    pub fn streams(&self, row: usize) -> bool {
        self.progress.and_then(|p| p(row)).is_some()
    }

    /// Reports where batch row `row` stands to its client, if that client streams; a backend
    /// that can tell (generated tokens, denoising steps) calls this after each step.
    pub fn report(&self, row: usize, partial: Partial) {
        if let Some(progress) = self.progress.and_then(|p| p(row)) {
            progress.report(partial);
        }
    }
}
