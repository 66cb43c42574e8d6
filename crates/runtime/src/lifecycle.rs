//! Loading, swapping and unloading models: at start, through the repository and management
//! APIs, on a lazy model's first request, when a poll finds the sources changed, and when the
//! memory budget needs room.
//!
//! Every change replaces a model's entry in one step under the map's write lock, after the new
//! copy has loaded; the old copy stops only once no request holds it ([`retire`]), so a swap
//! fails no request.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ferroserve_core::{Error, Result};
use ferroserve_store::{Limits, Selection, Store};

use crate::budget::estimate;
use crate::catalog::{AccessPolicy, Origin, OriginKind};
use crate::config::LoadPolicy;
use crate::repository::{ModelLayout, ModelSource};
use crate::runtime::{Overrides, Runtime};
use crate::table::{retire, EntryState, ModelEntry, VersionState};

/// Runs blocking work (a model load) from async code without stalling the async threads.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// What a poll changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollReport {
    /// Models loaded for the first time.
    pub added: Vec<String>,
    /// Models whose files or archives changed, swapped for the new copy.
    pub changed: Vec<String>,
    /// Models no longer in any source, unloaded.
    pub removed: Vec<String>,
}

impl Runtime {
    /// Serves models from the model store's archives `selection` picks too (call before
    /// [`Runtime::load_all`]).
    pub fn use_store(&self, store: Store, selection: Selection) {
        self.lock_catalog().store = Some((Arc::new(store), selection));
    }

    /// Where archives registered by path or URL are unpacked (default
    /// `$FERROSERVE_HOME/cache`; never a shared temporary folder, since what is there is served),
    /// their limits, and how large the cache may grow before unused folders are removed, least
    /// recently used first.
    pub fn set_archive_cache(&self, cache: &Path, limits: Limits, max_bytes: Option<u64>) {
        let mut catalog = self.lock_catalog();
        catalog.cache = cache.to_path_buf();
        catalog.limits = limits;
        catalog.max_cache_bytes = max_bytes;
    }

    /// Removes from the archive cache what no model needs: `released` (the folder of a model
    /// just unregistered or failed), leftovers of dead processes, and unused folders while the
    /// cache is over its limit.
    pub(crate) fn tidy_cache(&self, released: Option<&Path>) {
        let (cache, max) = {
            let c = self.lock_catalog();
            (c.cache.clone(), c.max_cache_bytes)
        };
        let in_use: Vec<std::path::PathBuf> = self
            .read_models()
            .values()
            .map(|e| e.origin.dir.clone())
            .collect();
        if let Some(dir) = released {
            for gone in ferroserve_store::cache::release(&cache, dir, &in_use) {
                tracing::info!(folder = %gone.display(), "archive cache folder removed: no model uses it");
            }
        }
        let swept = ferroserve_store::cache::sweep(&cache, &in_use, max);
        if !swept.removed.is_empty() {
            tracing::info!(
                folders = swept.removed.len(),
                freed = swept.freed,
                size = swept.size,
                "archive cache swept"
            );
        }
        if let Some(max) = max.filter(|&m| swept.size > m) {
            tracing::warn!(size = swept.size, limit = max, cache = %cache.display(), "the archive cache is over its limit (--max-cache-bytes) with folders that served models use");
        }
    }

    /// Sets what the management API may register models from.
    pub fn set_access_policy(&self, policy: AccessPolicy) {
        self.lock_catalog().policy = policy;
    }

    /// Reads each model's `model.yaml` from `dir/MODEL/model.yaml` where that file exists,
    /// instead of from the model folder: configuration kept apart from the weights, as a
    /// Kubernetes ConfigMap mounts it. Call before loading.
    pub fn set_model_config_dir(&self, dir: &Path) {
        self.lock_catalog().config_dir = Some(dir.to_path_buf());
    }

    /// Serves `root` as the one model `name` (KServe's single-model layout, see
    /// [`crate::repository::is_single_model`]): it loads and polls like a repository of one
    /// model folder.
    pub fn load_single_model(&self, root: &Path, name: &str) -> std::io::Result<()> {
        {
            let mut catalog = self.lock_catalog();
            catalog.repository = Some(root.to_path_buf());
            catalog.single_model = Some(name.to_string());
        }
        self.load_all()
    }

    /// Loads every model under `root`. A model that fails is recorded as unavailable with its
    /// reason, and the others still serve; only an unreadable `root` is an error.
    pub fn load_repository(&self, root: &Path) -> std::io::Result<()> {
        self.lock_catalog().repository = Some(root.to_path_buf());
        self.load_all()
    }

