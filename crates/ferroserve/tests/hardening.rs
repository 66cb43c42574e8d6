//! A hostile client's requests against a real server: what a request may cost (text length,
//! element counts, pixels), how long a connection may hold a slot, how quietly overload is
//! logged, and what a configuration file may ask for. Each case was found against an earlier
//! build, where it cost gigabytes, minutes or a slot for ever; memory is read from the
//! server's own `/proc/<pid>/status`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{as_f32, binary_body, client, cosine, fixture, model_dir, multipart, Repo, Server};
use serde_json::{json, Value};

/// A field of `/proc/<pid>/status`, in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the process's peak resident size to its current one (Linux's clear_refs), so VmHWM
/// afterwards is the peak of what follows.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// How far above its resident size at the reset the server peaked, in MiB.
fn peak_growth_mib(pid: u32, rss_at_reset_kib: u64) -> u64 {
    status_kib(pid, "VmHWM").saturating_sub(rss_at_reset_kib) / 1024
}

fn embed(server: &Server, texts: &[&str]) -> (u16, Value) {
    server.post_json(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": texts}),
    )
}

#[test]
fn a_huge_text_is_tokenised_only_as_far_as_the_model_keeps() {
    let server = Server::start(Repo::with(&["minilm"]), &[]);
    // MiniLM keeps 256 tokens: 400 words and 10 million words give the same input.
    let short = "a ".repeat(400);
    let huge = "a ".repeat(10_000_000);
    let (status, reference) = embed(&server, &[&short]);
    assert_eq!(status, 200, "{reference}");
    let pid = server.pid();
    let rss = status_kib(pid, "VmRSS");
    reset_peak(pid);
    let (status, answer) = embed(&server, &[&huge]);
    assert_eq!(status, 200, "{answer}");
    let growth = peak_growth_mib(pid, rss);
    // Tokenised whole, this text peaked at 4.7 GB; the body itself is 20 MB.
    assert!(
        growth < 400,
        "the server grew {growth} MiB for one 20 MB text"
    );
    let a = as_f32(&reference["data"][0]["embedding"]);
    let b = as_f32(&answer["data"][0]["embedding"]);
    assert!(cosine(&a, &b) > 0.9999, "cosine {}", cosine(&a, &b));
    assert_eq!(answer["usage"]["prompt_tokens"], 256, "{}", answer["usage"]);
    // A normal request beside it is answered.
    assert_eq!(embed(&server, &["a normal sentence"]).0, 200);
}

#[test]
fn element_counts_are_bounded_before_any_work() {
    let server = Server::start(Repo::with(&["string_identity", "identity"]), &[]);
    let pid = server.pid();
    // 2 million zero-length strings are 8 MB of binary data, but 2 million strings to the model.
    let n = 2_000_000usize;
    let header = json!({"inputs": [{"name": "TEXT", "shape": [n, 1], "datatype": "BYTES",
        "parameters": {"binary_data_size": n * 4}}]});
    let zeros = vec![0u8; n * 4];
    let (body, len) = binary_body(&header, &[&zeros]);
    let rss = status_kib(pid, "VmRSS");
    reset_peak(pid);
    let (status, e) = server.post_raw("/v2/models/string_identity/infer", body, Some(len));
    assert_eq!(status, 413, "{e}");
    let message = e["error"].as_str().unwrap();
    assert!(
        message.contains("2000000 BYTES elements") && message.contains("--max-bytes-elements"),
        "{message}"
    );
    let growth = peak_growth_mib(pid, rss);
    assert!(
        growth < 150,
        "the server grew {growth} MiB for an 8 MB request"
    );
    // The same in JSON: 2 million empty strings.
    let data = vec![""; n];
    let (status, e) = server.post_json(
        "/v2/models/string_identity/infer",
        &json!({"inputs": [{"name": "TEXT", "shape": [n, 1], "datatype": "BYTES", "data": data}]}),
    );
    assert_eq!(status, 413, "{e}");
    // Within the bound, strings are served as before.
    let (status, ok) = server.post_json(
        "/v2/models/string_identity/infer",
        &json!({"inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": ["x", ""]}]}),
    );
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["outputs"][0]["data"], json!(["x", ""]));
    // A finite number a float type cannot hold is refused, not turned into infinity.
    let (status, e) = server.post_json(
        "/v2/models/identity/infer",
        &json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
            "data": [[1e39, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}]}),
    );
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("out of range for FP32"),
        "{e}"
    );
}

#[test]
fn configured_element_limits_apply() {
    let server = Server::start(
        Repo::with(&["string_identity", "identity"]),
        &["--max-bytes-elements", "3", "--max-request-elements", "20"],
    );
    let strings = |n: usize| json!({"inputs": [{"name": "TEXT", "shape": [n, 1], "datatype": "BYTES", "data": vec!["s"; n]}]});
    assert_eq!(
        server
            .post_json("/v2/models/string_identity/infer", &strings(3))
            .0,
        200
    );
    assert_eq!(
        server
            .post_json("/v2/models/string_identity/infer", &strings(4))
            .0,
        413
    );
    let floats = |rows: usize| json!({"inputs": [{"name": "INPUT0", "shape": [rows, 16], "datatype": "FP32", "data": vec![0.5; rows * 16]}]});
    assert_eq!(
        server.post_json("/v2/models/identity/infer", &floats(1)).0,
        200
    );
    let (status, e) = server.post_json("/v2/models/identity/infer", &floats(2));
    assert_eq!(status, 413, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("32 tensor elements"),
        "{e}"
    );
}

