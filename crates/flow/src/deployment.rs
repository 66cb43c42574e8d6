//! One deployment: an executor (a registered one, in shards and replicas, or a model folder
//! served by its task) and the handle other executors call it through.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferroserve_core::{DataType, Error, ErrorKind, InferRequest, NamedTensor, Tensor};
use ferroserve_runtime::scheduler::{Scheduler, Worker};
use ferroserve_runtime::{Overrides, Runtime};
use ferroserve_tasks::{TaskInput, TaskKind, TaskOutput};

use crate::autoscale::CustomScaled;
use crate::python::{Handlers, PythonExecutorSpec};
use crate::spec::{ExecutorSpec, Polling};
use crate::work::{Admissions, DocJob, ExecutorWorker};
use crate::{Document, ExecutorError, Executors, Init, Parameters};

enum Node {
    /// A registered executor: one scheduler per shard (its instances are the replicas), and
    /// the next shard for `ANY` requests.
    Custom {
        shards: Vec<Arc<Scheduler<DocJob>>>,
        next: AtomicUsize,
        /// How requests join the queue (batched for endpoints with `uses_dynamic_batching`).
        admissions: Admissions,
    },
    /// A model folder served by its task, loaded into the runtime under the deployment's name.
    Model {
        kind: TaskKind,
        runtime: Arc<Runtime>,
    },
    /// A model folder without a task: each document's `tensor` is one row of its only input,
    /// and the row of its first output comes back as the document's `tensor`.
    Plain {
        input: String,
        runtime: Arc<Runtime>,
    },
}

/// A built executor with its name and settings.
pub(crate) struct Deployment {
    pub name: String,
    spec: ExecutorSpec,
    node: Node,
}

/// The deployments built so far, by name, for handles.
#[derive(Clone, Default)]
pub struct Handles {
    built: BTreeMap<String, Arc<Deployment>>,
}

