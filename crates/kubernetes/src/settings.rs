//! What a user chooses about the Kubernetes resources, checked before anything is rendered.

use std::collections::BTreeMap;

/// The HTTP port in the pod, as KServe uses it (Open Inference Protocol REST, metrics).
pub const HTTP_PORT: i32 = 8080;
/// The gRPC port in the pod, as KServe uses it.
pub const GRPC_PORT: i32 = 9000;
/// Where the model repository is mounted in the pod.
pub const MODELS_DIR: &str = "/models";
/// Where a `ferroserve run` file's folder is mounted in the pod.
pub const APP_DIR: &str = "/app";
/// Where the ConfigMap of `model.yaml` files is mounted (`--model-config-dir`).
pub const MODEL_CONFIG_DIR: &str = "/etc/ferroserve/models";
/// `FERROSERVE_HOME` in the pod: an emptyDir, so each pod has its own archive cache.
pub const STATE_DIR: &str = "/var/lib/ferroserve";
/// The container image's user and group.
pub const USER_ID: i64 = 10001;
/// Largest total of a `ferroserve run` folder packed into a ConfigMap (the API server refuses
/// objects over 1 MiB; keys and metadata need the rest).
pub const MAX_APP_BYTES: usize = 900 * 1024;

/// Why settings cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A value that Kubernetes would refuse, or that makes no sense.
    #[error("{what}: {why}")]
    Invalid {
        /// The setting.
        what: String,
        /// What is wrong with it.
        why: String,
    },
}

fn invalid(what: impl Into<String>, why: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        what: what.into(),
        why: why.into(),
    }
}

/// Where files reach the pod from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A PersistentVolumeClaim, mounted read-only (`pvc://CLAIM[/SUBPATH]`).
    Pvc {
        /// The claim's name.
        claim: String,
        /// A folder inside the volume.
        sub_path: Option<String>,
    },
    /// Downloaded before the server starts by KServe's storage initializer (an init container)
    /// into an emptyDir: `s3://`, `gs://`, `https://`, `hdfs://`, `webhdfs://`, `hf://`,
    /// Azure blob URLs: whatever that image supports.
    Uri(String),
}

impl Source {
    /// Parses `pvc://CLAIM[/SUBPATH]` or a URI with a scheme.
    pub fn parse(text: &str) -> Result<Self, SettingsError> {
        if let Some(rest) = text.strip_prefix("pvc://") {
            let (claim, sub) = match rest.split_once('/') {
                Some((c, s)) => (c, Some(s.trim_matches('/'))),
                None => (rest, None),
            };
            check_dns_subdomain("the PVC's name", claim)?;
            let sub_path = sub.filter(|s| !s.is_empty()).map(str::to_string);
            if let Some(s) = &sub_path {
                if s.split('/').any(|part| part == "..") {
                    return Err(invalid(text, "a PVC's sub-path may not contain '..'"));
                }
            }
            return Ok(Source::Pvc {
                claim: claim.to_string(),
                sub_path,
            });
        }
        match text.split_once("://") {
            Some((scheme, rest))
                if !scheme.is_empty()
                    && !rest.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                Ok(Source::Uri(text.to_string()))
            }
            _ => Err(invalid(
                text,
                "not pvc://CLAIM[/SUBPATH] nor a URI the storage initializer downloads (s3://, gs://, https://, ...)",
            )),
        }
    }
}

/// The autoscaler's bounds and targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autoscale {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Average CPU use to keep, in percent of the pod's CPU request.
    pub target_cpu_percent: u32,
    /// Average requests waiting in a pod's model queues (`ferroserve_queue_depth`, summed over
    /// the pod's models) to keep.
    pub target_queue_depth: u32,
}

impl Autoscale {
    /// Parses `MIN:MAX`, with the default targets.
    pub fn parse(text: &str) -> Result<Self, SettingsError> {
        let bad = || invalid(format!("--autoscale {text}"), "expected MIN:MAX, e.g. 1:4");
        let (min, max) = text.split_once(':').ok_or_else(bad)?;
        let min: u32 = min.trim().parse().map_err(|_| bad())?;
        let max: u32 = max.trim().parse().map_err(|_| bad())?;
        Ok(Autoscale {
            min,
            max,
            target_cpu_percent: 70,
            target_queue_depth: 4,
        })
    }
}

/// What the pod runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// `ferroserve serve` over a model repository.
    Repository {
        /// Where the repository comes from.
        models: Source,
        /// Model name → its `model.yaml` text, kept in a ConfigMap apart from the weights.
        config: BTreeMap<String, String>,
    },
    /// `ferroserve run FILE` (a Deployment, a Flow or a Ray Serve config) with its folder.
    App {
        /// The file's name inside its folder (may be in a sub-folder: `a/flow.yml`).
        file: String,
        /// Where the folder comes from.
        folder: AppFolder,
        /// Whether the file serves gRPC too (its gateway's `protocol` includes grpc).
        grpc: bool,
        /// A Ray Serve config: health is `/-/healthz`, not the V2 routes.
        ray: bool,
    },
}

