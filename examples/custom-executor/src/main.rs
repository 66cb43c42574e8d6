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

use ferroserve::{Document, Executor, ExecutorError, Executors, Parameters};
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

fn main() -> std::process::ExitCode {
    let mut executors = Executors::new();
    executors
        .register("UpperCase", |_| Ok(Box::new(UpperCase)))
        .register("Tagger", |with| Ok(Box::new(Tagger::new(with)?)));
    ferroserve::main_with(executors)
}
