//! The management operations behind TorchServe's management API and Triton's repository
//! extension: register, describe, list, scale, set the default version.

use serde::Serialize;

use ferroserve_core::{Error, Result};

use crate::autoscale::Autoscaling;
use crate::config::DynamicBatching;
use crate::response::ModelState;
use crate::runtime::Runtime;
use crate::table::{EntryState, VersionState};

/// A model as `GET /models/{model}` describes it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelDescription {
    /// Name.
    pub name: String,
    /// `READY` (a version serves), `UNAVAILABLE` (failed or unloaded) or `NOT_LOADED` (lazy,
    /// loads on its first request).
    pub state: &'static str,
    /// Where it came from: its folder, its archives, or the registration's URL.
    pub source: String,
    /// `eager` or `lazy`.
    pub load: &'static str,
    /// The version requests without one go to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_version: Option<String>,
    /// Estimated memory of its loaded versions (weight files times replicas).
    pub memory_bytes: u64,
    /// Why the last load or reload failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its versions.
    pub versions: Vec<VersionDescription>,
}

/// One version of a described model.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VersionDescription {
    /// Version number.
    pub version: String,
    /// Ready or not.
    pub state: ModelState,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Replicas loaded.
    pub replicas: usize,
    /// Where they run.
    pub devices: Vec<String>,
    /// Estimated memory (weight files times replicas).
    pub memory_bytes: u64,
    /// When it loaded (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<String>,
    /// How long loading took.
    pub load_ms: u64,
    /// Requests waiting in its queue now.
    pub queued: usize,
    /// Requests being computed now.
    pub in_flight: usize,
    /// Rows per batch when the server batches it, else 0.
    pub max_batch_size: usize,
    /// Its dynamic batching settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_batching: Option<DynamicBatching>,
    /// Backend platform (Triton's name).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform: String,
    /// Backend (`model.yaml`'s name).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// The autoscaling in force, when on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Built-in task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<&'static str>,
}

/// One page of `GET /models` (TorchServe's field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// The models of this page, by name.
    pub models: Vec<ModelListItem>,
    /// Pass it as `next_page_token` for the next page; absent on the last.
    #[serde(rename = "nextPageToken", skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// One model in a [`ModelList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ModelListItem {
    /// Name.
    #[serde(rename = "modelName")]
    pub model_name: String,
    /// Where it came from.
    #[serde(rename = "modelUrl")]
    pub model_url: String,
}

/// A change of replicas (TorchServe's `min_worker` / `max_worker`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, utoipa::ToSchema)]
pub struct ScaleRequest {
    /// Replicas to run (TorchServe scales to `min_worker`).
    pub min: Option<usize>,
    /// Most replicas: the current count is lowered to it when `min` is not given.
    pub max: Option<usize>,
}

impl ScaleRequest {
    /// Refuses requests that cannot be carried out, before any work starts.
    pub fn check(&self) -> Result<()> {
        match (self.min, self.max) {
            (None, None) => Err(Error::invalid(
                "give min_worker (replicas to run) or max_worker",
            )),
            (Some(0), _) => Err(Error::invalid(
                "min_worker must be at least 1; unregister the model to stop serving it",
            )),
            (Some(min), Some(max)) if max < min => Err(Error::invalid(format!(
                "max_worker ({max}) is below min_worker ({min})"
            ))),
            (Some(n), _) if n > MAX_REPLICAS => Err(Error::invalid(format!(
                "min_worker must be at most {MAX_REPLICAS}"
            ))),
            (_, Some(0)) => Err(Error::invalid(
                "max_worker must be at least 1; unregister the model to stop serving it",
            )),
            (_, Some(n)) if n > MAX_REPLICAS => Err(Error::invalid(format!(
                "max_worker must be at most {MAX_REPLICAS}"
            ))),
            _ => Ok(()),
        }
    }
}

/// Most replicas a management request may ask for.
pub const MAX_REPLICAS: usize = 64;

fn taken(name: &str) -> Error {
    Error::already_exists(format!(
        "model '{name}' is registered already; unregister it first, or register under another model_name"
    ))
}

/// Most models one page lists.
const MAX_PAGE: usize = 1000;

