//! The scheduler end to end: dynamic batching with padding, backpressure, deadlines, replicas,
//! metrics and graceful shutdown, against real servers and real models.
//!
//! `slow` (tests/fixtures/models/slow) is a real ONNX model whose run time the request sets
//! (ITERS rounds of a matrix product, about 0.3 ms each here); it echoes ITERS back.

mod common;

use std::thread;

use common::{model_dir, reference, Repo, Server};
use serde_json::{json, Value};

/// A repository entry `name` with `model.yaml` text over the version folder of fixture `fixture`.
fn configured(repo: &Repo, name: &str, fixture: &str, yaml: &str) {
    repo.write(&format!("{name}/model.yaml"), yaml.as_bytes());
    repo.link(&format!("{name}/1"), &model_dir(fixture).join("1"));
}

fn slow_request(iters: i64) -> Value {
    json!({"inputs": [{"name": "ITERS", "shape": [1, 1], "datatype": "INT64", "data": [iters]}]})
}

fn echoed(body: &Value) -> i64 {
    body["outputs"][0]["data"][0].as_i64().expect("OUT")
}

fn tokens(ids: &[i64]) -> Value {
    let n = ids.len();
    json!({"inputs": [
        {"name": "input_ids", "shape": [1, n], "datatype": "INT64", "data": ids},
        {"name": "attention_mask", "shape": [1, n], "datatype": "INT64", "data": vec![1; n]},
        {"name": "token_type_ids", "shape": [1, n], "datatype": "INT64", "data": vec![0; n]},
    ]})
}

#[test]
fn concurrent_requests_batch_and_each_gets_its_own_answer() {
    let repo = Repo::plain(&["minilm"]);
    configured(
        &repo,
        "minilm-batched",
        "minilm",
        "max_batch_size: 16\ndynamic_batching:\n  max_queue_delay_us: 50000\n  preferred_batch_size: [16]\npad: {input_ids: 0, attention_mask: 0, token_type_ids: 0}\n",
    );
    let server = Server::start(repo, &[]);
    let refs = reference("minilm_embeddings.json");
    let ids: Vec<Vec<i64>> = serde_json::from_value(refs["input_ids"].clone()).unwrap();

    // Each request alone, unbatched: the expected answers.
    let alone: Vec<Value> = ids
        .iter()
        .map(|s| {
            let (status, body) = server.post_json("/v2/models/minilm/infer", &tokens(s));
            assert_eq!(status, 200, "{body}");
            body
        })
        .collect();

    // 16 at once, sentences of different lengths, to the batched deployment.
    let answers: Vec<(usize, Value)> = thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let server = &server;
                let req = tokens(&ids[i % ids.len()]);
                s.spawn(move || {
                    let (status, body) = server.post_json("/v2/models/minilm-batched/infer", &req);
                    assert_eq!(status, 200, "{body}");
                    (i, body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, body) in answers {
        let expected = &alone[i % ids.len()]["outputs"][0];
        let got = &body["outputs"][0];
        assert_eq!(
            got["shape"], expected["shape"],
            "request {i}: its own length, not the padded one"
        );
        let (g, e) = (
            common::as_f32(&got["data"]),
            common::as_f32(&expected["data"]),
        );
        let worst = g
            .iter()
            .zip(&e)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-3,
            "request {i}: differs from its unbatched answer by {worst}"
        );
    }

    let labels = [("model", "minilm-batched")];
    let batches = server
        .metric("ferroserve_batch_size_count", &labels)
        .unwrap();
    let rows = server.metric("ferroserve_batch_size_sum", &labels).unwrap();
    assert_eq!(rows, 16.0, "every request ran once");
    assert!(
        batches < 16.0,
        "batches larger than 1 formed ({batches} batches for 16 requests)"
    );
    assert_eq!(
        server.metric(
            "ferroserve_requests_total",
            &[("model", "minilm-batched"), ("result", "success")]
        ),
        Some(16.0)
    );
}

#[test]
fn batches_respect_max_batch_size_and_parameters() {
    let repo = Repo::with(&[]);
    configured(
        &repo,
        "simple",
        "simple",
        "max_batch_size: 4\ndynamic_batching: {max_queue_delay_us: 20000}\n",
    );
    let server = Server::start(repo, &[]);
    let rows = |n: usize| {
        json!({"inputs": [
            {"name": "INPUT0", "shape": [n, 16], "datatype": "INT32", "data": vec![1; n * 16]},
            {"name": "INPUT1", "shape": [n, 16], "datatype": "INT32", "data": vec![2; n * 16]},
        ]})
    };
    let (status, body) = server.post_json("/v2/models/simple/infer", &rows(5));
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("at most 4 per batch"),
        "{body}"
    );

    // Different parameters never share a batch, whatever arrives together.
    thread::scope(|s| {
        for i in 0..6 {
            let server = &server;
            s.spawn(move || {
                let mut req = rows(1 + i % 2);
                req["parameters"] = json!({"tag": i % 3});
                let (status, body) = server.post_json("/v2/models/simple/infer", &req);
                assert_eq!(status, 200, "{body}");
                assert_eq!(body["outputs"][0]["shape"], json!([1 + i % 2, 16]));
                assert_eq!(body["outputs"][0]["data"][0], 3);
            });
        }
    });
    let text = server.metrics();
    let count = common::metric_value(&text, "ferroserve_batch_size_count", &[]).unwrap();
    assert!(
        count >= 3.0,
        "three parameter groups need at least three batches, got {count}"
    );
}

