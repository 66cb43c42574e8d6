//! A ferroserve binary with two executors of its own, for Flows such as `flow.yml` here:
//!
//! ```sh
//! cargo run --release -p ferroserve-custom-executor -- run examples/custom-executor/flow.yml
//! curl -s http://127.0.0.1:8080/post -H 'Content-Type: application/json' \
//!   -d '{"data": [{"text": "hello world"}], "execEndpoint": "/encode"}'
//! ```
//!
//! It is the whole `ferroserve` command (`serve`, `run`, `infer`, `bench`); only `run`'s YAML
//! gains `uses: UpperCase` and `uses: Tagger`.

use std::sync::Mutex;

use ferroserve::{
    DeploymentHandle, Document, Executor, ExecutorError, Executors, Init, Parameters,
};
use serde_json::Value;

/// Upper-cases every document's text, for every endpoint (Jina's bare `@requests`).
struct UpperCase;

impl Executor for UpperCase {
    fn handle(
        &self,
        _endpoint: &str,
        mut docs: Vec<Document>,
        _parameters: &Parameters,
    ) -> Result<Vec<Document>, ExecutorError> {
        for d in &mut docs {
            d.text = d.text.take().map(|t| t.to_uppercase());
        }
        Ok(docs)
    }
}

/// Sets tag `key` to `value` on every document; with `endpoints`, only for those (documents of
/// other endpoints pass through untouched).
struct Tagger {
    key: String,
    value: Value,
    endpoints: Option<Vec<String>>,
}

impl Tagger {
    fn new(with: &Parameters) -> Result<Self, String> {
        let key = match with.get("key") {
            None => "tagged".to_string(),
            Some(Value::String(k)) => k.clone(),
            Some(other) => return Err(format!("uses_with.key must be a string, got {other}")),
        };
        let endpoints =
            match with.get("endpoints") {
                None => None,
                Some(v) => Some(serde_json::from_value(v.clone()).map_err(|_| {
                    format!("uses_with.endpoints must be a list of strings, got {v}")
                })?),
            };
        if let Some(unknown) = with
            .keys()
            .find(|k| !["key", "value", "endpoints"].contains(&k.as_str()))
        {
            return Err(format!(
                "uses_with.{unknown}: Tagger takes key, value and endpoints"
            ));
        }
        Ok(Self {
            key,
            value: with.get("value").cloned().unwrap_or(Value::Bool(true)),
            endpoints,
        })
    }
}

impl Executor for Tagger {
    fn handles(&self, endpoint: &str) -> bool {
        self.endpoints
            .as_ref()
            .is_none_or(|e| e.iter().any(|x| x == endpoint))
    }

    fn handle(
        &self,
        _endpoint: &str,
        mut docs: Vec<Document>,
        _parameters: &Parameters,
    ) -> Result<Vec<Document>, ExecutorError> {
        for d in &mut docs {
            d.tags.insert(self.key.clone(), self.value.clone());
        }
        Ok(docs)
    }
}

/// An in-memory vector index; with shards, each shard holds part of it. `/index` stores the
/// documents (they need an embedding) and tags them with the shard; `/search` attaches to each
/// query the `limit` (default 3) most similar stored documents as chunks with a `cosine` score.
/// Other endpoints pass through.
struct MemoryIndex {
    shard: usize,
    stored: Mutex<Vec<Document>>,
}

impl Executor for MemoryIndex {
    fn handles(&self, endpoint: &str) -> bool {
        endpoint == "/index" || endpoint == "/search"
    }

