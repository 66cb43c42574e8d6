//! A Ray Serve deployment's options, with Ray's names, defaults and meanings: what the code set
//! (`@serve.deployment(...)`, `.options(...)`) with the config file's overrides on top, read
//! into what ferroserve's scheduler, autoscaler and workers take.

use std::collections::BTreeMap;
use std::time::Duration;

use ferroserve_runtime::Autoscaling;
use serde_json::{Map, Value};

/// Ray's default `max_ongoing_requests`: requests one replica runs at once.
const DEFAULT_MAX_ONGOING: usize = 5;
/// Ray's default `health_check_period_s`.
const DEFAULT_HEALTH_PERIOD: f64 = 10.0;
/// Ray's default `health_check_timeout_s`.
const DEFAULT_HEALTH_TIMEOUT: f64 = 30.0;
/// Ray's `max_replicas` for `num_replicas: "auto"`.
const AUTO_MAX_REPLICAS: usize = 100;
/// Most replicas one deployment may ask for (each is a Python process).
const MOST_REPLICAS: usize = 1024;
/// Most requests one replica may run at once (each is a thread of the scheduler's).
const MOST_ONGOING: usize = 256;

/// Deployment options ferroserve acts on.
const ACTED_ON: &[&str] = &[
    "num_replicas",
    "max_ongoing_requests",
    "max_concurrent_queries",
    "max_queued_requests",
    "autoscaling_config",
    "ray_actor_options",
    "user_config",
    "health_check_period_s",
    "health_check_timeout_s",
    "name",
];
/// Deployment options Ray takes that place or tune Ray's own actors: accepted, logged, ignored.
const IGNORED: &[&str] = &[
    "route_prefix",
    "graceful_shutdown_wait_loop_s",
    "graceful_shutdown_timeout_s",
    "placement_group_bundles",
    "placement_group_strategy",
    "max_replicas_per_node",
    "logging_config",
    "version",
    "is_driver_deployment",
    "request_router_config",
    "_internal",
];

/// How many replicas a deployment runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Replicas {
    /// This many, always.
    Fixed(usize),
    /// As the autoscaler decides.
    Auto(Autoscaling),
}

/// One deployment's options, read.
#[derive(Debug, Clone)]
pub struct DeploymentOptions {
    /// Replicas, fixed or autoscaled.
    pub replicas: Replicas,
    /// Requests one replica runs at once.
    pub max_ongoing_requests: usize,
    /// Requests that may wait for a replica; `None`: the server's `--max-queue-size` (Ray's
    /// default, -1, is unbounded; every queue here is bounded).
    pub max_queued_requests: Option<usize>,
    /// Given to `reconfigure` when a replica starts.
    pub user_config: Option<Value>,
    /// GPUs per replica (`ray_actor_options.num_gpus`).
    pub num_gpus: f64,
    /// CPU threads per replica (`ray_actor_options.num_cpus`), when set.
    pub num_cpus: Option<f64>,
    /// How often each replica's `check_health` is called.
    pub health_check_period: Duration,
    /// How long it may take.
    pub health_check_timeout: Duration,
}

