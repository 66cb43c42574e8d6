//! Ray Serve applications, run as their users wrote them (`ferroserve run module:attribute`, or
//! a Ray Serve config file with `applications:`): the application's code runs in ferroserve's
//! Python workers, which give it `ray.serve`'s API; Rust routes HTTP to ingresses and handle
//! calls between deployments, queues, batches (`@serve.batch`) and scales them.
//!
//! Building an application: one worker imports it and describes its deployments (names,
//! options, batch methods, which deployments each is bound to); then each deployment starts its
//! replicas, leaves of the graph first, each replica a worker that imports the application again
//! and instantiates its deployment with handles in place of the bound deployments.

mod config;
mod deployment;
mod health;
mod options;
mod pool;
mod wire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};

use ferroserve_backend_python::{
    Calls, Channel, Frame, Payload, Responder, WorkerSpec, DEFAULT_TIMEOUT_READY,
};
use ferroserve_core::Error;
use ferroserve_runtime::Runtime;
use serde_json::{Map, Value};

pub use config::{ApplicationConfig, DeploymentOverride, HttpOptions, ServeConfig};
pub use deployment::RayDeployment;
pub use options::{DeploymentOptions, Replicas};
pub use wire::{Answer, Described, HttpReply};

use pool::ReplicaSpec;

/// One application to run: where its code is and what the config file says about it.
#[derive(Debug, Clone)]
pub struct AppSource {
    /// Its name (Ray's default: `default`).
    pub name: String,
    /// `module:attribute`: a bound application, or a builder function taking `args`.
    pub import_path: String,
    /// The folder its module is imported from.
    pub app_dir: PathBuf,
    /// Given to a builder function.
    pub args: Map<String, Value>,
    /// Where its ingress answers HTTP (`None`: only by deployment name).
    pub route_prefix: Option<String>,
    /// Options by deployment name, on top of what the code set.
    pub overrides: BTreeMap<String, BTreeMap<String, Value>>,
    /// Environment variables for its workers.
    pub env: Vec<(String, String)>,
}

impl AppSource {
    /// The applications of a config file whose folder is `base`.
    pub fn from_config(config: &ServeConfig, base: &Path) -> Result<Vec<Self>, String> {
        config
            .applications
            .iter()
            .map(|a| {
                let mut overrides = BTreeMap::new();
                for d in &a.deployments {
                    if overrides
                        .insert(d.name.clone(), d.options.clone())
                        .is_some()
                    {
                        return Err(format!(
                            "application '{}': deployment '{}' is listed twice",
                            a.name, d.name
                        ));
                    }
                }
                Ok(Self {
                    name: a.name.clone(),
                    import_path: a.import_path.clone(),
                    app_dir: a.app_dir(base)?,
                    args: a.args.clone(),
                    route_prefix: a.route_prefix.clone(),
                    overrides,
                    env: a.env_vars()?,
                })
            })
            .collect()
    }
}

/// How the applications' workers are started.
#[derive(Debug, Clone)]
pub struct RayOptions {
    /// The interpreter (`--python`), with the application's packages.
    pub python: PathBuf,
}

/// The running applications.
pub struct RayApps {
    apps: Vec<App>,
}

struct App {
    name: String,
    route_prefix: Option<String>,
    ingress: Arc<RayDeployment>,
    deployments: BTreeMap<String, Arc<RayDeployment>>,
    /// The order they were built in (every deployment after those bound to it).
    order: Vec<String>,
}

impl RayApps {
    /// Imports each application, describes it and starts its deployments' replicas; handle
    /// calls run on `tokio`.
    pub fn build(
        sources: &[AppSource],
        options: &RayOptions,
        runtime: &Arc<Runtime>,
        tokio: tokio::runtime::Handle,
    ) -> Result<Self, String> {
        let mut apps = Vec::with_capacity(sources.len());
        let mut names = std::collections::BTreeSet::new();
        for source in sources {
            let app = App::build(source, options, runtime, tokio.clone()).map_err(|e| {
                format!(
                    "application '{}' ({}): {e}",
                    source.name, source.import_path
                )
            })?;
            for d in app.deployments.keys() {
                if !names.insert(d.clone()) {
                    tracing::warn!(
                        "deployment '{d}' is in more than one application; /{d} reaches the first"
                    );
                }
            }
            apps.push(app);
        }
        Ok(Self { apps })
    }

