//! `ferroserve infer`: a small Open Inference Protocol client for the terminal.

use anyhow::{bail, Context};
use serde_json::Value;

use crate::cli::InferArgs;
use crate::tensors;

/// Sends the request (inputs as binary tensor data, outputs as JSON, which is what gets
/// printed) and prints the response.
pub fn run(args: InferArgs) -> anyhow::Result<()> {
    let inputs = args
        .inputs
        .iter()
        .map(|s| tensors::read_input(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (body, header_len) = tensors::request_body(&inputs, &args.outputs, true, false)?;
    let json_len = header_len.context("binary body without a header length")?;

    let base = args.url.trim_end_matches('/');
    let url = match &args.model_version {
        Some(v) => format!("{base}/v2/models/{}/versions/{v}/infer", args.model),
        None => format!("{base}/v2/models/{}/infer", args.model),
    };
    let response = reqwest::blocking::Client::new()
        .post(&url)
        .header("Inference-Header-Content-Length", json_len)
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .with_context(|| format!("cannot reach {url}"))?;
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
