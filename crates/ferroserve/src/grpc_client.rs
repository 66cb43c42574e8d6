//! The client side of the gRPC protocol for `infer` and `bench`.

use anyhow::Context;
use ferroserve_core::json as data;
use ferroserve_core::{DataType, NamedTensor, Tensor};
use ferroserve_grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use ferroserve_grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use ferroserve_grpc::proto::{ModelInferRequest, ModelInferResponse};
use serde_json::{json, Value};
use tonic::transport::Channel;

/// Largest answer the client accepts.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Connects to `url` (`http://host:port`).
pub async fn connect(url: &str) -> anyhow::Result<GrpcInferenceServiceClient<Channel>> {
    let client = GrpcInferenceServiceClient::connect(url.to_string())
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    Ok(client
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// One HTTP/2 connection as a gRPC transport, without tonic's `Channel` (its buffer task and
/// reconnection): `bench` keeps one such connection per worker, as it keeps one HTTP/1.1
/// connection per worker for HTTP, so that both protocols are measured with clients of the
/// same make.
#[derive(Clone)]
pub struct Connection(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Connection {
    type Response = tonic::codegen::http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// Opens one HTTP/2 connection to `url` (`http://host:port`) for a client of its own.
pub async fn connect_one(url: &str) -> anyhow::Result<GrpcInferenceServiceClient<Connection>> {
    let origin: tonic::codegen::http::Uri = url
        .parse()
        .with_context(|| format!("'{url}' is not a URL"))?;
    let authority = origin
        .authority()
        .with_context(|| format!("'{url}' has no host and port"))?
        .to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .with_context(|| format!("HTTP/2 handshake with {url}"))?;
    tokio::spawn(connection);
    Ok(
        GrpcInferenceServiceClient::with_origin(Connection(sender), origin)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    )
}

/// A `ModelInferRequest` with every input as raw bytes.
pub fn request(
    model: &str,
    version: Option<&str>,
    inputs: &[NamedTensor],
    outputs: &[String],
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.unwrap_or_default().to_string(),
        inputs: inputs
            .iter()
            .map(|i| InferInputTensor {
                name: i.name.clone(),
                datatype: i.tensor.dtype().as_str().to_string(),
                shape: i.tensor.shape().iter().map(|&d| d as i64).collect(),
                parameters: Default::default(),
                contents: None,
            })
            .collect(),
        outputs: outputs
            .iter()
            .map(|n| InferRequestedOutputTensor {
                name: n.clone(),
                parameters: Default::default(),
            })
            .collect(),
        raw_input_contents: inputs.iter().map(|i| i.tensor.data().clone()).collect(),
        ..Default::default()
    }
}

/// The answer in the same JSON shape `infer` prints for HTTP.
pub fn response_json(resp: ModelInferResponse) -> anyhow::Result<Value> {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    for (i, o) in resp.outputs.into_iter().enumerate() {
        let raw = resp
            .raw_output_contents
            .get(i)
            .cloned()
            .with_context(|| format!("output '{}' came without raw contents", o.name))?;
        let dtype: DataType = o.datatype.parse()?;
        let shape = o
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()?;
        let tensor = Tensor::new(dtype, shape, raw)?;
        outputs.push(json!({
            "name": o.name,
            "datatype": o.datatype,
            "shape": tensor.shape(),
            "data": serde_json::to_value(data::Encode(&tensor))?,
        }));
    }
    let mut v = json!({
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "outputs": outputs,
    });
    if !resp.id.is_empty() {
        v["id"] = json!(resp.id);
    }
    Ok(v)
}
