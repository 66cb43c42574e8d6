//! Where models come from: the model repository, the model store's archives, and models
//! registered through the management API; and the policy on what a registration may name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferroserve_core::{Error, Result};
use ferroserve_store::{Limits, Selection, Store};

use crate::repository;
use crate::runtime::Overrides;

/// What the management API may register models from, beside files in the model store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// Local folders under which model folders and archives may be registered by path.
    pub allowed_paths: Vec<PathBuf>,
    /// URL prefixes archives may be downloaded from. Empty: no URL is ever fetched.
    pub allowed_urls: Vec<String>,
}

/// Where a loaded model came from, and how to tell that it changed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Origin {
    /// The model folder.
    pub dir: PathBuf,
    /// Changes when the model's files change (a repository folder) or its archives do.
    pub fingerprint: String,
    /// What a person would call its source: the folder or the archives.
    pub url: String,
    /// Who manages it.
    pub kind: OriginKind,
    /// Settings taking the place of `model.yaml`'s.
    pub overrides: Overrides,
}

/// Who manages a model's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OriginKind {
    /// A repository folder or a store archive: polling adds, swaps and removes it.
    Scanned,
    /// Registered through the management API, or named by a Deployment: stays until
    /// unregistered.
    Pinned,
}

/// The sources of models a runtime knows.
pub(crate) struct Catalog {
    pub repository: Option<PathBuf>,
    /// The repository folder is itself this one model (KServe's single-model layout).
    pub single_model: Option<String>,
    /// Where `MODEL/model.yaml` files replace the model folders' configuration.
    pub config_dir: Option<PathBuf>,
    pub store: Option<(Arc<Store>, Selection)>,
    /// Unpacks archives registered by path.
    pub cache: PathBuf,
    pub limits: Limits,
    /// Size the cache is swept down to (unused folders only); `None`: no limit.
    pub max_cache_bytes: Option<u64>,
    pub policy: AccessPolicy,
    /// Unregistered through the management API: polls leave them out until loaded again.
    pub suppressed: BTreeSet<String>,
}

impl Catalog {
    pub fn new() -> Self {
        Catalog {
            repository: None,
            single_model: None,
            config_dir: None,
            store: None,
            // Never a shared temporary folder: what is in the cache is served.
            cache: ferroserve_core::default_home().join("cache"),
            limits: Limits::default(),
            max_cache_bytes: None,
            policy: AccessPolicy::default(),
            suppressed: BTreeSet::new(),
        }
    }

