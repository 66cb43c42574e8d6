//! Triton's Python backend: a `model.py` defining `TritonPythonModel`, run unchanged. Its
//! `execute(requests)` gets the batch the scheduler formed as a list of requests, each with its
//! own tensors, and answers each with its own response (or error), as under Triton.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferroserve_core::{
    Backend, Device, Error, Health, InferRequest, NamedTensor, Result, RunContext, Signature,
};
use serde_json::{json, Map, Value};

use crate::worker::{Worker, WorkerSpec};

/// What loading one replica of a Triton Python model takes.
#[derive(Debug, Clone)]
pub struct TritonSpec<'a> {
    /// The model's name.
    pub model: &'a str,
    /// The version number (`args['model_version']`).
    pub version: String,
    /// The version's `model.py`.
    pub model_py: &'a Path,
    /// The model's folder (`args['model_repository']`, the worker's working folder).
    pub model_dir: &'a Path,
    /// The model configuration as Triton's JSON (`args['model_config']`).
    pub config_json: String,
    /// Inputs and outputs as clients see them.
    pub signature: Signature,
    /// The interpreter.
    pub python: PathBuf,
    /// How long starting and `initialize` may take; `None` waits forever.
    pub timeout_ready: Option<Duration>,
    /// Where the replica runs: a GPU is the only one its worker sees (`CUDA_VISIBLE_DEVICES`).
    pub device: Device,
    /// Which replica it is.
    pub replica: usize,
    /// The version's health.
    pub health: Health,
}

/// One replica of a Triton Python model.
pub struct TritonModel {
    worker: Worker,
    signature: Signature,
    model: String,
}

impl TritonModel {
    /// Starts the replica's worker, which imports `model.py` and calls `initialize(args)`.
    pub fn load(spec: TritonSpec<'_>) -> Result<Self> {
        let (kind, env) = match spec.device {
            Device::Cpu => ("CPU", vec![]),
            Device::Cuda(i) => ("GPU", vec![("CUDA_VISIBLE_DEVICES".to_string(), gpu_id(i))]),
        };
        let mut load = Map::new();
        load.insert("kind".into(), "triton".into());
        load.insert(
            "model_py".into(),
            spec.model_py.display().to_string().into(),
        );
        load.insert(
            "args".into(),
            json!({
                "model_config": spec.config_json,
                "model_instance_kind": kind,
                "model_instance_name": format!("{}_{}", spec.model, spec.replica),
                // The worker sees only its own GPU, which is device 0 to it.
                "model_instance_device_id": "0",
                "model_repository": spec.model_dir.display().to_string(),
                "model_version": spec.version,
                "model_name": spec.model,
            }),
        );
        let worker = Worker::start(
            WorkerSpec {
                python: spec.python,
                cwd: spec.model_dir.to_path_buf(),
                env,
                load,
                timeout_ready: spec.timeout_ready,
                name: format!("model '{}'", spec.model),
                replica: spec.replica,
            },
            spec.health,
        )?;
        Ok(Self {
            worker,
            signature: spec.signature,
            model: spec.model.to_string(),
        })
    }
}

impl Backend for TritonModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[NamedTensor], outputs: &[String]) -> Result<Vec<NamedTensor>> {
        let request = InferRequest {
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
            ..Default::default()
        };
        let mut answers = self.run_requests(&[&request], &RunContext::detached())?;
        answers
            .pop()
            .unwrap_or_else(|| Err(Error::internal("the model gave no answer")))
    }

    fn takes_requests(&self) -> bool {
        true
    }

    fn run_requests(
        &mut self,
        requests: &[&InferRequest],
        context: &RunContext<'_>,
    ) -> Result<Vec<Result<Vec<NamedTensor>>>> {
        let n = requests.len();
        let build = |outbox: &mut crate::Outbox<'_>| {
            let mut list = Vec::with_capacity(n);
            for (i, r) in requests.iter().enumerate() {
                let inputs = r
                    .inputs
                    .iter()
                    .map(|t| crate::tensor::put(outbox, t))
                    .collect::<std::io::Result<Vec<_>>>()?;
                list.push(json!({
                    "id": r.id.clone().unwrap_or_else(|| i.to_string()),
                    "inputs": inputs,
                    "outputs": r.outputs,
                    "parameters": r.parameters,
                }));
            }
            let mut header = Map::new();
            header.insert("op".into(), "execute".into());
            header.insert("requests".into(), Value::Array(list));
            Ok(header)
        };
        let read = |reply: &crate::Reply<'_>| {
            let responses = reply
                .header
                .get("responses")
                .and_then(Value::as_array)
                .ok_or("a result without responses")?;
            if responses.len() != n {
                return Err(format!("{} responses for {n} requests", responses.len()));
            }
            responses
                .iter()
                .zip(requests)
                .map(|(r, request)| {
                    if let Some(e) = r.get("error") {
                        let message = e.as_str().map_or_else(|| e.to_string(), str::to_string);
                        return Ok(Err(message));
                    }
                    let outputs = r
                        .get("outputs")
                        .and_then(Value::as_array)
                        .ok_or("a response without outputs")?
                        .iter()
                        .map(|t| crate::tensor::take(reply, t))
                        .collect::<std::result::Result<Vec<_>, String>>()?;
                    Ok(select(outputs, &request.outputs))
                })
                .collect::<std::result::Result<Vec<_>, String>>()
        };
        let name = format!("model '{}'", self.model);
        let answers = self
            .worker
            .call(build, "result", read, context.deadline())?;
        Ok(answers
            .into_iter()
            .map(|a| a.map_err(|m| Error::internal(format!("{name}: {m}"))))
            .collect())
    }
}

/// The outputs a request asked for, in its order (all when it named none), or why not.
fn select(
    mut outputs: Vec<NamedTensor>,
    wanted: &[String],
) -> std::result::Result<Vec<NamedTensor>, String> {
    if wanted.is_empty() {
        return Ok(outputs);
    }
    wanted
        .iter()
        .map(|w| {
            let i = outputs.iter().position(|o| &o.name == w).ok_or_else(|| {
                format!("execute gave no output '{w}', which the request asked for")
            })?;
            Ok(outputs.swap_remove(i))
        })
        .collect()
}

/// The id the worker's `CUDA_VISIBLE_DEVICES` gives GPU `i` of the server: entry `i` of the
/// server's own `CUDA_VISIBLE_DEVICES` when it has one (GPU numbers are relative to it).
fn gpu_id(i: u32) -> String {
    std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .nth(i as usize)
                .map(str::to_string)
        })
        .unwrap_or_else(|| i.to_string())
}