impl DeploymentOptions {
    /// Reads `code` (what the application's code set) with `overrides` (the config file's) on
    /// top, for the deployment `name`; the message names the option.
    pub fn read(
        name: &str,
        code: &Map<String, Value>,
        overrides: &BTreeMap<String, Value>,
    ) -> Result<Self, String> {
        let mut all = code.clone();
        for (k, v) in overrides {
            all.insert(k.clone(), v.clone());
        }
        let what = |key: &str| format!("deployment '{name}': {key}");
        for key in all.keys() {
            if IGNORED.contains(&key.as_str()) {
                tracing::info!("deployment '{name}': {key} tunes Ray's own actors; ignored");
            } else if !ACTED_ON.contains(&key.as_str()) {
                return Err(format!(
                    "{} is not a Ray Serve deployment option",
                    what(key)
                ));
            }
        }
        let count = |key: &str, v: &Value| -> Result<usize, String> {
            v.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| format!("{} must be a whole number, got {v}", what(key)))
        };
        let max_ongoing_requests = match all
            .get("max_ongoing_requests")
            .or(all.get("max_concurrent_queries"))
        {
            None | Some(Value::Null) => DEFAULT_MAX_ONGOING,
            Some(v) => count("max_ongoing_requests", v)?,
        };
        if !(1..=MOST_ONGOING).contains(&max_ongoing_requests) {
            return Err(format!(
                "{} must be between 1 and {MOST_ONGOING}, got {max_ongoing_requests}",
                what("max_ongoing_requests")
            ));
        }
        let max_queued_requests = match all.get("max_queued_requests") {
            None | Some(Value::Null) => None,
            Some(v) if v.as_i64() == Some(-1) => None,
            Some(v) => Some(count("max_queued_requests", v)?),
        };
        let autoscaling = match all.get("autoscaling_config") {
            None | Some(Value::Null) => None,
            Some(Value::Object(a)) => Some(a),
            Some(other) => {
                return Err(format!(
                    "{} must be a mapping, got {other}",
                    what("autoscaling_config")
                ))
            }
        };
        let replicas = match (all.get("num_replicas"), autoscaling) {
            (Some(Value::String(s)), a) if s == "auto" => {
                let mut base = Autoscaling {
                    max_replicas: AUTO_MAX_REPLICAS,
                    ..Autoscaling::default()
                };
                if let Some(a) = a {
                    base = autoscaling_config(name, a, base)?;
                }
                Replicas::Auto(base)
            }
            (None | Some(Value::Null), Some(a)) => {
                Replicas::Auto(autoscaling_config(name, a, Autoscaling::default())?)
            }
            (Some(v), Some(_)) => {
                return Err(format!(
                    "{} is {v} and autoscaling_config is set; Ray takes one or the other (or num_replicas: \"auto\")",
                    what("num_replicas")
                ))
            }
            (None | Some(Value::Null), None) => Replicas::Fixed(1),
            (Some(v), None) => match count("num_replicas", v)? {
                0 => {
                    return Err(format!(
                        "{} is 0: nothing would answer its requests (autoscaling_config with min_replicas: 0 scales to zero)",
                        what("num_replicas")
                    ))
                }
                n => Replicas::Fixed(n),
            },
        };
        let most = match &replicas {
            Replicas::Fixed(n) => *n,
            Replicas::Auto(a) => a.max_replicas,
        };
        if most > MOST_REPLICAS {
            return Err(format!(
                "{} asks for {most} replicas; at most {MOST_REPLICAS} are allowed",
                what("num_replicas")
            ));
        }
        let (num_gpus, num_cpus) = actor_options(name, all.get("ray_actor_options"))?;
        let seconds = |key: &str, default: f64| -> Result<Duration, String> {
            match all.get(key) {
                None | Some(Value::Null) => Ok(Duration::from_secs_f64(default)),
                Some(v) => v
                    .as_f64()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e6)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        format!(
                            "{} must be a positive number of seconds, got {v}",
                            what(key)
                        )
                    }),
            }
        };
        Ok(Self {
            replicas,
            max_ongoing_requests,
            max_queued_requests,
            user_config: all.get("user_config").filter(|v| !v.is_null()).cloned(),
            num_gpus,
            num_cpus,
            health_check_period: seconds("health_check_period_s", DEFAULT_HEALTH_PERIOD)?,
            health_check_timeout: seconds("health_check_timeout_s", DEFAULT_HEALTH_TIMEOUT)?,
        })
    }

    /// Replicas at start.
    pub fn initial_replicas(&self) -> usize {
        match &self.replicas {
            Replicas::Fixed(n) => *n,
            Replicas::Auto(a) => a.initial(),
        }
    }
}

/// Ray's `autoscaling_config` on top of `base`, checked.
fn autoscaling_config(
    name: &str,
    a: &Map<String, Value>,
    mut base: Autoscaling,
) -> Result<Autoscaling, String> {
    let what = |key: &str| format!("deployment '{name}': autoscaling_config.{key}");
    let number = |key: &str, v: &Value| -> Result<f64, String> {
        v.as_f64()
            .ok_or_else(|| format!("{} must be a number, got {v}", what(key)))
    };
    let count = |key: &str, v: &Value| -> Result<usize, String> {
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| format!("{} must be a whole number, got {v}", what(key)))
    };
    let mut smoothing = None;
    for (key, v) in a {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "min_replicas" => base.min_replicas = count(key, v)?,
            "max_replicas" => base.max_replicas = count(key, v)?,
            "initial_replicas" => base.initial_replicas = Some(count(key, v)?),
            "target_ongoing_requests" | "target_num_ongoing_requests_per_replica" => {
                base.target_ongoing_requests = number(key, v)?
            }
            "metrics_interval_s" => base.metrics_interval_s = number(key, v)?,
            "look_back_period_s" => base.look_back_period_s = number(key, v)?,
            "upscale_delay_s" => base.upscale_delay_s = number(key, v)?,
            "downscale_delay_s" => base.downscale_delay_s = number(key, v)?,
            "smoothing_factor" => smoothing = Some(number(key, v)?),
            "upscaling_factor" | "upscale_smoothing_factor" => {
                base.upscaling_factor = number(key, v)?
            }
            "downscaling_factor" | "downscale_smoothing_factor" => {
                base.downscaling_factor = number(key, v)?
            }
            "aggregation_function" => {
                if v.as_str() != Some("mean") {
                    return Err(format!(
                        "{} {v} is not supported; ferroserve averages the look-back window (\"mean\")",
                        what(key)
                    ));
                }
            }
            "downscale_to_zero_delay_s" => {
                tracing::info!("{}: scaling to zero waits downscale_delay_s; ignored", what(key))
            }
            "policy" | "_policy" | "_serialized_policy_def" => {
                return Err(format!(
                    "{}: custom autoscaling policies are not supported; ferroserve applies Ray's default policy",
                    what(key)
                ))
            }
            other => {
                return Err(format!(
                    "{} is not a Ray Serve autoscaling option",
                    what(other)
                ))
            }
        }
    }
    // `smoothing_factor` sets both directions unless one is given on its own.
    if let Some(s) = smoothing {
        let given = |k: &str| a.get(k).is_some_and(|v| !v.is_null());
        if !given("upscaling_factor") && !given("upscale_smoothing_factor") {
            base.upscaling_factor = s;
        }
        if !given("downscaling_factor") && !given("downscale_smoothing_factor") {
            base.downscaling_factor = s;
        }
    }
    base.check()
        .map_err(|e| format!("deployment '{name}': {e}"))?;
    Ok(base)
}

