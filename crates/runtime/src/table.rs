//! The model table: every model the runtime knows, its versions' states, and the lookup that
//! takes a request's model name and version to the version that serves it.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferroserve_core::{Error, Result};

use crate::catalog::Origin;
use crate::response::{IndexEntry, ModelState};
use crate::runtime::Runtime;
use crate::version::Version;

pub(crate) enum VersionState {
    Ready(Arc<Version>),
    Unavailable(Error),
}

/// Whether a model is loaded.
pub(crate) enum EntryState {
    /// Loaded, each version ready or failed.
    Loaded(BTreeMap<u64, VersionState>),
    /// Cannot serve: its folder is unusable, it failed to load, or it was unloaded.
    Unavailable(Error),
    /// A lazy model not loaded yet, or unloaded to make room: the next request loads it.
    Unloaded,
}

/// A model the runtime knows: its state, where it came from, and how it is served.
pub(crate) struct ModelEntry {
    pub(crate) state: EntryState,
    pub(crate) origin: Origin,
    /// `load: lazy` in its config.
    pub(crate) lazy: bool,
    /// The version requests without one go to; the highest ready one when unset or not ready.
    pub(crate) default: Option<u64>,
    /// The last load or reload that failed, and why.
    pub(crate) last_error: Option<String>,
}

impl ModelEntry {
    /// The versions that loaded, ascending.
    pub(crate) fn ready(&self) -> impl DoubleEndedIterator<Item = &Arc<Version>> {
        self.state.ready()
    }

    /// The version requests without a version number go to.
    pub(crate) fn default_version(&self) -> Option<&Arc<Version>> {
        let chosen = self
            .default
            .and_then(|d| self.ready().find(|v| v.number == d));
        chosen.or_else(|| self.ready().next_back())
    }
}

impl EntryState {
    /// The versions that loaded, ascending.
    pub(crate) fn ready(&self) -> impl DoubleEndedIterator<Item = &Arc<Version>> {
        let versions = match self {
            EntryState::Loaded(v) => Some(v),
            EntryState::Unavailable(_) | EntryState::Unloaded => None,
        };
        versions
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter_map(|s| match s {
                VersionState::Ready(v) => Some(v),
                VersionState::Unavailable(_) => None,
            })
    }

    /// Why a new entry does not fully serve, if it does not.
    pub(crate) fn failure(&self) -> Option<Error> {
        match self {
            EntryState::Unavailable(e) => Some(e.clone()),
            EntryState::Loaded(versions) => versions.iter().find_map(|(n, v)| match v {
                VersionState::Unavailable(e) => {
                    Some(e.clone().context(format_args!("version {n}")))
                }
                VersionState::Ready(_) => None,
            }),
            EntryState::Unloaded => None,
        }
    }
}

/// Stops what `state` served once no request holds it any more (see
/// [`crate::version::retire`]).
pub(crate) fn retire(state: EntryState) {
    let versions: Vec<Arc<Version>> = state.ready().cloned().collect();
    drop(state);
    crate::version::retire(versions);
}

/// The model is lazy and not loaded.
pub(crate) struct Lazy;

impl Runtime {
    /// The version a request for `model` at `version` goes to, loading a lazy model first.
    pub(crate) fn resolve(&self, model: &str, version: Option<&str>) -> Result<Arc<Version>> {
        match self.find_version(model, version) {
            Err(Lazy) => {
                // Whatever the load's outcome, the request is answered from the state it left:
                // a version that loaded serves even if another failed.
                let loaded = crate::lifecycle::blocking(|| self.load_lazy(model));
                self.find_version(model, version).unwrap_or_else(|Lazy| {
                    Err(match loaded {
                        Err(e) => e.with_kind(ferroserve_core::ErrorKind::Unavailable),
                        Ok(()) => Error::unavailable(format!(
                            "model '{model}' was unloaded while it loaded; retry"
                        )),
                    })
                })
            }
            Ok(found) => found,
        }
    }

    /// [`Runtime::resolve`] without loading: a lazy model not loaded is unavailable.
    pub(crate) fn peek(&self, model: &str, version: Option<&str>) -> Result<Arc<Version>> {
        self.find_version(model, version).unwrap_or_else(|Lazy| {
            Err(Error::unavailable(format!(
                "model '{model}' is lazy and loads on its first request"
            )))
        })
    }

