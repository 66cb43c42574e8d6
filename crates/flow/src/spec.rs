//! The YAML a person writes for `ferroserve run`: a Deployment (one executor) or a Flow (several,
//! in a DAG), with Jina's names.
//!
//! ```yaml
//! jtype: Flow
//! with:
//!   port: 8080
//! executors:
//!   - name: upper
//!     uses: UpperCase            # a registered executor
//!   - name: encoder
//!     uses: models/minilm        # a model folder (relative to this file), served by its task
//!     needs: upper               # default: the executor before it
//! ```
//!
//! ```yaml
//! jtype: Deployment
//! with:
//!   name: encoder
//!   uses: models/minilm
//!   replicas: 2
//! ```

use ferroserve_runtime::Autoscaling;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ferroserve_runtime::config::{Device, Devices};
use serde::Deserialize;

use crate::Parameters;

/// The name `needs:` uses for the request as the client sent it.
pub const GATEWAY: &str = "gateway";

/// One executor of a Flow, or the executor of a Deployment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSpec {
    /// Name, unique in the Flow. Default: `executor0`, `executor1`, ... by position.
    #[serde(default)]
    pub name: Option<String>,
    /// A registered executor's name, or a model folder (relative to the YAML file).
    pub uses: String,
    /// Parameters for the executor's constructor.
    #[serde(default)]
    pub uses_with: Parameters,
    /// Instances that serve requests at once. Default: 1. For a model folder, the model's
    /// replicas (its `model.yaml` says how they batch). Not with `autoscaling`, which sets them.
    #[serde(default)]
    pub replicas: Option<usize>,
    /// Executors whose documents this one takes (`gateway` for the request itself); with several,
    /// their documents are merged by id. Default: the executor listed before it.
    #[serde(default)]
    pub needs: Option<Needs>,
    /// Independent instances of a registered executor, each with its own state (a part of an
    /// index, say), each with `replicas` instances. Default: 1.
    #[serde(default = "one")]
    pub shards: usize,
    /// Which shards a request goes to: `ANY` (one, in turn) or `ALL` (every shard; their
    /// documents merged), for every endpoint or per endpoint (`{/index: ANY, /search: ALL}`).
    /// Default: `ANY`.
    #[serde(default)]
    pub polling: Option<PollingSpec>,
    /// Instances follow the load between `min_replicas` and `max_replicas` (Ray Serve's
    /// `autoscaling_config`): registered executors (with one shard) and model folders.
    #[serde(default)]
    pub autoscaling: Option<Autoscaling>,
    /// Per endpoint, gather the documents of concurrent requests into one call of a registered
    /// executor (Jina's `uses_dynamic_batching`): `{/encode: {preferred_batch_size: 32,
    /// timeout: 100}}`. The executor must return one document per document, in order.
    #[serde(default)]
    pub uses_dynamic_batching: BTreeMap<String, DynamicBatchingSpec>,
    /// Where a model folder's replicas run, as in `model.yaml` (`[cpu]`, `[cuda:0, cuda:1]`,
    /// `round-robin`), in place of its `model.yaml`'s.
    #[serde(default)]
    pub devices: Option<Devices>,
    /// Jina's `env`. For a model folder only `CUDA_VISIBLE_DEVICES` is understood: `RR` places
    /// its replicas round-robin on the visible GPUs, `0,1` on those GPUs. A Python executor's
    /// workers get every variable; `CUDA_VISIBLE_DEVICES: RR` gives each replica its own GPU
    /// in turn.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Python files (relative to the YAML file) that define the executor class `uses` names
    /// (Jina's `py_modules`): the executor runs in Python worker processes.
    #[serde(default)]
    pub py_modules: Vec<String>,
    /// The Python interpreter of this executor's workers (a virtual environment's
    /// `bin/python`). Default: the server's `--python`, else `python3`.
    #[serde(default)]
    pub python: Option<PathBuf>,
    /// Milliseconds a Python worker may take to start and build the executor; -1 waits
    /// forever. Default: 600000 (Jina's).
    #[serde(default)]
    pub timeout_ready: Option<i64>,
    /// Install the `requirements.txt` beside the first py_module into the interpreter before
    /// starting (only when the server runs with `--install-requirements`; otherwise the log
    /// says how). Default: false.
    #[serde(default)]
    pub install_requirements: bool,
    /// Milliseconds a request to this executor may take, queued and running (Jina's
    /// `timeout_send`): past it the client gets 504, and a Python worker still running it is
    /// killed and restarted. For registered and Python executors. Default: none.
    #[serde(default)]
    pub timeout_send: Option<u64>,
}

