//! `ferroserve client`: post a file of documents to a Deployment or Flow in requests of
//! `--request-size`, with a progress bar, as Jina's `client.post(inputs, request_size=32,
//! show_progress=True)` does; the answered documents go to stdout or a JSONL file.

use std::io::{BufRead, BufReader, BufWriter, Write};

use anyhow::{bail, Context};
use ferroserve_flow::Document;
use serde_json::{json, Value};

use crate::cli::ClientArgs;

/// Runs the client until the input is exhausted or a request fails.
pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    if args.request_size == 0 {
        bail!("--request-size must be at least 1");
    }
    if !args.endpoint.starts_with('/') {
        bail!("--endpoint must start with '/', got '{}'", args.endpoint);
    }
    let parameters: Value = match &args.parameters {
        None => json!({}),
        Some(text) => {
            let v: Value = serde_json::from_str(text).context("--parameters is not JSON")?;
            if !v.is_object() {
                bail!("--parameters must be a JSON object");
            }
            v
        }
    };
    let (input, total): (Box<dyn BufRead>, Option<u64>) = if args.input.as_os_str() == "-" {
        (Box::new(BufReader::new(std::io::stdin())), None)
    } else {
        let count = BufReader::new(
            std::fs::File::open(&args.input)
                .with_context(|| format!("cannot open {}", args.input.display()))?,
        )
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.trim().is_empty())
        .count() as u64;
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("cannot open {}", args.input.display()))?;
        (Box::new(BufReader::new(file)), Some(count))
    };
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let bar = (!args.quiet).then(|| {
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let template = if total.is_some() {
            "{bar:40} {pos}/{len} documents {per_sec} {elapsed}"
        } else {
            "{spinner} {pos} documents {per_sec} {elapsed}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar
    });
    let http = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs_f64(args.timeout))
        .build()?;
    let url = format!("{}/post", args.url.trim_end_matches('/'));
    let mut failures = 0usize;
    let mut first_failure: Option<String> = None;
    // Sends one request and writes its documents; `lines` names the input lines it carried.
    let mut send = |batch: Vec<Document>, lines: (usize, usize)| -> anyhow::Result<()> {
        let sent = batch.len() as u64;
        let body = json!({"data": batch, "execEndpoint": args.endpoint, "parameters": parameters});
        let response = http
            .post(&url)
            .json(&body)
            .send()
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let answer: Value = response
            .json()
            .with_context(|| format!("{url} answered {status} without JSON"))?;
        if !status.is_success() {
            let msg = answer["error"].as_str().unwrap_or("no message");
            bail!(
                "the request with input lines {}..{} failed: {status}: {msg}",
                lines.0,
                lines.1
            );
        }
        for doc in answer["data"].as_array().into_iter().flatten() {
            if let Some(e) = doc.get("error") {
                failures += 1;
                first_failure.get_or_insert_with(|| {
                    format!(
                        "document '{}': executor '{}': {}",
                        doc["id"].as_str().unwrap_or_default(),
                        e["executor"].as_str().unwrap_or_default(),
                        e["message"].as_str().unwrap_or_default()
                    )
                });
            }
            serde_json::to_writer(&mut out, doc)?;
            out.write_all(b"\n")?;
        }
        if let Some(bar) = &bar {
            bar.inc(sent);
        }
        Ok(())
    };
    let mut batch: Vec<Document> = Vec::with_capacity(args.request_size);
    let mut first = 1;
    for (i, line) in input.lines().enumerate() {
        let line = line.context("cannot read the input")?;
        if line.trim().is_empty() {
            continue;
        }
        if batch.is_empty() {
            first = i + 1;
        }
        batch.push(parse(&line).with_context(|| format!("input line {}", i + 1))?);
        if batch.len() == args.request_size {
            send(std::mem::take(&mut batch), (first, i + 1))?;
        }
    }
    if !batch.is_empty() {
        let last = first + batch.len() - 1;
        send(batch, (first, last))?;
    }
    out.flush()?;
    if failures > 0 {
        bail!(
            "{failures} document(s) failed (each with its error in the output), the first: {}",
            first_failure.unwrap_or_default()
        );
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(())
}

/// A line of input: a document as JSON (`{"text": ...}`), or anything else as a text document.
fn parse(line: &str) -> anyhow::Result<Document> {
    if line.trim_start().starts_with('{') {
        serde_json::from_str(line).context("not a document")
    } else {
        Ok(Document::text(line))
    }
}