    /// The deployment an HTTP request for `path` goes to, and the route prefix it matched
    /// (the ASGI `root_path`): an application's route prefix (the longest that matches), else
    /// a deployment named by the path's first segment (`/Summarizer?txt=...`, as Ray 1.x
    /// routed), else the application at `/`.
    pub fn route(&self, path: &str) -> Option<(Arc<RayDeployment>, String)> {
        let under = |prefix: &str| {
            let p = prefix.trim_end_matches('/');
            path == p || path.starts_with(&format!("{p}/"))
        };
        let best = self
            .apps
            .iter()
            .filter_map(|a| a.route_prefix.as_deref().map(|p| (a, p)))
            .filter(|(_, p)| *p != "/" && under(p))
            .max_by_key(|(_, p)| p.len());
        if let Some((app, prefix)) = best {
            return Some((
                app.ingress.clone(),
                prefix.trim_end_matches('/').to_string(),
            ));
        }
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let root = self
            .apps
            .iter()
            .find(|a| a.route_prefix.as_deref() == Some("/"));
        // An ASGI application at `/` owns every path below it, as in Ray 2.x: its own routes
        // may share a deployment's name.
        let named = self
            .apps
            .iter()
            .filter_map(|a| a.deployments.get(first))
            .find(|d| d.serves_http());
        match (named, root) {
            (Some(d), root) if !root.is_some_and(|r| r.ingress.described.asgi) => {
                Some((d.clone(), format!("/{first}")))
            }
            (_, root) => root.map(|a| (a.ingress.clone(), String::new())),
        }
    }

    /// Route prefix → application name (Ray's `/-/routes`).
    pub fn routes(&self) -> BTreeMap<String, String> {
        self.apps
            .iter()
            .filter_map(|a| a.route_prefix.clone().map(|p| (p, a.name.clone())))
            .collect()
    }

    /// Every deployment, with its application's name.
    pub fn deployments(&self) -> impl Iterator<Item = (&str, &Arc<RayDeployment>)> {
        self.apps
            .iter()
            .flat_map(|a| a.deployments.values().map(move |d| (a.name.as_str(), d)))
    }

    /// Stops taking requests and waits for what is queued, ingresses first and the
    /// deployments they call after (so their calls in flight are still answered), then stops
    /// the workers.
    pub fn shut_down(&self) {
        for app in &self.apps {
            for name in app.order.iter().rev() {
                if let Some(d) = app.deployments.get(name) {
                    d.close();
                    d.join();
                }
            }
        }
    }
}

impl App {
    fn build(
        source: &AppSource,
        options: &RayOptions,
        runtime: &Arc<Runtime>,
        tokio: tokio::runtime::Handle,
    ) -> Result<Self, String> {
        let mut load = Map::new();
        load.insert("kind".into(), "ray".into());
        load.insert("import_path".into(), source.import_path.clone().into());
        load.insert(
            "app_dir".into(),
            source.app_dir.display().to_string().into(),
        );
        load.insert("args".into(), Value::Object(source.args.clone()));
        load.insert("app_name".into(), source.name.clone().into());
        load.insert("deployment".into(), Value::Null);
        let base = WorkerSpec {
            python: options.python.clone(),
            cwd: source.app_dir.clone(),
            env: source.env.clone(),
            load,
            timeout_ready: Some(DEFAULT_TIMEOUT_READY),
            name: format!("application '{}'", source.name),
            replica: 0,
        };
        let (ingress, described) = describe(&base)?;
        for name in source.overrides.keys() {
            if !described.iter().any(|d| &d.name == name) {
                return Err(format!(
                    "the config overrides deployment '{name}', which the application does not have (it has: {})",
                    described.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let registry: Registry = Arc::default();
        let calls: Arc<dyn Calls> = Arc::new(HandleCalls {
            registry: registry.clone(),
            tokio,
        });
        let mut deployments = BTreeMap::new();
        let mut order = Vec::new();
        for d in build_order(described)? {
            let none = BTreeMap::new();
            let overrides = source.overrides.get(&d.name).unwrap_or(&none);
            let options = DeploymentOptions::read(&d.name, &d.options, overrides)?;
            let mut spec = base.clone();
            spec.name = format!("deployment '{}'", d.name);
            spec.load.insert("deployment".into(), d.name.clone().into());
            spec.load.insert(
                "user_config".into(),
                options.user_config.clone().unwrap_or(Value::Null),
            );
            if let Some(cpus) = options.num_cpus {
                let threads = (cpus.ceil() as usize).max(1).to_string();
                for var in ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"] {
                    spec.env.push((var.into(), threads.clone()));
                }
            }
            let gpus = gpus_per_replica(&d.name, options.num_gpus);
            let name = d.name.clone();
            let started = RayDeployment::start(
                d,
                &options,
                ReplicaSpec {
                    base: spec,
                    calls: calls.clone(),
                    gpus,
                },
                runtime,
            )?;
            let started = Arc::new(started);
            registry
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone(), Arc::downgrade(&started));
            tracing::info!(
                application = %source.name,
                replicas = started.replica_count(),
                "deployment '{name}' ready"
            );
            order.push(name.clone());
            deployments.insert(name, started);
        }
        let ingress = deployments
            .get(&ingress)
            .cloned()
            .ok_or_else(|| format!("the ingress '{ingress}' was not among the deployments"))?;
        Ok(Self {
            name: source.name.clone(),
            route_prefix: source.route_prefix.clone(),
            ingress,
            deployments,
            order,
        })
    }
}

/// Imports the application in a worker of its own and reads its deployments.
fn describe(spec: &WorkerSpec) -> Result<(String, Vec<Described>), String> {
    let channel = Channel::start(spec, Arc::new(NoCalls))?;
    let ready = channel.ready();
    let ingress = ready
        .get("ingress")
        .and_then(Value::as_str)
        .ok_or("the application has no ingress deployment")?
        .to_string();
    let described = ready
        .get("deployments")
        .and_then(Value::as_array)
        .ok_or("the worker described no deployments")?
        .iter()
        .map(Described::from_json)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ingress, described))
}