impl ExecutorSpec {
    /// The device placement `devices` or `env` asks for.
    pub fn placement(&self) -> Result<Option<Devices>, String> {
        if self.is_python() {
            // A Python executor's env goes to its workers as it is.
            return match &self.devices {
                Some(_) => Err("devices applies to model folders; a Python executor is placed with env.CUDA_VISIBLE_DEVICES (RR, or GPU numbers)".into()),
                None => Ok(None),
            };
        }
        if let Some(key) = self.env.keys().find(|k| *k != "CUDA_VISIBLE_DEVICES") {
            return Err(format!(
                "env.{key}: only CUDA_VISIBLE_DEVICES is understood (RR, or GPU numbers like 0,1) by executors that are not Python"
            ));
        }
        let from_env = match self.env.get("CUDA_VISIBLE_DEVICES").map(|v| v.trim()) {
            None => None,
            Some("RR") => Some(Devices::RoundRobin),
            Some(list) => Some(Devices::List(
                list.split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<u32>()
                            .map(Device::Cuda)
                            .map_err(|_| format!("env.CUDA_VISIBLE_DEVICES '{list}' is not RR or GPU numbers like 0,1"))
                    })
                    .collect::<Result<_, _>>()?,
            )),
        };
        match (&self.devices, from_env) {
            (Some(_), Some(_)) => Err("set devices or env.CUDA_VISIBLE_DEVICES, not both".into()),
            (Some(d), None) => Ok(Some(d.clone())),
            (None, e) => Ok(e),
        }
    }
}

/// Jina's dynamic batching settings for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicBatchingSpec {
    /// A batch is handed over as soon as it holds this many documents.
    pub preferred_batch_size: usize,
    /// Milliseconds the first request of a batch waits for company. Default: 10000 (Jina's).
    #[serde(default = "ten_seconds")]
    pub timeout: u64,
}

fn ten_seconds() -> u64 {
    10_000
}

impl ExecutorSpec {
    /// `timeout_send`, as a duration.
    pub fn timeout_send(&self) -> Option<std::time::Duration> {
        self.timeout_send.map(std::time::Duration::from_millis)
    }

    /// Whether it is a Python executor (a class in `py_modules`).
    pub fn is_python(&self) -> bool {
        !self.py_modules.is_empty()
    }

    /// Instances per shard at start.
    pub fn replicas(&self) -> usize {
        match &self.autoscaling {
            Some(a) => a.initial(),
            None => self.replicas.unwrap_or(1),
        }
    }
}

/// `polling: ANY`, or per endpoint `polling: {/search: ALL, /index: ANY}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PollingSpec {
    /// The same for every endpoint.
    One(String),
    /// Per endpoint; endpoints not named use `ANY`.
    PerEndpoint(BTreeMap<String, String>),
}

/// Where a sharded executor's request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polling {
    /// One shard, in turn.
    Any,
    /// Every shard; their documents are merged.
    All,
}

impl Polling {
    fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "ANY" => Ok(Polling::Any),
            "ALL" => Ok(Polling::All),
            _ => Err(format!("polling '{s}' is not ANY or ALL")),
        }
    }
}

impl ExecutorSpec {
    /// The polling for `endpoint`.
    pub fn polling_for(&self, endpoint: &str) -> Polling {
        match &self.polling {
            None => Polling::Any,
            Some(PollingSpec::One(p)) => Polling::parse(p).unwrap_or(Polling::Any),
            Some(PollingSpec::PerEndpoint(map)) => map
                .get(endpoint)
                .and_then(|p| Polling::parse(p).ok())
                .unwrap_or(Polling::Any),
        }
    }
}