    /// Every model of the repository and the store, by name; a model that cannot be read
    /// carries its reason. The repository wins a name both have.
    pub fn scan(&self) -> std::io::Result<BTreeMap<String, std::result::Result<Origin, String>>> {
        let mut out = BTreeMap::new();
        if let Some(root) = &self.repository {
            match &self.single_model {
                Some(name) => {
                    out.insert(name.clone(), Ok(self.scanned_folder(name, root.clone())));
                }
                None => {
                    for source in repository::scan(root)? {
                        let origin = self.scanned_folder(&source.name, source.dir);
                        out.insert(source.name, Ok(origin));
                    }
                }
            }
        }
        if let Some((store, selection)) = &self.store {
            let models = store.select(selection).map_err(std::io::Error::other)?;
            for (name, model) in models {
                if out.contains_key(&name) {
                    tracing::warn!(model = %name, store = %store.dir().display(), "the repository has a model of this name; the store's is not served");
                    continue;
                }
                let config = self.config_file(&name);
                let origin = model.map_err(|e| e.to_string()).map(|m| Origin {
                    fingerprint: with_config(m.fingerprint(), config.as_deref()),
                    url: m
                        .archives
                        .iter()
                        .map(|a| a.file.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    dir: m.dir,
                    kind: OriginKind::Scanned,
                    overrides: Overrides {
                        config_file: config,
                        ..Overrides::default()
                    },
                });
                out.insert(name, origin);
            }
        }
        out.retain(|name, _| !self.suppressed.contains(name));
        Ok(out)
    }

    /// The model `name` of the repository or the store, for Triton's load.
    pub fn find(&self, name: &str) -> Result<Origin> {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && Path::new(name).components().count() == 1
            && !name.contains(['/', '\\']);
        if !plain {
            return Err(Error::invalid(format!("'{name}' is not a model name")));
        }
        // The repository's folder of that name wins, as in a scan; only the store is listed.
        if let (Some(root), None) = (&self.repository, &self.single_model) {
            let dir = root.join(name);
            if dir.is_dir() && !self.suppressed.contains(name) {
                return Ok(self.scanned_folder(name, dir));
            }
        }
        let scanned = self
            .scan()
            .map_err(|e| Error::unavailable(format!("cannot read the model sources: {e}")))?;
        match scanned.get(name) {
            Some(Ok(origin)) => Ok(origin.clone()),
            Some(Err(reason)) => Err(Error::invalid(format!("model '{name}': {reason}"))),
            None => Err(Error::not_found(format!(
                "no model '{name}' in {}",
                self.describe_sources()
            ))),
        }
    }

    /// What [`Locator::locate`] needs, taken out so downloads and unpacking run without the
    /// catalog's lock.
    pub fn locator(&self) -> Locator {
        Locator {
            store: self.store.as_ref().map(|(s, _)| s.clone()),
            cache: self.cache.clone(),
            limits: self.limits,
            policy: self.policy.clone(),
        }
    }

    fn describe_sources(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.repository {
            parts.push(format!("the model repository {}", r.display()));
        }
        if let Some((s, _)) = &self.store {
            parts.push(format!(
                "the model store {} (as --models selects)",
                s.dir().display()
            ));
        }
        if parts.is_empty() {
            "any source (no repository or store is configured)".to_string()
        } else {
            parts.join(" or ")
        }
    }
}

impl Catalog {
    /// The repository folder of model `name`, which polls manage.
    fn scanned_folder(&self, name: &str, dir: PathBuf) -> Origin {
        let config = self.config_file(name);
        Origin {
            fingerprint: with_config(repository::fingerprint(&dir), config.as_deref()),
            url: dir.display().to_string(),
            dir,
            kind: OriginKind::Scanned,
            overrides: Overrides {
                config_file: config,
                ..Overrides::default()
            },
        }
    }

    /// Model `name`'s `model.yaml` under `--model-config-dir`, when there is one.
    fn config_file(&self, name: &str) -> Option<PathBuf> {
        let file = self
            .config_dir
            .as_ref()?
            .join(name)
            .join(crate::config::CONFIG_FILE);
        file.is_file().then_some(file)
    }
}

/// A model's fingerprint with its separate `model.yaml`'s, so that editing the ConfigMap
/// reloads the model as editing its folder does.
fn with_config(fingerprint: String, config: Option<&Path>) -> String {
    match config {
        Some(file) => format!("{fingerprint}+{}", repository::fingerprint(file)),
        None => fingerprint,
    }
}

fn pinned(dir: PathBuf, fingerprint: &str, url: &str) -> Origin {
    Origin {
        dir,
        fingerprint: fingerprint.to_string(),
        url: url.to_string(),
        kind: OriginKind::Pinned,
        overrides: Overrides::default(),
    }
}

/// Finds what a registration names, under the access policy.
pub(crate) struct Locator {
    store: Option<Arc<Store>>,
    cache: PathBuf,
    limits: Limits,
    policy: AccessPolicy,
}

impl Locator {
    /// Where a registration's `url` points, checked against the policy: a file in the model
    /// store, a local path under an allowed folder, or a URL under an allowed prefix. Returns
    /// the model's own name (from the archive's manifest, or the folder's name) and its origin.
    pub fn locate(&self, url: &str) -> Result<(String, Origin)> {
        if url.contains("://") {
            return self.fetch(url);
        }
        if let Some(store) = &self.store {
            if !url.contains(['/', '\\']) && store.dir().join(url).exists() {
                let u = store.open(url).map_err(|e| self.client_error(e))?;
                return Ok((
                    u.manifest.model_name.clone(),
                    pinned(u.dir.clone(), &u.sha256, url),
                ));
            }
        }
        let path = Path::new(url);
        let refused = || {
            Error::permission_denied(format!(
                "{url} is not under an allowed path; the server registers models from the model store or from folders given with --allowed-paths"
            ))
        };
        if !path.is_absolute() {
            return Err(Error::not_found(format!(
                "'{url}' is not a file in the model store; give a file name in it, or an absolute path under --allowed-paths"
            )));
        }
        // Checked as written first, so paths elsewhere are refused without touching the file
        // system (and without telling whether they exist); then as resolved, so `..` and links
        // cannot lead out.
        let lexical = path
            .components()
            .all(|c| c != std::path::Component::ParentDir);
        let under = |p: &Path| {
            self.policy
                .allowed_paths
                .iter()
                .any(|a| p.starts_with(a) || a.canonicalize().is_ok_and(|a| p.starts_with(&a)))
        };
        if !lexical || !under(path) {
            return Err(refused());
        }
        let real = path
            .canonicalize()
            .map_err(|e| Error::not_found(format!("{url}: {e}")))?;
        if !under(&real) {
            return Err(refused());
        }
        self.open_local(&real, url)
    }