    /// Loads every model of the repository and the store (lazy ones are listed and wait for
    /// their first request), then marks the server ready.
    pub fn load_all(&self) -> std::io::Result<()> {
        let scanned = self.lock_catalog().scan()?;
        for (name, origin) in scanned {
            match origin {
                Ok(origin) => {
                    let _ = self.install(&name, origin, false);
                }
                Err(reason) => self.fail(&name, reason),
            }
        }
        self.tidy_cache(None);
        self.mark_ready();
        Ok(())
    }

    /// Loads (or reloads) the model `name` of the repository or the store (Triton's repository
    /// extension), even a lazy one. Requests already running on the old copy finish on it; new
    /// ones go to the new copy. Blocks while the model loads. Only names are accepted, never
    /// paths.
    pub fn load(&self, name: &str) -> Result<()> {
        let origin = {
            let mut catalog = self.lock_catalog();
            // An explicit load brings back a model unregistered through the management API.
            let was_suppressed = catalog.suppressed.remove(name);
            let found = catalog.find(name);
            if found.is_err() && was_suppressed {
                catalog.suppressed.insert(name.to_string());
            }
            found?
        };
        self.install(name, origin, true)
    }

    /// Loads the model folder `dir` (any path) under `name`, replacing a model of that name, with
    /// `overrides` taking the place of its `model.yaml`'s settings. For Deployments and Flows,
    /// whose YAML names model folders; clients never reach this with a path.
    pub fn load_folder(&self, name: &str, dir: &Path, overrides: Overrides) -> Result<()> {
        if !dir.is_dir() {
            return Err(Error::not_found(format!(
                "no model folder at {}",
                dir.display()
            )));
        }
        let origin = Origin {
            dir: dir.to_path_buf(),
            fingerprint: String::new(),
            url: dir.display().to_string(),
            kind: OriginKind::Pinned,
            overrides,
        };
        self.install(name, origin, true)
    }

    /// Unloads model `name`: it stops taking requests, finishes those in flight, and is listed
    /// as unavailable ("unloaded") until loaded again. Blocks until its replicas stop.
    pub fn unload(&self, name: &str) -> Result<()> {
        self.known(name)?;
        let lock = self.model_lock(name);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = {
            let mut models = self.write_models();
            let entry = models
                .get_mut(name)
                .ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
            std::mem::replace(
                &mut entry.state,
                EntryState::Unavailable(Error::unavailable("unloaded")),
            )
        };
        self.metrics.unloaded(name, false);
        retire(old);
        self.update_memory();
        Ok(())
    }

    /// Removes model `name` (or only its `version`) from the server: requests in flight finish,
    /// new ones get 404. A poll does not bring a removed model back; [`Runtime::load`] or a
    /// registration does.
    pub fn remove(&self, name: &str, version: Option<&str>) -> Result<()> {
        self.known(name)?;
        let lock = self.model_lock(name);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut released: Option<std::path::PathBuf> = None;
        let old = {
            let mut models = self.write_models();
            let entry = models
                .get_mut(name)
                .ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
            match version {
                None => models.remove(name).map(|e| {
                    released = Some(e.origin.dir);
                    e.state
                }),
                Some(v) => {
                    let EntryState::Loaded(versions) = &mut entry.state else {
                        return Err(Error::unavailable(format!(
                            "model '{name}' is not loaded; remove the whole model instead"
                        )));
                    };
                    let number = v.parse::<u64>().ok().filter(|n| versions.contains_key(n));
                    let Some(number) = number else {
                        return Err(Error::not_found(format!(
                            "unknown version '{v}' of model '{name}'"
                        )));
                    };
                    let removed = versions.remove(&number);
                    if entry.default == Some(number) {
                        entry.default = None;
                    }
                    if versions.is_empty() {
                        models.remove(name);
                    }
                    removed.map(|state| EntryState::Loaded(BTreeMap::from([(number, state)])))
                }
            }
        };
        if version.is_none() {
            self.lock_catalog().suppressed.insert(name.to_string());
            self.metrics.unloaded(name, false);
        }
        if let Some(old) = old {
            retire(old);
        }
        self.update_memory();
        if let Some(dir) = released {
            self.tidy_cache(Some(&dir));
        }
        Ok(())
    }