/// Reads from `stream` until the server closes it or `limit` passes; returns how long it took,
/// or `None` if it stayed open.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        stream
            .set_read_timeout(Some(
                limit
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(10)),
            ))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed())
            }
            Err(_) => return None,
        }
    }
    None
}

/// Reads one HTTP/1.1 answer's head and the start of its body from `stream`.
fn read_answer(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = vec![0u8; 8192];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

#[test]
fn connections_are_bounded_in_time() {
    let server = Server::start(
        Repo::with(&["simple"]),
        &[
            "--header-read-timeout",
            "1",
            "--idle-timeout",
            "2",
            "--body-read-timeout",
            "1",
            "--min-body-rate",
            "100",
        ],
    );
    let http = host_port(&server.url);
    let limit = Duration::from_secs(15);

    // Headers that never end.
    let mut partial = TcpStream::connect(&http).unwrap();
    partial
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let took = closed_within(&mut partial, limit).expect("partial headers were kept open");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");

    // An idle keep-alive connection.
    let mut idle = TcpStream::connect(&http).unwrap();
    idle.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_answer(&mut idle, limit).starts_with("HTTP/1.1 200"));
    closed_within(&mut idle, limit).expect("an idle keep-alive connection was kept open");

    // A body that stops coming.
    let mut stalled = TcpStream::connect(&http).unwrap();
    stalled
        .write_all(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"inp")
        .unwrap();
    let answer = read_answer(&mut stalled, limit);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("stalled"),
        "{answer}"
    );

    // A body trickling at 2 bytes/s against a minimum of 100 bytes/s.
    let mut trickle = TcpStream::connect(&http).unwrap();
    trickle
        .write_all(
            b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        )
        .unwrap();
    let mut writer = trickle.try_clone().unwrap();
    let dripping = thread::spawn(move || {
        for _ in 0..30 {
            if writer.write_all(b" ").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(500));
        }
    });
    let answer = read_answer(&mut trickle, limit);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("too slowly"),
        "{answer}"
    );
    drop(trickle);
    dripping.join().unwrap();

    // gRPC (HTTP/2): a connection that opens no stream is closed after the idle time and the
    // grace for the peer to close it (5 s).
    let mut h2 = TcpStream::connect(host_port(&server.grpc_url())).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    closed_within(&mut h2, limit).expect("an idle HTTP/2 connection was kept open");

    // Honest clients are served throughout.
    let (status, _) = server.post_json(
        "/v2/models/simple/infer",
        &json!({"inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]}]}),
    );
    assert_eq!(status, 200);
}

/// Opens `n` keep-alive connections that each got an answer, so each holds a slot.
fn served_connections(http: &str, n: usize) -> Option<Vec<TcpStream>> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut c = TcpStream::connect(http).unwrap();
        let _ = c.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n");
        if !read_answer(&mut c, Duration::from_secs(5)).starts_with("HTTP/1.1 200") {
            return None;
        }
        held.push(c);
    }
    Some(held)
}

#[test]
fn connections_over_the_cap_are_closed_at_once() {
    let server = Server::start(Repo::with(&["simple"]), &["--max-connections", "4"]);
    let http = host_port(&server.url);
    // The harness's own connections close a moment after readiness; until they have, one of
    // ours may be the one refused.
    let mut held = None;
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(250));
        held = served_connections(&http, 4);
        if held.is_some() {
            break;
        }
    }
    let held = held.expect("four connections served");
    let mut extra = TcpStream::connect(&http).unwrap();
    let _ = extra.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = read_answer(&mut extra, Duration::from_secs(5));
    assert!(answer.is_empty(), "a fifth connection was served: {answer}");
    // A slot freed is a slot to use.
    drop(held);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(server.get("/v2/health/live").0, 200);
}

