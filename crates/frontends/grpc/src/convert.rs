//! Protobuf messages to and from the runtime's types, checked on the way in.

use bytes::{BufMut, Bytes, BytesMut};
use ferroserve_core::{
    DataType, Error, InferRequest, InferResponse, NamedTensor, Parameters, Result, Tensor,
};
use serde_json::Value;

use crate::proto::infer_parameter::ParameterChoice;
use crate::proto::model_infer_request::InferInputTensor;
use crate::proto::model_infer_response::InferOutputTensor;
use crate::proto::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};

/// A decoded request: model, version (`None` for the default) and the runtime request.
pub struct Decoded {
    pub model: String,
    pub version: Option<String>,
    pub request: InferRequest,
}

/// Decodes a `ModelInferRequest`: inputs from `raw_input_contents` (one entry per input, the
/// bytes shared, not copied) or from typed `contents`, never a mix.
pub fn request(req: ModelInferRequest) -> Result<Decoded> {
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(Error::invalid(format!(
            "raw_input_contents has {} entries for {} inputs; send one per input, in input order",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.into_iter().enumerate() {
        let tensor = input_tensor(&input, raw.get(i).cloned())
            .map_err(|e| Error::invalid(format!("input '{}': {e}", input.name)))?;
        inputs.push(NamedTensor {
            name: input.name,
            tensor,
        });
    }
    Ok(Decoded {
        model: req.model_name,
        version: Some(req.model_version).filter(|v| !v.is_empty()),
        request: InferRequest {
            id: Some(req.id).filter(|id| !id.is_empty()),
            inputs,
            outputs: req.outputs.into_iter().map(|o| o.name).collect(),
            parameters: parameters(req.parameters),
            progress: None,
        },
    })
}

fn input_tensor(
    input: &InferInputTensor,
    raw: Option<Bytes>,
) -> std::result::Result<Tensor, String> {
    let (dtype, shape, count) = ferroserve_core::declared(&input.datatype, &input.shape)?;
    let data = match (raw, &input.contents) {
        (Some(_), Some(_)) => return Err(
            "has typed contents while the request uses raw_input_contents; use one or the other"
                .into(),
        ),
        (Some(raw), None) => raw,
        (None, Some(c)) => typed(dtype, c, count)?,
        (None, None) => {
            return Err("has no contents and the request has no raw_input_contents".into())
        }
    };
    Tensor::new(dtype, shape, data).map_err(|e| e.to_string())
}

/// Packs typed contents into tensor bytes, checking the count before allocating.
fn typed(
    dtype: DataType,
    c: &InferTensorContents,
    count: usize,
) -> std::result::Result<Bytes, String> {
    let check = |len: usize, field: &str| {
        if len == count {
            Ok(())
        } else {
            Err(format!(
                "the shape needs {count} elements but {field} holds {len}"
            ))
        }
    };
    // Sized from the elements that arrived, never from the declared shape alone: a request of a
    // few bytes may declare a shape of terabytes.
    let mut out = BytesMut::new();
    macro_rules! narrow {
        ($field:ident, $t:ty) => {{
            check(c.$field.len(), stringify!($field))?;
            out.reserve(c.$field.len() * std::mem::size_of::<$t>());
            for (i, &v) in c.$field.iter().enumerate() {
                let v = <$t>::try_from(v)
                    .map_err(|_| format!("element {i} is {v}, out of range for {dtype}"))?;
                out.put_slice(&v.to_le_bytes());
            }
        }};
    }
    match dtype {
        DataType::Bool => {
            check(c.bool_contents.len(), "bool_contents")?;
            out.reserve(c.bool_contents.len());
            out.extend(c.bool_contents.iter().map(|&b| u8::from(b)));
        }
        DataType::Int8 => narrow!(int_contents, i8),
        DataType::Int16 => narrow!(int_contents, i16),
        DataType::Int32 => narrow!(int_contents, i32),
        DataType::Int64 => narrow!(int64_contents, i64),
        DataType::Uint8 => narrow!(uint_contents, u8),
        DataType::Uint16 => narrow!(uint_contents, u16),
        DataType::Uint32 => narrow!(uint_contents, u32),
        DataType::Uint64 => narrow!(uint64_contents, u64),
        DataType::Fp32 => narrow!(fp32_contents, f32),
        DataType::Fp64 => narrow!(fp64_contents, f64),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(format!(
                "{dtype} has no typed contents field; send it in raw_input_contents"
            ))
        }
        DataType::Bytes => {
            check(c.bytes_contents.len(), "bytes_contents")?;
            out.reserve(c.bytes_contents.iter().map(|b| 4 + b.len()).sum());
            for b in &c.bytes_contents {
                let len = u32::try_from(b.len())
                    .map_err(|_| "a BYTES element is over 4 GiB".to_string())?;
                out.put_u32_le(len);
                out.put_slice(b);
            }
        }
    }
    Ok(out.freeze())
}

/// Protobuf parameters as the runtime's JSON parameters.
fn parameters(map: std::collections::HashMap<String, InferParameter>) -> Parameters {
    map.into_iter()
        .filter_map(|(k, p)| {
            let v = match p.parameter_choice? {
                ParameterChoice::BoolParam(b) => Value::from(b),
                ParameterChoice::Int64Param(i) => Value::from(i),
                ParameterChoice::StringParam(s) => Value::from(s),
                ParameterChoice::DoubleParam(d) => Value::from(d),
                ParameterChoice::Uint64Param(u) => Value::from(u),
            };
            Some((k, v))
        })
        .collect()
}

/// Encodes a response with every output in `raw_output_contents` (what Triton's clients read
/// fastest); the tensors' bytes are shared, not copied.
pub fn response(resp: InferResponse) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut raw = Vec::with_capacity(resp.outputs.len());
    for o in resp.outputs {
        outputs.push(InferOutputTensor {
            datatype: o.tensor.dtype().as_str().to_string(),
            shape: o.tensor.shape().iter().map(|&d| d as i64).collect(),
            name: o.name,
            parameters: Default::default(),
            contents: None,
        });
        raw.push(o.tensor.data().clone());
    }
    ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version,
        id: resp.id.unwrap_or_default(),
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::model_infer_request::InferRequestedOutputTensor;

    fn input(
        name: &str,
        datatype: &str,
        shape: Vec<i64>,
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn typed_and_raw_contents_decode_alike() {
        let typed = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input(
                "x",
                "INT16",
                vec![2],
                Some(InferTensorContents {
                    int_contents: vec![-3, 7],
                    ..Default::default()
                }),
            )],
            outputs: vec![InferRequestedOutputTensor {
                name: "y".into(),
                parameters: Default::default(),
            }],
            ..Default::default()
        };
        let mut raw_bytes = (-3i16).to_le_bytes().to_vec();
        raw_bytes.extend(7i16.to_le_bytes());
        let raw = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input("x", "INT16", vec![2], None)],
            raw_input_contents: vec![raw_bytes.into()],
            ..Default::default()
        };
        let a = request(typed).unwrap();
        let b = request(raw).unwrap();
        assert_eq!(a.request.inputs, b.request.inputs);
        assert_eq!(a.request.outputs, ["y"]);
        assert_eq!(a.version, None);
    }

    #[test]
    fn bad_contents_are_named() {
        let e = |i: InferInputTensor, raw: Vec<Bytes>| {
            request(ModelInferRequest {
                inputs: vec![i],
                raw_input_contents: raw,
                ..Default::default()
            })
            .err()
            .unwrap()
            .to_string()
        };
        let c = |v: Vec<i32>| {
            Some(InferTensorContents {
                int_contents: v,
                ..Default::default()
            })
        };
        assert!(
            e(input("x", "INT8", vec![1], c(vec![300])), vec![]).contains("out of range for INT8")
        );
        assert!(e(input("x", "INT32", vec![3], c(vec![1])), vec![])
            .contains("needs 3 elements but int_contents holds 1"));
        assert!(e(input("x", "FP16", vec![1], c(vec![1])), vec![]).contains("raw_input_contents"));
        assert!(e(input("x", "INT32", vec![-1], c(vec![1])), vec![]).contains("negative dimension"));
        assert!(e(input("x", "INT32", vec![1], None), vec![]).contains("has no contents"));
        assert!(e(
            input("x", "INT32", vec![1], c(vec![1])),
            vec![Bytes::from_static(&[0; 4])]
        )
        .contains("one or the other"));
        assert!(e(
            input("x", "INT32", vec![2], None),
            vec![Bytes::from_static(&[0; 4])]
        )
        .contains("needs 8 bytes"));
    }
}
