//! Encoding an inference response: JSON, with any binary outputs appended after it.

use bytes::{BufMut, Bytes, BytesMut};
use ferroserve_core::{Error, InferResponse, Result, Tensor};
use serde::Serialize;

use ferroserve_core::json::Encode;

/// The JSON part of an inference response.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = InferenceResponse)]
pub(crate) struct Body<'a> {
    /// The model that answered.
    model_name: &'a str,
    /// Its version.
    model_version: &'a str,
    /// The request's `id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    /// The output tensors.
    outputs: Vec<Output<'a>>,
}

/// The response of the OpenAPI description: `Body` for any lifetime.
pub(crate) type InferenceResponse = Body<'static>;

/// One output tensor.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ResponseOutput)]
struct Output<'a> {
    /// The model's output name.
    name: &'a str,
    /// Element type.
    #[schema(value_type = ferroserve_core::DataType)]
    datatype: &'static str,
    /// Dimensions.
    shape: &'a [usize],
    /// `binary_data_size` when its bytes follow the JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    /// The elements, flat, row-major (absent when sent as binary data).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<serde_json::Value>>)]
    data: Option<Encode<'a>>,
}

/// Where an output's bytes are.
#[derive(Serialize, utoipa::ToSchema)]
struct BinarySize {
    /// Bytes of this output after the JSON.
    binary_data_size: usize,
}

/// An encoded response body.
pub struct Encoded {
    /// JSON header followed by binary outputs.
    pub body: Bytes,
    /// Length of the JSON part when binary outputs follow it (the value of the
    /// `Inference-Header-Content-Length` response header); `None` for a plain JSON body.
    pub header_len: Option<usize>,
}

/// Encodes `response`; `binary(i)` says whether output `i` goes back as binary data.
pub fn encode(response: &InferResponse, binary: impl Fn(usize) -> bool) -> Result<Encoded> {
    let mut binaries: Vec<&Tensor> = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let as_binary = binary(i);
            if as_binary {
                binaries.push(&o.tensor);
            }
            Output {
                name: &o.name,
                datatype: o.tensor.dtype().as_str(),
                shape: o.tensor.shape(),
                parameters: as_binary.then(|| BinarySize {
                    binary_data_size: o.tensor.data().len(),
                }),
                data: (!as_binary).then_some(Encode(&o.tensor)),
            }
        })
        .collect();
    let json = serde_json::to_vec(&Body {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: response.id.as_deref(),
        outputs,
    })
    .map_err(|e| Error::invalid(e.to_string()))?;
    if binaries.is_empty() {
        return Ok(Encoded {
            body: json.into(),
            header_len: None,
        });
    }
    let header_len = json.len();
    let total = header_len + binaries.iter().map(|t| t.data().len()).sum::<usize>();
    let mut body = BytesMut::with_capacity(total);
    body.put_slice(&json);
    for t in binaries {
        body.put_slice(t.data());
    }
    Ok(Encoded {
        body: body.freeze(),
        header_len: Some(header_len),
    })
}