/// Where a `ferroserve run` file's folder comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppFolder {
    /// Packed into a ConfigMap: relative path → bytes.
    Files(BTreeMap<String, Vec<u8>>),
    /// A PVC or a download.
    Source(Source),
}

/// Everything the resources are rendered from. [`Settings::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Name of every resource (a DNS-1123 label) and the `app.kubernetes.io/instance` label.
    pub name: String,
    /// Container image; `None`: ferroserve's image of this version, its `-cuda` tag with GPUs.
    pub image: Option<String>,
    /// Replicas without autoscaling.
    pub replicas: u32,
    /// NVIDIA GPUs per pod (`nvidia.com/gpu`).
    pub gpus: u32,
    /// CPU request per pod (a Kubernetes quantity).
    pub cpu: String,
    /// Memory request and limit per pod (a Kubernetes quantity).
    pub memory: String,
    /// A HorizontalPodAutoscaler instead of fixed replicas.
    pub autoscale: Option<Autoscale>,
    /// Seconds requests in flight get to finish after the listeners close.
    pub shutdown_grace_s: u32,
    /// Seconds the pod answers not-ready but still serves after SIGTERM, while Kubernetes takes
    /// it out of its Service.
    pub drain_delay_s: u32,
    /// Seconds the models may take to load before Kubernetes restarts the pod.
    pub startup_timeout_s: u32,
    /// KServe's storage initializer image, for URIs.
    pub storage_initializer: String,
    /// Write a PodDisruptionBudget.
    pub disruption_budget: bool,
    /// What the pod serves.
    pub workload: Workload,
}

impl Settings {
    /// The defaults for `workload`.
    pub fn new(workload: Workload) -> Self {
        Settings {
            name: "ferroserve".to_string(),
            image: None,
            replicas: 1,
            gpus: 0,
            cpu: "1".to_string(),
            memory: "2Gi".to_string(),
            autoscale: None,
            shutdown_grace_s: 30,
            drain_delay_s: 5,
            startup_timeout_s: 600,
            storage_initializer: "kserve/storage-initializer:v0.15.2".to_string(),
            disruption_budget: true,
            workload,
        }
    }

    /// The image the pod runs.
    pub fn image(&self) -> String {
        match &self.image {
            Some(image) => image.clone(),
            None if self.gpus > 0 => format!("{}-cuda", default_image()),
            None => default_image(),
        }
    }

