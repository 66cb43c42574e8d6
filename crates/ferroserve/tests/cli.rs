//! The `ferroserve` command line: version, help, `infer` against a live server, start-up errors.

mod common;

use std::process::Command;

use common::{model_dir, Repo, Server};
use serde_json::Value;

fn ferroserve() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferroserve"))
}

/// Writes a version-1.0 `.npy` file (what `numpy.save` writes).
fn write_npy(path: &std::path::Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let dims = if dims.len() == 1 {
        format!("{},", dims[0])
    } else {
        dims.join(", ")
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

#[test]
fn version_and_help() {
    let out = ferroserve().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ferroserve {}", env!("CARGO_PKG_VERSION"))
    );
    for args in [&["--help"][..], &["serve", "--help"], &["infer", "--help"]] {
        let out = ferroserve().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains("Usage: ferroserve"), "{args:?}: {text}");
    }
    let out = ferroserve().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--model-repository",
        "--host",
        "--http-port",
        "--ort-lib",
        "--max-request-bytes",
        "--log-format",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}");
    }
}

#[test]
fn infer_sends_npy_and_json_inputs_and_prints_outputs() {
    let server = Server::start(Repo::with(&["simple"]), &["--log-format", "json"]);
    // The JSON log format really is JSON, one object per line.
    let log = server.log.lock().unwrap().clone();
    let line = log.lines().find(|l| l.contains("listening on")).unwrap();
    let parsed: Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(parsed["level"], "INFO");

    let dir = tempfile::tempdir().unwrap();
    let a: Vec<u8> = (0..16i32).flat_map(i32::to_le_bytes).collect();
    write_npy(&dir.path().join("a.npy"), "<i4", &[1, 16], &a);
    std::fs::write(
        dir.path().join("b.json"),
        serde_json::to_vec(
            &serde_json::json!({"datatype": "INT32", "shape": [1, 16], "data": vec![10; 16]}),
        )
        .unwrap(),
    )
    .unwrap();

    let out = ferroserve()
        .args([
            "infer",
            "simple",
            "--url",
            &server.url,
            "--output",
            "OUTPUT0",
        ])
        .arg("--input")
        .arg(format!("INPUT0={}", dir.path().join("a.npy").display()))
        .arg("-i")
        .arg(format!("INPUT1={}", dir.path().join("b.json").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("infer prints JSON");
    let sum: Vec<i32> = (10..26).collect();
    assert_eq!(printed["outputs"][0]["name"], "OUTPUT0");
    assert_eq!(printed["outputs"][0]["data"], serde_json::json!(sum));
    assert_eq!(printed["outputs"].as_array().unwrap().len(), 1);

    // A server-side error is reported with the server's message and a failing exit code.
    let out = ferroserve()
        .args(["infer", "simple", "--url", &server.url])
        .arg("--input")
        .arg(format!("INPUT0={}", dir.path().join("a.npy").display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("400") && err.contains("missing input 'INPUT1'"),
        "{err}"
    );
}

#[test]
fn missing_onnx_runtime_is_one_clear_sentence_on_each_onnx_model() {
    // ONNX Runtime loads with the first ONNX model; the server starts without it, and every
    // ONNX model says why it cannot serve.
    let unavailable = |extra: &[&str]| -> String {
        let repo = Repo::with(&["simple"]);
        let repo_path = repo.path().to_str().unwrap().to_string();
        let mut args = vec![
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--management-port",
            "0",
            "--model-repository",
            &repo_path,
        ];
        args.extend_from_slice(extra);
        let server = Server::spawn(common::ferroserve_binary(), &args, repo);
        let (_, index) = server.post_json("/v2/repository/index", &serde_json::json!({}));
        server.assert_healthy();
        index[0]["reason"].as_str().unwrap_or_default().to_string()
    };
    let missing = unavailable(&["--ort-lib", "/nonexistent/libonnxruntime.so"]);
    assert!(
        missing.contains("ONNX Runtime library not found at /nonexistent/libonnxruntime.so"),
        "{missing}"
    );
    assert!(missing.contains("scripts/setup.sh"), "{missing}");
    // A file that is not ONNX Runtime at all.
    let bogus = model_dir("simple").join("1/model.onnx");
    let bogus = unavailable(&["--ort-lib", bogus.to_str().unwrap()]);
    assert!(bogus.contains("could not load ONNX Runtime"), "{bogus}");
}

#[test]
fn bench_reports_throughput_latency_and_errors() {
    let server = Server::start(Repo::with(&["simple", "reshape3"]), &[]);
    for format in ["json", "binary"] {
        let out = ferroserve()
            .args([
                "bench",
                "--model",
                "simple",
                "--url",
                &server.url,
                "-c",
                "4",
                "--requests",
                "200",
            ])
            .args(["--warmup", "0.1", "--json", "--format", format])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
        assert_eq!(s["requests"], 200, "{s}");
        assert_eq!(s["succeeded"], 200, "{s}");
        assert_eq!(s["errors"], serde_json::json!({}));
        assert!(s["throughput_rps"].as_f64().unwrap() > 0.0);
        assert!(
            s["latency_ms"]["p99"].as_f64().unwrap() >= s["latency_ms"]["p50"].as_f64().unwrap()
        );
        assert!(s["client_cpu_cores"].as_f64().is_some());
    }
    // Every request fails: a shape the model cannot run (500s), counted by kind.
    let out = ferroserve()
        .args([
            "bench",
            "--model",
            "reshape3",
            "--url",
            &server.url,
            "--requests",
            "20",
            "--warmup",
            "0",
        ])
        .args(["--shape", "X=4", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["succeeded"], 0);
    assert_eq!(s["errors"]["HTTP 500"], 20, "{s}");
    // An unknown model is reported before any load is sent.
    let out = ferroserve()
        .args([
            "bench",
            "--model",
            "nope",
            "--url",
            &server.url,
            "--requests",
            "5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model 'nope'"));
}

#[test]
fn metrics_port_serves_metrics_only() {
    let server = Server::start(Repo::with(&["simple"]), &["--metrics-port", "0"]);
    let log = server.log.lock().unwrap().clone();
    let line = log
        .lines()
        .find(|l| l.contains("metrics listening on http://"))
        .unwrap_or_else(|| panic!("no metrics listener in the log:\n{log}"));
    let url: String = line[line.find("http://").unwrap()..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let r = common::client()
        .get(format!("{url}/metrics"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .unwrap()
        .contains("ferroserve_replicas{model=\"simple\",version=\"1\"} 1"));
    let r = common::client()
        .get(format!("{url}/v2/models/simple"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "the metrics port serves nothing else");
}

#[test]
fn infer_and_bench_speak_grpc() {
    let server = Server::start(Repo::with(&["simple"]), &[]);
    let grpc = server.grpc_url();
    let dir = tempfile::tempdir().unwrap();
    let a: Vec<u8> = (0..16i32).flat_map(i32::to_le_bytes).collect();
    write_npy(&dir.path().join("a.npy"), "<i4", &[1, 16], &a);
    let input = |name: &str| format!("{name}={}", dir.path().join("a.npy").display());

    let out = ferroserve()
        .args(["infer", "simple", "--protocol", "grpc", "--url", &grpc])
        .args([
            "-i",
            &input("INPUT0"),
            "-i",
            &input("INPUT1"),
            "-o",
            "OUTPUT0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let doubled: Vec<i32> = (0..16).map(|x| 2 * x).collect();
    assert_eq!(printed["outputs"][0]["data"], serde_json::json!(doubled));
    assert_eq!(printed["outputs"].as_array().unwrap().len(), 1);

    let out = ferroserve()
        .args([
            "infer",
            "simple",
            "--protocol",
            "grpc",
            "--url",
            &grpc,
            "-i",
            &input("INPUT0"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("missing input 'INPUT1'"),
        "{err}"
    );

    // Random inputs shaped from the model's gRPC metadata.
    let out = ferroserve()
        .args([
            "bench",
            "--protocol",
            "grpc",
            "--url",
            &grpc,
            "--model",
            "simple",
        ])
        .args([
            "-c",
            "4",
            "--requests",
            "100",
            "--warmup",
            "0.1",
            "--shape",
            "INPUT0=2,16",
            "--shape",
            "INPUT1=2,16",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (s["succeeded"].as_u64(), s["format"].as_str()),
        (Some(100), Some("gRPC raw")),
        "{s}"
    );
}
