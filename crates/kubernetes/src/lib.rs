//! Kubernetes manifests for ferroserve, as `ferroserve export kubernetes` writes them and the
//! Helm chart in `deploy/helm/ferroserve` renders them: a Deployment whose probes ask the V2
//! health routes, a Service with named `http` and `grpc` ports, a HorizontalPodAutoscaler on
//! CPU and on the pods' queue depth, a PodDisruptionBudget, and ConfigMaps for `model.yaml`
//! files or a `ferroserve run` file's folder.
//!
//! The objects are `k8s-openapi`'s typed ones, so a field Kubernetes does not know cannot be
//! written; [`Settings::check`] refuses names, quantities and bounds the API server would.
//!
//! ```
//! use std::collections::BTreeMap;
//! use ferroserve_kubernetes::{render, Autoscale, Settings, Source, Workload};
//!
//! let mut settings = Settings::new(Workload::Repository {
//!     models: Source::parse("pvc://models/repo")?,
//!     config: BTreeMap::new(),
//! });
//! settings.name = "demo".into();
//! settings.gpus = 1;
//! settings.autoscale = Some(Autoscale::parse("2:6")?);
//! let files: Vec<String> = render(&settings)?.into_iter().map(|m| m.file).collect();
//! assert_eq!(
//!     files,
//!     ["deployment.yaml", "service.yaml", "poddisruptionbudget.yaml", "horizontalpodautoscaler.yaml"]
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod pod;
mod resources;
mod settings;

pub use pod::{args, live_path, ready_path};
pub use resources::{render, Manifest, RenderError, QUEUE_METRIC};
pub use settings::{
    check_app_size, default_image, AppFolder, Autoscale, Settings, SettingsError, Source, Workload,
    APP_DIR, GRPC_PORT, HTTP_PORT, MAX_APP_BYTES, MODELS_DIR, MODEL_CONFIG_DIR, STATE_DIR, USER_ID,
};

#[cfg(test)]
mod tests;
