//! Backends as plug-ins, through the server: the backend inferred from the folder, ONNX
//! Runtime loaded only by ONNX models, each model's real backend in Triton's model
//! configuration (HTTP and gRPC), and autoscaling from `model.yaml`.

mod common;

use std::time::{Duration, Instant};

use common::{client, model_dir, wait_for, Repo, Server};
use ferroserve_grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use ferroserve_grpc::proto::ModelConfigRequest;
use serde_json::{json, Value};

/// A checkpoint folder whose `model.yaml` says only its task, and an ONNX model.
fn repo() -> Repo {
    let repo = Repo::with(&[]);
    repo.write("summarize/model.yaml", b"task: summarization\n");
    repo.link("summarize/1", &model_dir("tiny-t5"));
    repo
}

fn summary(server: &Server, model: &str, text: &str) -> reqwest::blocking::Response {
    client()
        .get(server.at(&format!("/{model}")))
        .query(&[("text", text), ("max_new_tokens", "8")])
        .send()
        .expect("GET")
}

fn reason(server: &Server, model: &str) -> String {
    let (_, index) = server.post_json("/v2/repository/index", &json!({}));
    index
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == model)
        .and_then(|r| r["reason"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_checkpoint_with_only_its_task_serves_and_onnx_runtime_loads_only_for_onnx_models() {
    // No ONNX model: the library is never loaded, though it is installed.
    let server = Server::start(repo(), &[]);
    let r = summary(
        &server,
        "summarize",
        "The quick brown fox jumps over the lazy dog.",
    );
    assert_eq!(r.status(), 200);
    assert!(!r.text().unwrap().is_empty());
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    assert!(
        !maps.contains("libonnxruntime"),
        "ONNX Runtime was loaded with no ONNX model to serve"
    );
    assert!(!server.log.lock().unwrap().contains("ONNX Runtime loaded"));

    // Without the library at all, the checkpoint still serves; an ONNX model says what is
    // missing, in one sentence, and the server keeps running.
    let repo = repo();
    repo.link("simple", &model_dir("simple"));
    let server = Server::start(repo, &["--ort-lib", "/nonexistent/libonnxruntime.so"]);
    assert_eq!(
        summary(&server, "summarize", "Another sentence to summarise.").status(),
        200
    );
    let simple = reason(&server, "simple");
    assert!(
        simple.contains("ONNX Runtime library not found at /nonexistent/libonnxruntime.so"),
        "{simple}"
    );
    assert!(simple.contains("scripts/setup.sh"), "{simple}");
    let (status, body) = server.get("/v2/models/simple/ready");
    assert_eq!(status, 503, "{body}");
    server.assert_healthy();
}

#[test]
fn triton_model_configuration_reports_each_models_real_backend_over_http_and_grpc() {
    let repo = repo();
    repo.link("simple", &model_dir("simple"));
    repo.write("latest/model.yaml", b"version_policy: {latest: 1}\n");
    repo.link("latest/3", &model_dir("simple").join("1"));
    let server = Server::start(repo, &[]);
    let http = |model: &str| -> Value {
        let (status, config) = server.get(&format!("/v2/models/{model}/config"));
        assert_eq!(status, 200, "{config}");
        config
    };
    let t5 = http("summarize");
    assert_eq!(t5["backend"], "candle");
    assert_eq!(t5["platform"], "candle");
    assert_eq!(t5["default_model_filename"], "config.json");
    let onnx = http("simple");
    assert_eq!(onnx["backend"], "onnxruntime");
    assert_eq!(onnx["platform"], "onnxruntime_onnx");
    assert_eq!(onnx["version_policy"], json!({"all": {}}));
    assert_eq!(
        http("latest")["version_policy"],
        json!({"latest": {"num_versions": 1}})
    );
    let (_, meta) = server.get("/v2/models/summarize");
    assert_eq!(meta["platform"], "candle");

    let url = server.grpc_url();
    let configs = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let mut client = GrpcInferenceServiceClient::connect(url).await.unwrap();
            let mut out = Vec::new();
            for name in ["summarize", "simple", "latest"] {
                let config = client
                    .model_config(ModelConfigRequest {
                        name: name.into(),
                        version: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .config
                    .unwrap();
                out.push(config);
            }
            out
        });
    assert_eq!(
        (configs[0].backend.as_str(), configs[0].platform.as_str()),
        ("candle", "candle")
    );
    assert_eq!(
        (configs[1].backend.as_str(), configs[1].platform.as_str()),
        ("onnxruntime", "onnxruntime_onnx")
    );
    use ferroserve_grpc::proto::model_version_policy::{Latest, PolicyChoice};
    assert_eq!(
        configs[2]
            .version_policy
            .as_ref()
            .and_then(|p| p.policy_choice.clone()),
        Some(PolicyChoice::Latest(Latest { num_versions: 1 }))
    );
}

#[test]
fn autoscaling_in_model_yaml_scales_up_under_load_and_back_down_without_failures() {
    let repo = Repo::with(&[]);
    repo.write(
        "elastic/model.yaml",
        b"task: summarization\nautoscaling: {min_replicas: 1, max_replicas: 2, target_ongoing_requests: 1, upscale_delay_s: 0.2, downscale_delay_s: 1, metrics_interval_s: 0.1, look_back_period_s: 0.5}\n",
    );
    repo.link("elastic/1", &model_dir("tiny-t5"));
    let server = Server::start(repo, &[]);
    let replicas = |s: &Server| {
        s.metric(
            "ferroserve_replicas",
            &[("model", "elastic"), ("version", "1")],
        )
    };
    assert_eq!(replicas(&server), Some(1.0));

    let scaled_up = std::sync::atomic::AtomicBool::new(false);
    let failures = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for i in 0..4 {
            let (server, scaled_up, failures) = (&server, &scaled_up, &failures);
            scope.spawn(move || {
                let started = Instant::now();
                while !scaled_up.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(60)
                {
                    let r = summary(
                        server,
                        "elastic",
                        &format!("Request {i} of many, long enough to take a while to summarise."),
                    );
                    if r.status() != 200 {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        assert!(
            wait_for(Duration::from_secs(60), || replicas(&server) == Some(2.0)),
            "never scaled up: {:?}",
            replicas(&server)
        );
        assert_eq!(
            server.metric(
                "ferroserve_deployment_target_replicas",
                &[("deployment", "elastic")]
            ),
            Some(2.0)
        );
        scaled_up.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(failures.into_inner(), 0, "a request failed while scaling");
    assert!(
        wait_for(Duration::from_secs(30), || replicas(&server) == Some(1.0)),
        "never scaled back down: {:?}",
        replicas(&server)
    );
    let admin = server.listener_url("management API");
    let description: Value = client()
        .get(format!("{admin}/models/elastic"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        description["versions"][0]["autoscaling"]["max_replicas"], 2,
        "{description}"
    );
    server.assert_healthy();
}