    /// Re-reads the repository and the store: new models load, changed ones are swapped for
    /// the new copy (the old one keeps serving if the new one fails to load), and models no
    /// longer there are removed after their requests in flight finish. Models registered
    /// through the management API or named by a Deployment are left alone.
    pub fn poll(&self) -> std::io::Result<PollReport> {
        let scanned = self.lock_catalog().scan()?;
        let known: BTreeMap<String, (String, OriginKind)> = self
            .read_models()
            .iter()
            .map(|(n, e)| (n.clone(), (e.origin.fingerprint.clone(), e.origin.kind)))
            .collect();
        let mut report = PollReport::default();
        for (name, origin) in scanned.iter() {
            let known = known.get(name);
            if known.is_some_and(|(_, kind)| *kind == OriginKind::Pinned) {
                continue;
            }
            match (origin, known) {
                (Ok(o), None) => {
                    tracing::info!(model = %name, source = %o.url, "new model found");
                    let _ = self.install(name, o.clone(), false);
                    report.added.push(name.clone());
                }
                (Ok(o), Some((fingerprint, _))) if *fingerprint != o.fingerprint => {
                    tracing::info!(model = %name, source = %o.url, "model changed; swapping it");
                    let _ = self.install(name, o.clone(), false);
                    report.changed.push(name.clone());
                }
                (Ok(_), Some(_)) => {}
                (Err(reason), None) => self.fail(name, reason.clone()),
                (Err(reason), Some(_)) => {
                    tracing::error!(model = %name, error = %reason, "model source changed and cannot be used; the loaded copy keeps serving");
                    if let Some(e) = self.write_models().get_mut(name) {
                        e.last_error = Some(reason.clone());
                    }
                }
            }
        }
        for (name, (_, kind)) in known {
            if kind == OriginKind::Scanned && !scanned.contains_key(&name) {
                tracing::info!(model = %name, "model removed from its source; unloading it");
                let lock = self.model_lock(&name);
                let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
                let old = self.write_models().remove(&name);
                self.metrics.unloaded(&name, false);
                if let Some(old) = old {
                    retire(old.state);
                }
                report.removed.push(name);
            }
        }
        self.update_memory();
        if report != PollReport::default() {
            // Swapped and removed archives leave folders behind.
            self.tidy_cache(None);
        }
        Ok(report)
    }

    /// Loads `origin` as model `name`, replacing the entry of that name once the new copy is
    /// ready. A lazy model is only listed, unless `now`. When the new copy has no version that
    /// loads and an old copy serves, the old one stays and the error is recorded.
    pub(crate) fn install(&self, name: &str, origin: Origin, now: bool) -> Result<()> {
        let lock = self.model_lock(name);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.install_locked(name, origin, now)
    }

    /// Installs `origin` as the new model `name`, refusing a name in use; a model that does not
    /// load leaves nothing behind. One step under the model's lock, so two registrations of
    /// one name cannot both pass the check.
    pub(crate) fn install_new(&self, name: &str, origin: Origin) -> Result<()> {
        let lock = self.model_lock(name);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.read_models().contains_key(name) {
            return Err(Error::already_exists(format!(
                "model '{name}' is registered already; unregister it first, or register under another model_name"
            )));
        }
        self.lock_catalog().suppressed.remove(name);
        let dir = origin.dir.clone();
        let result = self.install_locked(name, origin, false);
        if result.is_err() {
            let placed = self.write_models().remove(name);
            if let Some(entry) = placed {
                retire(entry.state);
            }
            self.update_memory();
        }
        self.tidy_cache(result.is_err().then_some(dir.as_path()));
        result
    }

