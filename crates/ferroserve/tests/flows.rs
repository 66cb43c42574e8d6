//! `ferroserve run`: Deployments and Flows from YAML, over HTTP.

mod common;

use std::path::Path;
use std::process::Command;

use common::{as_f32, ferroserve_binary, load_while_watching, model_dir, wait_for, Repo, Server};
use serde_json::json;

/// Writes into `repo` a Deployment `name` of the fixture model folder `model`, with `extra`
/// lines under `with:`, and returns the file.
fn deployment_of(repo: &Repo, name: &str, model: &str, extra: &str) -> std::path::PathBuf {
    let yaml = format!(
        "jtype: Deployment\nwith:\n  name: {name}\n  uses: {}\n{extra}",
        model_dir(model).display()
    );
    repo.write("deployment.yml", yaml.as_bytes());
    repo.path().join("deployment.yml")
}

/// The demo's MiniLM as a Deployment `encoder` of 2 replicas.
fn deployment(repo: &Repo) -> std::path::PathBuf {
    deployment_of(repo, "encoder", "minilm", "  replicas: 2\n")
}

/// Starts `ferroserve run` on a Deployment of `model` (see [`deployment_of`]).
fn run_deployment(name: &str, model: &str, extra: &str) -> Server {
    let repo = Repo::with(&[]);
    let file = deployment_of(&repo, name, model, extra);
    Server::run_flow(ferroserve_binary(), &file, repo)
}

#[test]
fn a_deployment_answers_documents_with_the_tasks_embeddings() {
    let repo = Repo::with(&[]);
    let file = deployment(&repo);
    let server = Server::run_flow(ferroserve_binary(), &file, repo);
    let texts = ["A man is eating food.", "A monkey is playing drums."];
    let (status, task) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "encoder", "input": texts}),
    );
    assert_eq!(status, 200, "{task}");
    for (path, body) in [
        (
            "/post",
            json!({"data": [{"text": texts[0]}, texts[1]], "execEndpoint": "/encode"}),
        ),
        (
            "/encode",
            json!({"data": [{"text": texts[0]}, {"text": texts[1]}], "parameters": {"k": 1}}),
        ),
    ] {
        let (status, answer) = server.post_json(path, &body);
        assert_eq!(status, 200, "{path}: {answer}");
        for (i, d) in answer["data"].as_array().unwrap().iter().enumerate() {
            assert_eq!(d["text"], texts[i]);
            assert_eq!(
                as_f32(&d["embedding"]),
                as_f32(&task["data"][i]["embedding"]),
                "{path}"
            );
            assert!(!d["id"].as_str().unwrap().is_empty());
        }
    }
    // Ray Serve's query shape for a Deployment, by its name.
    let (status, doc) = server.get("/encoder?txt=A%20man%20is%20eating%20food.");
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        as_f32(&doc["embedding"]),
        as_f32(&task["data"][0]["embedding"])
    );
    // The model's replicas come from the Deployment.
    let (_, config) = server.get("/v2/models/encoder/config");
    assert_eq!(config["instance_group"][0]["count"], 2, "{config}");
    // Bad requests are 400s that say what is wrong.
    let (status, e) = server.post_json("/post", &json!({"docs": []}));
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("docs"), "{e}");
    let (status, e) = server.post_json("/post", &json!({"data": [{"blob": "not base64!"}]}));
    assert_eq!(status, 400, "{e}");
    let (status, e) = server.post_json("/encode", &json!({"data": [{"id": "no-text"}]}));
    assert_eq!(status, 400);
    assert!(
        e["error"].as_str().unwrap().contains("executor 'encoder'"),
        "{e}"
    );
    // One failing document does not lose the others: it comes back with its error.
    let (status, mixed) = server.post_json(
        "/encode",
        &json!({"data": [{"id": "good", "text": texts[0]}, {"id": "bad"}, {"id": "also-good", "text": texts[1]}]}),
    );
    assert_eq!(status, 200, "{mixed}");
    let docs = mixed["data"].as_array().unwrap();
    assert_eq!(docs[0]["id"], "good");
    assert_eq!(
        as_f32(&docs[0]["embedding"]),
        as_f32(&task["data"][0]["embedding"])
    );
    assert_eq!(docs[1]["id"], "bad");
    assert_eq!(docs[1]["error"]["executor"], "encoder");
    assert!(docs[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("has no text"));
    assert!(docs[1].get("embedding").is_none());
    assert_eq!(
        as_f32(&docs[2]["embedding"]),
        as_f32(&task["data"][1]["embedding"])
    );
    server.assert_healthy();
}

