//! `ferroserve infer`: a small Open Inference Protocol client for the terminal.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{bail, Context};
use ferroserve_core::DataType;
use npyz::{NpyFile, Order, TypeChar};
use serde_json::{json, Value};

use crate::cli::InferArgs;

/// An input ready to send: its JSON header and any binary bytes that follow the JSON.
struct Input {
    header: Value,
    binary: Vec<u8>,
}

/// Sends the request and prints the response JSON.
pub fn run(args: InferArgs) -> anyhow::Result<()> {
    let mut inputs = Vec::with_capacity(args.inputs.len());
    for spec in &args.inputs {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--input '{spec}' is not NAME=FILE"))?;
        let input = read_input(name, Path::new(file))
            .with_context(|| format!("cannot use {file} for input '{name}'"))?;
        inputs.push(input);
    }
    let mut request = json!({
        "inputs": inputs.iter().map(|i| i.header.clone()).collect::<Vec<_>>(),
    });
    if !args.outputs.is_empty() {
        request["outputs"] = args.outputs.iter().map(|n| json!({ "name": n })).collect();
    }
    let header = serde_json::to_vec(&request)?;
    let mut body = header.clone();
    for i in &inputs {
        body.extend_from_slice(&i.binary);
    }

    let base = args.url.trim_end_matches('/');
    let url = match &args.model_version {
        Some(v) => format!("{base}/v2/models/{}/versions/{v}/infer", args.model),
        None => format!("{base}/v2/models/{}/infer", args.model),
    };
    let client = reqwest::blocking::Client::new();
    let mut req = client.post(&url).body(body);
    if inputs.iter().any(|i| !i.binary.is_empty()) {
        req = req
            .header("Inference-Header-Content-Length", header.len())
            .header("Content-Type", "application/octet-stream");
    } else {
        req = req.header("Content-Type", "application/json");
    }
    let response = req.send().with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().context("cannot read the response")?;
    let parsed: Value = serde_json::from_str(&text).with_context(|| {
        format!("the server answered {status} with a body that is not JSON: {text}")
    })?;
    if !status.is_success() {
        let msg = parsed.get("error").and_then(Value::as_str).unwrap_or(&text);
        bail!("the server answered {status}: {msg}");
    }
    println!("{}", serde_json::to_string_pretty(&parsed)?);
    Ok(())
}

fn read_input(name: &str, path: &Path) -> anyhow::Result<Input> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => read_npy(name, path),
        Some("json") => read_json(name, path),
        _ => bail!("expected a .npy or .json file"),
    }
}

/// A `.json` file holds one V2 tensor without its name; it is sent as it is.
fn read_json(name: &str, path: &Path) -> anyhow::Result<Input> {
    let mut tensor: Value = serde_json::from_reader(BufReader::new(File::open(path)?))?;
    let obj = tensor
        .as_object_mut()
        .context("expected an object {\"datatype\", \"shape\", \"data\"}")?;
    for key in ["datatype", "shape", "data"] {
        if !obj.contains_key(key) {
            bail!("the tensor object has no \"{key}\"");
        }
    }
    obj.insert("name".into(), json!(name));
    Ok(Input {
        header: tensor,
        binary: Vec::new(),
    })
}

/// A `.npy` array is sent as binary tensor data, little-endian.
fn read_npy(name: &str, path: &Path) -> anyhow::Result<Input> {
    let npy = NpyFile::new(BufReader::new(File::open(path)?))?;
    if npy.order() == Order::Fortran && npy.shape().len() > 1 {
        bail!("the array is in Fortran order; save it with numpy.ascontiguousarray first");
    }
    let shape = npy.shape().to_vec();
    let npyz::DType::Plain(ts) = npy.dtype() else {
        bail!("structured arrays are not tensors");
    };
    let (dtype, binary) = match (ts.type_char(), ts.size_field()) {
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
    Ok(Input {
        header: json!({
            "name": name,
            "datatype": dtype.as_str(),
            "shape": shape,
            "parameters": { "binary_data_size": binary.len() },
        }),
        binary,
    })
}

fn le<T: Copy, const N: usize>(values: Vec<T>, to_le: fn(T) -> [u8; N]) -> Vec<u8> {
    values.into_iter().flat_map(to_le).collect()
}
