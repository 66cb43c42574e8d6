//! A running Deployment or Flow: its deployments, and the DAG that carries a request's documents
//! through them.

use std::collections::HashMap;
use std::sync::Arc;

use ferroserve_core::Error;
use ferroserve_runtime::Runtime;

use crate::deployment::{Deployment, Handles};
use crate::spec::FlowSpec;
use crate::{Document, Executors, Parameters};

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

impl FlowError {
    /// The error as frontends report it: its kind (which decides the status), with the
    /// executor's name in the message.
    pub fn into_error(self) -> Error {
        self.error
            .context(format_args!("executor '{}'", self.executor))
    }
}

/// A loaded Deployment or Flow, ready to take requests.
pub struct Flow {
    spec: FlowSpec,
    /// The DAG's executors, in the file's order.
    nodes: Vec<Arc<Deployment>>,
    /// Executors no other executor needs: their documents are the answer.
    sinks: Vec<usize>,
}

impl Flow {
    /// Builds the file's `deployments:` (reachable only through handles), then its executors in
    /// order: registered ones from `executors` (each may take handles to what was built before
    /// it), model folders loaded into `runtime` under their names. Fails naming the executor
    /// that cannot be built.
    pub fn build(
        spec: FlowSpec,
        executors: &Executors,
        runtime: Arc<Runtime>,
    ) -> Result<Self, String> {
        let mut handles = Handles::default();
        for (i, d) in spec.deployments.iter().enumerate() {
            let name = d.name.clone().unwrap_or_default();
            let built = Deployment::build(d, &spec.base, executors, &handles, &runtime)
                .map_err(|m| format!("deployments[{i}] ('{name}'): {m}"))?;
            handles.insert(Arc::new(built));
        }
        let mut nodes = Vec::new();
        for (i, e) in spec.executors.iter().enumerate() {
            let name = e.name.clone().unwrap_or_default();
            let built = Arc::new(
                Deployment::build(e, &spec.base, executors, &handles, &runtime)
                    .map_err(|m| format!("executors[{i}] ('{name}'): {m}"))?,
            );
            handles.insert(built.clone());
            nodes.push(built);
        }
        let sinks = (0..nodes.len())
            .filter(|&i| !spec.needs.iter().any(|n| n.contains(&i)))
            .collect();
        runtime.mark_ready();
        Ok(Self { spec, nodes, sinks })
    }

    /// The executors' names, in the file's order.
    pub fn names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// The Deployment's name, when this is a Deployment.
    pub fn deployment(&self) -> Option<&str> {
        self.spec.deployment.then(|| self.nodes[0].name.as_str())
    }

    /// Runs `docs` through the executor `name` alone (Ray Serve's route to one deployment).
    pub async fn run_one(
        &self,
        name: &str,
        endpoint: &str,
        docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, FlowError> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| FlowError {
                executor: name.to_string(),
                error: Error::not_found(format!("no executor '{name}'")),
            })?;
        call_node(node, endpoint, docs, parameters)
            .await
            .map_err(|error| FlowError {
                executor: name.to_string(),
                error,
            })
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
                call_node(&self.nodes[i], endpoint, input, parameters)
            });
            let results = futures_util::future::join_all(calls).await;
            for (i, result) in ready.into_iter().zip(results) {
                outputs[i] = Some(result.map_err(|error| FlowError {
                    executor: self.nodes[i].name.clone(),
                    error,
                })?);
            }
        }
        let answer = merge(self.sinks.iter().filter_map(|&i| outputs[i].take()));
        // When every document failed, the request did: say why with the first reason.
        if let Some(e) = answer
            .first()
            .and_then(|d| d.error.clone())
            .filter(|_| answer.iter().all(|d| d.error.is_some()))
        {
            return Err(FlowError {
                executor: e.executor,
                error: Error::invalid(e.message),
            });
        }
        Ok(answer)
    }
}

/// Calls one executor with the documents that have not failed; failed ones pass around it and
/// keep their place (when the executor returns one document per document, as most do). Failures
/// the executor marks get its name.
async fn call_node(
    node: &Arc<Deployment>,
    endpoint: &str,
    docs: Vec<Document>,
    parameters: &Parameters,
) -> Result<Vec<Document>, Error> {
    let total = docs.len();
    let mut failed = Vec::new();
    let mut ok = Vec::with_capacity(total);
    for (i, d) in docs.into_iter().enumerate() {
        if d.error.is_some() {
            failed.push((i, d));
        } else {
            ok.push(d);
        }
    }
    let sent = ok.len();
    let mut out = if ok.is_empty() {
        ok
    } else {
        node.call(endpoint, ok, parameters).await?
    };
    for d in &mut out {
        if let Some(e) = d.error.as_mut().filter(|e| e.executor.is_empty()) {
            e.executor = node.name.clone();
        }
    }
    if failed.is_empty() {
        return Ok(out);
    }
    if out.len() != sent {
        out.extend(failed.into_iter().map(|(_, d)| d));
        return Ok(out);
    }
    let mut done = out.into_iter();
    let mut failed = failed.into_iter().peekable();
    let mut all = Vec::with_capacity(total);
    for i in 0..total {
        match failed.next_if(|(at, _)| *at == i) {
            Some((_, d)) => all.push(d),
            None => all.extend(done.next()),
        }
    }
    Ok(all)
}

/// Merges lists of documents by id: a document's first appearance sets its place, later copies
/// are folded into it ([`Document::merge`]).
pub(crate) fn merge(lists: impl Iterator<Item = Vec<Document>>) -> Vec<Document> {
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