#[test]
fn the_client_posts_a_file_in_requests_of_the_given_size() {
    let repo = Repo::with(&[]);
    let file = deployment(&repo);
    let mut lines = Vec::new();
    for i in 0..10 {
        lines.push(if i % 2 == 0 {
            json!({"id": format!("d{i}"), "text": format!("sentence number {i}"), "tags": {"n": i}})
                .to_string()
        } else {
            format!("plain text line {i}")
        });
    }
    repo.write("docs.jsonl", (lines.join("\n") + "\n\n").as_bytes());
    let input = repo.path().join("docs.jsonl");
    let output = repo.path().join("out.jsonl");
    let server = Server::run_flow(ferroserve_binary(), &file, repo);
    let run = Command::new(ferroserve_binary())
        .args([
            "client",
            "--url",
            &server.url,
            "--endpoint",
            "/encode",
            "--request-size",
            "4",
            "-q",
            "-o",
        ])
        .arg(&output)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let docs: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 10);
    for (i, d) in docs.iter().enumerate() {
        assert_eq!(as_f32(&d["embedding"]).len(), 384);
        if i % 2 == 0 {
            assert_eq!(d["id"], format!("d{i}"));
            assert_eq!(d["tags"]["n"], i);
        } else {
            assert_eq!(d["text"], format!("plain text line {i}"));
        }
    }
    // 10 documents in requests of 4: three requests reached the model.
    let requests = server
        .metric(
            "ferroserve_requests_total",
            &[("model", "encoder"), ("result", "success")],
        )
        .unwrap();
    assert_eq!(requests, 3.0);

    // A document the Deployment cannot take fails alone; the client reports it and fails.
    std::fs::write(&input, "fine\n{\"id\": \"no-text\"}\n").unwrap();
    let run = Command::new(ferroserve_binary())
        .args([
            "client",
            "--url",
            &server.url,
            "--endpoint",
            "/encode",
            "-q",
        ])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("1 document(s) failed") && stderr.contains("has no text"),
        "{stderr}"
    );
}