impl Runtime {
    /// Registers a model from `url`: a file in the model store, a local path under the allowed
    /// paths, or a URL under an allow-listed prefix (see [`crate::AccessPolicy`]). `name`
    /// defaults to the archive's model name (or the folder's name). A lazy model is only listed.
    /// Returns the name it was registered under. Blocks while it loads.
    pub fn register(
        &self,
        url: &str,
        name: Option<&str>,
        replicas: Option<usize>,
    ) -> Result<String> {
        if let Some(n) = name {
            ferroserve_store::check_model_name(n).map_err(Error::invalid)?;
        }
        match replicas {
            Some(0) => return Err(Error::invalid("initial_workers must be at least 1")),
            Some(n) if n > MAX_REPLICAS => {
                return Err(Error::invalid(format!(
                    "initial_workers must be at most {MAX_REPLICAS}"
                )))
            }
            _ => {}
        }
        if name.is_some_and(|n| self.read_models().contains_key(n)) {
            return Err(taken(name.unwrap_or_default()));
        }
        // Downloading and unpacking run without the catalog's lock.
        let locator = self.lock_catalog().locator();
        let (own_name, mut origin) = locator.locate(url)?;
        let name = name.map_or(own_name, str::to_string);
        ferroserve_store::check_model_name(&name).map_err(Error::invalid)?;
        origin.overrides.replicas = replicas;
        self.install_new(&name, origin)?;
        Ok(name)
    }

    /// Describes `model`: state, versions, replicas, devices, memory, batching, load time and
    /// the last error.
    pub fn describe(&self, model: &str) -> Result<ModelDescription> {
        let models = self.read_models();
        let entry = models
            .get(model)
            .ok_or_else(|| Error::not_found(format!("unknown model '{model}'")))?;
        let mut versions = Vec::new();
        let mut reason_all = None;
        match &entry.state {
            EntryState::Loaded(map) => {
                for (number, state) in map {
                    versions.push(match state {
                        VersionState::Ready(v) => {
                            let (queued, in_flight) = v.load();
                            let config = v.config();
                            VersionDescription {
                                version: number.to_string(),
                                state: ModelState::Ready,
                                reason: None,
                                replicas: v.replicas(),
                                devices: config.devices.iter().map(|d| d.to_string()).collect(),
                                memory_bytes: v.bytes(),
                                loaded_at: Some(
                                    humantime::format_rfc3339_seconds(v.loaded_at).to_string(),
                                ),
                                load_ms: v.load_ms,
                                queued,
                                in_flight,
                                max_batch_size: config.max_batch_size,
                                dynamic_batching: config.dynamic_batching.clone(),
                                platform: config.platform.clone(),
                                backend: config.backend.clone(),
                                task: config.task.map(|t| t.as_str()),
                                autoscaling: v.autoscaling(),
                            }
                        }
                        VersionState::Unavailable(r) => VersionDescription {
                            version: number.to_string(),
                            state: ModelState::Unavailable,
                            reason: Some(r.to_string()),
                            replicas: 0,
                            devices: Vec::new(),
                            memory_bytes: 0,
                            loaded_at: None,
                            load_ms: 0,
                            queued: 0,
                            in_flight: 0,
                            max_batch_size: 0,
                            dynamic_batching: None,
                            platform: String::new(),
                            backend: String::new(),
                            task: None,
                            autoscaling: None,
                        },
                    });
                }
            }
            EntryState::Unavailable(r) => reason_all = Some(r.to_string()),
            EntryState::Unloaded => {}
        }
        let state = match &entry.state {
            EntryState::Unloaded => "NOT_LOADED",
            _ if entry.ready().next().is_some() => "READY",
            _ => "UNAVAILABLE",
        };
        let description = ModelDescription {
            name: model.to_string(),
            state,
            source: entry.origin.url.clone(),
            load: if entry.lazy { "lazy" } else { "eager" },
            default_version: entry.default_version().map(|v| v.number.to_string()),
            memory_bytes: entry.ready().map(|v| v.bytes()).sum(),
            last_error: entry.last_error.clone().or(reason_all),
            versions,
        };
        Ok(description)
    }

