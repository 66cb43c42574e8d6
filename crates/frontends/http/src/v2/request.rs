//! Decoding an inference request body: JSON, or JSON followed by binary tensors (Triton's
//! binary tensor data extension).

use bytes::Bytes;
use ferroserve_core::{Error, InferRequest, NamedTensor, Parameters, Result, Tensor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The JSON part of an inference request.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = InferenceRequest)]
pub(crate) struct Header<'a> {
    /// Echoed in the response.
    #[serde(default)]
    id: Option<String>,
    /// Request parameters (`binary_data_output`, `timeout`, ...).
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Parameters,
    /// The input tensors.
    #[serde(borrow)]
    inputs: Vec<InputHeader<'a>>,
    /// The outputs wanted (default: all), and how each is sent.
    #[serde(default)]
    outputs: Vec<OutputHeader>,
}

/// The request of the OpenAPI description: `Header` for any lifetime.
pub(crate) type InferenceRequest = Header<'static>;

/// One input tensor.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = RequestInput)]
struct InputHeader<'a> {
    /// The model's input name.
    name: String,
    /// Dimensions.
    shape: Vec<i64>,
    /// Element type.
    #[schema(value_type = ferroserve_core::DataType)]
    datatype: String,
    /// `binary_data_size` when the tensor's bytes follow the JSON.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Parameters,
    /// The elements, row-major, flat or nested (absent when sent as binary data).
    #[serde(borrow, default)]
    #[schema(value_type = Option<Vec<serde_json::Value>>)]
    data: Option<&'a RawValue>,
}

/// One output asked for.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = RequestOutput)]
struct OutputHeader {
    /// The model's output name.
    name: String,
    /// `binary_data: true` to get it as binary data.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Parameters,
}

/// A decoded request plus how each output should be sent back.
pub struct Decoded {
    /// The request for the runtime.
    pub request: InferRequest,
    /// For each entry of `request.outputs` (or, when that is empty, the default for all
    /// outputs): whether it goes back as binary data.
    pub binary_outputs: Vec<bool>,
    /// The request-level `binary_data_output` parameter: the default for outputs that do not
    /// say.
    pub binary_default: bool,
}

/// Decodes `body`. `header_len` is the `Inference-Header-Content-Length` header, if present:
/// the JSON is then the first `header_len` bytes and binary tensors follow.
pub fn decode(body: Bytes, header_len: Option<usize>) -> Result<Decoded> {
    let json_len = header_len.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(Error::invalid(format!(
            "Inference-Header-Content-Length is {json_len} but the body has only {} bytes",
            body.len()
        )));
    }
    let json = std::str::from_utf8(&body[..json_len])
        .map_err(|e| Error::invalid(format!("the JSON request header is not UTF-8: {e}")))?;
    let header: Header<'_> = serde_json::from_str(json)
        .map_err(|e| Error::invalid(format!("malformed inference request JSON: {e}")))?;

    let mut binary = body.slice(json_len..);
    let mut inputs = Vec::with_capacity(header.inputs.len());
    for input in header.inputs {
        let tensor = decode_input(&input, &mut binary)
            .map_err(|e| Error::invalid(format!("input '{}': {e}", input.name)))?;
        inputs.push(NamedTensor {
            name: input.name,
            tensor,
        });
    }
    if !binary.is_empty() {
        return Err(Error::invalid(format!(
            "{} bytes of binary data follow the request header but no input's binary_data_size claims them",
            binary.len()
        )));
    }

    let binary_default = flag(&header.parameters, "binary_data_output")?;
    let mut outputs = Vec::with_capacity(header.outputs.len());
    let mut binary_outputs = Vec::with_capacity(header.outputs.len());
    for output in header.outputs {
        let binary = match output.parameters.get("binary_data") {
            None => binary_default,
            Some(_) => flag(&output.parameters, "binary_data")
                .map_err(|e| Error::invalid(format!("output '{}': {e}", output.name)))?,
        };
        binary_outputs.push(binary);
        outputs.push(output.name);
    }
    Ok(Decoded {
        request: InferRequest {
            id: header.id,
            inputs,
            outputs,
            parameters: header.parameters,
            progress: None,
        },
        binary_outputs,
        binary_default,
    })
}

