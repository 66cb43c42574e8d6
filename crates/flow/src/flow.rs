//! A running Deployment or Flow: its executors, and the DAG that carries a request's documents
//! through them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferroserve_core::Error;
use ferroserve_runtime::Runtime;
use ferroserve_tasks::{TaskInput, TaskKind, TaskOutput};
use tokio::sync::Semaphore;

use crate::spec::{FlowSpec, Polling};
use crate::{Document, Executor, ExecutorError, Executors, Init, Parameters};

/// A request that failed in an executor: its name, and the error (whose kind decides the
/// status a client sees).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("executor '{executor}': {error}")]
pub struct FlowError {
    /// The executor that failed.
    pub executor: String,
    /// What went wrong.
    pub error: Error,
}

/// Requests that may wait for a busy custom executor; more are refused at once.
const MAX_WAITING: usize = 1024;

/// The instances of a custom executor: one request per instance at a time.
struct Instances {
    idle: Mutex<Vec<Arc<dyn Executor>>>,
    free: Semaphore,
    waiting: AtomicUsize,
}

enum Node {
    /// A registered executor: its shards, and the next shard for `ANY` requests.
    Custom {
        shards: Vec<Arc<Instances>>,
        next: AtomicUsize,
    },
    /// A model folder served by its task, loaded into the runtime under the executor's name.
    Model(TaskKind),
}

/// A loaded Deployment or Flow, ready to take requests.
pub struct Flow {
    spec: FlowSpec,
    names: Vec<String>,
    nodes: Vec<Node>,
    /// Executors no other executor needs: their documents are the answer.
    sinks: Vec<usize>,
    runtime: Arc<Runtime>,
}

impl Flow {
    /// Builds every executor of `spec`: registered ones from `executors`, model folders loaded
    /// into `runtime` (under the executor's name). Fails naming the executor that cannot be
    /// built.
    pub fn build(
        spec: FlowSpec,
        executors: &Executors,
        runtime: Arc<Runtime>,
    ) -> Result<Self, String> {
        let mut names = Vec::new();
        let mut nodes = Vec::new();
        for (i, e) in spec.executors.iter().enumerate() {
            let name = e.name.clone().unwrap_or_default();
            let fail = |m: String| format!("executors[{i}] ('{name}'): {m}");
            let node = if let Some(make) = executors.get(&e.uses) {
                let mut shards = Vec::with_capacity(e.shards);
                for shard in 0..e.shards {
                    let mut instances: Vec<Arc<dyn Executor>> = Vec::with_capacity(e.replicas);
                    for replica in 0..e.replicas {
                        let init = Init {
                            with: &e.uses_with,
                            shard,
                            shards: e.shards,
                            replica,
                        };
                        instances.push(Arc::from(make(&init).map_err(fail)?));
                    }
                    shards.push(Arc::new(Instances {
                        free: Semaphore::new(instances.len()),
                        idle: Mutex::new(instances),
                        waiting: AtomicUsize::new(0),
                    }));
                }
                Node::Custom {
                    shards,
                    next: AtomicUsize::new(0),
                }
            } else {
                let dir = spec.base.join(&e.uses);
                if !dir.is_dir() {
                    let known: Vec<&str> = executors.names().collect();
                    return Err(fail(format!(
                        "uses '{}' is neither a registered executor (registered: {}) nor a model folder ({} does not exist)",
                        e.uses,
                        if known.is_empty() { "none".to_string() } else { known.join(", ") },
                        dir.display()
                    )));
                }
                if !e.uses_with.is_empty() || e.shards > 1 || e.polling.is_some() {
                    return Err(fail(
                        "uses_with, shards and polling apply to registered executors; a model folder's model.yaml configures it".into(),
                    ));
                }
                runtime
                    .load_folder(&name, &dir, Some(e.replicas))
                    .map_err(|err| fail(err.to_string()))?;
                let task = runtime
                    .task(&name, None)
                    .map_err(|err| fail(err.to_string()))?;
                let kind = task.map(|t| t.kind()).ok_or_else(|| {
                    fail(format!(
                        "{} has no task: a model serves documents through its task (set task: in its model.yaml)",
                        dir.display()
                    ))
                })?;
                Node::Model(kind)
            };
            names.push(name);
            nodes.push(node);
        }
        let sinks = (0..nodes.len())
            .filter(|&i| !spec.needs.iter().any(|n| n.contains(&i)))
            .collect();
        runtime.mark_ready();
        Ok(Self {
            spec,
            names,
            nodes,
            sinks,
            runtime,
        })
    }

    /// The executors' names, in the file's order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The Deployment's name, when this is a Deployment.
    pub fn deployment(&self) -> Option<&str> {
        self.spec.deployment.then(|| self.names[0].as_str())
    }