    fn install_locked(&self, name: &str, origin: Origin, now: bool) -> Result<()> {
        let source = ModelSource {
            name: name.to_string(),
            dir: origin.dir.clone(),
            config_file: origin.overrides.config_file.clone(),
        };
        let layout = source.layout(&self.backends).map(|mut l| {
            if let Some(n) = origin.overrides.replicas {
                l.config.replicas = n;
            }
            if let Some(d) = origin.overrides.devices.clone() {
                l.config.devices = d;
            }
            if let Some(a) = origin.overrides.autoscaling.clone() {
                l.config.replicas = a.initial().max(1);
                l.config.autoscaling = Some(a);
            }
            l
        });
        let layout = match layout {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(model = %name, error = %e, "model unavailable");
                let e = Error::invalid(e.to_string());
                return self.place(name, origin, EntryState::Unavailable(e), false);
            }
        };
        let lazy = layout.config.load == LoadPolicy::Lazy;
        if lazy && !now {
            tracing::info!(model = %name, "lazy model listed; it loads on its first request");
            return self.place(name, origin, EntryState::Unloaded, true);
        }
        let state = {
            let budgeted = self.options.memory_budget.is_set();
            let _budget =
                budgeted.then(|| self.budget_lock.lock().unwrap_or_else(|p| p.into_inner()));
            match self.make_room(name, &estimate(&layout, &origin.dir)) {
                Ok(()) => self.load_versions(name, &origin.dir, &layout),
                // A lazy model that cannot fit now stays listed, to load when room is made.
                Err(e) if lazy => return Err(e),
                Err(e) => EntryState::Unavailable(e),
            }
        };
        self.place(name, origin, state, lazy)
    }

    /// Puts `state` in place for `name` and retires what it replaces.
    fn place(&self, name: &str, origin: Origin, state: EntryState, lazy: bool) -> Result<()> {
        let failure = state.failure();
        let old = {
            let mut models = self.write_models();
            let old_serves = models.get(name).is_some_and(|e| e.ready().next().is_some());
            let new_serves = state.ready().next().is_some();
            let loading_something = !matches!(state, EntryState::Unloaded);
            if old_serves && !new_serves && loading_something {
                // Keep what serves; say why the new copy is not used.
                let reason = failure.unwrap_or_else(|| Error::internal("no version loaded"));
                if let Some(e) = models.get_mut(name) {
                    e.last_error = Some(reason.to_string());
                }
                tracing::error!(model = %name, error = %reason, "new copy failed to load; the old one keeps serving");
                return Err(reason.context(format_args!("model '{name}' failed to load")));
            }
            let default = models.get(name).and_then(|e| e.default);
            if let Some(reason) = &failure {
                self.metrics.unloaded(name, false);
                tracing::debug!(model = %name, %reason, "model stored as failed");
            } else if new_serves {
                let bytes = state.ready().map(|v| v.bytes()).sum();
                self.metrics.loaded(name, bytes);
            }
            let entry = ModelEntry {
                state,
                origin,
                lazy,
                default,
                last_error: failure.as_ref().map(Error::to_string),
            };
            models.insert(name.to_string(), entry).map(|e| e.state)
        };
        if let Some(old) = old {
            retire(old);
        }
        self.update_memory();
        match failure {
            None => Ok(()),
            Some(reason) => Err(reason.context(format_args!("model '{name}' failed to load"))),
        }
    }

    /// Records `name` as unusable (its source could not be read).
    fn fail(&self, name: &str, reason: String) {
        tracing::error!(model = %name, error = %reason, "model unavailable");
        let origin = Origin {
            dir: Default::default(),
            fingerprint: String::new(),
            url: String::new(),
            kind: OriginKind::Scanned,
            overrides: Overrides::default(),
        };
        let _ = self.place(
            name,
            origin,
            EntryState::Unavailable(Error::invalid(reason)),
            false,
        );
    }

    /// Loads a lazy model on its first request (once, however many requests wait for it).
    pub(crate) fn load_lazy(&self, name: &str) -> Result<()> {
        let lock = self.model_lock(name);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let origin = match self.read_models().get(name) {
            Some(e) if matches!(e.state, EntryState::Unloaded) => e.origin.clone(),
            // Loaded (or removed) by someone else while this request waited.
            _ => return Ok(()),
        };
        tracing::info!(model = %name, "loading lazy model for a request");
        self.install_locked(name, origin, true)
    }

    /// Loads every version of `layout`.
    fn load_versions(&self, name: &str, dir: &Path, layout: &ModelLayout) -> EntryState {
        let versions = layout
            .versions
            .iter()
            .map(|(&number, file)| {
                let state = match self.load_version(name, number, file, dir, &layout.config) {
                    Ok(v) => {
                        let v = Arc::new(v);
                        tracing::info!(
                            model = %name,
                            version = number,
                            file = %file.display(),
                            inputs = %describe(&v.config().signature.inputs),
                            outputs = %describe(&v.config().signature.outputs),
                            replicas = layout.config.replicas,
                            max_batch_size = layout.config.batch_limit(),
                            load_ms = v.load_ms,
                            "model ready"
                        );
                        match self.start_autoscaling(&v, layout.config.autoscaling.clone()) {
                            Ok(()) => VersionState::Ready(v),
                            Err(e) => {
                                crate::version::retire(vec![v]);
                                VersionState::Unavailable(e)
                            }
                        }
                    }
                    Err(reason) => {
                        tracing::error!(model = %name, version = number, error = %reason, "model version unavailable");
                        VersionState::Unavailable(reason)
                    }
                };
                (number, state)
            })
            .collect();
        EntryState::Loaded(versions)
    }

    /// Starts the autoscaler of a version just loaded, when its configuration asks for one;
    /// one that starts at zero replicas lets its first go now.
    fn start_autoscaling(
        &self,
        v: &Arc<crate::version::Version>,
        config: Option<crate::Autoscaling>,
    ) -> Result<()> {
        let Some(config) = config else {
            return Ok(());
        };
        let initial = config.initial();
        v.set_autoscaling(Some(config), self.metrics.deployment(&v.config.name))?;
        if initial == 0 {
            v.scale_to(0)?;
        }
        Ok(())
    }

    pub(crate) fn model_lock(&self, name: &str) -> Arc<Mutex<()>> {
        self.model_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub(crate) fn lock_catalog(&self) -> std::sync::MutexGuard<'_, crate::catalog::Catalog> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn describe(specs: &[ferroserve_core::TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("{}:{}{:?}", s.name, s.datatype, s.shape))
        .collect::<Vec<_>>()
        .join(" ")
}