fn decode_input(
    input: &InputHeader<'_>,
    binary: &mut Bytes,
) -> std::result::Result<Tensor, String> {
    let (dtype, shape, count) = ferroserve_core::declared(&input.datatype, &input.shape)?;
    let size = match input.parameters.get("binary_data_size") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    format!("binary_data_size must be a non-negative integer, got {v}")
                })?,
        ),
    };
    let bytes = match (size, input.data) {
        (Some(_), Some(_)) => {
            return Err("has both \"data\" and a binary_data_size; send one or the other".into())
        }
        (None, None) => return Err("has no \"data\" and no binary_data_size".into()),
        (None, Some(raw)) => ferroserve_core::json::decode(raw.get(), dtype, count)?,
        (Some(n), None) => {
            if n > binary.len() {
                return Err(format!(
                    "binary_data_size is {n} but only {} bytes of binary data remain",
                    binary.len()
                ));
            }
            binary.split_to(n)
        }
    };
    Tensor::new(dtype, shape, bytes).map_err(|e| e.to_string())
}

/// Reads a boolean parameter; absent means false.
fn flag(params: &Parameters, key: &str) -> Result<bool> {
    match params.get(key) {
        None => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::invalid(format!(
            "parameter '{key}' must be true or false, got {v}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str, bin: &[u8]) -> (Bytes, Option<usize>) {
        let mut b = json.as_bytes().to_vec();
        b.extend_from_slice(bin);
        (b.into(), Some(json.len()))
    }

    #[test]
    fn binary_inputs_are_sliced_in_order() {
        let json = r#"{"inputs":[
            {"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},
            {"name":"b","shape":[1],"datatype":"UINT8","parameters":{"binary_data_size":1}}],
            "outputs":[{"name":"c","parameters":{"binary_data":true}},{"name":"d"}]}"#;
        let mut bin = 7i32.to_le_bytes().to_vec();
        bin.extend_from_slice(&9i32.to_le_bytes());
        bin.push(200);
        let (b, h) = body(json, &bin);
        let d = decode(b, h).unwrap();
        assert_eq!(d.request.inputs[0].tensor.data().as_ref(), &bin[..8]);
        assert_eq!(d.request.inputs[1].tensor.data().as_ref(), &[200]);
        assert_eq!(d.request.outputs, ["c", "d"]);
        assert_eq!(d.binary_outputs, [true, false]);
    }

    #[test]
    fn bad_requests_are_named() {
        let cases = [
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","parameters":{"binary_data_size":4}}]}"#,
                &[1u8, 2][..],
                "only 2 bytes",
            ),
            (
                r#"{"inputs":[]}"#,
                &[1u8][..],
                "no input's binary_data_size",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[-1],"datatype":"INT32","data":[1]}]}"#,
                &[][..],
                "negative dimension",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FLOAT","data":[1]}]}"#,
                &[][..],
                "unknown datatype 'FLOAT'",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32"}]}"#,
                &[][..],
                "has no \"data\"",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","data":[1]}]}"#,
                &[][..],
                "more elements than can be addressed",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":4}}]}"#,
                &[9u8, 0, 0, 0][..],
                "malformed BYTES",
            ),
            (r#"{"inputs":"#, &[][..], "malformed inference request JSON"),
        ];
        for (json, bin, needle) in cases {
            let (b, h) = body(json, bin);
            let e = decode(b, h).err().unwrap().to_string();
            assert!(e.contains(needle), "{e} should contain {needle}");
        }
    }

    #[test]
    fn header_length_past_body_is_an_error() {
        let e = decode(Bytes::from_static(b"{}"), Some(10))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("Inference-Header-Content-Length is 10"), "{e}");
    }
}
