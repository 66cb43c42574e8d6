//! The example binary's executors in Flows beside a real model, over HTTP.

#[path = "../../../crates/ferroserve/tests/common/mod.rs"]
mod common;

use common::{as_f32, cosine, load_while_watching, reference, wait_for, Repo, Server};
use serde_json::{json, Value};

fn start(file: &str) -> Server {
    let path = common::root().join("examples/custom-executor").join(file);
    Server::run_flow(
        env!("CARGO_BIN_EXE_custom-executor"),
        &path,
        Repo::with(&[]),
    )
}

fn sentences() -> (Vec<String>, Vec<Vec<f32>>) {
    let refs = reference("minilm_embeddings.json");
    (
        serde_json::from_value(refs["sentences"].clone()).unwrap(),
        serde_json::from_value(refs["embeddings"].clone()).unwrap(),
    )
}

#[test]
fn three_executors_in_a_chain_each_leave_their_mark() {
    let server = start("flow.yml");
    let (texts, expected) = sentences();
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": format!("doc{i}"), "text": t}))
        .collect();
    for (path, body) in [
        ("/post", json!({"data": data, "execEndpoint": "/encode"})),
        ("/encode", json!({"data": data})),
    ] {
        let (status, answer) = server.post_json(path, &body);
        assert_eq!(status, 200, "{path}: {answer}");
        assert_eq!(answer["header"]["execEndpoint"], "/encode");
        let docs = answer["data"].as_array().unwrap();
        assert_eq!(docs.len(), texts.len());
        for (i, d) in docs.iter().enumerate() {
            assert_eq!(d["id"], format!("doc{i}"), "order and ids are kept");
            assert_eq!(d["text"], texts[i].to_uppercase());
            assert_eq!(d["tags"]["shouted"], true);
            // MiniLM's tokenizer lower-cases, so the upper-cased text embeds as the original.
            let c = cosine(&as_f32(&d["embedding"]), &expected[i]);
            assert!(c >= 0.999, "{path}, document {i}: cosine {c}");
        }
    }
    // Ray Serve's query shape reaches one executor of the Flow by its name.
    let (status, doc) = server.get("/upper?txt=quiet%20please");
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["text"], "QUIET PLEASE");
    assert!(
        doc.get("tags").is_none(),
        "only the named executor ran: {doc}"
    );
    assert_eq!(server.get("/nobody?txt=x").0, 404);
    // The model executor is a model like any other: V2 and /v1/embeddings reach it by name.
    assert_eq!(server.get("/v2/models/encoder/ready").0, 200);
    let (status, _) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "encoder", "input": texts[0]}),
    );
    assert_eq!(status, 200);
}

#[test]
fn python_rust_and_model_executors_in_one_flow() {
    let server = start("mixed.yml");
    let (texts, expected) = sentences();
    let data: Vec<Value> = texts
        .iter()
        .map(|t| json!({"text": format!("  {}  ", t.replace(' ', "   "))}))
        .collect();
    let (status, answer) = server.post_json("/post", &json!({"data": data}));
    assert_eq!(status, 200, "{answer}");
    for (i, d) in answer["data"].as_array().unwrap().iter().enumerate() {
        // Python squeezed the spaces, Rust upper-cased, the model embedded.
        assert_eq!(d["text"], texts[i].to_uppercase());
        assert_eq!(d["tags"]["cleaned"], true);
        let c = cosine(&as_f32(&d["embedding"]), &expected[i]);
        assert!(c >= 0.999, "document {i}: cosine {c}");
    }
}

