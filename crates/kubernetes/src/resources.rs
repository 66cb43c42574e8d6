//! The resources around the pod (Service, HorizontalPodAutoscaler, PodDisruptionBudget,
//! ConfigMaps), their shared metadata, and the rendering of all of them as YAML files.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use crate::settings::{
    app_key, config_key, AppFolder, Autoscale, Settings, SettingsError, Workload, GRPC_PORT,
    HTTP_PORT,
};

/// The per-pod metric the autoscaler follows, as the Prometheus Adapter rule in the README
/// names it: requests waiting in the pod's model queues.
pub const QUEUE_METRIC: &str = "ferroserve_queue_depth";

/// One rendered resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The file it is written to (`deployment.yaml`, ...).
    pub file: String,
    /// The resource as YAML.
    pub yaml: String,
}

/// Why resources could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The settings are wrong.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A resource could not be written as YAML.
    #[error("cannot write {file} as YAML: {source}")]
    Yaml {
        /// The file.
        file: String,
        /// The serialiser's error.
        source: serde_yaml_ng::Error,
    },
}

/// Every resource the settings call for, checked first.
pub fn render(s: &Settings) -> Result<Vec<Manifest>, RenderError> {
    s.check()?;
    let mut out = Vec::new();
    let mut add = |file: &str, yaml: Result<String, serde_yaml_ng::Error>| {
        yaml.map(|yaml| {
            out.push(Manifest {
                file: file.to_string(),
                yaml,
            })
        })
        .map_err(|source| RenderError::Yaml {
            file: file.to_string(),
            source,
        })
    };
    add(
        "deployment.yaml",
        serde_yaml_ng::to_string(&crate::pod::deployment(s)),
    )?;
    add("service.yaml", serde_yaml_ng::to_string(&service(s)))?;
    if s.disruption_budget {
        add(
            "poddisruptionbudget.yaml",
            serde_yaml_ng::to_string(&disruption_budget(s)),
        )?;
    }
    if let Some(a) = &s.autoscale {
        add(
            "horizontalpodautoscaler.yaml",
            serde_yaml_ng::to_string(&autoscaler(s, a)),
        )?;
    }
    if let Some(c) = config_map(s)? {
        add("configmap.yaml", serde_yaml_ng::to_string(&c))?;
    }
    Ok(out)
}

/// Every resource's labels.
pub(crate) fn labels(s: &Settings) -> BTreeMap<String, String> {
    let mut l = selector(s);
    l.insert(
        "app.kubernetes.io/version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    l.insert("app.kubernetes.io/managed-by".into(), "ferroserve".into());
    l
}

/// The labels that pick the pods: fixed for the life of a Deployment, so nothing that changes
/// with an upgrade.
pub(crate) fn selector(s: &Settings) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "ferroserve".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), s.name.clone()),
    ])
}

pub(crate) fn metadata(s: &Settings, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(labels(s)),
        ..Default::default()
    }
}

pub(crate) fn config_map_name(s: &Settings, suffix: &str) -> String {
    format!("{}-{suffix}", s.name)
}

fn service(s: &Settings) -> Service {
    let port = |name: &str, number: i32, app_protocol: &str| ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: Some(app_protocol.into()),
        ..Default::default()
    };
    Service {
        metadata: metadata(s, &s.name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(s)),
            ports: Some(vec![
                port("http", HTTP_PORT, "http"),
                // gRPC without TLS: HTTP/2 over cleartext, which meshes and gateways route as such.
                port("grpc", GRPC_PORT, "kubernetes.io/h2c"),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn disruption_budget(s: &Settings) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(s, &s.name),
        spec: Some(PodDisruptionBudgetSpec {
            // One at a time, whatever the count: `minAvailable: 1` with one replica would block
            // node drains for good.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(s)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn autoscaler(s: &Settings, a: &Autoscale) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        metadata: metadata(s, &s.name),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: s.name.clone(),
            },
            min_replicas: Some(a.min as i32),
            max_replicas: a.max as i32,
            metrics: Some(vec![
                MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: MetricTarget {
                            type_: "Utilization".into(),
                            average_utilization: Some(a.target_cpu_percent as i32),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                },
                MetricSpec {
                    type_: "Pods".into(),
                    pods: Some(PodsMetricSource {
                        metric: MetricIdentifier {
                            name: QUEUE_METRIC.into(),
                            ..Default::default()
                        },
                        target: MetricTarget {
                            type_: "AverageValue".into(),
                            average_value: Some(Quantity(a.target_queue_depth.to_string())),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ConfigMap of `model.yaml` files, or of a `ferroserve run` folder; none when there is
/// nothing to carry.
fn config_map(s: &Settings) -> Result<Option<ConfigMap>, SettingsError> {
    match &s.workload {
        Workload::Repository { config, .. } if !config.is_empty() => {
            let mut data = BTreeMap::new();
            for (name, text) in config {
                data.insert(config_key(name)?, text.clone());
            }
            Ok(Some(ConfigMap {
                metadata: metadata(s, &config_map_name(s, "model-config")),
                data: Some(data),
                ..Default::default()
            }))
        }
        Workload::App {
            folder: AppFolder::Files(files),
            ..
        } => {
            let mut data = BTreeMap::new();
            let mut binary = BTreeMap::new();
            for (path, bytes) in files {
                let key = app_key(path)?;
                match std::str::from_utf8(bytes) {
                    Ok(text) => {
                        data.insert(key, text.to_string());
                    }
                    Err(_) => {
                        binary.insert(key, ByteString(bytes.clone()));
                    }
                }
            }
            Ok(Some(ConfigMap {
                metadata: metadata(s, &config_map_name(s, "app")),
                data: (!data.is_empty()).then_some(data),
                binary_data: (!binary.is_empty()).then_some(binary),
                ..Default::default()
            }))
        }
        Workload::Repository { .. }
        | Workload::App {
            folder: AppFolder::Source(_),
            ..
        } => Ok(None),
    }
}
