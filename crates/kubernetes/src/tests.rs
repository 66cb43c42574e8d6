//! The rendered resources, read back as YAML.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use crate::*;

fn canonical() -> Settings {
    let mut s = Settings::new(Workload::Repository {
        models: Source::parse("pvc://models/repo").unwrap(),
        config: BTreeMap::new(),
    });
    s.name = "demo".into();
    s.gpus = 1;
    s.autoscale = Some(Autoscale::parse("2:6").unwrap());
    s
}

fn rendered(s: &Settings) -> BTreeMap<String, Value> {
    render(s)
        .unwrap()
        .into_iter()
        .map(|m| (m.file, serde_yaml_ng::from_str(&m.yaml).unwrap()))
        .collect()
}

/// `a.b.0.c`; a `~` in a key stands for a dot (`nvidia~com/gpu`).
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[key.replace('~', ".").as_str()],
        })
}

fn text(v: &Value, path: &str) -> String {
    match at(v, path) {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("{path} is {other:?}"),
    }
}

#[test]
fn the_deployment_probes_the_v2_health_routes_and_is_placed_on_a_gpu() {
    let r = rendered(&canonical());
    let d = &r["deployment.yaml"];
    assert_eq!(text(d, "apiVersion"), "apps/v1");
    assert_eq!(text(d, "kind"), "Deployment");
    // The autoscaler owns the replica count.
    assert!(at(d, "spec.replicas").is_null());
    let c = at(d, "spec.template.spec.containers.0");
    assert_eq!(
        text(c, "image"),
        format!(
            "ghcr.io/ferroserve/ferroserve:{}-cuda",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(text(c, "startupProbe.httpGet.path"), "/v2/health/ready");
    assert_eq!(text(c, "startupProbe.failureThreshold"), "120");
    assert_eq!(text(c, "readinessProbe.httpGet.path"), "/v2/health/ready");
    assert_eq!(text(c, "livenessProbe.httpGet.path"), "/v2/health/live");
    assert_eq!(text(c, "livenessProbe.httpGet.port"), "http");
    assert_eq!(text(c, "resources.limits.nvidia~com/gpu"), "1");
    assert_eq!(text(c, "securityContext.readOnlyRootFilesystem"), "true");
    let args: Vec<String> = (0..8).map(|i| text(c, &format!("args.{i}"))).collect();
    assert_eq!(
        args,
        [
            "--log-format=json",
            "serve",
            "--model-repository=/models",
            "--host=0.0.0.0",
            "--http-port=8080",
            "--grpc-port=9000",
            "--shutdown-grace=30",
            "--drain-delay=5"
        ]
    );
    assert!(at(c, "args.8").is_null());
    assert_eq!(text(c, "volumeMounts.0.subPath"), "repo");
    assert_eq!(
        text(
            d,
            "spec.template.spec.volumes.0.persistentVolumeClaim.claimName"
        ),
        "models"
    );
    assert_eq!(
        text(d, "spec.template.spec.terminationGracePeriodSeconds"),
        "40"
    );
    assert_eq!(
        text(d, "spec.template.spec.tolerations.0.key"),
        "nvidia.com/gpu"
    );
    assert_eq!(
        text(d, "spec.template.metadata.annotations.prometheus~io/port"),
        "8080"
    );
}

#[test]
fn the_autoscaler_follows_cpu_and_queue_depth() {
    let r = rendered(&canonical());
    let h = &r["horizontalpodautoscaler.yaml"];
    assert_eq!(text(h, "apiVersion"), "autoscaling/v2");
    assert_eq!(text(h, "spec.minReplicas"), "2");
    assert_eq!(text(h, "spec.maxReplicas"), "6");
    assert_eq!(
        text(h, "spec.metrics.0.resource.target.averageUtilization"),
        "70"
    );
    assert_eq!(text(h, "spec.metrics.1.pods.metric.name"), QUEUE_METRIC);
    assert_eq!(text(h, "spec.metrics.1.pods.target.averageValue"), "4");
    let svc = &r["service.yaml"];
    assert_eq!(text(svc, "spec.ports.1.name"), "grpc");
    assert_eq!(text(svc, "spec.ports.1.appProtocol"), "kubernetes.io/h2c");
    assert_eq!(
        text(&r["poddisruptionbudget.yaml"], "spec.maxUnavailable"),
        "1"
    );
}

#[test]
fn a_uri_is_downloaded_by_the_storage_initializer_and_model_yaml_files_come_from_a_config_map() {
    let mut s = Settings::new(Workload::Repository {
        models: Source::parse("s3://bucket/repo").unwrap(),
        config: BTreeMap::from([("minilm".to_string(), "task: text-embedding\n".to_string())]),
    });
    s.replicas = 3;
    let r = rendered(&s);
    let pod = at(&r["deployment.yaml"], "spec.template.spec");
    assert_eq!(text(&r["deployment.yaml"], "spec.replicas"), "3");
    assert_eq!(text(pod, "initContainers.0.args.0"), "s3://bucket/repo");
    assert_eq!(text(pod, "initContainers.0.args.1"), "/models");
    assert!(at(pod, "volumes.0.emptyDir").is_mapping());
    assert!(at(pod, "tolerations").is_null());
    let c = at(pod, "containers.0");
    assert_eq!(
        text(c, "args.8"),
        "--model-config-dir=/etc/ferroserve/models"
    );
    let config = at(pod, "volumes.4.configMap");
    assert_eq!(text(config, "name"), "ferroserve-model-config");
    assert_eq!(text(config, "items.0.key"), "minilm.model.yaml");
    assert_eq!(text(config, "items.0.path"), "minilm/model.yaml");
    let map = &r["configmap.yaml"];
    assert_eq!(
        text(map, "data.minilm~model~yaml"),
        "task: text-embedding\n"
    );
    assert!(!r.contains_key("horizontalpodautoscaler.yaml"));
}

#[test]
fn a_flow_runs_from_its_folder_in_a_config_map() {
    let files = BTreeMap::from([
        ("flow.yml".to_string(), b"jtype: Flow\n".to_vec()),
        ("executors/upper.py".to_string(), b"print()\n".to_vec()),
        ("blob.bin".to_string(), vec![0xff, 0xfe]),
    ]);
    let mut s = Settings::new(Workload::App {
        file: "flow.yml".into(),
        folder: AppFolder::Files(files),
        grpc: true,
        ray: false,
    });
    s.name = "flow".into();
    let r = rendered(&s);
    let c = at(&r["deployment.yaml"], "spec.template.spec.containers.0");
    assert_eq!(text(c, "args.1"), "run");
    assert_eq!(text(c, "args.2"), "/app/flow.yml");
    assert_eq!(text(c, "args.4"), "--port=8080");
    assert_eq!(text(c, "args.5"), "--grpc-port=9000");
    let map = &r["configmap.yaml"];
    assert_eq!(text(map, "metadata.name"), "flow-app");
    assert_eq!(text(map, "data.executors__upper~py"), "print()\n");
    assert_eq!(text(map, "binaryData.blob~bin"), "//4=");
    let items = at(
        &r["deployment.yaml"],
        "spec.template.spec.volumes.0.configMap.items",
    );
    assert!(items.as_sequence().unwrap().iter().any(
        |i| text(i, "path") == "executors/upper.py" && text(i, "key") == "executors__upper.py"
    ));

    s.workload = Workload::App {
        file: "serve_config.yaml".into(),
        folder: AppFolder::Source(Source::parse("pvc://apps/shop").unwrap()),
        grpc: false,
        ray: true,
    };
    let r = rendered(&s);
    let c = at(&r["deployment.yaml"], "spec.template.spec.containers.0");
    assert_eq!(text(c, "readinessProbe.httpGet.path"), "/-/healthz");
    assert!(!c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|a| a.as_str().is_some_and(|a| a.starts_with("--grpc-port"))));
    assert!(!r.contains_key("configmap.yaml"));
}