    fn handle(
        &self,
        endpoint: &str,
        mut docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, ExecutorError> {
        for d in &docs {
            if d.embedding.is_none() {
                return Err(ExecutorError::BadInput(format!(
                    "document '{}' has no embedding to {} with",
                    d.id,
                    endpoint.trim_start_matches('/')
                )));
            }
        }
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        if endpoint == "/index" {
            for d in &mut docs {
                d.tags.insert("shard".into(), self.shard.into());
                stored.push(d.clone());
            }
            return Ok(docs);
        }
        let limit = match parameters.get("limit") {
            None => 3,
            Some(v) => v.as_u64().ok_or_else(|| {
                ExecutorError::BadInput(format!("parameters.limit must be a whole number, got {v}"))
            })? as usize,
        };
        for query in &mut docs {
            let q = query.embedding.as_deref().unwrap_or_default();
            let mut found: Vec<Document> = stored
                .iter()
                .map(|s| {
                    let mut m = s.clone();
                    let c = cosine(q, s.embedding.as_deref().unwrap_or_default());
                    m.scores.insert("cosine".into(), c);
                    m
                })
                .collect();
            found.sort_by(|a, b| b.scores["cosine"].total_cmp(&a.scores["cosine"]));
            found.truncate(limit);
            query.chunks = found;
        }
        Ok(docs)
    }
}

/// An ingress in front of a model deployment (Ray Serve's composition): it checks each
/// document's text (present, at most `max_chars`), then calls the deployment named
/// `deployment` in-process through its handle, so the model's own batching applies.
struct Ingress {
    model: DeploymentHandle,
    max_chars: usize,
}

impl Ingress {
    fn new(init: &Init) -> Result<Self, String> {
        let name = init
            .with
            .get("deployment")
            .and_then(Value::as_str)
            .ok_or("uses_with.deployment must name the deployment to call")?;
        let max_chars = match init.with.get("max_chars") {
            None => 1000,
            Some(v) => v
                .as_u64()
                .ok_or(format!("uses_with.max_chars must be a number, got {v}"))?
                as usize,
        };
        Ok(Self {
            model: init.handles.get(name)?,
            max_chars,
        })
    }
}

impl Executor for Ingress {
    fn handle(
        &self,
        endpoint: &str,
        docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, ExecutorError> {
        for d in &docs {
            let chars = d.text.as_deref().map_or(0, |t| t.chars().count());
            if chars == 0 || chars > self.max_chars {
                return Err(ExecutorError::BadInput(format!(
                    "document '{}' must have a text of 1 to {} characters, it has {chars}",
                    d.id, self.max_chars
                )));
            }
        }
        self.model.call(endpoint, docs, parameters)
    }
}

/// Takes `parameters.ms` (default `uses_with.ms`, else 100) milliseconds per call and tags each
/// document with the instance that served it and the number of documents in the call: a
/// stand-in for a model of known latency, to watch autoscaling and batching.
struct Sleep {
    ms: u64,
    replica: usize,
}

impl Executor for Sleep {
    fn handle(
        &self,
        _endpoint: &str,
        mut docs: Vec<Document>,
        parameters: &Parameters,
    ) -> Result<Vec<Document>, ExecutorError> {
        let ms = match parameters.get("ms") {
            None => self.ms,
            Some(v) => v.as_u64().filter(|&ms| ms <= 60_000).ok_or_else(|| {
                ExecutorError::BadInput(format!("parameters.ms must be 0 to 60000, got {v}"))
            })?,
        };
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let batch = docs.len();
        for d in &mut docs {
            d.tags.insert("replica".into(), self.replica.into());
            d.tags.insert("batch".into(), batch.into());
        }
        Ok(docs)
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(f32::MIN_POSITIVE)
}

fn main() -> std::process::ExitCode {
    let mut executors = Executors::new();
    executors
        .register("UpperCase", |_| Ok(Box::new(UpperCase)))
        .register("Tagger", |init| Ok(Box::new(Tagger::new(init.with)?)))
        .register("Ingress", |init| Ok(Box::new(Ingress::new(init)?)))
        .register("Sleep", |init| {
            let ms = init.with.get("ms").and_then(Value::as_u64).unwrap_or(100);
            Ok(Box::new(Sleep {
                ms,
                replica: init.replica,
            }))
        })
        .register("MemoryIndex", |init: &Init| {
            Ok(Box::new(MemoryIndex {
                shard: init.shard,
                stored: Mutex::new(Vec::new()),
            }))
        });
    ferroserve::main_with(executors)
}