/// A PNG of `side`×`side` black 8-bit grey pixels: a few kilobytes that decode to `side`² pixels.
fn black_png(side: u32) -> Vec<u8> {
    let img = image::GrayImage::new(side, side);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A WebP file's first chunk declaring a `side`×`side` canvas (VP8X), as a hostile client sends.
fn webp_declaring(side: u32) -> Vec<u8> {
    let mut chunk = b"VP8X".to_vec();
    chunk.extend(10u32.to_le_bytes());
    chunk.extend([0u8; 4]);
    chunk.extend(&(side - 1).to_le_bytes()[..3]);
    chunk.extend(&(side - 1).to_le_bytes()[..3]);
    let mut out = b"RIFF".to_vec();
    out.extend(((chunk.len() + 4) as u32).to_le_bytes());
    out.extend(b"WEBP");
    out.extend(chunk);
    out
}

#[test]
fn pixels_are_bounded_per_request_before_decoding() {
    let server = Server::start(Repo::with(&["efficientnet-lite0"]), &[]);
    let big = black_png(6000);
    assert!(big.len() < 200_000, "{} bytes", big.len());
    let parts: Vec<(&str, &str, &[u8])> = (0..3).map(|_| ("data", "big.png", &big[..])).collect();
    let (ct, body) = multipart(&parts);
    let started = Instant::now();
    let (status, e) = server.send("POST", "/predictions/efficientnet-lite0", Some(&ct), body);
    assert_eq!(status, 413, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("image.max_request_pixels"),
        "{e}"
    );
    // Refused from the headers, not after decoding 108 million pixels.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (status, e) = server.send(
        "PUT",
        "/predictions/efficientnet-lite0",
        None,
        webp_declaring(16384),
    );
    assert_eq!(status, 413, "{e}");
    assert!(e["error"].as_str().unwrap().contains("16384x16384"), "{e}");
    let dog = std::fs::read(fixture("images/dog.jpg")).unwrap();
    let (status, top) = server.send("PUT", "/predictions/efficientnet-lite0", None, dog);
    assert_eq!(status, 200, "{top}");
}

#[test]
fn summarization_keeps_the_first_512_tokens_of_a_long_text() {
    let repo = Repo::with(&[]);
    repo.write("t5/model.yaml", b"backend: candle\ntask: summarization\n");
    repo.link("t5/1", &model_dir("tiny-t5"));
    let server = Server::start(repo, &[]);
    let words: Vec<String> = (0..20_000).map(|i| format!("word{}", i % 97)).collect();
    let get = |n: usize| {
        let r = client()
            .get(server.at("/t5"))
            .query(&[("txt", words[..n].join(" "))])
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let truncated = r.headers().contains_key("x-truncated");
        (r.text().unwrap(), truncated)
    };
    // T5's tokenizer says "no limit" (1e30); the model was trained on 512 tokens, and 600 words
    // are more than that but far fewer than the 16,384-token batch budget.
    assert!(!get(20).1, "20 words fit");
    assert!(get(600).1, "600 words are cut to 512 tokens");
    // A 150 KB text costs what its first 512 tokens do, and gives their summary.
    let summarize = |text: &str| -> String {
        let (status, body) = server.post_json(
            "/v2/models/t5/infer",
            &json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}),
        );
        assert_eq!(status, 200, "{body}");
        body["outputs"][0]["data"][0].as_str().unwrap().to_string()
    };
    let long = words.join(" ");
    assert!(long.len() > 100_000);
    assert_eq!(summarize(&long), get(600).0);
}

#[test]
fn overload_is_summarised_not_logged_per_request() {
    let repo = Repo::with(&[]);
    repo.write("slow/model.yaml", b"threads: 1\n");
    repo.link("slow/1", &model_dir("slow").join("1"));
    let server = Server::start(repo, &["--max-queue-size", "1"]);
    let request = |iters: i64, timeout: Option<u64>| {
        let mut body = json!({"inputs": [{"name": "ITERS", "shape": [1, 1], "datatype": "INT64", "data": [iters]}]});
        if let Some(t) = timeout {
            body["parameters"] = json!({"timeout": t});
        }
        body
    };
    let statuses: Vec<u16> = thread::scope(|s| {
        let server = &server;
        let handles: Vec<_> = (0..40)
            .map(|_| {
                s.spawn(move || {
                    server
                        .post_json("/v2/models/slow/infer", &request(300, None))
                        .0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert!(refused > 10, "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 503),
        "{statuses:?}"
    );
    // A client's own deadline of 0 is its choice, not the server's error.
    let (status, _) = server.post_json("/v2/models/slow/infer", &request(1, Some(0)));
    assert_eq!(status, 504);
    let log = server.log.lock().unwrap().clone();
    let per_request = log
        .lines()
        .filter(|l| l.contains("requests queued already") || l.contains("request failed"))
        .count();
    assert_eq!(per_request, 0, "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn model_yaml_bounds_are_refused_with_the_reason() {
    let repo = Repo::with(&[]);
    repo.write("many/model.yaml", b"replicas: 1000000000\n");
    repo.link("many/1", &model_dir("simple").join("1"));
    let deep = format!("dynamic_batching: {}\n", "[".repeat(60_000));
    repo.write("deep/model.yaml", deep.as_bytes());
    repo.link("deep/1", &model_dir("simple").join("1"));
    let started = Instant::now();
    let server = Server::start(repo, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let r = client()
        .post(server.at("/v2/repository/index"))
        .json(&json!({}))
        .send()
        .unwrap();
    let index: Value = r.json().unwrap();
    let reason = |name: &str| -> String {
        index
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["reason"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert!(
        reason("many").contains("replicas must be between 1 and 64"),
        "{index}"
    );
    assert!(
        reason("deep").contains("nests deeper than 64 levels"),
        "{index}"
    );
}