/// `needs: a` or `needs: [a, b]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Needs {
    /// One executor.
    One(String),
    /// Several, merged.
    Many(Vec<String>),
}

/// The gateway's settings (`with:` of a Flow).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// Port, or one port per protocol (Jina's `port: [8080, 8081]` with
    /// `protocol: [http, grpc]`). Default: 8080 for HTTP, 8081 for gRPC.
    #[serde(default)]
    pub port: Option<Ports>,
    /// `http`, `grpc`, or both. Default: `http`.
    #[serde(default)]
    pub protocol: Option<Protocols>,
}

/// `port: 8080` or `port: [8080, 8081]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Ports {
    /// One port (for the first protocol).
    One(u16),
    /// One per protocol, in order.
    Many(Vec<u16>),
}

impl GatewaySpec {
    /// The protocols, lower-cased, in order.
    pub fn protocols(&self) -> Vec<String> {
        match &self.protocol {
            None => vec!["http".to_string()],
            Some(Protocols::One(p)) => vec![p.to_ascii_lowercase()],
            Some(Protocols::Many(ps)) => ps.iter().map(|p| p.to_ascii_lowercase()).collect(),
        }
    }

    /// The port the file gives `protocol`, if any.
    pub fn port_of(&self, protocol: &str) -> Option<u16> {
        let i = self.protocols().iter().position(|p| p == protocol)?;
        match &self.port {
            None => None,
            Some(Ports::One(p)) => (i == 0).then_some(*p),
            Some(Ports::Many(ps)) => ps.get(i).copied(),
        }
    }

    fn check(&self) -> Result<(), String> {
        let protocols = self.protocols();
        if protocols.is_empty() {
            return Err("protocol: name http, grpc or both".into());
        }
        for (i, p) in protocols.iter().enumerate() {
            if p != "http" && p != "grpc" {
                return Err(format!("protocol '{p}' is not http or grpc"));
            }
            if protocols[..i].contains(p) {
                return Err(format!("protocol '{p}' is named twice"));
            }
        }
        if let Some(Ports::Many(ps)) = &self.port {
            if ps.len() != protocols.len() {
                return Err(format!(
                    "port lists {} ports for {} protocols; give one per protocol, in order",
                    ps.len(),
                    protocols.len()
                ));
            }
        }
        Ok(())
    }
}

/// `protocol: http` or `protocol: [http]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Protocols {
    /// One protocol.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `with:` of a Deployment: the executor's fields and the gateway's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentWith {
    #[serde(default)]
    name: Option<String>,
    uses: String,
    #[serde(default)]
    uses_with: Parameters,
    #[serde(default)]
    replicas: Option<usize>,
    #[serde(default = "one")]
    shards: usize,
    #[serde(default)]
    autoscaling: Option<Autoscaling>,
    #[serde(default)]
    polling: Option<PollingSpec>,
    #[serde(default)]
    uses_dynamic_batching: BTreeMap<String, DynamicBatchingSpec>,
    #[serde(default)]
    devices: Option<Devices>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    py_modules: Vec<String>,
    #[serde(default)]
    python: Option<PathBuf>,
    #[serde(default)]
    timeout_ready: Option<i64>,
    #[serde(default)]
    install_requirements: bool,
    #[serde(default)]
    timeout_send: Option<u64>,
    #[serde(default)]
    port: Option<Ports>,
    #[serde(default)]
    protocol: Option<Protocols>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentFile {
    #[allow(dead_code)]
    jtype: String,
    with: DeploymentWith,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowFile {
    #[allow(dead_code)]
    jtype: String,
    #[serde(default)]
    with: GatewaySpec,
    #[serde(default)]
    deployments: Vec<ExecutorSpec>,
    executors: Vec<ExecutorSpec>,
}

fn one() -> usize {
    1
}

/// A checked Deployment or Flow: executors with unique names, `needs` that name executors that
/// exist, and no cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSpec {
    /// Whether the file was a Deployment (one executor, also served at `GET /{name}`).
    pub deployment: bool,
    /// The gateway's settings.
    pub gateway: GatewaySpec,
    /// Executors in the file's order, each with its name set.
    pub executors: Vec<ExecutorSpec>,
    /// Deployments outside the DAG, reachable only through handles from executors (Ray Serve's
    /// composition), each with its name set.
    pub deployments: Vec<ExecutorSpec>,
    /// Each executor's needs, resolved (empty = the gateway).
    pub needs: Vec<Vec<usize>>,
    /// The folder of the YAML file, against which model paths are resolved.
    pub base: PathBuf,
}