#[test]
fn full_queue_is_refused_at_once_and_no_request_is_lost() {
    let repo = Repo::with(&[]);
    configured(&repo, "slow", "slow", "threads: 1\n");
    let server = Server::start(repo, &["--max-queue-size", "4"]);
    // One long request occupies the replica; a burst of 40 (10x the queue) follows.
    let results: Vec<(i64, u16, Value, Option<String>, std::time::Instant)> = thread::scope(|s| {
        let server = &server;
        let first = s.spawn(move || {
            let (status, body) = server.post_json("/v2/models/slow/infer", &slow_request(3000));
            (3000, status, body, None, std::time::Instant::now())
        });
        while server.metric("ferroserve_inflight_requests", &[("model", "slow")]) != Some(1.0) {
            thread::sleep(std::time::Duration::from_millis(5));
        }
        let burst: Vec<_> = (0..40)
            .map(|i| {
                s.spawn(move || {
                    let iters = 10 + i;
                    let r = common::client()
                        .post(server.at("/v2/models/slow/infer"))
                        .json(&slow_request(iters))
                        .send()
                        .unwrap();
                    let status = r.status().as_u16();
                    let retry = r
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    let body: Value = r.json().unwrap();
                    (iters, status, body, retry, std::time::Instant::now())
                })
            })
            .collect();
        let mut all = vec![first.join().unwrap()];
        all.extend(burst.into_iter().map(|h| h.join().unwrap()));
        all
    });
    let first_done = results[0].4;
    let (mut ok, mut refused) = (0, 0);
    for (iters, status, body, retry, at) in &results {
        match status {
            200 => {
                ok += 1;
                assert_eq!(
                    echoed(body),
                    *iters,
                    "each answer belongs to its own request"
                );
            }
            503 => {
                refused += 1;
                assert_eq!(retry.as_deref(), Some("1"), "503 carries Retry-After");
                assert!(
                    body["error"].as_str().unwrap().contains("queued already"),
                    "{body}"
                );
                assert!(
                    *at < first_done,
                    "refused at once, not after the queue moved"
                );
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(ok + refused, 41);
    assert!(
        ok >= 5,
        "the running request and a full queue of 4 succeed ({ok})"
    );
    assert!(refused >= 30, "most of the burst is refused ({refused})");
    let labels = |r| [("model", "slow"), ("result", r)];
    assert_eq!(
        server.metric("ferroserve_requests_total", &labels("success")),
        Some(ok as f64)
    );
    assert_eq!(
        server.metric("ferroserve_requests_total", &labels("failure")),
        Some(refused as f64)
    );
    assert_eq!(
        server.metric("ferroserve_queue_depth", &[("model", "slow")]),
        Some(0.0)
    );
}

#[test]
fn timed_out_and_abandoned_requests_never_run() {
    let repo = Repo::with(&[]);
    configured(&repo, "slow", "slow", "threads: 1\n");
    let server = Server::start(repo, &[]);
    let batches = || {
        server
            .metric("ferroserve_batch_size_count", &[("model", "slow")])
            .unwrap_or(0.0)
    };
    thread::scope(|s| {
        let server = &server;
        let long = s.spawn(move || server.post_json("/v2/models/slow/infer", &slow_request(4000)));
        while server.metric("ferroserve_inflight_requests", &[("model", "slow")]) != Some(1.0) {
            thread::sleep(std::time::Duration::from_millis(5));
        }
        // Queued behind the long request with a 100 ms timeout (microseconds, Triton's unit).
        let mut req = slow_request(7);
        req["parameters"] = json!({"timeout": 100_000});
        let (status, body) = server.post_json("/v2/models/slow/infer", &req);
        assert_eq!(status, 504, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("was not run"),
            "{body}"
        );

        // A client that gives up while queued.
        let impatient = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_millis(100))
            .build()
            .unwrap();
        assert!(impatient
            .post(server.at("/v2/models/slow/infer"))
            .json(&slow_request(8))
            .send()
            .is_err());

        let (status, _) = long.join().unwrap();
        assert_eq!(status, 200);
    });
    // FIFO: anything still queued would run before this one.
    let (status, body) = server.post_json("/v2/models/slow/infer", &slow_request(9));
    assert_eq!((status, echoed(&body)), (200, 9));
    assert_eq!(batches(), 2.0, "only the long request and the last one ran");
}

#[test]
fn default_timeout_from_model_yaml_applies() {
    let repo = Repo::with(&[]);
    configured(
        &repo,
        "slow",
        "slow",
        "threads: 1\nmax_batch_size: 1\ndynamic_batching: {default_timeout_ms: 50}\n",
    );
    let server = Server::start(repo, &[]);
    thread::scope(|s| {
        let server = &server;
        let long = s.spawn(move || server.post_json("/v2/models/slow/infer", &slow_request(3000)));
        while server.metric("ferroserve_inflight_requests", &[("model", "slow")]) != Some(1.0) {
            thread::sleep(std::time::Duration::from_millis(5));
        }
        let (status, body) = server.post_json("/v2/models/slow/infer", &slow_request(7));
        assert_eq!(status, 504, "{body}");
        // The long request was taken before its deadline, so it runs to the end.
        assert_eq!(long.join().unwrap().0, 200);
    });
}

#[test]
fn two_replicas_compute_two_requests_at_once() {
    let repo = Repo::with(&[]);
    configured(&repo, "slow", "slow", "replicas: 2\nthreads: 1\n");
    let server = Server::start(repo, &[]);
    assert_eq!(
        server.metric("ferroserve_replicas", &[("model", "slow")]),
        Some(2.0)
    );
    thread::scope(|s| {
        let server = &server;
        let a = s.spawn(move || server.post_json("/v2/models/slow/infer", &slow_request(6000)));
        let b = s.spawn(move || server.post_json("/v2/models/slow/infer", &slow_request(6001)));
        let mut most = 0.0f64;
        while !(a.is_finished() && b.is_finished()) {
            if let Some(n) = server.metric("ferroserve_inflight_requests", &[("model", "slow")]) {
                most = most.max(n);
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(echoed(&a.join().unwrap().1), 6000);
        assert_eq!(echoed(&b.join().unwrap().1), 6001);
        assert_eq!(most, 2.0, "both replicas computed at the same time");
    });
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let repo = Repo::with(&[]);
    configured(&repo, "slow", "slow", "threads: 1\n");
    let mut server = Server::start(repo, &[]);
    let url = server.at("/v2/models/slow/infer");
    let requests: Vec<_> = (0..3)
        .map(|i| {
            let url = url.clone();
            thread::spawn(move || {
                let r = common::client()
                    .post(url)
                    .json(&slow_request(1500 + i))
                    .send()
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().unwrap())
            })
        })
        .collect();
    // One computing, two queued.
    while server.metric("ferroserve_queue_depth", &[("model", "slow")]) != Some(2.0) {
        thread::sleep(std::time::Duration::from_millis(5));
    }
    let exit = server.terminate();
    for (i, h) in requests.into_iter().enumerate() {
        let (status, body) = h.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(echoed(&body), 1500 + i as i64);
    }
    assert!(
        exit.success(),
        "exit status {exit:?}\n{}",
        server.log.lock().unwrap()
    );
    assert!(server.log.lock().unwrap().contains("shut down cleanly"));
}

#[test]
fn unusable_placement_and_batching_configs_are_load_errors() {
    let repo = Repo::with(&["simple"]);
    configured(&repo, "on-gpu", "simple", "devices: [cuda:0]\n");
    configured(&repo, "round-robin", "simple", "devices: round-robin\n");
    configured(
        &repo,
        "batched-efficientnet",
        "efficientnet-lite0",
        "dynamic_batching: {}\n",
    );
    repo.write("bad-pad/model.yaml", b"pad: {NOPE: 0}\n");
    repo.link("bad-pad/1", &model_dir("simple").join("1"));
    // A model whose output has a fixed first dimension cannot be batched: reshape3's is [3].
    configured(&repo, "unbatchable", "reshape3", "dynamic_batching: {}\n");
    let server = Server::start(repo, &[]);
    let (_, index) = server.post_json("/v2/repository/index", &json!({}));
    let reason = |name: &str| -> String {
        index
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["reason"].as_str())
            .unwrap_or_else(|| panic!("{name} should be unavailable: {index}"))
            .to_string()
    };
    let gpu = reason("on-gpu");
    assert!(gpu.contains("cuda:0") && gpu.contains("CUDA"), "{gpu}");
    assert!(reason("round-robin").contains("needs a visible GPU"));
    assert!(reason("bad-pad").contains("'NOPE', which is not an input"));
    let unbatchable = reason("unbatchable");
    assert!(
        unbatchable.contains("dynamic first dimension") && unbatchable.contains("'Y'"),
        "{unbatchable}"
    );
    // efficientnet-lite0's inputs and outputs do have a dynamic batch dimension.
    assert!(
        index
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "batched-efficientnet" && r["state"] == "READY"),
        "{index}"
    );
    let (status, _) = server.post_json(
        "/v2/models/simple/infer",
        &json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": vec![0; 16]},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": vec![0; 16]}]}),
    );
    assert_eq!(status, 200);
}