    /// Checks what Kubernetes would refuse, naming the setting.
    pub fn check(&self) -> Result<(), SettingsError> {
        check_dns_label("--name", &self.name)?;
        check_quantity("--cpu", &self.cpu)?;
        check_quantity("--memory", &self.memory)?;
        if self.replicas == 0 && self.autoscale.is_none() {
            return Err(invalid(
                "--replicas",
                "must be at least 1 (scale to zero is not served by a HorizontalPodAutoscaler)",
            ));
        }
        if let Some(a) = &self.autoscale {
            if a.min == 0 || a.min > a.max {
                return Err(invalid(
                    format!("--autoscale {}:{}", a.min, a.max),
                    "MIN must be at least 1 and at most MAX",
                ));
            }
            if a.target_cpu_percent == 0 || a.target_queue_depth == 0 {
                return Err(invalid(
                    "autoscaling targets",
                    "--target-cpu and --target-queue must be above 0",
                ));
            }
        }
        if self.startup_timeout_s == 0 {
            return Err(invalid("--startup-timeout", "must be above 0 seconds"));
        }
        match &self.workload {
            Workload::Repository { config, .. } => {
                for name in config.keys() {
                    config_key(name)?;
                }
            }
            Workload::App { folder, .. } => {
                if let AppFolder::Files(files) = folder {
                    check_app_size(files.iter().map(|(p, b)| (p.as_str(), b.len() as u64)))?;
                    let mut keys = BTreeMap::new();
                    for path in files.keys() {
                        if let Some(other) = keys.insert(app_key(path)?, path) {
                            return Err(invalid(
                                format!("files '{other}' and '{path}'"),
                                "map to the same ConfigMap key ('/' becomes '__'); rename one",
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Refuses a `ferroserve run` folder too large for a ConfigMap, naming its largest files; the
/// sizes can be checked before the files are read.
pub fn check_app_size<'a>(
    sizes: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), SettingsError> {
    let mut sizes: Vec<(u64, &str)> = sizes.into_iter().map(|(p, n)| (n, p)).collect();
    let total: u64 = sizes.iter().map(|(n, _)| n).sum();
    if total <= MAX_APP_BYTES as u64 {
        return Ok(());
    }
    sizes.sort_by(|a, b| b.cmp(a));
    let biggest: Vec<String> = sizes
        .iter()
        .take(3)
        .map(|(n, p)| format!("{p} ({n} bytes)"))
        .collect();
    Err(invalid(
        "the file's folder",
        format!(
            "holds {total} bytes, more than a ConfigMap carries ({MAX_APP_BYTES}); largest: {}. Put the folder on a volume and give --app-source pvc://CLAIM[/SUBPATH] or a URI",
            biggest.join(", ")
        ),
    ))
}

/// ferroserve's own image of this version.
pub fn default_image() -> String {
    format!(
        "ghcr.io/ferroserve/ferroserve:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The ConfigMap key of model `name`'s `model.yaml`.
pub(crate) fn config_key(name: &str) -> Result<String, SettingsError> {
    let key = format!("{name}.model.yaml");
    check_key(&format!("model '{name}'"), &key)?;
    Ok(key)
}

/// The ConfigMap key of an app folder's file (`/` cannot be in a key; items map it back).
pub(crate) fn app_key(path: &str) -> Result<String, SettingsError> {
    let key = path.replace('/', "__");
    check_key(&format!("file '{path}'"), &key)?;
    Ok(key)
}

fn check_key(what: &str, key: &str) -> Result<(), SettingsError> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        && key != "."
        && key != ".."
        && !key.starts_with("..");
    if ok {
        Ok(())
    } else {
        Err(invalid(
            what,
            format!("'{key}' is not a valid ConfigMap key (letters, digits, '-', '_', '.')"),
        ))
    }
}

fn check_dns_label(what: &str, name: &str) -> Result<(), SettingsError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("{what} '{name}'"),
            "must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        ))
    }
}

fn check_dns_subdomain(what: &str, name: &str) -> Result<(), SettingsError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|part| check_dns_label(what, part).is_ok());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("{what} '{name}'"),
            "must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.'",
        ))
    }
}

/// Kubernetes' quantity grammar: a decimal number and one of its suffixes.
fn check_quantity(what: &str, text: &str) -> Result<(), SettingsError> {
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number != "."
        && number.parse::<f64>().is_ok_and(|v| v > 0.0);
    if number_ok && SUFFIXES.contains(&suffix) {
        Ok(())
    } else {
        Err(invalid(
            format!("{what} '{text}'"),
            "is not a positive Kubernetes quantity (e.g. 500m, 2, 512Mi, 4Gi)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("pvc://models/repo/v1").unwrap(),
            Source::Pvc {
                claim: "models".into(),
                sub_path: Some("repo/v1".into())
            }
        );
        assert_eq!(
            Source::parse("pvc://models").unwrap(),
            Source::Pvc {
                claim: "models".into(),
                sub_path: None
            }
        );
        assert_eq!(
            Source::parse("s3://bucket/repo").unwrap(),
            Source::Uri("s3://bucket/repo".into())
        );
        for bad in [
            "pvc://Models",
            "pvc://m/../x",
            "/local/path",
            "models",
            "://x",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn autoscale_and_checks() {
        assert_eq!(Autoscale::parse("2:6").unwrap().max, 6);
        assert!(Autoscale::parse("6").is_err());
        let mut s = Settings::new(Workload::Repository {
            models: Source::Uri("s3://b/r".into()),
            config: BTreeMap::new(),
        });
        assert!(s.check().is_ok());
        s.autoscale = Some(Autoscale::parse("3:2").unwrap());
        assert!(s.check().unwrap_err().to_string().contains("MIN"));
        s.autoscale = None;
        s.name = "Demo".into();
        assert!(s.check().unwrap_err().to_string().contains("DNS-1123"));
        s.name = "demo".into();
        s.memory = "2GB".into();
        assert!(s.check().unwrap_err().to_string().contains("--memory"));
        s.memory = "1.5Gi".into();
        s.cpu = "500m".into();
        assert!(s.check().is_ok());
    }

    #[test]
    fn an_app_folder_too_large_for_a_config_map_is_refused_with_its_largest_files() {
        let mut files = BTreeMap::new();
        files.insert("flow.yml".to_string(), b"jtype: Flow".to_vec());
        files.insert("weights.bin".to_string(), vec![0; MAX_APP_BYTES]);
        let s = Settings::new(Workload::App {
            file: "flow.yml".into(),
            folder: AppFolder::Files(files),
            grpc: false,
            ray: false,
        });
        let e = s.check().unwrap_err().to_string();
        assert!(
            e.contains("weights.bin") && e.contains("--app-source"),
            "{e}"
        );
    }

    #[test]
    fn keys() {
        assert_eq!(app_key("exec/model.py").unwrap(), "exec__model.py");
        assert!(app_key("a b.py").is_err());
        assert!(config_key("minilm").is_ok());
    }
}
