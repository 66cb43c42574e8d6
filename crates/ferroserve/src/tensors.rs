//! Tensors for the client commands: read from `.npy` / `.json` files or made up from a model's
//! metadata, and written into a V2 request body (JSON or binary).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{bail, Context};
use ferroserve_core::json as data;
use ferroserve_core::{DataType, NamedTensor, Tensor};
use npyz::{NpyFile, Order, TypeChar};
use serde_json::{json, Value};

/// Reads `NAME=FILE` (a `.npy` array, or a `.json` V2 tensor without its name).
pub fn read_input(spec: &str) -> anyhow::Result<NamedTensor> {
    let (name, file) = spec
        .split_once('=')
        .with_context(|| format!("--input '{spec}' is not NAME=FILE"))?;
    let path = Path::new(file);
    let tensor = match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => read_npy(path),
        Some("json") => read_json(path),
        _ => bail!("expected a .npy or .json file"),
    }
    .with_context(|| format!("cannot use {file} for input '{name}'"))?;
    Ok(NamedTensor {
        name: name.to_string(),
        tensor,
    })
}

fn read_json(path: &Path) -> anyhow::Result<Tensor> {
    let v: Value = serde_json::from_reader(BufReader::new(File::open(path)?))?;
    let dtype: DataType = v["datatype"]
        .as_str()
        .context("the tensor object has no \"datatype\" string")?
        .parse()?;
    let shape: Vec<usize> = serde_json::from_value(v["shape"].clone())
        .context("the tensor object has no \"shape\" of non-negative integers")?;
    let raw = v.get("data").context("the tensor object has no \"data\"")?;
    let count = ferroserve_core::element_count(&shape)?;
    let bytes = data::decode(&raw.to_string(), dtype, count).map_err(anyhow::Error::msg)?;
    Ok(Tensor::new(dtype, shape, bytes)?)
}

fn read_npy(path: &Path) -> anyhow::Result<Tensor> {
    let npy = NpyFile::new(BufReader::new(File::open(path)?))?;
    if npy.order() == Order::Fortran && npy.shape().len() > 1 {
        bail!("the array is in Fortran order; save it with numpy.ascontiguousarray first");
    }
    let shape = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()?;
    let npyz::DType::Plain(ts) = npy.dtype() else {
        bail!("structured arrays are not tensors");
    };
    let (dtype, bytes) = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Bool, 1) => (
            DataType::Bool,
            npy.into_vec::<bool>()?.into_iter().map(u8::from).collect(),
        ),
        (TypeChar::Uint, 1) => (DataType::Uint8, npy.into_vec::<u8>()?),
        (TypeChar::Uint, 2) => (
            DataType::Uint16,
            le(npy.into_vec::<u16>()?, u16::to_le_bytes),
        ),
        (TypeChar::Uint, 4) => (
            DataType::Uint32,
            le(npy.into_vec::<u32>()?, u32::to_le_bytes),
        ),
        (TypeChar::Uint, 8) => (
            DataType::Uint64,
            le(npy.into_vec::<u64>()?, u64::to_le_bytes),
        ),
        (TypeChar::Int, 1) => (DataType::Int8, le(npy.into_vec::<i8>()?, i8::to_le_bytes)),
        (TypeChar::Int, 2) => (
            DataType::Int16,
            le(npy.into_vec::<i16>()?, i16::to_le_bytes),
        ),
        (TypeChar::Int, 4) => (
            DataType::Int32,
            le(npy.into_vec::<i32>()?, i32::to_le_bytes),
        ),
        (TypeChar::Int, 8) => (
            DataType::Int64,
            le(npy.into_vec::<i64>()?, i64::to_le_bytes),
        ),
        (TypeChar::Float, 2) => (
            DataType::Fp16,
            le(npy.into_vec::<half::f16>()?, half::f16::to_le_bytes),
        ),
        (TypeChar::Float, 4) => (DataType::Fp32, le(npy.into_vec::<f32>()?, f32::to_le_bytes)),
        (TypeChar::Float, 8) => (DataType::Fp64, le(npy.into_vec::<f64>()?, f64::to_le_bytes)),
        _ => bail!("NumPy type {ts} has no Open Inference Protocol datatype; use a .json input"),
    };
    Ok(Tensor::new(dtype, shape, bytes.into())?)
}

