//! Ray Serve's config file (what `serve deploy` and `serve run config.yaml` take), read with
//! Ray's names: the applications and their per-deployment overrides matter; keys that configure
//! Ray's own cluster (proxies, placement groups, logging) are accepted as Ray accepts them and
//! logged as ignored. Unknown keys are errors, as in Ray (its schema forbids extras).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

/// A whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The applications, each under its own route prefix.
    pub applications: Vec<ApplicationConfig>,
    /// Where Ray runs its HTTP proxies; one server here. Ignored.
    #[serde(default)]
    pub proxy_location: Option<Value>,
    /// `host` and `port` are honoured (the command line's win); the rest is ignored.
    #[serde(default)]
    pub http_options: HttpOptions,
    /// Ray's gRPC proxy for users' own protobuf services. Ignored.
    #[serde(default)]
    pub grpc_options: Option<Value>,
    /// Ray's logging. Ignored (ferroserve logs with `--log-format`).
    #[serde(default)]
    pub logging_config: Option<Value>,
    /// Ray's cluster-wide capacity scaling. Ignored.
    #[serde(default)]
    pub target_capacity: Option<Value>,
}

/// `http_options` of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpOptions {
    /// The address to listen on.
    pub host: Option<String>,
    /// The port to listen on (Ray's default: 8000).
    pub port: Option<u16>,
    /// Ignored (a prefix before every application's).
    pub root_path: Option<String>,
    /// Ignored; deployments' queues bound waiting instead.
    pub request_timeout_s: Option<f64>,
    /// Ignored (the server's `--keep-alive` settings apply).
    pub keep_alive_timeout_s: Option<f64>,
    /// Ignored.
    pub ssl_keyfile: Option<String>,
    /// Ignored.
    pub ssl_certfile: Option<String>,
    /// Ignored.
    pub ssl_keyfile_password: Option<String>,
    /// Ignored.
    pub ssl_ca_certs: Option<String>,
}

/// One application of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationConfig {
    /// Its name (Ray's default: `default`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Where its ingress answers (default `/`); `null` serves no HTTP route (its deployments
    /// are still reachable by name).
    #[serde(default = "default_prefix")]
    pub route_prefix: Option<String>,
    /// `module:attribute` (or `module.attribute`): a bound application, or a builder function
    /// that takes `args`.
    pub import_path: String,
    /// Given to a builder function.
    #[serde(default)]
    pub args: Map<String, Value>,
    /// Per-deployment overrides of what the code set.
    #[serde(default)]
    pub deployments: Vec<DeploymentOverride>,
    /// Ray's per-application environment: `working_dir` (a local folder, the application's
    /// folder) and `env_vars` are honoured; the rest (pip, conda, containers) is ignored — the
    /// interpreter given with `--python` must already have the application's packages.
    #[serde(default)]
    pub runtime_env: Map<String, Value>,
    /// Ignored.
    #[serde(default)]
    pub logging_config: Option<Value>,
    /// Ignored.
    #[serde(default)]
    pub external_scaler_enabled: Option<Value>,
}

fn default_name() -> String {
    "default".into()
}

fn default_prefix() -> Option<String> {
    Some("/".into())
}

/// One deployment's overrides: every option Ray's config takes, applied on top of the code's
/// (the keys are checked when the options are read, see [`super::options`]).
#[derive(Debug, Clone, Deserialize)]
pub struct DeploymentOverride {
    /// The deployment it overrides (its `name` option, or its class or function name).
    pub name: String,
    /// Every other key, with Ray's names and meanings (see [`super::options`]).
    #[serde(flatten)]
    pub options: BTreeMap<String, Value>,
}

