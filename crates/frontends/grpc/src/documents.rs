//! The documents service of `ferroserve run`: `ferroserve.documents.DocumentService`, with the
//! same Flow, errors and status mapping as HTTP's `POST /post`.

use std::pin::Pin;
use std::sync::Arc;

use ferroserve_flow::{DocError, DocTensor, Document, Flow, Parameters};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::documents_proto as pb;
use crate::service::status;

/// Serves a Flow's documents over gRPC.
pub struct DocumentsService {
    flow: Arc<Flow>,
}

impl DocumentsService {
    /// A service for `flow`.
    pub fn new(flow: Arc<Flow>) -> Self {
        Self { flow }
    }
}

/// Runs one request through `flow`.
async fn call(flow: &Flow, request: pb::DataRequest) -> Result<pb::DataResponse, Status> {
    let parameters: Parameters = if request.parameters_json.trim().is_empty() {
        Parameters::new()
    } else {
        serde_json::from_str(&request.parameters_json).map_err(|e| {
            Status::invalid_argument(format!("parameters_json is not a JSON object: {e}"))
        })?
    };
    let endpoint = if request.exec_endpoint.is_empty() {
        "/default".to_string()
    } else {
        request.exec_endpoint
    };
    if !endpoint.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "exec_endpoint '{endpoint}' must start with '/'"
        )));
    }
    let docs = request
        .data
        .into_iter()
        .map(from_proto)
        .collect::<Result<Vec<_>, _>>()?;
    let out = flow
        .run(&endpoint, docs, &parameters)
        .await
        .map_err(|e| status(e.into_error()))?;
    Ok(pb::DataResponse {
        data: out.into_iter().map(to_proto).collect(),
        exec_endpoint: endpoint,
        parameters_json: serde_json::Value::Object(parameters).to_string(),
    })
}

fn from_proto(d: pb::Document) -> Result<Document, Status> {
    let tags = if d.tags_json.trim().is_empty() {
        Default::default()
    } else {
        serde_json::from_str(&d.tags_json).map_err(|e| {
            Status::invalid_argument(format!(
                "document '{}': tags_json is not a JSON object: {e}",
                d.id
            ))
        })?
    };
    let tensor = match d.tensor {
        None => None,
        Some(t) => {
            let shape: Vec<usize> = t.shape.iter().map(|&n| n as usize).collect();
            let count = shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
            if count != Some(t.data.len()) {
                return Err(Status::invalid_argument(format!(
                    "document '{}': tensor shape {shape:?} does not hold {} values",
                    d.id,
                    t.data.len()
                )));
            }
            Some(DocTensor {
                shape,
                data: t.data,
            })
        }
    };
    let mut doc = Document {
        text: d.text,
        blob: d.blob.map(|b| b.to_vec()),
        tensor,
        embedding: d.embedding.map(|v| v.values),
        tags,
        scores: d.scores.into_iter().collect(),
        chunks: d
            .chunks
            .into_iter()
            .map(from_proto)
            .collect::<Result<_, _>>()?,
        matches: d
            .matches
            .into_iter()
            .map(from_proto)
            .collect::<Result<_, _>>()?,
        uri: d.uri,
        error: d.error.map(|e| DocError {
            executor: e.executor,
            message: e.message,
        }),
        ..Document::new()
    };
    if !d.id.is_empty() {
        doc.id = d.id;
    }
    Ok(doc)
}

fn to_proto(d: Document) -> pb::Document {
    pb::Document {
        id: d.id,
        text: d.text,
        blob: d.blob.map(Into::into),
        tensor: d.tensor.map(|t| pb::Tensor {
            shape: t.shape.iter().map(|&n| n as u64).collect(),
            data: t.data,
        }),
        embedding: d.embedding.map(|values| pb::Vector { values }),
        tags_json: if d.tags.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(d.tags).to_string()
        },
        scores: d.scores.into_iter().collect(),
        chunks: d.chunks.into_iter().map(to_proto).collect(),
        matches: d.matches.into_iter().map(to_proto).collect(),
        uri: d.uri,
        error: d.error.map(|e| pb::DocError {
            executor: e.executor,
            message: e.message,
        }),
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::DataResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::document_service_server::DocumentService for DocumentsService {
    async fn call(
        &self,
        request: Request<pb::DataRequest>,
    ) -> Result<Response<pb::DataResponse>, Status> {
        call(&self.flow, request.into_inner())
            .await
            .map(Response::new)
    }

    type CallStreamStream = ResponseStream;

    async fn call_stream(
        &self,
        request: Request<Streaming<pb::DataRequest>>,
    ) -> Result<Response<Self::CallStreamStream>, Status> {
        let flow = self.flow.clone();
        let mut requests = request.into_inner();
        // One request at a time, in order; the stream's flow control bounds what waits.
        let answers = async_stream_like(move |tx| async move {
            while let Some(next) = requests.next().await {
                let answer = match next {
                    Ok(r) => call(&flow, r).await,
                    Err(e) => Err(e),
                };
                if tx.send(answer).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(answers))
    }
}

/// A response stream fed by `produce` through a small bounded channel.
fn async_stream_like<F, Fut>(produce: F) -> ResponseStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::DataResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