#[test]
fn preserve_ordering_holds_a_fast_answer_behind_a_slow_earlier_one() {
    let repo = Repo::with(&[]);
    let base = "replicas: 2\nthreads: 1\nmax_batch_size: 1\ndynamic_batching:\n";
    configured(
        &repo,
        "ordered",
        "slow",
        &format!("{base}  preserve_ordering: true\n"),
    );
    configured(
        &repo,
        "unordered",
        "slow",
        &format!("{base}  preserve_ordering: false\n"),
    );
    let server = Server::start(repo, &[]);
    // The slow request goes first; the fast one lands on the other replica and finishes first.
    // Returns whether the slow one was still computing when the fast one's answer arrived.
    let slow_still_running_at_fast_answer = |model: &str| -> bool {
        thread::scope(|s| {
            let server = &server;
            let path = format!("/v2/models/{model}/infer");
            let slow = {
                let path = path.clone();
                s.spawn(move || server.post_json(&path, &slow_request(3000)))
            };
            while server.metric("ferroserve_inflight_requests", &[("model", model)]) != Some(1.0) {
                thread::sleep(std::time::Duration::from_millis(5));
            }
            let (status, body) = server.post_json(&path, &slow_request(5));
            assert_eq!((status, echoed(&body)), (200, 5), "{body}");
            // A replica lowers the gauge before it answers, so 0 here means the slow request
            // had been answered (or was being answered) before the fast one was let go.
            let running =
                server.metric("ferroserve_inflight_requests", &[("model", model)]) == Some(1.0);
            let (status, body) = slow.join().unwrap();
            assert_eq!((status, echoed(&body)), (200, 3000), "{body}");
            running
        })
    };
    assert!(
        slow_still_running_at_fast_answer("unordered"),
        "without the option the fast answer leaves first"
    );
    assert!(
        !slow_still_running_at_fast_answer("ordered"),
        "with it, the fast answer waits for the earlier one"
    );
}