impl Handles {
    /// A handle to the deployment `name` (one listed under `deployments:`, or an executor listed
    /// before the one asking).
    pub fn get(&self, name: &str) -> Result<DeploymentHandle, String> {
        self.built
            .get(name)
            .map(|d| DeploymentHandle(d.clone()))
            .ok_or_else(|| {
                let known: Vec<&str> = self.built.keys().map(String::as_str).collect();
                format!(
                    "no deployment '{name}' to call (built so far: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            })
    }

    pub(crate) fn insert(&mut self, d: Arc<Deployment>) {
        self.built.insert(d.name.clone(), d);
    }
}

/// Calls another deployment in-process (Ray Serve's DeploymentHandle): no HTTP hop, and the
/// called deployment's own batching, replicas and queue bounds apply.
#[derive(Clone)]
pub struct DeploymentHandle(Arc<Deployment>);

impl DeploymentHandle {
    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Sends `docs` to the deployment's `endpoint` and waits for its documents. Call it from an
    /// executor's `handle` (which runs on a blocking thread of the server's async runtime).
    pub fn call(
        &self,
        endpoint: &str,
        docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, ExecutorError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ExecutorError::Failed("a deployment handle is called from an executor's handle".into())
        })?;
        runtime
            .block_on(self.call_async(endpoint, docs, parameters))
            .map_err(|e| {
                let bad_input = matches!(
                    e.kind(),
                    ErrorKind::InvalidArgument | ErrorKind::TooLarge | ErrorKind::NotFound
                );
                let message = format!("deployment '{}': {e}", self.0.name);
                if bad_input {
                    ExecutorError::BadInput(message)
                } else {
                    ExecutorError::Failed(message)
                }
            })
    }

    /// [`DeploymentHandle::call`] for async code.
    pub async fn call_async(
        &self,
        endpoint: &str,
        docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, Error> {
        self.0.call(endpoint, docs, parameters).await
    }
}

impl Deployment {
    /// Builds the executor `spec` describes: a registered one from `executors` (with `handles`
    /// to what was built before it), or a model folder (relative to `base`) loaded into
    /// `runtime` under the deployment's name.
    pub fn build(
        spec: &ExecutorSpec,
        base: &std::path::Path,
        executors: &Executors,
        handles: &Handles,
        runtime: &Arc<Runtime>,
    ) -> Result<Self, String> {
        let name = spec.name.clone().unwrap_or_default();
        let placement = spec.placement()?;
        let node = if spec.is_python() {
            let python = PythonExecutorSpec::new(spec, base, executors.python_options())?;
            let handlers: Arc<Mutex<Option<Handlers>>> = Arc::default();
            let seen = handlers.clone();
            let (shards_n, replicas_n) = (spec.shards, spec.replicas());
            let make: MakeWorker = Arc::new(move |shard, replica| {
                let w = python.start(shard, shards_n, replica, replicas_n)?;
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.handlers.clone());
                Ok(Box::new(w) as Box<dyn Worker<DocJob>>)
            });
            let shards = custom_shards(spec, &name, runtime, make)?;
            let handlers = handlers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            // The YAML's uses_dynamic_batching wins over the class's @dynamic_batching.
            let mut batching = handlers.batching.clone();
            batching.extend(spec.uses_dynamic_batching.clone());
            Node::Custom {
                shards,
                next: AtomicUsize::new(0),
                admissions: Admissions::new(
                    &batching,
                    Some(handlers.named().clone()),
                    spec.timeout_send(),
                ),
            }
        } else if let Some(make) = executors.get(&spec.uses) {
            if placement.is_some() {
                return Err("devices and env apply to model folders and Python executors; a registered executor takes its device through uses_with".into());
            }
            let (make, with, handles, shards_n) = (
                make.clone(),
                spec.uses_with.clone(),
                handles.clone(),
                spec.shards,
            );
            let make: MakeWorker = Arc::new(move |shard, replica| {
                let init = Init {
                    with: &with,
                    shard,
                    shards: shards_n,
                    replica,
                    handles: &handles,
                };
                Ok(Box::new(ExecutorWorker(make(&init)?)) as Box<dyn Worker<DocJob>>)
            });
            Node::Custom {
                shards: custom_shards(spec, &name, runtime, make)?,
                next: AtomicUsize::new(0),
                admissions: Admissions::new(&spec.uses_dynamic_batching, None, spec.timeout_send()),
            }
        } else {
            let dir = base.join(&spec.uses);
            if !dir.is_dir() {
                let known: Vec<&str> = executors.names().collect();
                return Err(format!(
                    "uses '{}' is neither a registered executor (registered: {}) nor a model folder ({} does not exist)",
                    spec.uses,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") },
                    dir.display()
                ));
            }
            if !spec.uses_with.is_empty()
                || spec.shards > 1
                || spec.polling.is_some()
                || !spec.uses_dynamic_batching.is_empty()
            {
                return Err(
                    "uses_with, shards, polling and uses_dynamic_batching apply to registered executors; a model folder's model.yaml configures it (its dynamic_batching batches across requests already)".into(),
                );
            }
            runtime
                .load_folder(
                    &name,
                    &dir,
                    Overrides {
                        // A model loads at least one replica (its inputs and outputs come from
                        // it); an autoscaled one starting at zero lets it go right after.
                        replicas: Some(spec.replicas().max(1)),
                        devices: placement,
                        autoscaling: spec.autoscaling.clone(),
                        config_file: None,
                    },
                )
                .map_err(|err| err.to_string())?;
            let task = runtime.task(&name, None).map_err(|err| err.to_string())?;
            let kind = task.map(|t| t.kind());
            match kind {
                Some(kind) => Node::Model {
                    kind,
                    runtime: runtime.clone(),
                },
                None => Node::Plain {
                    input: plain_input(runtime, &name)?,
                    runtime: runtime.clone(),
                },
            }
        };
        Ok(Self {
            name,
            spec: spec.clone(),
            node,
        })
    }

    /// Runs `docs` through this deployment for `endpoint`.
    pub async fn call(
        &self,
        endpoint: &str,
        docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, Error> {
        match &self.node {
            Node::Custom {
                shards,
                next,
                admissions,
            } => {
                // Executors run on replica threads; their deployment handles need the async
                // runtime the request came from.
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                    Error::internal("deployments are called from within the server's async runtime")
                })?;
                let call = |shard: &Arc<Scheduler<DocJob>>, docs: Vec<Document>| {
                    let job = DocJob {
                        endpoint: endpoint.to_string(),
                        docs,
                        parameters: parameters.clone(),
                        runtime: runtime.clone(),
                    };
                    let admission = admissions.of(&job);
                    let shard = shard.clone();
                    async move { shard.submit(job, admission).await }
                };
                match self.spec.polling_for(endpoint) {
                    Polling::Any => {
                        let shard = &shards[next.fetch_add(1, Ordering::Relaxed) % shards.len()];
                        call(shard, docs).await
                    }
                    Polling::All => {
                        let calls = shards.iter().map(|s| call(s, docs.clone()));
                        let results = futures_util::future::join_all(calls).await;
                        let lists = results.into_iter().collect::<Result<Vec<_>, _>>()?;
                        keep_best_chunks(crate::flow::merge(lists.into_iter()), parameters)
                    }
                }
            }
            Node::Model { kind, runtime } => {
                call_model(runtime, &self.name, *kind, docs, parameters).await
            }
            Node::Plain { input, runtime } => call_plain(runtime, &self.name, input, docs).await,
        }
    }
}

/// Builds instance `replica` of shard `shard` of a registered or Python executor.
type MakeWorker =
    Arc<dyn Fn(usize, usize) -> Result<Box<dyn Worker<DocJob>>, String> + Send + Sync>;