    /// Runs `docs` through the executors for `endpoint`: executors whose needs are done run
    /// together; an executor with several needs gets their documents merged by id; the answer
    /// is the documents of the executors nothing needs, merged.
    pub async fn run(
        &self,
        endpoint: &str,
        docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, FlowError> {
        let n = self.nodes.len();
        let mut outputs: Vec<Option<Vec<Document>>> = vec![None; n];
        while outputs.iter().any(Option::is_none) {
            let ready: Vec<usize> = (0..n)
                .filter(|&i| {
                    outputs[i].is_none() && self.spec.needs[i].iter().all(|&j| outputs[j].is_some())
                })
                .collect();
            let calls = ready.iter().map(|&i| {
                let input = match self.spec.needs[i].as_slice() {
                    [] => docs.clone(),
                    needs => merge(needs.iter().filter_map(|&j| outputs[j].clone())),
                };
                self.call(i, endpoint, input, parameters)
            });
            let results = futures_util::future::join_all(calls).await;
            for (i, result) in ready.into_iter().zip(results) {
                outputs[i] = Some(result.map_err(|error| FlowError {
                    executor: self.names[i].clone(),
                    error,
                })?);
            }
        }
        Ok(merge(self.sinks.iter().filter_map(|&i| outputs[i].take())))
    }

    async fn call(
        &self,
        i: usize,
        endpoint: &str,
        docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, Error> {
        match &self.nodes[i] {
            Node::Custom { shards, next } => match self.spec.executors[i].polling_for(endpoint) {
                Polling::Any => {
                    let shard = &shards[next.fetch_add(1, Ordering::Relaxed) % shards.len()];
                    call_custom(shard, endpoint, docs, parameters).await
                }
                Polling::All => {
                    let calls = shards
                        .iter()
                        .map(|s| call_custom(s, endpoint, docs.clone(), parameters));
                    let results = futures_util::future::join_all(calls).await;
                    let lists = results.into_iter().collect::<Result<Vec<_>, _>>()?;
                    keep_best_chunks(merge(lists.into_iter()), parameters)
                }
            },
            Node::Model(kind) => {
                self.call_model(&self.names[i], *kind, docs, parameters)
                    .await
            }
        }
    }

    async fn call_model(
        &self,
        model: &str,
        kind: TaskKind,
        mut docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, Error> {
        if docs.is_empty() {
            return Ok(docs);
        }
        let input = match kind {
            TaskKind::ImageClassification => TaskInput::Images(
                docs.iter()
                    .map(|d| {
                        d.blob
                            .clone()
                            .map(bytes::Bytes::from)
                            .ok_or_else(|| missing(d, "blob"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            TaskKind::TextEmbedding | TaskKind::TextClassification => TaskInput::Texts(
                docs.iter()
                    .map(|d| d.text.clone().ok_or_else(|| missing(d, "text")))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let task = self.runtime.task(model, None)?;
        let top_k = match parameters.get("top_k") {
            Some(v) => v.as_u64().filter(|&k| k > 0).ok_or_else(|| {
                Error::invalid(format!(
                    "parameters.top_k must be a whole number of at least 1, got {v}"
                ))
            })? as usize,
            None => task.map_or(1, |t| t.default_top_k()),
        };
        let answer = self
            .runtime
            .run_task(model, None, input, Default::default())
            .await?;
        match answer.output {
            TaskOutput::Embeddings { vectors, .. } => {
                for (d, v) in docs.iter_mut().zip(vectors) {
                    d.embedding = Some(v);
                }
            }
            TaskOutput::Classes(scores) => {
                for (d, s) in docs.iter_mut().zip(scores) {
                    let top = s.top_k(top_k);
                    if let Some((_, label, _)) = top.first() {
                        d.tags.insert("label".into(), (*label).into());
                    }
                    for (_, label, p) in top {
                        d.scores.insert(label.to_string(), p);
                    }
                }
            }
        }
        Ok(docs)
    }
}

fn missing(d: &Document, field: &str) -> Error {
    Error::invalid(format!("document '{}' has no {field}", d.id))
}

/// Runs a custom executor on an idle instance, on a blocking thread; waits for one when all are
/// busy, up to [`MAX_WAITING`] requests.
async fn call_custom(
    instances: &Instances,
    endpoint: &str,
    docs: Vec<Document>,
    parameters: &Parameters,
) -> Result<Vec<Document>, Error> {
    if instances.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
        instances.waiting.fetch_sub(1, Ordering::AcqRel);
        return Err(Error::Overloaded(format!(
            "{MAX_WAITING} requests are waiting for this executor already; retry shortly"
        )));
    }
    let permit = instances.free.acquire().await;
    instances.waiting.fetch_sub(1, Ordering::AcqRel);
    let _permit = permit.map_err(|_| Error::Unavailable("the executor is stopping".into()))?;
    let executor = instances
        .idle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .ok_or_else(|| Error::Internal("no idle executor instance".into()))?;
    let result = if executor.handles(endpoint) {
        let (e, endpoint, parameters) =
            (executor.clone(), endpoint.to_string(), parameters.clone());
        tokio::task::spawn_blocking(move || e.handle(&endpoint, docs, &parameters))
            .await
            .map_err(|_| Error::Internal("the executor panicked".into()))
            .and_then(|r| {
                r.map_err(|e| match e {
                    ExecutorError::BadInput(m) => Error::InvalidArgument(m),
                    ExecutorError::Failed(m) => Error::Internal(m),
                })
            })
    } else {
        Ok(docs)
    };
    instances
        .idle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(executor);
    result
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

/// Merges lists of documents by id: a document's first appearance sets its place, later copies
/// are folded into it ([`Document::merge`]).
fn merge(lists: impl Iterator<Item = Vec<Document>>) -> Vec<Document> {
    let mut out: Vec<Document> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for list in lists {
        for d in list {
            match at.get(&d.id) {
                Some(&i) => out[i].merge(d),
                None => {
                    at.insert(d.id.clone(), out.len());
                    out.push(d);
                }
            }
        }
    }
    out
}