#[test]
fn model_config_reports_batching_as_triton_tools_expect() {
    let repo = Repo::with(&[]);
    configured(
        &repo,
        "minilm",
        "minilm",
        "replicas: 2\nmax_batch_size: 8\ndynamic_batching:\n  preferred_batch_size: [4, 8]\n  max_queue_delay_us: 300\n  max_queue_size: 16\n  default_timeout_ms: 5\npad: {input_ids: 0, attention_mask: 0, token_type_ids: 0}\n",
    );
    let server = Server::start(repo, &[]);
    let (status, config) = server.get("/v2/models/minilm/config");
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["max_batch_size"], 8);
    // Dims leave out the batch dimension when the server batches.
    assert_eq!(config["input"][0]["dims"], json!([-1]));
    assert_eq!(config["output"][0]["dims"], json!([-1, 384]));
    assert_eq!(config["output"][0]["data_type"], "TYPE_FP32");
    assert_eq!(config["instance_group"][0]["count"], 2);
    let db = &config["dynamic_batching"];
    assert_eq!(db["preferred_batch_size"], json!([4, 8]));
    assert_eq!(db["max_queue_delay_microseconds"], 300);
    assert_eq!(
        db["default_queue_policy"],
        json!({"default_timeout_microseconds": 5000, "max_queue_size": 16})
    );
}