/// `num_gpus` and `num_cpus` of `ray_actor_options`; the keys that place Ray's actors are
/// logged as ignored.
fn actor_options(name: &str, v: Option<&Value>) -> Result<(f64, Option<f64>), String> {
    let options = match v {
        None | Some(Value::Null) => return Ok((0.0, None)),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(format!(
                "deployment '{name}': ray_actor_options must be a mapping, got {other}"
            ))
        }
    };
    let number = |key: &str| -> Result<Option<f64>, String> {
        match options.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "deployment '{name}': ray_actor_options.{key} must be a number of at least 0, got {v}"
                    )
                }),
        }
    };
    for key in options.keys() {
        if key != "num_gpus" && key != "num_cpus" {
            tracing::info!(
                "deployment '{name}': ray_actor_options.{key} places Ray's actors; ignored"
            );
        }
    }
    Ok((number("num_gpus")?.unwrap_or(0.0), number("num_cpus")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(code: Value, overrides: Value) -> Result<DeploymentOptions, String> {
        let code = code.as_object().cloned().unwrap_or_default();
        let overrides: BTreeMap<String, Value> = serde_json::from_value(overrides).unwrap();
        DeploymentOptions::read("D", &code, &overrides)
    }

    #[test]
    fn ray_defaults_and_overrides_on_top_of_the_code() {
        let o = read(json!({}), json!({})).unwrap();
        assert_eq!(o.replicas, Replicas::Fixed(1));
        assert_eq!(o.max_ongoing_requests, 5);
        assert_eq!(o.max_queued_requests, None);
        let o = read(
            json!({"num_replicas": 2, "max_concurrent_queries": 3, "user_config": {"t": 1}}),
            json!({"num_replicas": 4, "max_queued_requests": 7}),
        )
        .unwrap();
        assert_eq!(o.replicas, Replicas::Fixed(4));
        assert_eq!(o.max_ongoing_requests, 3);
        assert_eq!(o.max_queued_requests, Some(7));
        assert_eq!(o.user_config, Some(json!({"t": 1})));
    }

    #[test]
    fn autoscaling_takes_every_ray_field_and_auto_its_defaults() {
        let o = read(json!({"num_replicas": "auto"}), json!({})).unwrap();
        let Replicas::Auto(a) = o.replicas else {
            panic!()
        };
        assert_eq!((a.min_replicas, a.max_replicas), (1, 100));
        let o = read(
            json!({"autoscaling_config": {"min_replicas": 1, "max_replicas": 99,
                   "target_num_ongoing_requests_per_replica": 3, "smoothing_factor": 0.5,
                   "downscaling_factor": 0.2, "upscale_delay_s": 0.1, "aggregation_function": "mean"}}),
            json!({}),
        )
        .unwrap();
        let Replicas::Auto(a) = o.replicas else {
            panic!()
        };
        assert_eq!(a.max_replicas, 99);
        assert_eq!(a.target_ongoing_requests, 3.0);
        assert_eq!((a.upscaling_factor, a.downscaling_factor), (0.5, 0.2));
        assert_eq!(a.upscale_delay_s, 0.1);
    }

    #[test]
    fn mistakes_name_the_option() {
        let e = read(json!({"num_replica": 2}), json!({})).unwrap_err();
        assert!(e.contains("num_replica is not"), "{e}");
        let e = read(
            json!({"num_replicas": 2, "autoscaling_config": {}}),
            json!({}),
        )
        .unwrap_err();
        assert!(e.contains("one or the other"), "{e}");
        let e = read(
            json!({"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}),
            json!({}),
        )
        .unwrap_err();
        assert!(e.contains("min_replicas"), "{e}");
        let e = read(json!({"ray_actor_options": {"num_gpus": -1}}), json!({})).unwrap_err();
        assert!(e.contains("num_gpus"), "{e}");
        let e = read(json!({"autoscaling_config": {"policy": "x"}}), json!({})).unwrap_err();
        assert!(e.contains("policies"), "{e}");
    }
}
