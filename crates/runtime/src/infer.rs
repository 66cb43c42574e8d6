//! The path of one inference: the version, the request's checks, the task's pre- and
//! post-processing on the CPU pool, and the model through its scheduler.

use std::sync::Arc;

use ferroserve_core::{Error, InferRequest, InferResponse, NamedTensor, Progress, Result};
use ferroserve_tasks::{Task, TaskInput, TaskOutput};

use crate::response::TaskAnswer;
use crate::runtime::Runtime;
use crate::validate;
use crate::version::Version;

/// Model requests of one task request queued at once.
const PARTS_IN_FLIGHT: usize = 4;

impl Runtime {
    /// Runs one inference on `model` at `version` (or the default version).
    ///
    /// The request is validated against the version's signature first; a request beyond the
    /// version's queue bound is refused at once (`Overloaded`). Dropping the returned future
    /// while it waits for the replica withdraws the request.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferRequest,
    ) -> Result<InferResponse> {
        let v = self.resolve(model, version)?;
        let id = request.id.clone();
        let outputs = observed(&v, async {
            validate::cost(&request, &self.options.request_limits)?;
            validate::check(model, &v.config.signature, &request)?;
            match &v.task {
                None => v.submit(request).await,
                Some(task) => {
                    let input = task.input_from_v2(&request)?;
                    let output = self.run_task_on(&v, task, input, &request).await?;
                    task.outputs_to_v2(output, &request.outputs)
                }
            }
        })
        .await?;
        Ok(InferResponse {
            model_name: model.to_string(),
            model_version: v.number.to_string(),
            id,
            outputs,
        })
    }

    /// The task of `model` at `version` (or the default version), or `None` for a plain model.
    pub fn task(&self, model: &str, version: Option<&str>) -> Result<Option<Arc<Task>>> {
        Ok(self.resolve(model, version)?.task.clone())
    }

    /// Runs `input` (images or texts) through the task of `model` at `version` (or the default
    /// version): preprocessing on the CPU pool, the model through its scheduler (batched with
    /// other requests), postprocessing on the CPU pool. A model without a task is
    /// `InvalidArgument`.
    pub async fn run_task(
        &self,
        model: &str,
        version: Option<&str>,
        input: TaskInput,
        parameters: ferroserve_core::Parameters,
    ) -> Result<TaskAnswer> {
        self.run_task_reporting(model, version, input, parameters, None)
            .await
    }

    /// [`Runtime::run_task`] for a client that streams: the model reports its progress (tokens
    /// so far, denoising steps) to `progress` as it goes. Reports come from requests of one
    /// input; send one text to follow it.
    pub async fn run_task_reporting(
        &self,
        model: &str,
        version: Option<&str>,
        input: TaskInput,
        parameters: ferroserve_core::Parameters,
        progress: Option<Progress>,
    ) -> Result<TaskAnswer> {
        let v = self.resolve(model, version)?;
        let task = v.task.clone().ok_or_else(|| {
            Error::invalid(format!(
                "model '{model}' has no task (set task: in its model.yaml); send it tensors through the V2 API"
            ))
        })?;
        let request = InferRequest {
            parameters,
            progress,
            ..Default::default()
        };
        let output = observed(&v, self.run_task_on(&v, &task, input, &request)).await?;
        Ok(TaskAnswer {
            model_version: v.number.to_string(),
            output,
        })
    }

    async fn run_task_on(
        &self,
        v: &Version,
        task: &Arc<Task>,
        input: TaskInput,
        request: &InferRequest,
    ) -> Result<TaskOutput> {
        use futures_util::{StreamExt, TryStreamExt};
        let admitted = self.cpu.admit()?;
        let rows = v.task_rows;
        let t = task.clone();
        let mut parameters = request.parameters.clone();
        let (prepared, parameters) = self
            .cpu
            .run(&admitted, move |gone| {
                t.prepare(input, rows, &mut parameters, gone)
                    .map(|p| (p, parameters))
            })
            .await?;
        // A few parts of one request in the queue at a time: enough to fill batches, without
        // letting one large request take the whole queue from everybody else.
        let outputs: Vec<Vec<NamedTensor>> = futures_util::stream::iter(prepared.requests)
            .map(|inputs| {
                v.submit(InferRequest {
                    inputs,
                    parameters: parameters.clone(),
                    progress: request.progress.clone(),
                    ..Default::default()
                })
            })
            .buffered(PARTS_IN_FLIGHT)
            .try_collect()
            .await?;
        let t = task.clone();
        let plan = prepared.plan;
        self.cpu
            .run(&admitted, move |_| t.finish(plan, outputs))
            .await
    }
}

/// Awaits one client request on `v`, recording its latency and outcome.
async fn observed<T>(v: &Version, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let started = std::time::Instant::now();
    v.touch();
    v.metrics.stats.touch();
    let result = work.await;
    let elapsed = started.elapsed();
    v.metrics.request_seconds.observe(elapsed.as_secs_f64());
    if result.is_ok() {
        v.metrics.success.inc();
        v.metrics.stats.success.add(elapsed);
    } else {
        v.metrics.failure.inc();
        v.metrics.stats.fail.add(elapsed);
    }
    result
}