fn le<T: Copy, const N: usize>(values: Vec<T>, to_le: fn(T) -> [u8; N]) -> Vec<u8> {
    values.into_iter().flat_map(to_le).collect()
}

/// A tensor of `shape` with random values of `dtype`: floats in [0, 1), integers in [0, 100)
/// (valid token ids for any vocabulary), short strings for BYTES.
pub fn random(
    dtype: DataType,
    shape: Vec<usize>,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<Tensor> {
    let n = ferroserve_core::element_count(&shape)?;
    if dtype == DataType::Bytes {
        let words: Vec<String> = (0..n)
            .map(|_| format!("word{}", rng.u32(0..1000)))
            .collect();
        return Ok(Tensor::from_bytes_elements(shape, words)?);
    }
    let mut out = Vec::with_capacity(n * dtype.size().unwrap_or(1));
    for _ in 0..n {
        let i = rng.u8(0..100);
        match dtype {
            DataType::Bool => out.push(u8::from(rng.bool())),
            DataType::Uint8 | DataType::Int8 => out.push(i),
            DataType::Uint16 | DataType::Int16 => out.extend(u16::from(i).to_le_bytes()),
            DataType::Uint32 | DataType::Int32 => out.extend(u32::from(i).to_le_bytes()),
            DataType::Uint64 | DataType::Int64 => out.extend(u64::from(i).to_le_bytes()),
            DataType::Fp16 => out.extend(half::f16::from_f32(rng.f32()).to_le_bytes()),
            DataType::Bf16 => out.extend(half::bf16::from_f32(rng.f32()).to_le_bytes()),
            DataType::Fp32 => out.extend(rng.f32().to_le_bytes()),
            DataType::Fp64 => out.extend(rng.f64().to_le_bytes()),
            DataType::Bytes => unreachable!("handled above"),
        }
    }
    Ok(Tensor::new(dtype, shape, out.into())?)
}

/// A V2 inference request body for `inputs`, asking for `outputs` (all when empty). With
/// `binary_inputs`, inputs travel as Triton binary data after the JSON header, whose length is
/// then the second value (the `Inference-Header-Content-Length`); `binary_outputs` asks for the
/// outputs the same way.
pub fn request_body(
    inputs: &[NamedTensor],
    outputs: &[String],
    binary_inputs: bool,
    binary_outputs: bool,
) -> anyhow::Result<(Vec<u8>, Option<usize>)> {
    let binary = binary_inputs;
    let mut header = json!({
        "inputs": inputs.iter().map(|i| {
            let mut v = json!({
                "name": i.name,
                "datatype": i.tensor.dtype().as_str(),
                "shape": i.tensor.shape(),
            });
            if binary {
                v["parameters"] = json!({ "binary_data_size": i.tensor.data().len() });
            } else {
                v["data"] = serde_json::to_value(data::Encode(&i.tensor)).unwrap_or(Value::Null);
            }
            v
        }).collect::<Vec<_>>(),
    });
    if !outputs.is_empty() {
        header["outputs"] = outputs.iter().map(|n| json!({ "name": n })).collect();
    }
    if binary_outputs {
        header["parameters"] = json!({ "binary_data_output": true });
    }
    let mut body = serde_json::to_vec(&header)?;
    if !binary {
        return Ok((body, None));
    }
    let len = body.len();
    for i in inputs {
        body.extend_from_slice(i.tensor.data());
    }
    Ok((body, Some(len)))
}