    /// One page of the models, by name: at most `limit` (default 100) from `next_page_token`
    /// (an offset, as TorchServe's).
    pub fn list(&self, limit: Option<usize>, next_page_token: Option<&str>) -> Result<ModelList> {
        let limit = limit.unwrap_or(100);
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::invalid(format!(
                "limit must be between 1 and {MAX_PAGE}, got {limit}"
            )));
        }
        let start = match next_page_token {
            None => 0,
            Some(t) => t.parse::<usize>().map_err(|_| {
                Error::invalid(format!("next_page_token '{t}' is not one this server gave"))
            })?,
        };
        let models = self.read_models();
        let items: Vec<ModelListItem> = models
            .iter()
            .skip(start)
            .take(limit)
            .map(|(name, e)| ModelListItem {
                model_name: name.clone(),
                model_url: e.origin.url.clone(),
            })
            .collect();
        let next = start + items.len();
        Ok(ModelList {
            models: items,
            next_page_token: (next < models.len()).then(|| next.to_string()),
        })
    }

    /// Makes `version` the one requests without a version go to.
    pub fn set_default(&self, model: &str, version: &str) -> Result<()> {
        let mut models = self.write_models();
        let entry = models
            .get_mut(model)
            .ok_or_else(|| Error::not_found(format!("unknown model '{model}'")))?;
        let number = version
            .parse::<u64>()
            .ok()
            .filter(|n| entry.ready().any(|v| v.number == *n))
            .ok_or_else(|| {
                let ready: Vec<String> = entry.ready().map(|v| v.number.to_string()).collect();
                Error::not_found(format!(
                    "model '{model}' has no ready version '{version}' (ready: {})",
                    ready.join(", ")
                ))
            })?;
        entry.default = Some(number);
        Ok(())
    }

    /// Changes the replicas of `model` at `version` (or its default version) as TorchServe's
    /// `PUT /models/{m}?min_worker=&max_worker=` does. With both, and `max` above `min`, the
    /// autoscaler moves the replicas between them (with `model.yaml`'s other autoscaling
    /// settings, or Ray Serve's defaults); with `min` alone (or equal bounds) the model runs
    /// that many, autoscaling off; with `max` alone the count (and the autoscaler's upper bound)
    /// is lowered to it. Returns the replicas now serving.
    pub fn rescale(
        &self,
        model: &str,
        version: Option<&str>,
        request: ScaleRequest,
    ) -> Result<usize> {
        request.check()?;
        let v = self.resolve(model, version)?;
        let current = v.replicas();
        let autoscaling = v.autoscaling();
        let (target, autoscaling) = match (request.min, request.max) {
            (Some(min), Some(max)) if max > min => {
                let base = autoscaling.unwrap_or_default();
                let a = Autoscaling {
                    min_replicas: min,
                    max_replicas: max,
                    initial_replicas: None,
                    ..base
                };
                (current.clamp(min, max), Some(a))
            }
            (Some(min), _) => (min, None),
            (None, Some(max)) => (
                current.min(max),
                autoscaling.map(|a| Autoscaling {
                    min_replicas: a.min_replicas.min(max),
                    max_replicas: max,
                    initial_replicas: None,
                    ..a
                }),
            ),
            (None, None) => (current, autoscaling),
        };
        if let Some(a) = &autoscaling {
            a.check().map_err(Error::invalid)?;
        }
        // The autoscaler's bounds change first, so a decision it made under the old ones is
        // not applied after this change.
        v.set_autoscaling(autoscaling, self.metrics.deployment(model))?;
        let replicas = v.scale_to(target)?;
        self.update_memory();
        Ok(replicas)
    }

    /// Sets the replicas of `model`'s default version to `replicas`: new ones are loaded (on
    /// the devices its placement gives them) before they take work; extra ones stop after the
    /// batch they are running, so no request fails. At 0, requests wait in the bounded queue for
    /// the next replica. Blocks while replicas load; returns the replicas now serving.
    pub fn scale(&self, model: &str, replicas: usize) -> Result<usize> {
        self.scale_version(model, None, replicas)
    }

    /// [`Runtime::scale`] for one version (or the default one).
    pub fn scale_version(
        &self,
        model: &str,
        version: Option<&str>,
        replicas: usize,
    ) -> Result<usize> {
        let n = self.resolve(model, version)?.scale_to(replicas)?;
        self.update_memory();
        Ok(n)
    }

    /// `model`'s default version's load: `(requests queued, requests computing, replicas)`.
    pub fn load_of(&self, model: &str) -> Result<(usize, usize, usize)> {
        let v = self.peek(model, None)?;
        let (queued, running) = v.load();
        Ok((queued, running, v.replicas()))
    }
}