    /// A model folder or archive on this machine.
    fn open_local(&self, real: &Path, url: &str) -> Result<(String, Origin)> {
        let archive = real.is_file()
            || real.join(ferroserve_store::MANIFEST_PATH).is_file()
            || real.join(ferroserve_store::mar::MAR_MANIFEST).is_file();
        if archive {
            let u = ferroserve_store::unpack::unpack(real, &self.cache, &self.limits)
                .map_err(|e| self.client_error(e))?;
            return Ok((
                u.manifest.model_name.clone(),
                pinned(u.dir.clone(), &u.sha256, url),
            ));
        }
        let name = real
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let fingerprint = repository::fingerprint(real);
        Ok((name, pinned(real.to_path_buf(), &fingerprint, url)))
    }

    /// Downloads an archive from an allow-listed URL into the cache.
    fn fetch(&self, url: &str) -> Result<(String, Origin)> {
        if !self
            .policy
            .allowed_urls
            .iter()
            .any(|prefix| url_allowed(prefix, url))
        {
            return Err(Error::permission_denied(format!(
                "the server does not fetch models from URLs unless their prefix is allow-listed (--allowed-urls); {url} is not"
            )));
        }
        // On a thread of its own: the blocking HTTP client must not run inside an async
        // runtime's context, which the caller's thread may have.
        let (owned, dir, limits) = (url.to_string(), self.cache.join("downloads"), self.limits);
        let file =
            std::thread::spawn(move || ferroserve_store::fetch::download(&owned, &dir, &limits))
                .join()
                .map_err(|_| Error::internal(format!("downloading {url} panicked")))?
                .map_err(|e| self.client_error(e))?;
        let opened = self.open_local(&file, url);
        // Unpacked (or refused), the download has served its purpose.
        let _ = std::fs::remove_file(&file);
        let (name, origin) = opened?;
        // Code runs only from places the operator chose, never from where a client points.
        if let Some(code) = python_code(&origin.dir) {
            return Err(Error::permission_denied(format!(
                "{url} holds Python code ({code}); the server runs Python only from its repository, its model store, Flow files and folders under --allowed-paths, never from a URL"
            )));
        }
        Ok((name, origin))
    }

