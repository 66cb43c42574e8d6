//! `ferroserve infer`: a small Open Inference Protocol client for the terminal.

use anyhow::{bail, Context};
use serde_json::Value;

use crate::cli::{InferArgs, Protocol};
use crate::{grpc_client, tensors};

/// Sends the request (inputs as binary tensor data, outputs as JSON, which is what gets
/// printed) and prints the response.
pub fn run(args: InferArgs) -> anyhow::Result<()> {
    let inputs = args
        .inputs
        .iter()
        .map(|s| tensors::read_input(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let url = args.endpoint.url();
    if args.endpoint.protocol == Protocol::Grpc {
        let request = grpc_client::request(
            &args.model,
            args.endpoint.model_version.as_deref(),
            &inputs,
            &args.outputs,
        );
        let answer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let mut client = grpc_client::connect(&url).await?;
                client.model_infer(request).await.map_err(|s| {
                    anyhow::anyhow!("the server answered {:?}: {}", s.code(), s.message())
                })
            })?;
        println!(
            "{}",
            serde_json::to_string_pretty(&grpc_client::response_json(answer.into_inner())?)?
        );
        return Ok(());
    }
    let (body, header_len) = tensors::request_body(&inputs, &args.outputs, true, false)?;
    let json_len = header_len.context("binary body without a header length")?;

    let base = &url;
    let url = match &args.endpoint.model_version {
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