/// One scheduler per shard of an executor, each with its replicas (and its autoscaler).
fn custom_shards(
    spec: &ExecutorSpec,
    name: &str,
    runtime: &Arc<Runtime>,
    make: MakeWorker,
) -> Result<Vec<Arc<Scheduler<DocJob>>>, String> {
    let mut shards = Vec::with_capacity(spec.shards);
    for shard in 0..spec.shards {
        let scheduler = Arc::new(runtime.scheduler::<DocJob>("executor", name, shard as u64));
        for replica in 0..spec.replicas() {
            scheduler
                .add(make(shard, replica)?)
                .map_err(|e| e.to_string())?;
        }
        if let Some(config) = &spec.autoscaling {
            let make = make.clone();
            ferroserve_runtime::autoscale::Autoscaler {
                name: name.to_string(),
                target: Box::new(CustomScaled {
                    config: config.clone(),
                    next: scheduler.replicas(),
                    scheduler: Arc::downgrade(&scheduler),
                    make: Box::new(move |replica| make(shard, replica)),
                }),
                report: runtime.metrics().deployment(name),
            }
            .start()
            .map_err(|e| format!("cannot start the autoscaler: {e}"))?;
        }
        shards.push(scheduler);
    }
    Ok(shards)
}

/// The one FP32 input, with a batch dimension, that a plain model executor fills from
/// documents' tensors.
fn plain_input(runtime: &Runtime, model: &str) -> Result<String, String> {
    let meta = runtime
        .model_metadata(model, None)
        .map_err(|e| e.to_string())?;
    match meta.inputs.as_slice() {
        [one] if one.datatype == DataType::Fp32 && one.shape.first() == Some(&-1) => {
            Ok(one.name.clone())
        }
        _ => Err(format!(
            "a model without a task serves documents when it has one FP32 input with a dynamic batch dimension (each document's tensor is a row); this one's inputs are {:?} (or give it a task: in its model.yaml)",
            meta.inputs
                .iter()
                .map(|i| format!("{} {} {:?}", i.name, i.datatype, i.shape))
                .collect::<Vec<_>>()
        )),
    }
}

