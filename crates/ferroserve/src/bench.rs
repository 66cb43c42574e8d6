//! `ferroserve bench`: a closed-loop load generator for the Open Inference Protocol over HTTP
//! and gRPC.
//!
//! Each of `--concurrency` workers keeps one connection (HTTP/1.1, or HTTP/2 for gRPC, without
//! tonic's `Channel`, so that both protocols get clients of the same make) and sends the next
//! request as soon as the previous answer is in, so the offered load adapts to the server. The
//! request body is built once and shared; latencies go into one HDR histogram per worker, so
//! memory stays fixed however long the run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use ferroserve_core::{DataType, NamedTensor};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;

use crate::cli::{BenchArgs, Format, Protocol};
use crate::{grpc_client, tensors};

/// What one worker saw.
struct WorkerReport {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

/// The summary printed at the end (and with `--json`, printed as JSON).
#[derive(Serialize)]
struct Summary {
    model: String,
    concurrency: usize,
    format: &'static str,
    requests: u64,
    succeeded: u64,
    duration_s: f64,
    throughput_rps: f64,
    latency_ms: Latency,
    errors: BTreeMap<String, u64>,
    /// CPU cores the load generator itself used on average (user + system time / wall time).
    client_cpu_cores: f64,
}

#[derive(Serialize)]
struct Latency {
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// Runs the benchmark and prints the summary.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let base = args.endpoint.url();
    let model_path = match &args.endpoint.model_version {
        Some(v) => format!("/v2/models/{}/versions/{v}", args.model),
        None => format!("/v2/models/{}", args.model),
    };
    let inputs = if args.inputs.is_empty() {
        let meta = match args.endpoint.protocol {
            Protocol::Http => http_metadata(&base, &model_path)?,
            Protocol::Grpc => grpc_metadata(&base, &args)?,
        };
        random_inputs(&meta, &args)?
    } else {
        args.inputs
            .iter()
            .map(|s| tensors::read_input(s))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let target = match args.endpoint.protocol {
        Protocol::Grpc => Target::Grpc {
            url: base.clone(),
            request: grpc_client::request(
                &args.model,
                args.endpoint.model_version.as_deref(),
                &inputs,
                &[],
            ),
        },
        Protocol::Http => {
            let binary = args.format == Format::Binary;
            let (body, header_len) = tensors::request_body(&inputs, &[], binary, binary)?;
            let uri: hyper::Uri = format!("{base}{model_path}/infer")
                .parse()
                .context("--url is not a valid URL")?;
            if uri.scheme_str() != Some("http") {
                bail!("--url must be an http:// URL");
            }
            let authority = uri.authority().context("--url has no host")?.to_string();
            Target::Http {
                authority,
                path: uri.path().to_string(),
                body: Bytes::from(body),
                header_len,
            }
        }
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let summary = runtime.block_on(drive(Arc::new(target), &args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// Where requests go and what they carry, built once.
enum Target {
    Http {
        authority: String,
        path: String,
        body: Bytes,
        header_len: Option<usize>,
    },
    Grpc {
        url: String,
        request: ferroserve_grpc::proto::ModelInferRequest,
    },
}

/// One worker's connection.
enum Connection {
    Http(Sender),
    Grpc(
        ferroserve_grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient<
            grpc_client::Connection,
        >,
    ),
}

impl Target {
    async fn connect(&self) -> anyhow::Result<Connection> {
        Ok(match self {
            Target::Http { authority, .. } => Connection::Http(connect(authority).await?),
            Target::Grpc { url, .. } => Connection::Grpc(grpc_client::connect_one(url).await?),
        })
    }

    /// Sends one request; `Err` names the kind of failure, and whether the connection is gone.
    async fn send(&self, conn: &mut Connection) -> Result<(), (String, bool)> {
        match (self, conn) {
            (
                Target::Http {
                    authority,
                    path,
                    body,
                    header_len,
                },
                Connection::Http(s),
            ) => {
                let req =
                    Request::post(path.as_str()).header(hyper::header::HOST, authority.as_str());
                let req = match header_len {
                    Some(n) => req
                        .header("content-type", "application/octet-stream")
                        .header("inference-header-content-length", *n),
                    None => req.header("content-type", "application/json"),
                };
                let req = req
                    .body(Full::new(body.clone()))
                    .map_err(|e| (format!("building the request: {e}"), false))?;
                let resp = s
                    .send_request(req)
                    .await
                    .map_err(|e| (format!("connection: {e}"), true))?;
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(_) if status.is_success() => Ok(()),
                    Ok(_) => Err((format!("HTTP {}", status.as_u16()), false)),
                    Err(e) => Err((format!("reading the response: {e}"), true)),
                }
            }
            (Target::Grpc { request, .. }, Connection::Grpc(c)) => c
                .model_infer(request.clone())
                .await
                .map(|_| ())
                .map_err(|s| {
                    // A failure of the connection itself (not an answer) comes with hyper's
                    // error as its source: the worker connects again.
                    let gone = std::error::Error::source(&s)
                        .is_some_and(|e| e.downcast_ref::<hyper::Error>().is_some());
                    (format!("gRPC {:?}", s.code()), gone)
                }),
            _ => Err(("connection of the wrong protocol".into(), true)),
        }
    }

    fn address(&self) -> &str {
        match self {
            Target::Http { authority, .. } => authority,
            Target::Grpc { url, .. } => url,
        }
    }
}

/// The model's metadata over HTTP.
fn http_metadata(base: &str, model_path: &str) -> anyhow::Result<Value> {
    let url = format!("{base}{model_path}");
    let response = reqwest::blocking::get(&url).with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let meta: Value = response.json().context("model metadata is not JSON")?;
    if !status.is_success() {
        bail!("{url} answered {status}: {}", meta["error"]);
    }
    Ok(meta)
}

/// The model's metadata over gRPC, in the HTTP answer's JSON shape.
fn grpc_metadata(url: &str, args: &BenchArgs) -> anyhow::Result<Value> {
    let request = ferroserve_grpc::proto::ModelMetadataRequest {
        name: args.model.clone(),
        version: args.endpoint.model_version.clone().unwrap_or_default(),
    };
    let meta = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut client = grpc_client::connect(url).await?;
            client
                .model_metadata(request)
                .await
                .map_err(|s| anyhow::anyhow!("{url} answered {:?}: {}", s.code(), s.message()))
        })?
        .into_inner();
    let inputs: Vec<Value> = meta
        .inputs
        .into_iter()
        .map(|t| serde_json::json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
        .collect();
    Ok(serde_json::json!({ "inputs": inputs }))
}

/// Makes random inputs from the model's metadata: dynamic dimensions become `--batch` for the
/// first and 1 elsewhere, unless `--shape NAME=d1,d2,...` says otherwise.
fn random_inputs(meta: &Value, args: &BenchArgs) -> anyhow::Result<Vec<NamedTensor>> {
    let mut shapes = BTreeMap::new();
    for s in &args.shapes {
        let (name, dims) = s
            .split_once('=')
            .with_context(|| format!("--shape '{s}' is not NAME=d1,d2,..."))?;
        let dims = dims
            .split(',')
            .map(|d| d.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--shape '{s}' has a dimension that is not a number"))?;
        shapes.insert(name.to_string(), dims);
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let specs = meta["inputs"]
        .as_array()
        .context("model metadata has no inputs")?;
    specs
        .iter()
        .map(|spec| {
            let name = spec["name"]
                .as_str()
                .context("input without a name")?
                .to_string();
            let dtype: DataType = spec["datatype"].as_str().unwrap_or("").parse()?;
            let shape = match shapes.remove(&name) {
                Some(s) => s,
                None => spec["shape"]
                    .as_array()
                    .context("input without a shape")?
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match d.as_i64() {
                        Some(d) if d >= 0 => d as usize,
                        _ if i == 0 => args.batch,
                        _ => 1,
                    })
                    .collect(),
            };
            Ok(NamedTensor {
                name,
                tensor: tensors::random(dtype, shape, &mut rng)?,
            })
        })
        .collect()
}

async fn drive(target: Arc<Target>, args: &BenchArgs) -> anyhow::Result<Summary> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let limit = args.requests;
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            tokio::spawn(worker(
                target.clone(),
                measuring.clone(),
                stop.clone(),
                sent.clone(),
                limit,
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs_f64(args.warmup.max(0.0))).await;
    let cpu_start = cpu_seconds();
    let started = Instant::now();
    measuring.store(true, Ordering::Release);

    let duration = match (args.duration, args.requests) {
        (Some(d), _) => Some(Duration::from_secs_f64(d.max(0.0))),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let bar = progress_bar(duration, limit, args.json);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = sent.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        match (&bar, duration) {
            (Some(b), Some(_)) => b.set_position(elapsed.as_millis() as u64),
            (Some(b), None) => b.set_position(n),
            _ => {}
        }
        if let Some(b) = &bar {
            b.set_message(format!(
                "{n} requests, {:.0} req/s",
                n as f64 / elapsed.as_secs_f64()
            ));
        }
        let done = match (duration, limit) {
            (Some(d), _) => elapsed >= d,
            (None, Some(l)) => n >= l,
            (None, None) => true,
        };
        if done || workers.iter().all(|w| w.is_finished()) {
            break;
        }
    }
    stop.store(true, Ordering::Release);
    let mut reports = Vec::with_capacity(workers.len());
    for w in workers {
        reports.push(w.await.context("a benchmark worker failed")?);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    if let Some(b) = bar {
        b.finish_and_clear();
    }

    let mut latency = Histogram::<u64>::new(3)?;
    let mut errors = BTreeMap::new();
    let mut ok = 0;
    for r in reports {
        latency.add(&r.latency_us)?;
        ok += r.ok;
        for (k, v) in r.errors {
            *errors.entry(k).or_insert(0) += v;
        }
    }
    let requests = latency.len();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Summary {
        model: args.model.clone(),
        concurrency: args.concurrency,
        format: match (args.endpoint.protocol, args.format) {
            (Protocol::Grpc, _) => "gRPC raw",
            (Protocol::Http, Format::Binary) => "binary",
            (Protocol::Http, Format::Json) => "json",
        },
        requests,
        succeeded: ok,
        duration_s: wall,
        throughput_rps: requests as f64 / wall,
        latency_ms: Latency {
            mean: latency.mean() / 1000.0,
            p50: ms(latency.value_at_quantile(0.50)),
            p90: ms(latency.value_at_quantile(0.90)),
            p99: ms(latency.value_at_quantile(0.99)),
            max: ms(latency.max()),
        },
        errors,
        client_cpu_cores: cpu / wall,
    })
}

fn progress_bar(
    duration: Option<Duration>,
    limit: Option<u64>,
    quiet: bool,
) -> Option<indicatif::ProgressBar> {
    if quiet {
        return None;
    }
    let (len, template) = match (duration, limit) {
        (Some(d), _) => (d.as_millis() as u64, "{bar:40} {elapsed}/{duration} {msg}"),
        (None, Some(l)) => (l, "{bar:40} {pos}/{len} {msg}"),
        (None, None) => return None,
    };
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    Some(bar)
}

async fn worker(
    target: Arc<Target>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    limit: Option<u64>,
) -> WorkerReport {
    let mut report = WorkerReport {
        // 1 µs to 100 s, 3 significant digits: creation cannot fail with these bounds.
        latency_us: Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds"),
        ok: 0,
        errors: BTreeMap::new(),
    };
    let mut conn = None;
    while !stop.load(Ordering::Acquire) {
        if conn.is_none() {
            match target.connect().await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    if measuring.load(Ordering::Acquire) {
                        let kind = format!("connect to {}: {e}", target.address());
                        *report.errors.entry(kind).or_insert(0) += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let measured = measuring.load(Ordering::Acquire);
        if measured {
            let n = sent.fetch_add(1, Ordering::AcqRel);
            if limit.is_some_and(|l| n >= l) {
                break;
            }
        }
        let t = Instant::now();
        let outcome = target.send(c).await;
        if let Err((_, true)) = &outcome {
            conn = None;
        }
        if measured {
            let us = (t.elapsed().as_micros() as u64).clamp(1, 100_000_000);
            report.latency_us.saturating_record(us);
            match outcome {
                Ok(()) => report.ok += 1,
                Err((kind, _)) => *report.errors.entry(kind).or_insert(0) += 1,
            }
        }
    }
    report
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(authority: &str) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// User + system CPU seconds this process has used.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer it is given.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0.0;
        }
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn print_summary(s: &Summary) {
    println!(
        "{} ({} tensors), concurrency {}: {} requests in {:.2} s",
        s.model, s.format, s.concurrency, s.requests, s.duration_s
    );
    println!("throughput  {:.1} req/s", s.throughput_rps);
    println!(
        "latency ms  mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        s.latency_ms.mean, s.latency_ms.p50, s.latency_ms.p90, s.latency_ms.p99, s.latency_ms.max
    );
    if s.errors.is_empty() {
        println!("errors      none");
    } else {
        for (kind, n) in &s.errors {
            println!("errors      {n} x {kind}");
        }
    }
    println!("client CPU  {:.2} cores", s.client_cpu_cores);
}
