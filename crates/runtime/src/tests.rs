//! The runtime's lifecycle, budget, lazy loading, scaling and scheduler, on the fake backend:
//! no ONNX Runtime, no checkpoint.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroserve_core::{DataType, ErrorKind, InferRequest, NamedTensor, Tensor};

use crate::backend::fake::FakeLoader;
use crate::backend::Backends;
use crate::{ModelState, Runtime, RuntimeOptions, ScaleRequest};

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A fake model `name` (version 1) whose batches take `delay_ms`, with `yaml` as its
    /// model.yaml.
    fn model(&self, name: &str, delay_ms: u64, yaml: &str) {
        self.write(
            &format!("{name}/1/fake.json"),
            &format!("{{\"width\": 2, \"delay_ms\": {delay_ms}}}"),
        );
        if !yaml.is_empty() {
            self.write(&format!("{name}/model.yaml"), yaml);
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn runtime(options: RuntimeOptions) -> (Arc<Runtime>, FakeLoader) {
    let fake = FakeLoader::default();
    let mut backends = Backends::new();
    backends.add(fake.clone());
    (Arc::new(Runtime::new(backends, options).unwrap()), fake)
}

fn request(values: [f32; 2]) -> InferRequest {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    InferRequest {
        inputs: vec![NamedTensor {
            name: "x".into(),
            tensor: Tensor::new(DataType::Fp32, vec![1, 2], bytes.into()).unwrap(),
        }],
        ..Default::default()
    }
}

fn floats(t: &Tensor) -> Vec<f32> {
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn reason(runtime: &Runtime, name: &str) -> String {
    runtime
        .index(false)
        .into_iter()
        .find(|r| r.name == name)
        .and_then(|r| r.reason)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_is_inferred_from_the_folder_and_reported() {
    let repo = Repo::new();
    repo.model("plain", 0, "");
    repo.model("typo", 0, "backend: tensorflow\n");
    repo.write("empty/model.yaml", "");
    let (runtime, fake) = runtime(RuntimeOptions::default());
    runtime.load_repository(repo.path()).unwrap();

    let out = runtime
        .infer("plain", None, request([1.0, 2.5]))
        .await
        .unwrap();
    assert_eq!(floats(&out.outputs[0].tensor), [2.0, 5.0]);
    assert_eq!(fake.loads.load(Ordering::Relaxed), 1);

    let config = runtime.model_config("plain", None).unwrap();
    assert_eq!(config.backend, "fake");
    let triton = serde_json::to_value(config.triton()).unwrap();
    assert_eq!(triton["backend"], "fake");
    assert_eq!(triton["platform"], "fake");
    assert_eq!(triton["version_policy"], serde_json::json!({"all": {}}));
    assert_eq!(triton["default_model_filename"], "fake.json");

    let typo = reason(&runtime, "typo");
    assert!(typo.contains("unknown backend 'tensorflow'"), "{typo}");
    assert!(typo.contains("this server has: fake"), "{typo}");
    assert!(reason(&runtime, "empty").contains("no fake.json in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_device_is_the_servers_lack_not_the_clients_mistake() {
    let repo = Repo::new();
    repo.model("gpu", 0, "devices: [cuda:63]\n");
    let (runtime, _) = runtime(RuntimeOptions::default());
    runtime.load_repository(repo.path()).unwrap();
    let e = runtime.load("gpu").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("cuda:63 was asked for"), "{e}");
    let e = runtime
        .infer("gpu", None, request([1.0, 1.0]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");

    // A model file that cannot be used is the model's problem, said as such.
    repo.write("broken/1/fake.json", "{\"fail\": \"weights are corrupt\"}");
    let e = runtime.load("broken").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(
        e.to_string()
            .starts_with("model 'broken' failed to load: version 1: weights are corrupt"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_models_load_on_first_request_and_the_budget_evicts_the_least_recently_used() {
    let repo = Repo::new();
    let weights = "x".repeat(4000);
    for name in ["a", "b"] {
        repo.model(name, 0, "load: lazy\n");
        repo.write(&format!("{name}/1/weights.bin"), &weights);
    }
    let (runtime, fake) = runtime(RuntimeOptions {
        memory_budget: "6000".parse().unwrap(),
        ..Default::default()
    });
    runtime.load_repository(repo.path()).unwrap();
    assert_eq!(fake.loads.load(Ordering::Relaxed), 0, "lazy models wait");
    assert!(!runtime.model_ready("a", None).unwrap());

    runtime.infer("a", None, request([1.0, 1.0])).await.unwrap();
    assert!(runtime.model_ready("a", None).unwrap());
    // b does not fit beside a: a, idle, goes.
    runtime.infer("b", None, request([1.0, 1.0])).await.unwrap();
    assert!(runtime.model_ready("b", None).unwrap());
    assert!(!runtime.model_ready("a", None).unwrap());
    assert_eq!(runtime.describe("a").unwrap().state, "NOT_LOADED");
    // And a comes back on its next request.
    runtime.infer("a", None, request([1.0, 1.0])).await.unwrap();
    assert_eq!(fake.loads.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_waits_for_the_requests_in_flight_and_fails_none() {
    let repo = Repo::new();
    repo.model("slow", 400, "");
    let (runtime, _) = runtime(RuntimeOptions::default());
    runtime.load_repository(repo.path()).unwrap();
    let r = runtime.clone();
    let running = tokio::spawn(async move { r.infer("slow", None, request([3.0, 4.0])).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = runtime.clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || r.unload("slow"))
        .await
        .unwrap()
        .unwrap();
    // The unload returned only once the request had its answer.
    assert!(running.is_finished());
    assert!(started.elapsed() >= Duration::from_millis(200));
    let out = running.await.unwrap().unwrap();
    assert_eq!(floats(&out.outputs[0].tensor), [6.0, 8.0]);
    let e = runtime
        .infer("slow", None, request([1.0, 1.0]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let repo = Repo::new();
    repo.model("narrow", 300, "");
    let (runtime, _) = runtime(RuntimeOptions {
        max_queue_size: 2,
        ..Default::default()
    });
    runtime.load_repository(repo.path()).unwrap();
    let call = || {
        let r = runtime.clone();
        tokio::spawn(async move { r.infer("narrow", None, request([1.0, 1.0])).await })
    };
    // One runs...
    let first = call();
    while runtime.load_of("narrow").unwrap().1 == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let results = futures_util::future::join_all((0..5).map(|_| call())).await;
    assert!(first.await.unwrap().is_ok());
    let refused = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .unwrap()
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::Overloaded)
        })
        .count();
    // ...two wait, the rest are refused.
    assert_eq!(refused, 3, "{results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_from_model_yaml_scales_up_under_load_and_back_down() {
    let repo = Repo::new();
    repo.model(
        "elastic",
        100,
        "autoscaling: {min_replicas: 1, max_replicas: 3, target_ongoing_requests: 1, upscale_delay_s: 0, downscale_delay_s: 0.3, metrics_interval_s: 0.05, look_back_period_s: 0.2}\n",
    );
    let (runtime, _) = runtime(RuntimeOptions::default());
    runtime.load_repository(repo.path()).unwrap();
    let replicas = |r: &Runtime| r.describe("elastic").unwrap().versions[0].replicas;
    assert_eq!(replicas(&runtime), 1);

    let load = {
        let r = runtime.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut most = 0;
            while started.elapsed() < Duration::from_secs(3) {
                let calls = (0..6).map(|_| r.infer("elastic", None, request([1.0, 1.0])));
                for result in futures_util::future::join_all(calls).await {
                    result.expect("no request fails while scaling");
                }
                most = most.max(replicas(&r));
            }
            most
        })
    };
    assert_eq!(load.await.unwrap(), 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while replicas(&runtime) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(replicas(&runtime), 1, "back to min_replicas when idle");
    let text = runtime.metrics_text();
    assert!(
        text.contains("ferroserve_replicas{model=\"elastic\",version=\"1\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torchserve_min_and_max_workers_set_the_autoscalers_bounds() {
    let repo = Repo::new();
    repo.model("ts", 0, "");
    let (runtime, _) = runtime(RuntimeOptions::default());
    runtime.load_repository(repo.path()).unwrap();
    let n = runtime
        .rescale(
            "ts",
            None,
            ScaleRequest {
                min: Some(2),
                max: Some(4),
            },
        )
        .unwrap();
    assert_eq!(n, 2);
    let v = &runtime.describe("ts").unwrap().versions[0];
    let a = v.autoscaling.clone().expect("autoscaling on");
    assert_eq!((a.min_replicas, a.max_replicas), (2, 4));
    // A fixed count turns it off again.
    let n = runtime
        .rescale(
            "ts",
            None,
            ScaleRequest {
                min: Some(1),
                max: None,
            },
        )
        .unwrap();
    assert_eq!(n, 1);
    assert!(runtime.describe("ts").unwrap().versions[0]
        .autoscaling
        .is_none());
    assert_eq!(runtime.index(true)[0].state, ModelState::Ready);
    // Bounds the management API may not set.
    for (min, max) in [
        (Some(1), Some(0)),
        (Some(1), Some(100_000)),
        (None, Some(0)),
    ] {
        let e = runtime
            .rescale("ts", None, ScaleRequest { min, max })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("max_worker"), "{e}");
    }
}