    /// A store error as a client sees it: without the server's own folders (the cache's
    /// temporary folders, the model store's location), which are none of its business.
    fn client_error(&self, e: ferroserve_store::StoreError) -> Error {
        let too_large = matches!(e, ferroserve_store::StoreError::TooLarge { .. });
        let mut message = e.to_string();
        let mut hide = vec![self.cache.clone()];
        if let Some(store) = &self.store {
            hide.push(store.dir().to_path_buf());
        }
        for dir in hide {
            let dir = dir.display().to_string();
            if dir.is_empty() {
                continue;
            }
            message = message
                .replace(&format!("{dir}/"), "")
                .replace(&dir, "the cache");
        }
        // What is left of a path inside a temporary unpacking folder is the file's own name.
        while let Some(i) = message.find(".unpack-") {
            let end = match message[i..].find(['/', ' ']) {
                Some(j) if message[i + j..].starts_with('/') => i + j + 1,
                Some(j) => i + j,
                None => message.len(),
            };
            message.replace_range(i..end, "");
        }
        if too_large {
            Error::too_large(message)
        } else {
            Error::invalid(message)
        }
    }
}

/// Whether `url` is under the allow-listed `prefix`: the same scheme, host and port, no user
/// name or password, and a normalised path under the prefix's path (whole segments), so
/// `http://models.example.com.evil.net/`, `http://models.example.com@evil.net/` and
/// `/models/../private` do not pass for `http://models.example.com/models/`.
fn url_allowed(prefix: &str, url: &str) -> bool {
    use reqwest::Url;
    let (Ok(p), Ok(u)) = (Url::parse(prefix), Url::parse(url)) else {
        return false;
    };
    if !u.username().is_empty() || u.password().is_some() {
        return false;
    }
    if p.scheme() != u.scheme()
        || p.host_str() != u.host_str()
        || p.port_or_known_default() != u.port_or_known_default()
    {
        return false;
    }
    let segments = |x: &Url| -> Vec<String> {
        x.path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let (ps, us) = (segments(&p), segments(&u));
    us.len() > ps.len() && us[..ps.len()] == ps[..]
}

/// Files Python would run: sources, compiled modules, extension modules and importable zips.
const CODE_EXTENSIONS: &[&str] = &[
    "py", "pyc", "pyo", "pyw", "so", "pyd", "zip", "egg", "whl", "pth",
];

/// The first file under `dir` that Python could run (see [`CODE_EXTENSIONS`]), or a TorchServe
/// archive whose manifest asks for code anyway (a handler module named without a file, which
/// Python would import from a compiled file; a requirements file, which pip would run), as a
/// path or a description, if there is one.
fn python_code(dir: &Path) -> Option<String> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            let kind = entry.file_type().ok()?;
            let inner = || {
                path.strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string()
            };
            if kind.is_dir() {
                stack.push(path.clone());
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| CODE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                return Some(inner());
            } else if path.ends_with(crate::torchserve_config::MANIFEST) {
                let model = crate::torchserve_config::manifest(path.parent()?.parent()?).ok()?;
                if model.requirements_file.is_some() {
                    return Some(format!("{}: a requirementsFile", inner()));
                }
                let handler = model.handler.unwrap_or_default();
                if !crate::torchserve_config::is_builtin_handler(&handler) {
                    return Some(format!("{}: handler '{handler}'", inner()));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::url_allowed;

    #[test]
    fn url_allow_list_compares_parts_not_text() {
        let p = "http://models.example.com/models/";
        assert!(url_allowed(p, "http://models.example.com/models/a.far"));
        assert!(url_allowed(
            p,
            "http://models.example.com:80/models/x/a.far"
        ));
        for bad in [
            "http://models.example.com.evil.net/models/a.far",
            "http://models.example.com@evil.net/models/a.far",
            "http://user@models.example.com/models/a.far",
            "http://models.example.com/models/../private/a.far",
            "http://models.example.com/models/%2e%2e/private/a.far",
            "http://models.example.com/modelsX/a.far",
            "https://models.example.com/models/a.far",
            "http://models.example.com:8080/models/a.far",
            "http://models.example.com/models/",
        ] {
            assert!(!url_allowed(p, bad), "{bad}");
        }
    }
}