/// A YAML file that could not be used, with the file and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct SpecError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, with the key's path.
    pub message: String,
}

impl FlowSpec {
    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(file).map_err(|e| SpecError {
            file: file.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, base).map_err(|message| SpecError {
            file: file.to_path_buf(),
            message,
        })
    }

    /// Parses and checks YAML text; model paths resolve against `base`.
    pub fn parse(text: &str, base: PathBuf) -> Result<Self, String> {
        ferroserve_core::check_yaml_depth(text)?;
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        let jtype = value
            .get("jtype")
            .and_then(|v| v.as_str())
            .ok_or("the file needs 'jtype: Deployment' or 'jtype: Flow'")?;
        let de = || serde_yaml_ng::Deserializer::from_str(text);
        let wrap = |e: serde_path_to_error::Error<serde_yaml_ng::Error>| {
            ferroserve_runtime::config::describe(&e.path().to_string(), e.inner())
        };
        let (deployment, gateway, deployments, executors) = match jtype {
            "Deployment" => {
                let f: DeploymentFile = serde_path_to_error::deserialize(de()).map_err(wrap)?;
                let w = f.with;
                let exec = ExecutorSpec {
                    name: w.name,
                    uses: w.uses,
                    uses_with: w.uses_with,
                    replicas: w.replicas,
                    needs: None,
                    shards: w.shards,
                    polling: w.polling,
                    autoscaling: w.autoscaling,
                    uses_dynamic_batching: w.uses_dynamic_batching,
                    devices: w.devices,
                    env: w.env,
                    py_modules: w.py_modules,
                    python: w.python,
                    timeout_ready: w.timeout_ready,
                    install_requirements: w.install_requirements,
                    timeout_send: w.timeout_send,
                };
                let gateway = GatewaySpec {
                    port: w.port,
                    protocol: w.protocol,
                };
                (true, gateway, vec![], vec![exec])
            }
            "Flow" => {
                let f: FlowFile = serde_path_to_error::deserialize(de()).map_err(wrap)?;
                (false, f.with, f.deployments, f.executors)
            }
            other => return Err(format!("jtype '{other}' is not one of Deployment, Flow")),
        };
        Self::check(deployment, gateway, deployments, executors, base)
    }