impl ServeConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ferroserve_core::check_yaml_depth(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let de = serde_yaml_ng::Deserializer::from_str(&text);
        let config: ServeConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| format!("{}: {}: {}", path.display(), e.path(), e.inner()))?;
        config
            .check()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for (key, set) in [
            ("proxy_location", config.proxy_location.is_some()),
            ("grpc_options", config.grpc_options.is_some()),
            ("logging_config", config.logging_config.is_some()),
            ("target_capacity", config.target_capacity.is_some()),
            (
                "http_options.root_path",
                config.http_options.root_path.is_some(),
            ),
            (
                "http_options.request_timeout_s",
                config.http_options.request_timeout_s.is_some(),
            ),
            (
                "http_options.keep_alive_timeout_s",
                config.http_options.keep_alive_timeout_s.is_some(),
            ),
            (
                "http_options.ssl_*",
                config.http_options.ssl_keyfile.is_some()
                    || config.http_options.ssl_certfile.is_some(),
            ),
        ] {
            if set {
                tracing::info!(
                    "{}: {key} configures Ray's own cluster; ignored",
                    path.display()
                );
            }
        }
        Ok(config)
    }

    /// Whether a YAML file is a Ray Serve config (it has `applications:`) rather than a Flow.
    pub fn is_serve_config(path: &Path) -> bool {
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        text.lines().any(|l| l.starts_with("applications:"))
    }

    fn check(&self) -> Result<(), String> {
        if self.applications.is_empty() {
            return Err("applications: at least one application is needed".into());
        }
        let mut names = std::collections::BTreeSet::new();
        let mut prefixes = std::collections::BTreeSet::new();
        for (i, app) in self.applications.iter().enumerate() {
            if !names.insert(app.name.as_str()) {
                return Err(format!(
                    "applications[{i}]: a second application named '{}'",
                    app.name
                ));
            }
            if let Some(p) = &app.route_prefix {
                if !p.starts_with('/') {
                    return Err(format!(
                        "applications[{i}].route_prefix must start with '/', got '{p}'"
                    ));
                }
                if !prefixes.insert(p.trim_end_matches('/').to_string()) {
                    return Err(format!(
                        "applications[{i}]: route_prefix '{p}' is another application's already"
                    ));
                }
            }
            if !app.import_path.contains([':', '.']) {
                return Err(format!(
                    "applications[{i}].import_path must be module:attribute, got '{}'",
                    app.import_path
                ));
            }
        }
        Ok(())
    }
}

impl ApplicationConfig {
    /// The folder the application's module is imported from: `runtime_env.working_dir` when
    /// it is a local folder (relative to the config file's), else `base`.
    pub fn app_dir(&self, base: &Path) -> Result<PathBuf, String> {
        match self.runtime_env.get("working_dir") {
            None | Some(Value::Null) => Ok(base.to_path_buf()),
            Some(Value::String(dir)) if !dir.contains("://") => {
                let dir = base.join(dir);
                if dir.is_dir() {
                    Ok(dir)
                } else {
                    Err(format!(
                        "application '{}': runtime_env.working_dir {} is not a folder",
                        self.name,
                        dir.display()
                    ))
                }
            }
            Some(other) => Err(format!(
                "application '{}': runtime_env.working_dir {other} is remote; ferroserve imports applications from local folders",
                self.name
            )),
        }
    }

    /// `runtime_env.env_vars`, for the application's workers; other `runtime_env` keys are
    /// logged as ignored.
    pub fn env_vars(&self) -> Result<Vec<(String, String)>, String> {
        for key in self.runtime_env.keys() {
            if key != "working_dir" && key != "env_vars" {
                tracing::warn!(
                    "application '{}': runtime_env.{key} is ignored; the interpreter (--python) must have what the application needs",
                    self.name
                );
            }
        }
        match self.runtime_env.get("env_vars") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(format!(
                        "application '{}': runtime_env.env_vars.{k} must be a string, got {other}",
                        self.name
                    )),
                })
                .collect(),
            Some(other) => Err(format!(
                "application '{}': runtime_env.env_vars must be a mapping, got {other}",
                self.name
            )),
        }
    }
}