/// Runs a plain model on the documents' tensors: those of one shape go in one request. A
/// document without a tensor, with values that do not fill its shape, or in a group of one
/// shape the model refuses fails alone, with its own message.
async fn call_plain(
    runtime: &Runtime,
    model: &str,
    input: &str,
    mut docs: Vec<Document>,
) -> Result<Vec<Document>, Error> {
    let mut groups: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
    for (i, d) in docs.iter_mut().enumerate() {
        let id = d.id.clone();
        let problem = match &d.tensor {
            None => Some(format!("document '{id}' has no tensor")),
            Some(t) => {
                let needed = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                match needed {
                    Some(n) if n == t.data.len() => {
                        groups.entry(t.shape.clone()).or_default().push(i);
                        None
                    }
                    _ => Some(format!(
                        "document '{id}' has a tensor of shape {:?} but {} values",
                        t.shape,
                        t.data.len()
                    )),
                }
            }
        };
        if let Some(message) = problem {
            d.fail(message);
        }
    }
    for (shape, members) in groups {
        let mut data = Vec::new();
        for &i in &members {
            if let Some(t) = &docs[i].tensor {
                data.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
        let mut dims = vec![members.len()];
        dims.extend(&shape);
        let tensor = Tensor::new(DataType::Fp32, dims, bytes::Bytes::from(data))
            .map_err(|e| Error::invalid(e.to_string()))?;
        let request = InferRequest {
            inputs: vec![NamedTensor {
                name: input.to_string(),
                tensor,
            }],
            ..Default::default()
        };
        let response = match runtime.infer(model, None, request).await {
            Ok(r) => r,
            // The model refuses this shape: those documents fail, the others go on.
            Err(e) if matches!(e.kind(), ErrorKind::InvalidArgument | ErrorKind::TooLarge) => {
                for &i in &members {
                    let id = docs[i].id.clone();
                    docs[i].fail(format!("document '{id}': {e}"));
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let out = response
            .outputs
            .first()
            .ok_or_else(|| Error::internal("the model returned no output"))?;
        if out.tensor.dtype() != DataType::Fp32
            || out.tensor.shape().first() != Some(&members.len())
        {
            return Err(Error::internal(format!(
                "output '{}' is {} {:?}; documents take FP32 rows",
                out.name,
                out.tensor.dtype(),
                out.tensor.shape()
            )));
        }
        let row_shape = out.tensor.shape()[1..].to_vec();
        let values: Vec<f32> = out
            .tensor
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let per = values.len() / members.len().max(1);
        for (&i, row) in members.iter().zip(values.chunks(per.max(1))) {
            docs[i].tensor = Some(crate::DocTensor {
                shape: row_shape.clone(),
                data: row.to_vec(),
            });
        }
    }
    Ok(docs)
}

async fn call_model(
    runtime: &Runtime,
    model: &str,
    kind: TaskKind,
    mut docs: Vec<Document>,
    parameters: &Parameters,
) -> Result<Vec<Document>, Error> {
    if docs.is_empty() {
        return Ok(docs);
    }
    // A document without the task's input fails alone; the others go on.
    let field = match kind {
        TaskKind::ImageClassification => "blob",
        TaskKind::TextEmbedding
        | TaskKind::TextClassification
        | TaskKind::Summarization
        | TaskKind::TextToImage => "text",
    };
    let usable: Vec<usize> = (0..docs.len())
        .filter(|&i| match kind {
            TaskKind::ImageClassification => docs[i].blob.as_ref().is_some_and(|b| !b.is_empty()),
            _ => docs[i].text.as_ref().is_some_and(|t| !t.is_empty()),
        })
        .collect();
    for (i, d) in docs.iter_mut().enumerate() {
        if !usable.contains(&i) {
            let id = d.id.clone();
            d.fail(format!("document '{id}' has no {field}"));
        }
    }
    if usable.is_empty() {
        return Ok(docs);
    }
    let input = match kind {
        TaskKind::ImageClassification => TaskInput::Images(
            usable
                .iter()
                .map(|&i| bytes::Bytes::from(docs[i].blob.clone().unwrap_or_default()))
                .collect(),
        ),
        TaskKind::TextEmbedding
        | TaskKind::TextClassification
        | TaskKind::Summarization
        | TaskKind::TextToImage => TaskInput::Texts(
            usable
                .iter()
                .map(|&i| docs[i].text.clone().unwrap_or_default())
                .collect(),
        ),
    };
    let task = runtime.task(model, None)?;
    let top_k = match parameters.get("top_k") {
        Some(v) => v.as_u64().filter(|&k| k > 0).ok_or_else(|| {
            Error::invalid(format!(
                "parameters.top_k must be a whole number of at least 1, got {v}"
            ))
        })? as usize,
        None => task.map_or(1, |t| t.default_top_k()),
    };
    // Generative tasks take the request's parameters (beams, steps, seed); the others' are the
    // Flow's own (top_k above).
    let task_parameters = match kind {
        TaskKind::Summarization | TaskKind::TextToImage => parameters.clone(),
        _ => Default::default(),
    };
    let answer = runtime
        .run_task(model, None, input, task_parameters)
        .await?;
    match answer.output {
        TaskOutput::Embeddings { vectors, .. } => {
            for (&i, v) in usable.iter().zip(vectors) {
                docs[i].embedding = Some(v);
            }
        }
        TaskOutput::Classes(scores) => {
            for (&i, s) in usable.iter().zip(scores) {
                let d = &mut docs[i];
                let top = s.top_k(top_k);
                if let Some((_, label, _)) = top.first() {
                    d.tags.insert("label".into(), (*label).into());
                }
                for (_, label, p) in top {
                    d.scores.insert(label.to_string(), p);
                }
            }
        }
        TaskOutput::Texts(texts) => {
            for (&i, g) in usable.iter().zip(texts) {
                let d = &mut docs[i];
                d.tags.insert("summary_text".into(), g.text.into());
                if g.truncated {
                    d.tags.insert("truncated".into(), true.into());
                }
            }
        }
        // Jina's TextToImage convention: the picture as the document's blob.
        TaskOutput::Images(images) => {
            for (&i, image) in usable.iter().zip(images) {
                let d = &mut docs[i];
                d.blob = Some(image.png()?);
                d.tags.insert("mime_type".into(), "image/png".into());
                if image.truncated {
                    d.tags.insert("truncated".into(), true.into());
                }
            }
        }
    }
    Ok(docs)
}

/// After an `ALL` call, keeps each document's `limit` best chunks (by their highest score) when
/// the request's parameters set `limit`: every shard returns its own best, the union is cut back.
fn keep_best_chunks(
    mut docs: Vec<Document>,
    parameters: &Parameters,
) -> Result<Vec<Document>, Error> {
    let Some(limit) = parameters.get("limit") else {
        return Ok(docs);
    };
    let limit = limit.as_u64().ok_or_else(|| {
        Error::invalid(format!(
            "parameters.limit must be a whole number, got {limit}"
        ))
    })? as usize;
    let best = |d: &Document| d.scores.values().copied().fold(f32::NEG_INFINITY, f32::max);
    for d in &mut docs {
        d.chunks.sort_by(|a, b| best(b).total_cmp(&best(a)));
        d.chunks.truncate(limit);
    }
    Ok(docs)
}