    fn check(
        deployment: bool,
        gateway: GatewaySpec,
        mut deployments: Vec<ExecutorSpec>,
        mut executors: Vec<ExecutorSpec>,
        base: PathBuf,
    ) -> Result<Self, String> {
        let mut taken = BTreeSet::new();
        for (i, d) in deployments.iter_mut().enumerate() {
            let name = d.name.clone().ok_or(format!(
                "deployments[{i}] needs a name (handles call it by name)"
            ))?;
            check_name(&name).map_err(|m| format!("deployments[{i}].name {m}"))?;
            if d.needs.is_some() {
                return Err(format!(
                    "deployments[{i}].needs: a deployment outside the DAG is called through handles, not fed by needs"
                ));
            }
            if !taken.insert(name.clone()) {
                return Err(format!("deployments[{i}].name '{name}' is used twice"));
            }
        }
        if executors.is_empty() {
            return Err("executors: a Flow needs at least one executor".into());
        }
        gateway.check()?;
        let mut index = BTreeMap::new();
        for (i, e) in executors.iter_mut().enumerate() {
            let name = e.name.get_or_insert_with(|| format!("executor{i}")).clone();
            check_name(&name).map_err(|m| format!("executors[{i}].name {m}"))?;
            if taken.contains(&name) {
                return Err(format!(
                    "executors[{i}].name '{name}' is also a deployment's name"
                ));
            }

            if index.insert(name.clone(), i).is_some() {
                return Err(format!("executors[{i}].name '{name}' is used twice"));
            }
        }
        let mut needs = Vec::with_capacity(executors.len());
        for (i, e) in executors.iter().enumerate() {
            let names = match &e.needs {
                None if i == 0 => vec![],
                None => vec![executors[i - 1].name.clone().unwrap_or_default()],
                Some(Needs::One(n)) => vec![n.clone()],
                Some(Needs::Many(ns)) => ns.clone(),
            };
            let mut resolved = BTreeSet::new();
            for n in names {
                if n == GATEWAY {
                    continue;
                }
                let j = index.get(&n).copied().ok_or_else(|| {
                    let known: Vec<&str> = index.keys().map(String::as_str).collect();
                    format!(
                        "executors[{i}].needs names '{n}', which is not an executor (executors: {}; or '{GATEWAY}')",
                        known.join(", ")
                    )
                })?;
                if j == i {
                    return Err(format!("executors[{i}].needs names the executor itself"));
                }
                resolved.insert(j);
            }
            needs.push(resolved.into_iter().collect::<Vec<_>>());
        }
        if let Some(cycle) = find_cycle(&needs) {
            let names: Vec<String> = cycle
                .iter()
                .map(|&i| executors[i].name.clone().unwrap_or_default())
                .collect();
            return Err(format!("needs forms a cycle: {}", names.join(" -> ")));
        }
        for (what, list) in [("deployments", &deployments), ("executors", &executors)] {
            for (i, e) in list.iter().enumerate() {
                if e.replicas == Some(0) || e.shards == 0 {
                    return Err(format!(
                        "{what}[{i}]: replicas and shards must be at least 1"
                    ));
                }
                let most = ferroserve_runtime::MAX_REPLICAS;
                let asked = e
                    .replicas
                    .unwrap_or(1)
                    .max(e.autoscaling.as_ref().map_or(1, |a| a.max_replicas))
                    .saturating_mul(e.shards);
                if asked > most {
                    return Err(format!(
                        "{what}[{i}]: replicas (or autoscaling.max_replicas) times shards is {asked}; at most {most} instances are allowed, as through the management API"
                    ));
                }
                if let Some(a) = &e.autoscaling {
                    if e.replicas.is_some() {
                        return Err(format!(
                            "{what}[{i}]: set replicas or autoscaling, not both (autoscaling.initial_replicas sets the start)"
                        ));
                    }
                    if e.shards > 1 {
                        return Err(format!(
                            "{what}[{i}]: autoscaling works with one shard so far"
                        ));
                    }
                    a.check().map_err(|m| format!("{what}[{i}].{m}"))?;
                }
                check_polling(e).map_err(|m| format!("{what}[{i}].{m}"))?;
                if e.timeout_ready.is_some_and(|t| t < -1) {
                    return Err(format!(
                        "{what}[{i}].timeout_ready is milliseconds, or -1 to wait forever"
                    ));
                }
                if !e.is_python() && (e.python.is_some() || e.install_requirements) {
                    return Err(format!(
                        "{what}[{i}]: python and install_requirements apply to Python executors (with py_modules)"
                    ));
                }
                e.placement().map_err(|m| format!("{what}[{i}].{m}"))?;
                for (endpoint, b) in &e.uses_dynamic_batching {
                    if !endpoint.starts_with('/') || b.preferred_batch_size == 0 {
                        return Err(format!(
                            "{what}[{i}].uses_dynamic_batching: '{endpoint}' must start with '/' and have a preferred_batch_size of at least 1"
                        ));
                    }
                }
            }
        }
        Ok(Self {
            deployment,
            gateway,
            executors,
            deployments,
            needs,
            base,
        })
    }

    /// Executors in an order where each comes after all it needs.
    pub fn order(&self) -> Vec<usize> {
        let mut done = vec![false; self.needs.len()];
        let mut out = Vec::with_capacity(self.needs.len());
        while out.len() < self.needs.len() {
            for i in 0..self.needs.len() {
                if !done[i] && self.needs[i].iter().all(|&j| done[j]) {
                    done[i] = true;
                    out.push(i);
                }
            }
        }
        out
    }
}