#[test]
fn a_diamond_merges_both_branches_and_routes_endpoints() {
    let server = start("diamond.yml");
    let docs = json!([{"id": "a", "text": "first"}, {"id": "b", "text": "second"}]);
    let (status, answer) = server.post_json("/index", &json!({"data": docs}));
    assert_eq!(status, 200, "{answer}");
    let out = answer["data"].as_array().unwrap();
    assert_eq!(
        out.len(),
        2,
        "each document once, though it came through two branches: {answer}"
    );
    for (d, id) in out.iter().zip(["a", "b"]) {
        assert_eq!(d["id"], id);
        assert_eq!(d["tags"]["lang"], "en");
        assert_eq!(d["tags"]["indexed"], true);
        assert_eq!(as_f32(&d["embedding"]).len(), 384);
    }
    // `indexer` only handles /index: on /search the documents pass it untouched.
    let (status, answer) = server.post_json("/search", &json!({"data": docs}));
    assert_eq!(status, 200, "{answer}");
    for d in answer["data"].as_array().unwrap() {
        assert_eq!(d["tags"]["lang"], "en");
        assert!(d["tags"].get("indexed").is_none(), "{d}");
        assert_eq!(d["text"], d["text"].as_str().unwrap().to_uppercase());
    }
    // A document the encoder cannot take is an error naming the executor.
    let (status, answer) = server.post_json("/index", &json!({"data": [{"id": "x"}]}));
    assert_eq!(status, 400, "{answer}");
    let msg = answer["error"].as_str().unwrap();
    assert!(
        msg.contains("executor 'encoder'") && msg.contains("has no text"),
        "{msg}"
    );
}

#[test]
fn shards_take_turns_for_any_and_answer_together_for_all() {
    let server = start("search.yml");
    let (texts, _) = sentences();
    // ANY: one request at a time goes to one shard, in turn.
    let mut shard_of = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let (status, answer) = server.post_json(
            "/index",
            &json!({"data": [{"id": format!("s{i}"), "text": t}]}),
        );
        assert_eq!(status, 200, "{answer}");
        shard_of.push(answer["data"][0]["tags"]["shard"].as_u64().unwrap());
    }
    let on_first = shard_of.iter().filter(|&&s| s == 0).count();
    assert!(
        on_first > 0 && on_first < texts.len(),
        "spread across shards: {shard_of:?}"
    );

    // ALL: both shards answer; with a limit as large as the index, the union is everything.
    let query = json!({"data": [{"text": texts[2]}], "parameters": {"limit": texts.len()}});
    let (status, answer) = server.post_json("/search", &query);
    assert_eq!(status, 200, "{answer}");
    let matches = answer["data"][0]["chunks"].as_array().unwrap();
    assert_eq!(
        matches.len(),
        texts.len(),
        "the union of both shards: {answer}"
    );
    let mut ids: Vec<&str> = matches.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want: Vec<String> = (0..texts.len()).map(|i| format!("s{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
    // A smaller limit keeps the best of the union, best first: the query's own sentence.
    let query = json!({"data": [{"text": texts[2]}], "parameters": {"limit": 2}});
    let (_, answer) = server.post_json("/search", &query);
    let matches = answer["data"][0]["chunks"].as_array().unwrap();
    assert_eq!(matches.len(), 2);
    assert_eq!(matches[0]["id"], "s2");
    let best = matches[0]["scores"]["cosine"].as_f64().unwrap();
    assert!(best > 0.999 && best >= matches[1]["scores"]["cosine"].as_f64().unwrap());
}

#[test]
fn an_ingress_calls_a_model_deployment_through_its_handle() {
    let server = start("compose.yml");
    let (texts, expected) = sentences();
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (server, text) = (&server, texts[i % texts.len()].clone());
                s.spawn(move || server.post_json("/encode", &json!({"data": [text]})))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (status, body) = h.join().unwrap();
                assert_eq!(status, 200, "{body}");
                body
            })
            .collect()
    });
    for (i, a) in answers.iter().enumerate() {
        let c = cosine(
            &as_f32(&a["data"][0]["embedding"]),
            &expected[i % texts.len()],
        );
        assert!(c >= 0.999, "request {i}: cosine {c}");
    }
    // The encoder's batching is visible in its metrics: fewer batches than calls.
    let calls = server
        .metric(
            "ferroserve_requests_total",
            &[("model", "encoder"), ("result", "success")],
        )
        .unwrap();
    let batches = server
        .metric("ferroserve_batch_size_count", &[("model", "encoder")])
        .unwrap();
    assert_eq!(calls, 16.0);
    assert!(batches < calls, "{batches} batches for {calls} calls");
    // The ingress refuses what the model should never see, and says so.
    let (status, e) = server.post_json("/encode", &json!({"data": ["x".repeat(201)]}));
    assert_eq!(status, 400);
    assert!(
        e["error"].as_str().unwrap().contains("executor 'ingress'"),
        "{e}"
    );
}

