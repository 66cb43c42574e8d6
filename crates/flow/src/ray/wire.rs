//! What a Ray worker's answers say, read: a deployment's description (from the describing
//! worker) and the answers to calls and HTTP requests (see `PROTOCOL.md`).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ferroserve_backend_python::Frame;
use ferroserve_core::{Error, Result};
use serde_json::{Map, Value};

/// An HTTP answer from an ingress deployment.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The headers, in order, as the application set them.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// What a deployment answers one request with.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A method's result, pickled.
    Value(Vec<u8>),
    /// An ingress's HTTP answer.
    Http(HttpReply),
    /// The user's code raised: `Type: message`, and the pickled exception when it pickles.
    Raised {
        /// `Type: message`.
        error: String,
        /// The exception, pickled, for a handle caller to raise again.
        exception: Option<Vec<u8>>,
    },
}

/// What the application's code says about one deployment (the describing worker's answer).
#[derive(Debug, Clone, Default)]
pub struct Described {
    /// Its name.
    pub name: String,
    /// Served as an ASGI application (`@serve.ingress`).
    pub asgi: bool,
    /// A function deployment, or a class with `__call__`.
    pub callable: bool,
    /// Its methods a handle may call.
    pub methods: BTreeSet<String>,
    /// Its `@serve.batch` methods: (max_batch_size, batch_wait_timeout_s).
    pub batch: BTreeMap<String, (usize, f64)>,
    /// The options the code set.
    pub options: Map<String, Value>,
    /// The deployments bound among its arguments.
    pub handles: Vec<String>,
}

impl Described {
    /// Reads one entry of the `deployments` list of the describing worker's `ready`.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let m = v
            .as_object()
            .ok_or_else(|| format!("a deployment described as {v}"))?;
        let name = m
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a deployment without a name")?
            .to_string();
        let strings = |k: &str| -> Vec<String> {
            m.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut batch = BTreeMap::new();
        if let Some(b) = m.get("batch").and_then(Value::as_object) {
            for (method, spec) in b {
                let size = spec
                    .get("max_batch_size")
                    .and_then(Value::as_u64)
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("deployment '{name}': @serve.batch on {method} needs max_batch_size of at least 1"))?;
                let wait = spec
                    .get("batch_wait_timeout_s")
                    .and_then(Value::as_f64)
                    .filter(|w| w.is_finite() && *w >= 0.0 && *w < 3600.0)
                    .ok_or_else(|| format!("deployment '{name}': @serve.batch on {method} needs batch_wait_timeout_s between 0 and 3600"))?;
                batch.insert(method.clone(), (size as usize, wait));
            }
        }
        Ok(Self {
            asgi: m.get("asgi").and_then(Value::as_bool).unwrap_or(false),
            callable: m.get("callable").and_then(Value::as_bool).unwrap_or(false),
            methods: strings("methods").into_iter().collect(),
            batch,
            options: m
                .get("options")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            handles: strings("handles"),
            name,
        })
    }
}

/// The answers of a worker's reply to a batch of `count` requests.
pub(crate) fn read_answer(frame: &Frame, count: usize, name: &str) -> Result<Vec<Answer>> {
    let broken = |what: String| Error::internal(format!("the Python worker sent {what}"));
    match frame.op() {
        "result" => {
            let results = frame
                .header
                .get("results")
                .and_then(Value::as_array)
                .ok_or_else(|| broken("a result without results".into()))?;
            if results.len() != count {
                return Err(broken(format!(
                    "{} results for {count} calls",
                    results.len()
                )));
            }
            results
                .iter()
                .map(|r| frame.bytes_at(r).map(|b| Answer::Value(b.to_vec())))
                .collect::<std::result::Result<_, _>>()
                .map_err(broken)
        }
        "http_response" => {
            let status = frame
                .header
                .get("status")
                .and_then(Value::as_u64)
                .filter(|s| (100..=999).contains(s))
                .ok_or_else(|| broken("an HTTP answer without a status".into()))?;
            let headers = frame
                .header
                .get("headers")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|h| {
                            let pair = h.as_array()?;
                            Some((
                                pair.first()?.as_str()?.to_string(),
                                pair.get(1)?.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let body = Bytes::copy_from_slice(frame.bytes("body").map_err(broken)?);
            Ok(vec![Answer::Http(HttpReply {
                status: status as u16,
                headers,
                body,
            })])
        }
        "error" => {
            let error = frame
                .header
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("an unnamed error")
                .to_string();
            if let Some(tb) = frame.header.get("traceback").and_then(Value::as_str) {
                tracing::warn!(target: "ferroserve::python", "deployment '{name}': the Python code raised:\n{tb}");
            }
            let exception = frame.bytes("exception").ok().map(<[u8]>::to_vec);
            Ok((0..count)
                .map(|_| Answer::Raised {
                    error: error.clone(),
                    exception: exception.clone(),
                })
                .collect())
        }
        other => Err(broken(format!("an answer '{other}'"))),
    }
}
