//! Executors: what a Deployment runs. Users write their own by implementing [`Executor`] and
//! registering a constructor under a name that YAML's `uses:` can name.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::Document;

/// Request-level parameters (Jina's `parameters`).
pub type Parameters = Map<String, Value>;

/// Why an executor could not process a request; it reaches the client with the executor's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutorError {
    /// The documents or parameters are wrong for this executor (HTTP 400).
    #[error("{0}")]
    BadInput(String),
    /// The executor failed (HTTP 500).
    #[error("{0}")]
    Failed(String),
}

/// A processing step for documents, with handlers for endpoints (`/encode`, `/search`, ...).
///
/// `handle` is called with a batch of documents and returns the documents to pass on (usually
/// the same ones, enriched). It runs on a blocking thread, so it may compute. An executor that
/// does not handle an endpoint (`handles` is false) passes the documents through untouched.
///
/// ```
/// use ferroserve_flow::{Document, Executor, ExecutorError, Parameters};
///
/// /// Upper-cases every document's text, for every endpoint (Jina's bare `@requests`).
/// struct UpperCase;
///
/// impl Executor for UpperCase {
///     fn handle(&self, _endpoint: &str, mut docs: Vec<Document>, _: &Parameters)
///         -> Result<Vec<Document>, ExecutorError> {
///         for d in &mut docs {
///             d.text = d.text.take().map(|t| t.to_uppercase());
///         }
///         Ok(docs)
///     }
/// }
/// ```
pub trait Executor: Send + Sync + 'static {
    /// Whether this executor has a handler for `endpoint`. Default: every endpoint.
    fn handles(&self, endpoint: &str) -> bool {
        let _ = endpoint;
        true
    }

    /// Processes `docs` for `endpoint`.
    fn handle(
        &self,
        endpoint: &str,
        docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, ExecutorError>;
}

/// What a constructor is told about the instance it builds.
#[derive(Clone, Copy)]
pub struct Init<'a> {
    /// The executor's `uses_with` parameters from the YAML.
    pub with: &'a Parameters,
    /// Which shard this instance belongs to (0-based), of `shards`.
    pub shard: usize,
    /// How many shards the executor has.
    pub shards: usize,
    /// Which replica of its shard this instance is (0-based).
    pub replica: usize,
    /// Handles to the deployments built before this executor (the file's `deployments:`, and
    /// executors listed earlier), for calling them in-process.
    pub handles: &'a crate::Handles,
}

/// Builds an executor instance.
pub type Constructor =
    Arc<dyn Fn(&Init) -> Result<Box<dyn Executor>, String> + Send + Sync + 'static>;

/// The executors YAML can name in `uses:`, by name.
///
/// ```
/// use ferroserve_flow::{Document, Executor, ExecutorError, Executors, Parameters};
///
/// struct Tagger { key: String }
///
/// impl Executor for Tagger {
///     fn handle(&self, _: &str, mut docs: Vec<Document>, _: &Parameters)
///         -> Result<Vec<Document>, ExecutorError> {
///         for d in &mut docs {
///             d.tags.insert(self.key.clone(), true.into());
///         }
///         Ok(docs)
///     }
/// }
///
/// let mut executors = Executors::new();
/// executors.register("Tagger", |init| {
///     let key = init.with.get("key").and_then(|v| v.as_str()).unwrap_or("tagged").to_string();
///     Ok(Box::new(Tagger { key }))
/// });
/// assert!(executors.names().any(|n| n == "Tagger"));
/// ```
#[derive(Clone, Default)]
pub struct Executors {
    constructors: BTreeMap<String, Constructor>,
    python: crate::PythonOptions,
}

impl Executors {
    /// No executors besides models (which `uses:` names by path).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `constructor` under `name`, replacing one registered before. It is called once
    /// per instance (every replica of every shard).
    pub fn register<F>(&mut self, name: &str, constructor: F) -> &mut Self
    where
        F: Fn(&Init) -> Result<Box<dyn Executor>, String> + Send + Sync + 'static,
    {
        self.constructors
            .insert(name.to_string(), Arc::new(constructor));
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.constructors.keys().map(String::as_str)
    }

    /// Sets how executors written in Python (`py_modules`) are run.
    pub fn set_python(&mut self, options: crate::PythonOptions) -> &mut Self {
        self.python = options;
        self
    }

    pub(crate) fn python_options(&self) -> &crate::PythonOptions {
        &self.python
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Constructor> {
        self.constructors.get(name)
    }
}