    fn find_version(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> std::result::Result<Result<Arc<Version>>, Lazy> {
        let models = self.read_models();
        let Some(entry) = models.get(model) else {
            return Ok(Err(Error::not_found(format!("unknown model '{model}'"))));
        };
        let versions = match &entry.state {
            EntryState::Unavailable(reason) => {
                return Ok(Err(Error::unavailable(format!(
                    "model '{model}' is not available: {reason}"
                ))))
            }
            EntryState::Unloaded => return Err(Lazy),
            EntryState::Loaded(versions) => versions,
        };
        Ok(pick(model, entry, versions, version))
    }

    pub(crate) fn ready_versions(&self, model: &str) -> Vec<String> {
        self.read_models()
            .get(model)
            .map(|e| e.ready().map(|v| v.number.to_string()).collect())
            .unwrap_or_default()
    }

    /// Every model version and its state, sorted by name and version. With `ready_only`, only
    /// the ready ones.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let models = self.read_models();
        let mut rows = Vec::new();
        for (name, entry) in models.iter() {
            match &entry.state {
                EntryState::Unavailable(reason) => rows.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: ModelState::Unavailable,
                    reason: Some(reason.to_string()),
                }),
                EntryState::Unloaded => rows.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: ModelState::Unavailable,
                    reason: Some("lazy: loads on its first request".into()),
                }),
                EntryState::Loaded(versions) => {
                    for (number, state) in versions {
                        let (state, reason) = match state {
                            VersionState::Ready(v) => match v.health.failure() {
                                None => (ModelState::Ready, None),
                                Some(reason) => (ModelState::Unavailable, Some(reason)),
                            },
                            VersionState::Unavailable(r) => {
                                (ModelState::Unavailable, Some(r.to_string()))
                            }
                        };
                        rows.push(IndexEntry {
                            name: name.clone(),
                            version: Some(number.to_string()),
                            state,
                            reason,
                        });
                    }
                }
            }
        }
        if ready_only {
            rows.retain(|r| r.state == ModelState::Ready);
        }
        rows
    }

    /// `NotFound` for a name no model has (checked before a lock is made for the name, so
    /// requests naming made-up models do not grow the lock map).
    pub(crate) fn known(&self, name: &str) -> Result<()> {
        if self.read_models().contains_key(name) {
            Ok(())
        } else {
            Err(Error::not_found(format!("unknown model '{name}'")))
        }
    }

    pub(crate) fn read_models(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelEntry>> {
        // A panic while holding the lock leaves the map itself intact; keep serving.
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_models(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The version of `entry` a request for `version` (or none) goes to.
fn pick(
    model: &str,
    entry: &ModelEntry,
    versions: &BTreeMap<u64, VersionState>,
    version: Option<&str>,
) -> Result<Arc<Version>> {
    let Some(v) = version else {
        let chosen = entry.default_version().ok_or_else(|| {
            Error::unavailable(format!("model '{model}' has no version that loaded"))
        })?;
        return match chosen.health.failure() {
            None => Ok(chosen.clone()),
            Some(reason) => Err(Error::unavailable(format!(
                "model '{model}' is not available: {reason}"
            ))),
        };
    };
    // TorchServe's clients name versions as their archives do: "1.0" is version 1.
    let state = ferroserve_store::mar::numeric_version(Some(v))
        .ok()
        .and_then(|n| versions.get(&n))
        .ok_or_else(|| {
            let known: Vec<String> = versions.keys().map(u64::to_string).collect();
            Error::not_found(format!(
                "unknown version '{v}' of model '{model}' (versions: {})",
                known.join(", ")
            ))
        })?;
    match state {
        VersionState::Ready(v) => match v.health.failure() {
            None => Ok(v.clone()),
            Some(reason) => Err(Error::unavailable(format!(
                "model '{model}' version {v} is not available: {reason}",
                v = v.number
            ))),
        },
        VersionState::Unavailable(reason) => Err(Error::unavailable(format!(
            "model '{model}' version {v} is not available: {reason}"
        ))),
    }
}