/// The deployments in an order that starts every deployment after those bound to it.
fn build_order(mut described: Vec<Described>) -> Result<Vec<Described>, String> {
    let mut done = std::collections::BTreeSet::new();
    let mut order = Vec::with_capacity(described.len());
    while !described.is_empty() {
        let ready = described
            .iter()
            .position(|d| d.handles.iter().all(|h| done.contains(h)))
            .ok_or_else(|| {
                format!(
                    "the deployments {} are bound to each other in a cycle, or to one the application does not have",
                    described.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                )
            })?;
        let d = described.remove(ready);
        done.insert(d.name.clone());
        order.push(d);
    }
    Ok(order)
}

/// The `CUDA_VISIBLE_DEVICES` of each replica in turn for `num_gpus` per replica: whole GPUs,
/// round-robin over those visible (a fraction shares one, as Ray packs fractional GPUs).
fn gpus_per_replica(name: &str, num_gpus: f64) -> Option<Vec<String>> {
    if num_gpus <= 0.0 {
        return None;
    }
    let visible = crate::python::visible_gpus();
    if visible.is_empty() {
        tracing::warn!(
            "deployment '{name}': ray_actor_options.num_gpus is {num_gpus}, but this machine shows no GPU; its replicas run on the CPU"
        );
        return None;
    }
    let each = (num_gpus.ceil() as usize).clamp(1, visible.len());
    let groups = visible.len() / each;
    Some(
        (0..groups)
            .map(|g| visible[g * each..(g + 1) * each].join(","))
            .collect(),
    )
}

/// The application's deployments by name, for handle calls (weak: the deployments own the
/// workers that hold this).
type Registry = Arc<RwLock<BTreeMap<String, Weak<RayDeployment>>>>;

/// Routes a worker's handle calls to the named deployment's queue.
struct HandleCalls {
    registry: Registry,
    tokio: tokio::runtime::Handle,
}

impl Calls for HandleCalls {
    fn call(&self, request: Frame, reply: Responder) {
        if request.op() != "handle" {
            let op = request.op();
            reply.fail(
                format!("ProtocolError: the server takes no '{op}' from a worker"),
                None,
            );
            return;
        }
        let field = |k: &str| {
            request
                .header
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (name, method) = (field("deployment"), field("method"));
        let args = match request.bytes("args") {
            Ok(a) => a.to_vec(),
            Err(e) => {
                reply.fail(format!("ProtocolError: {e}"), None);
                return;
            }
        };
        let target = self
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .and_then(Weak::upgrade);
        self.tokio.spawn(async move {
            let answer = match target {
                Some(d) => d.call(&method, args).await,
                None => Err(Error::not_found(format!(
                    "no deployment '{name}' in this application is serving yet"
                ))),
            };
            match answer {
                Ok(Answer::Value(v)) => {
                    let mut payload = Payload::default();
                    let mut h = Map::new();
                    h.insert("op".into(), "handle_result".into());
                    h.insert("result".into(), payload.put(&v));
                    reply.send(h, payload);
                }
                Ok(Answer::Raised { error, exception }) => reply.fail(
                    format!("deployment '{name}' raised {error}"),
                    exception.as_deref(),
                ),
                Ok(Answer::Http(_)) => reply.fail(
                    format!("deployment '{name}' answered a method call with an HTTP response"),
                    None,
                ),
                Err(e) => reply.fail(format!("deployment '{name}': {e}"), None),
            }
        });
    }
}

/// The describing worker asks nothing of the server.
struct NoCalls;

impl Calls for NoCalls {
    fn call(&self, request: Frame, reply: Responder) {
        let op = request.op();
        reply.fail(
            format!("the application calls '{op}' while it is imported; deployments are not serving yet"),
            None,
        );
    }
}