/// A name must be usable in a URL and must not be the gateway's.
fn check_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name != GATEWAY
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "'{name}' must be letters, digits, '-' or '_' (and not '{GATEWAY}')"
        ))
    }
}

fn check_polling(e: &ExecutorSpec) -> Result<(), String> {
    match &e.polling {
        None => Ok(()),
        Some(PollingSpec::One(p)) => Polling::parse(p).map(drop),
        Some(PollingSpec::PerEndpoint(map)) => {
            for (endpoint, p) in map {
                if !endpoint.starts_with('/') {
                    return Err(format!(
                        "polling: endpoint '{endpoint}' must start with '/'"
                    ));
                }
                Polling::parse(p)?;
            }
            Ok(())
        }
    }
}

/// A cycle in the `needs` graph, as the executors on it (the first repeated at the end).
fn find_cycle(needs: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the current path, 2 = finished.
    fn visit(
        i: usize,
        needs: &[Vec<usize>],
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[i] = 1;
        path.push(i);
        for &j in &needs[i] {
            if state[j] == 1 {
                let start = path.iter().position(|&p| p == j).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(j);
                cycle.reverse();
                return Some(cycle);
            }
            if state[j] == 0 {
                if let Some(c) = visit(j, needs, state, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        state[i] = 2;
        None
    }
    let mut state = vec![0u8; needs.len()];
    for i in 0..needs.len() {
        if state[i] == 0 {
            if let Some(c) = visit(i, needs, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FlowSpec, String> {
        FlowSpec::parse(text, PathBuf::from("."))
    }

    #[test]
    fn chain_by_default_and_diamond_by_needs() {
        let f = parse("jtype: Flow\nexecutors:\n  - uses: A\n  - uses: B\n").unwrap();
        assert_eq!(f.needs, [vec![], vec![0]]);
        let d = parse(
            "jtype: Flow\nexecutors:\n  - {name: a, uses: A}\n  - {name: b, uses: B, needs: a}\n  - {name: c, uses: C, needs: a}\n  - {name: d, uses: D, needs: [b, c]}\n",
        )
        .unwrap();
        assert_eq!(d.needs[3], [1, 2]);
        assert_eq!(d.order(), [0, 1, 2, 3]);
    }

    #[test]
    fn mistakes_are_named() {
        let e = |t: &str| parse(t).unwrap_err();
        assert!(e("jtype: Flow\nexecutors:\n  - {uses: A, replica: 2}\n")
            .contains("did you mean 'replicas'"));
        assert!(e("jtype: Flow\nexecutors:\n  - {name: a, uses: A, needs: zz}\n").contains("'zz'"));
        let cycle = e("jtype: Flow\nexecutors:\n  - {name: a, uses: A, needs: b}\n  - {name: b, uses: B, needs: a}\n");
        assert!(cycle.contains("cycle: "), "{cycle}");
        assert!(e("jtype: Pipeline\n").contains("Deployment, Flow"));
        assert!(
            e("jtype: Deployment\nwith: {uses: A, protocol: websocket}\n")
                .contains("not http or grpc")
        );
        assert!(e(
            "jtype: Flow\nwith: {protocol: [http, grpc], port: [1]}\nexecutors: [{uses: A}]\n"
        )
        .contains("one per protocol"));
        let f = parse("jtype: Flow\nwith: {protocol: [http, grpc], port: [8000, 9000]}\nexecutors: [{uses: A}]\n").unwrap();
        assert_eq!(f.gateway.port_of("grpc"), Some(9000));
        assert!(
            e("jtype: Flow\nexecutors:\n  - {name: a, uses: A}\n  - {name: a, uses: B}\n")
                .contains("twice")
        );
        assert!(
            e("jtype: Flow\nexecutors:\n  - {uses: A, shards: 2, polling: SOME}\n")
                .contains("not ANY or ALL")
        );
        let f =
            parse("jtype: Flow\nexecutors:\n  - {uses: A, shards: 2, polling: {/search: ALL}}\n")
                .unwrap();
        assert_eq!(f.executors[0].polling_for("/search"), Polling::All);
        assert_eq!(f.executors[0].polling_for("/index"), Polling::Any);
    }
}
