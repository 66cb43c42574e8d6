//! The Deployment and its pod: the container's arguments, probes, resources, security context
//! and volumes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    HTTPGetAction, KeyToPath, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Toleration,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::resources::{config_map_name, labels, metadata, selector};
use crate::settings::{
    app_key, config_key, AppFolder, Settings, Source, Workload, APP_DIR, GRPC_PORT, HTTP_PORT,
    MODELS_DIR, MODEL_CONFIG_DIR, STATE_DIR, USER_ID,
};

/// Seconds between startup and readiness probes.
const PROBE_PERIOD_S: u32 = 5;
/// Seconds Kubernetes waits past the drain and the grace before it kills the container.
const KILL_MARGIN_S: i64 = 5;
/// The NVIDIA device plugin's resource.
const GPU: &str = "nvidia.com/gpu";

/// The Deployment.
pub(crate) fn deployment(s: &Settings) -> Deployment {
    Deployment {
        metadata: metadata(s, &s.name),
        spec: Some(DeploymentSpec {
            // The autoscaler owns the count; writing one would reset it on every apply.
            replicas: s.autoscale.is_none().then_some(s.replicas as i32),
            selector: LabelSelector {
                match_labels: Some(selector(s)),
                ..Default::default()
            },
            // A new pod is ready before an old one goes: capacity never drops in a rollout.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(s)),
                    annotations: Some(BTreeMap::from([
                        ("prometheus.io/scrape".to_string(), "true".to_string()),
                        ("prometheus.io/port".to_string(), HTTP_PORT.to_string()),
                        ("prometheus.io/path".to_string(), "/metrics".to_string()),
                    ])),
                    ..Default::default()
                }),
                spec: Some(pod(s)),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(s: &Settings) -> PodSpec {
    let (volumes, mounts, init) = storage(s);
    PodSpec {
        termination_grace_period_seconds: Some(
            i64::from(s.drain_delay_s) + i64::from(s.shutdown_grace_s) + KILL_MARGIN_S,
        ),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(USER_ID),
            run_as_group: Some(USER_ID),
            fs_group: Some(USER_ID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        init_containers: init.map(|c| vec![c]),
        containers: vec![Container {
            name: "ferroserve".into(),
            image: Some(s.image()),
            image_pull_policy: Some("IfNotPresent".into()),
            args: Some(args(s)),
            env: Some(vec![EnvVar {
                name: "FERROSERVE_HOME".into(),
                value: Some(STATE_DIR.into()),
                ..Default::default()
            }]),
            ports: Some(vec![port("http", HTTP_PORT), port("grpc", GRPC_PORT)]),
            startup_probe: Some(probe(
                ready_path(s),
                PROBE_PERIOD_S,
                3,
                s.startup_timeout_s.div_ceil(PROBE_PERIOD_S),
            )),
            readiness_probe: Some(probe(ready_path(s), PROBE_PERIOD_S, 3, 2)),
            liveness_probe: Some(probe(live_path(s), 10, 5, 3)),
            resources: Some(resources(s)),
            security_context: Some(container_security()),
            volume_mounts: Some(mounts),
            ..Default::default()
        }],
        volumes: Some(volumes),
        tolerations: (s.gpus > 0).then(|| {
            vec![Toleration {
                key: Some(GPU.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]
        }),
        ..Default::default()
    }
}

/// The container's arguments (the image's entry point is `ferroserve`).
pub fn args(s: &Settings) -> Vec<String> {
    let mut args = vec!["--log-format=json".to_string()];
    match &s.workload {
        Workload::Repository { config, .. } => {
            args.extend([
                "serve".to_string(),
                format!("--model-repository={MODELS_DIR}"),
                "--host=0.0.0.0".to_string(),
                format!("--http-port={HTTP_PORT}"),
                format!("--grpc-port={GRPC_PORT}"),
            ]);
            args.push(format!("--shutdown-grace={}", s.shutdown_grace_s));
            args.push(format!("--drain-delay={}", s.drain_delay_s));
            if !config.is_empty() {
                args.push(format!("--model-config-dir={MODEL_CONFIG_DIR}"));
            }
        }
        Workload::App { file, grpc, .. } => {
            args.extend([
                "run".to_string(),
                format!("{APP_DIR}/{file}"),
                "--host=0.0.0.0".to_string(),
                format!("--port={HTTP_PORT}"),
            ]);
            if *grpc {
                args.push(format!("--grpc-port={GRPC_PORT}"));
            }
            args.push(format!("--shutdown-grace={}", s.shutdown_grace_s));
            args.push(format!("--drain-delay={}", s.drain_delay_s));
        }
    }
    args
}

/// The route the startup and readiness probes ask.
pub fn ready_path(s: &Settings) -> &'static str {
    match s.workload {
        Workload::App { ray: true, .. } => "/-/healthz",
        _ => "/v2/health/ready",
    }
}

/// The route the liveness probe asks.
pub fn live_path(s: &Settings) -> &'static str {
    match s.workload {
        Workload::App { ray: true, .. } => "/-/healthz",
        _ => "/v2/health/live",
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn probe(path: &str, period_s: u32, timeout_s: u32, failures: u32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period_s as i32),
        timeout_seconds: Some(timeout_s as i32),
        failure_threshold: Some(failures as i32),
        ..Default::default()
    }
}

fn resources(s: &Settings) -> ResourceRequirements {
    let mut requests = BTreeMap::from([
        ("cpu".to_string(), Quantity(s.cpu.clone())),
        ("memory".to_string(), Quantity(s.memory.clone())),
    ]);
    // No CPU limit: throttling a server that batches only adds latency; memory is limited so
    // the scheduler's placement holds.
    let mut limits = BTreeMap::from([("memory".to_string(), Quantity(s.memory.clone()))]);
    if s.gpus > 0 {
        requests.insert(GPU.into(), Quantity(s.gpus.to_string()));
        limits.insert(GPU.into(), Quantity(s.gpus.to_string()));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..Default::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

fn volume(name: &str) -> Volume {
    Volume {
        name: name.into(),
        ..Default::default()
    }
}

/// Where the repository or the app folder comes from.
enum Origin<'a> {
    Source(&'a Source),
    Files(&'a BTreeMap<String, Vec<u8>>),
}

/// Volumes, the server's mounts and the storage initializer (for a URI).
fn storage(s: &Settings) -> (Vec<Volume>, Vec<VolumeMount>, Option<Container>) {
    let (origin, target, source_volume) = match &s.workload {
        Workload::Repository { models, .. } => (Origin::Source(models), MODELS_DIR, "models"),
        Workload::App {
            folder: AppFolder::Source(source),
            ..
        } => (Origin::Source(source), APP_DIR, "app"),
        Workload::App {
            folder: AppFolder::Files(files),
            ..
        } => (Origin::Files(files), APP_DIR, "app"),
    };
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut init = None;
    match origin {
        Origin::Source(Source::Pvc { claim, sub_path }) => {
            volumes.push(Volume {
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(true),
                }),
                ..volume(source_volume)
            });
            mounts.push(VolumeMount {
                read_only: Some(true),
                sub_path: sub_path.clone(),
                ..mount(source_volume, target)
            });
        }
        Origin::Source(Source::Uri(uri)) => {
            volumes.push(Volume {
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..volume(source_volume)
            });
            mounts.push(mount(source_volume, target));
            init = Some(Container {
                name: "storage-initializer".into(),
                image: Some(s.storage_initializer.clone()),
                args: Some(vec![uri.clone(), target.to_string()]),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".to_string(), Quantity("100m".into())),
                        ("memory".to_string(), Quantity("100Mi".into())),
                    ])),
                    limits: Some(BTreeMap::from([
                        ("cpu".to_string(), Quantity("1".into())),
                        ("memory".to_string(), Quantity("1Gi".into())),
                    ])),
                    ..Default::default()
                }),
                security_context: Some(container_security()),
                // Its root is read-only too; downloads stage in temporary files.
                volume_mounts: Some(vec![mount(source_volume, target), mount("tmp", "/tmp")]),
                ..Default::default()
            });
        }
        Origin::Files(files) => {
            volumes.push(Volume {
                config_map: Some(config_map_volume(
                    s,
                    "app",
                    files.keys().map(|path| (app_key(path), path.clone())),
                )),
                ..volume(source_volume)
            });
            mounts.push(VolumeMount {
                read_only: Some(true),
                ..mount(source_volume, target)
            });
        }
    }
    volumes.push(Volume {
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..volume("state")
    });
    mounts.push(mount("state", STATE_DIR));
    volumes.push(Volume {
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..volume("tmp")
    });
    mounts.push(mount("tmp", "/tmp"));
    // Python models pass tensors through shared memory; a container's own /dev/shm is 64 MiB.
    volumes.push(Volume {
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("1Gi".into())),
        }),
        ..volume("dshm")
    });
    mounts.push(mount("dshm", "/dev/shm"));
    if let Workload::Repository { config, .. } = &s.workload {
        if !config.is_empty() {
            volumes.push(Volume {
                config_map: Some(config_map_volume(
                    s,
                    "model-config",
                    config
                        .keys()
                        .map(|name| (config_key(name), format!("{name}/model.yaml"))),
                )),
                ..volume("model-config")
            });
            mounts.push(VolumeMount {
                read_only: Some(true),
                ..mount("model-config", MODEL_CONFIG_DIR)
            });
        }
    }
    (volumes, mounts, init)
}

/// A ConfigMap volume whose items put each key at its path.
fn config_map_volume(
    s: &Settings,
    suffix: &str,
    items: impl Iterator<Item = (Result<String, crate::SettingsError>, String)>,
) -> ConfigMapVolumeSource {
    ConfigMapVolumeSource {
        name: config_map_name(s, suffix),
        items: Some(
            items
                // Keys were checked by `Settings::check` before rendering.
                .filter_map(|(key, path)| key.ok().map(|key| (key, path)))
                .map(|(key, path)| KeyToPath {
                    key,
                    path,
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}