#[test]
fn the_documents_service_answers_over_grpc_like_http() {
    use ferroserve_grpc::documents_proto::document_service_client::DocumentServiceClient;
    use ferroserve_grpc::documents_proto::{DataRequest, Document};

    let repo = Repo::with(&[]);
    let file = deployment_of(&repo, "encoder", "minilm", "  protocol: [http, grpc]\n");
    let file = file.to_str().unwrap().to_string();
    let server = Server::spawn(
        ferroserve_binary(),
        &["run", &file, "--port", "0", "--grpc-port", "0"],
        repo,
    );
    let text = "A man is eating food.";
    let (_, http) = server.post_json("/encode", &json!({"data": [{"id": "a", "text": text}]}));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = DocumentServiceClient::connect(server.grpc_url())
            .await
            .unwrap();
        let doc = Document {
            id: "a".into(),
            text: Some(text.into()),
            tags_json: r#"{"source": "grpc"}"#.into(),
            ..Default::default()
        };
        let answer = client
            .call(DataRequest {
                data: vec![doc.clone()],
                exec_endpoint: "/encode".into(),
                parameters_json: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let got = &answer.data[0];
        assert_eq!(got.id, "a");
        assert_eq!(got.tags_json, r#"{"source":"grpc"}"#);
        let embedding = &got.embedding.as_ref().unwrap().values;
        assert_eq!(embedding, &as_f32(&http["data"][0]["embedding"]));
        // The executor's errors keep their kind and name.
        let err = client
            .call(DataRequest {
                data: vec![Document {
                    id: "x".into(),
                    ..Default::default()
                }],
                exec_endpoint: "/encode".into(),
                parameters_json: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("executor 'encoder'"), "{err:?}");
        let bad = client
            .call(DataRequest {
                data: vec![doc],
                exec_endpoint: "/encode".into(),
                parameters_json: "[1]".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    });
}

#[test]
fn a_model_deployment_autoscales_from_zero_and_back() {
    let server = run_deployment(
        "encoder",
        "minilm",
        "  autoscaling:\n    min_replicas: 0\n    max_replicas: 2\n    target_ongoing_requests: 1\n    upscale_delay_s: 0.2\n    downscale_delay_s: 0.5\n    metrics_interval_s: 0.1\n    look_back_period_s: 0.2\n",
    );
    let replicas = |s: &Server| {
        s.metric("ferroserve_replicas", &[("model", "encoder")])
            .unwrap_or(-1.0)
    };
    assert_eq!(
        replicas(&server),
        0.0,
        "no replica while idle (min_replicas 0)"
    );
    // The first request waits in the queue while a replica loads, then is answered.
    let (status, first) = server.post_json("/encode", &json!({"data": ["hello"]}));
    assert_eq!(status, 200, "{first}");
    assert_eq!(as_f32(&first["data"][0]["embedding"]).len(), 384);
    // Load: 6 clients with 8 sentences each; the deployment grows to max_replicas, no further.
    let body = json!({"data": vec!["a sentence to embed, a little longer than most"; 8]});
    let (most, failed) = load_while_watching(&server, 6, "/encode", &body, replicas, 2.0);
    assert_eq!(most, 2.0, "scaled to max_replicas and no further");
    assert_eq!(failed, 0, "no request failed while scaling");
    // Idle again: back to zero after the downscale delay.
    wait_for(std::time::Duration::from_secs(10), || {
        replicas(&server) == 0.0
    });
    assert_eq!(replicas(&server), 0.0);
    assert_eq!(
        server.metric(
            "ferroserve_deployment_replicas",
            &[("deployment", "encoder")]
        ),
        Some(0.0)
    );
}

#[test]
fn a_plain_model_is_an_executor_of_tensors() {
    let server = run_deployment("echo", "identity", "");
    let row = |k: f32| (0..16).map(|i| i as f32 * k).collect::<Vec<_>>();
    let (status, answer) = server.post_json(
        "/post",
        &json!({"data": [
            {"id": "a", "tensor": {"shape": [16], "data": row(1.0)}},
            {"id": "none"},
            {"id": "b", "tensor": {"shape": [16], "data": row(0.5)}}
        ]}),
    );
    assert_eq!(status, 200, "{answer}");
    let docs = answer["data"].as_array().unwrap();
    assert_eq!(as_f32(&docs[0]["tensor"]["data"]), row(1.0));
    assert_eq!(docs[0]["tensor"]["shape"], json!([16]));
    assert!(docs[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("has no tensor"));
    assert_eq!(as_f32(&docs[2]["tensor"]["data"]), row(0.5));
    // Documents whose tensors do not fit fail alone, each with its own reason: values that do
    // not fill the declared shape, and a shape the model refuses.
    let (status, answer) = server.post_json(
        "/post",
        &json!({"data": [
            {"id": "short", "tensor": {"shape": [2, 16], "data": row(1.0)}},
            {"id": "good", "tensor": {"shape": [16], "data": row(2.0)}},
            {"id": "narrow", "tensor": {"shape": [3], "data": [1, 2, 3]}}
        ]}),
    );
    assert_eq!(status, 200, "{answer}");
    let docs = answer["data"].as_array().unwrap();
    let message = |i: usize| {
        docs[i]["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        message(0).contains("document 'short' has a tensor of shape [2, 16] but 16 values"),
        "{answer}"
    );
    assert_eq!(as_f32(&docs[1]["tensor"]["data"]), row(2.0));
    assert!(docs[1]["error"].is_null(), "{answer}");
    assert!(message(2).starts_with("document 'narrow'"), "{answer}");
    // When every document fails, the request fails with the first reason.
    let (status, e) = server.post_json(
        "/post",
        &json!({"data": [{"tensor": {"shape": [3], "data": [1, 2, 3]}}]}),
    );
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("executor 'echo'"),
        "{e}"
    );
}

/// Runs `ferroserve run` on `yaml` and returns its stderr, asserting it failed at start-up.
fn refused(yaml: &str) -> String {
    let repo = Repo::with(&[]);
    repo.write("flow.yml", yaml.as_bytes());
    let out = Command::new(ferroserve_binary())
        .args(["run", "--port", "0"])
        .arg(repo.path().join("flow.yml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{yaml} started");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains("flow.yml"), "the file is named: {stderr}");
    stderr
}

#[test]
fn yaml_mistakes_are_refused_at_start_with_file_path_and_reason() {
    let minilm = model_dir("minilm");
    let m = minilm.display();
    let unknown_field = refused(&format!(
        "jtype: Flow\nexecutors:\n  - name: a\n    uses: {m}\n    replica: 2\n"
    ));
    assert!(
        unknown_field.contains("executors[0].replica")
            && unknown_field.contains("did you mean 'replicas'"),
        "{unknown_field}"
    );
    let unknown_exec = refused("jtype: Flow\nexecutors:\n  - name: a\n    uses: NoSuchExecutor\n");
    assert!(
        unknown_exec.contains("'NoSuchExecutor' is neither a registered executor"),
        "{unknown_exec}"
    );
    let cycle = refused(&format!(
        "jtype: Flow\nexecutors:\n  - {{name: a, uses: {m}, needs: b}}\n  - {{name: b, uses: {m}, needs: a}}\n"
    ));
    assert!(cycle.contains("needs forms a cycle"), "{cycle}");
    let missing = refused(&format!(
        "jtype: Flow\nexecutors:\n  - {{name: a, uses: {m}, needs: ghost}}\n"
    ));
    assert!(
        missing.contains("'ghost', which is not an executor"),
        "{missing}"
    );
    let plain = refused(&format!(
        "jtype: Deployment\nwith: {{uses: {}}}\n",
        Path::new(&model_dir("simple")).display()
    ));
    assert!(plain.contains("one FP32 input"), "{plain}");
    // Placement from the YAML reaches the model (this build has no CUDA, so a GPU is refused
    // with the reason, whatever the machine).
    let gpu = refused(&format!(
        "jtype: Deployment\nwith: {{uses: {m}, devices: [cuda:0]}}\n"
    ));
    assert!(gpu.contains("cuda:0 was asked for"), "{gpu}");
    let rr = refused(&format!(
        "jtype: Deployment\nwith: {{uses: {m}, env: {{CUDA_VISIBLE_DEVICES: RR}}}}\n"
    ));
    assert!(rr.contains("GPU") || rr.contains("CUDA"), "{rr}");
    let env = refused(&format!(
        "jtype: Deployment\nwith: {{uses: {m}, env: {{FOO: bar}}}}\n"
    ));
    assert!(
        env.contains("only CUDA_VISIBLE_DEVICES is understood"),
        "{env}"
    );
    // Bounds: instances are capped as through the management API, before anything is built.
    let huge = refused(&format!(
        "jtype: Deployment\nwith: {{uses: {m}, replicas: 1000000000}}\n"
    ));
    assert!(huge.contains("at most 64 instances"), "{huge}");
    let scaled = refused(&format!(
        "jtype: Flow\nexecutors:\n  - {{name: a, uses: {m}, autoscaling: {{max_replicas: 100}}}}\n"
    ));
    assert!(scaled.contains("at most 64 instances"), "{scaled}");
    // A file nested 60,000 levels deep is refused on its text, before the YAML parser sees it.
    let deep = refused(&format!("jtype: Flow\nexecutors: {}", "[".repeat(60_000)));
    assert!(deep.contains("nests deeper than 64 levels"), "{deep}");
}