#[test]
fn autoscaling_follows_the_load_from_zero_to_the_maximum_and_back() {
    let server = start("autoscale.yml");
    let replicas = |server: &Server| {
        server
            .metric(
                "ferroserve_deployment_replicas",
                &[("deployment", "sleeper")],
            )
            .unwrap_or(0.0)
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(replicas(&server), 0.0, "idle at start: min_replicas 0");

    // From zero: the first request waits for an instance, then is answered.
    let (status, answer) = server.post_json("/default", &json!({"data": ["first"]}));
    assert_eq!(status, 200, "{answer}");

    // Load well above the target (6 clients, 1 request per instance wanted): up to 3, never more.
    let (most, failures) = load_while_watching(
        &server,
        6,
        "/default",
        &json!({"data": ["x"]}),
        replicas,
        3.0,
    );
    assert_eq!(most, 3.0, "scaled up to max_replicas and no further");
    assert_eq!(failures, 0, "no request failed while scaling");
    let target = server
        .metric(
            "ferroserve_deployment_target_replicas",
            &[("deployment", "sleeper")],
        )
        .unwrap();
    assert!(target <= 3.0);

    // No load: after downscale_delay_s, back to min_replicas (0), draining, not failing.
    wait_for(std::time::Duration::from_secs(10), || {
        replicas(&server) == 0.0
    });
    assert_eq!(replicas(&server), 0.0, "scaled down to min_replicas");
    assert!(
        server.log.lock().unwrap().contains("autoscaling"),
        "decisions are logged"
    );
    // And up again from zero for the next request.
    let (status, _) = server.post_json("/default", &json!({"data": ["again"]}));
    assert_eq!(status, 200);
}

#[test]
fn dynamic_batching_gathers_concurrent_requests_into_one_call() {
    let server = start("batching.yml");
    let batch_of = |answer: &Value| answer["data"][0]["tags"]["batch"].as_u64().unwrap();
    // Four concurrent one-document requests: one call of four.
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    server.post_json("/default", &json!({"data": [format!("doc {i}")]}))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().1).collect()
    });
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(batch_of(a), 4, "{a}");
        assert_eq!(
            a["data"].as_array().unwrap().len(),
            1,
            "each gets its own document back"
        );
        assert_eq!(a["data"][0]["text"], format!("doc {i}"));
    }
    // A lone request waits out the timeout, then runs alone.
    let started = std::time::Instant::now();
    let (_, alone) = server.post_json("/default", &json!({"data": ["alone"]}));
    assert_eq!(batch_of(&alone), 1);
    assert!(started.elapsed() >= std::time::Duration::from_millis(1400));
    // Endpoints without batching run at once.
    let started = std::time::Instant::now();
    let (_, other) = server.post_json("/other", &json!({"data": ["x"]}));
    assert_eq!(batch_of(&other), 1);
    assert!(started.elapsed() < std::time::Duration::from_millis(1000));
}

#[test]
fn executors_go_through_the_runtimes_scheduler_with_its_queue_bound_and_metrics() {
    let repo = Repo::with(&[]);
    repo.write(
        "slow.yml",
        b"jtype: Deployment\nwith: {name: slow, uses: Sleep, uses_with: {ms: 400}}\n",
    );
    let file = repo.path().join("slow.yml");
    let server = Server::spawn(
        env!("CARGO_BIN_EXE_custom-executor"),
        &[
            "run",
            file.to_str().unwrap(),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--max-queue-size",
            "2",
        ],
        repo,
    );
    // One instance: one request runs, two wait (--max-queue-size), the rest are refused at once.
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let server = &server;
                s.spawn(move || server.post_json("/default", &json!({"data": [format!("d{i}")]})))
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 503)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(ok + refused.len(), 6, "{answers:?}");
    assert!((1..=3).contains(&ok), "{answers:?}");
    for body in &refused {
        let e = body["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("executor 'slow' has 2 requests queued already"),
            "{e}"
        );
    }
    // The scheduler's metrics, labelled by the deployment and its shard.
    let shard = [("model", "slow"), ("version", "0")];
    assert_eq!(server.metric("ferroserve_replicas", &shard), Some(1.0));
    assert_eq!(
        server.metric("ferroserve_batch_size_count", &shard),
        Some(ok as f64)
    );
    assert_eq!(server.metric("ferroserve_queue_depth", &shard), Some(0.0));
    server.assert_healthy();
}
