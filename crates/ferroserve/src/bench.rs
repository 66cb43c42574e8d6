//! `ferroserve bench`: a closed-loop load generator for the Open Inference Protocol over HTTP.
//!
//! Each of `--concurrency` workers keeps one HTTP/1.1 connection and sends the next request as
//! soon as the previous answer is in, so the offered load adapts to the server. The request body
//! is built once and shared; latencies go into one HDR histogram per worker, so memory stays
//! fixed however long the run.

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

use crate::cli::{BenchArgs, Format};
use crate::tensors;

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
    let base = args.url.trim_end_matches('/').to_string();
    let model_path = match &args.model_version {
        Some(v) => format!("/v2/models/{}/versions/{v}", args.model),
        None => format!("/v2/models/{}", args.model),
    };
    let inputs = if args.inputs.is_empty() {
        random_inputs(&base, &model_path, &args)?
    } else {
        args.inputs
            .iter()
            .map(|s| tensors::read_input(s))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let binary = args.format == Format::Binary;
    let (body, header_len) = tensors::request_body(&inputs, &[], binary, binary)?;
    let uri: hyper::Uri = format!("{base}{model_path}/infer")
        .parse()
        .context("--url is not a valid URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be an http:// URL");
    }
    let authority = uri.authority().context("--url has no host")?.to_string();
    let target = Target {
        authority,
        path: uri.path().to_string(),
        body: Bytes::from(body),
        header_len,
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

struct Target {
    authority: String,
    path: String,
    body: Bytes,
    header_len: Option<usize>,
}

/// Makes random inputs from the model's metadata: dynamic dimensions become `--batch` for the
/// first and 1 elsewhere, unless `--shape NAME=d1,d2,...` says otherwise.
fn random_inputs(
    base: &str,
    model_path: &str,
    args: &BenchArgs,
) -> anyhow::Result<Vec<NamedTensor>> {
    let url = format!("{base}{model_path}");
    let response = reqwest::blocking::get(&url).with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let meta: Value = response.json().context("model metadata is not JSON")?;
    if !status.is_success() {
        bail!("{url} answered {status}: {}", meta["error"]);
    }
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
        format: if args.format == Format::Binary {
            "binary"
        } else {
            "json"
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
    let mut sender = None;
    while !stop.load(Ordering::Acquire) {
        if sender.is_none() {
            match connect(&target.authority).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    if measuring.load(Ordering::Acquire) {
                        *report.errors.entry(format!("connect: {e}")).or_insert(0) += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let measured = measuring.load(Ordering::Acquire);
        if measured {
            if let Some(l) = limit {
                if sent.fetch_add(1, Ordering::AcqRel) >= l {
                    break;
                }
            } else {
                sent.fetch_add(1, Ordering::AcqRel);
            }
        }
        let mut req = Request::post(target.path.as_str())
            .header(hyper::header::HOST, target.authority.as_str());
        req = match target.header_len {
            Some(n) => req
                .header("content-type", "application/octet-stream")
                .header("inference-header-content-length", n),
            None => req.header("content-type", "application/json"),
        };
        let Ok(req) = req.body(Full::new(target.body.clone())) else {
            break;
        };
        let t = Instant::now();
        let outcome = match s.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(_) if status.is_success() => Ok(()),
                    Ok(_) => Err(format!("HTTP {}", status.as_u16())),
                    Err(e) => Err(format!("reading the response: {e}")),
                }
            }
            Err(e) => {
                sender = None;
                Err(format!("connection: {e}"))
            }
        };
        if measured {
            let us = (t.elapsed().as_micros() as u64).clamp(1, 100_000_000);
            report.latency_us.saturating_record(us);
            match outcome {
                Ok(()) => report.ok += 1,
                Err(kind) => *report.errors.entry(kind).or_insert(0) += 1,
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
