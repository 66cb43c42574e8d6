//! Backends as plug-ins: each kind of model (ONNX files, Hugging Face checkpoints, Python code,
//! TorchScript files, TorchServe handlers) is one [`BackendLoader`], registered in [`Backends`]. The runtime
//! asks the loaders which of them recognises a model folder and has the chosen one load
//! replicas; it never names a backend itself.
//!
//! The built-in loaders sit behind cargo features (`onnx`, `candle`, `python`, all on by
//! default; `torchscript` needs `python` and `onnx`, `torchserve` needs `python`):
//!
//! ```
//! use ferroserve_runtime::backend::Backends;
//!
//! let backends = Backends::builtin(&Default::default());
//! let names: Vec<&str> = backends.names().collect();
//! # #[cfg(all(feature = "onnx", feature = "candle", feature = "python"))]
//! assert_eq!(names, ["onnx", "candle", "python", "torchscript", "torchserve"]);
//! ```

#[cfg(feature = "candle")]
mod candle;
#[cfg(any(test, feature = "fake-backend"))]
pub mod fake;
#[cfg(feature = "onnx")]
mod onnx;
#[cfg(feature = "python")]
mod python;
#[cfg(all(feature = "python", feature = "onnx"))]
mod torchscript;
#[cfg(feature = "python")]
mod torchserve;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferroserve_core::{Backend, Device, Health, Result};
use ferroserve_tasks::TaskKind;

use crate::config::ModelConfig;

/// What a loader found in a model folder it recognises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The model file inside each version folder (e.g. `model.onnx`, `config.json`).
    pub model_file: String,
    /// The task the folder's files imply, when `model.yaml` names none (a T5 checkpoint
    /// summarises; a diffusers pipeline draws).
    pub task: Option<TaskKind>,
}

/// What loading one replica of a model version is given.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec<'a> {
    /// The model's name, for messages.
    pub model: &'a str,
    /// The version's model file (its folder holds the rest of the version's files).
    pub file: &'a Path,
    /// The model folder (which may hold files shared by every version).
    pub model_dir: &'a Path,
    /// The model's configuration, with its backend, model file and task resolved.
    pub config: &'a ModelConfig,
    /// Compute threads this replica may use.
    pub threads: usize,
    /// Where the replica runs.
    pub device: Device,
    /// Which replica of the version this is (0-based, counting every one loaded), for names.
    pub replica: usize,
    /// How many replicas the version is to have once this one has loaded (its configured
    /// count, or what it is being scaled to): a backend may share read-only state, such as
    /// weights, between them.
    pub replicas: usize,
    /// The version's health, shared by its replicas: a backend whose replicas cannot recover
    /// marks it failed, and the version is then reported unavailable with the reason.
    pub health: &'a Health,
}

/// One kind of backend: recognises the model folders it can serve and loads their replicas.
///
/// A loader is shared by every model of its kind and called from the threads that load
/// models, so it must be `Send + Sync`; heavy set-up (a native library) belongs in the first
/// [`BackendLoader::load`] that needs it, so a server without such models never pays for it.
pub trait BackendLoader: Send + Sync + 'static {
    /// The name `model.yaml`'s `backend:` uses (`onnx`, `candle`).
    fn name(&self) -> &'static str;

    /// Triton's `platform` for its models (`onnxruntime_onnx`), as the metadata and model
    /// configuration endpoints report it.
    fn platform(&self) -> &'static str;

    /// Triton's `backend` for its models (`onnxruntime`).
    fn triton_backend(&self) -> &'static str;

    /// Whether it can serve a model with this task (`None`: a plain model, tensors in and out).
    fn serves_task(&self, task: Option<TaskKind>) -> bool;

    /// Whether `folder` (a version folder, or the model folder itself) holds a model this
    /// backend loads, given what `config` says; `None` when it does not.
    fn detect(&self, folder: &Path, config: &ModelConfig) -> Option<Detected>;

    /// The model file it looks for when `model.yaml` names none and no folder holds one (for
    /// the message that says what is missing).
    fn expected_file(&self, config: &ModelConfig) -> String;

    /// Checks the parts of `config` this backend reads (its own sections, the task), before
    /// anything loads. The message names the key.
    fn check(&self, config: &ModelConfig) -> std::result::Result<(), String>;

    /// Loads one replica. A missing device or library is [`ferroserve_core::ErrorKind::Unavailable`];
    /// a model file that cannot be used is [`ferroserve_core::ErrorKind::InvalidArgument`].
    fn load(&self, spec: &LoadSpec<'_>) -> Result<Box<dyn Backend>>;
}

/// What the built-in backends are told (see [`Backends::builtin`]).
#[derive(Debug, Clone, Default)]
pub struct BuiltinOptions {
    /// ONNX Runtime's shared library.
    pub ort_lib: Option<PathBuf>,
    /// The Python interpreter for models that name none.
    pub python: Option<PathBuf>,
    /// Whether a TorchServe archive's `requirements.txt` is installed into its interpreter
    /// (`--install-requirements`).
    pub install_requirements: bool,
}

/// The backends a runtime can load models with, in the order folders are matched against them.
#[derive(Clone, Default)]
pub struct Backends {
    loaders: Vec<Arc<dyn BackendLoader>>,
}

impl Backends {
    /// No backends.
    pub fn new() -> Self {
        Self::default()
    }

    /// The backends compiled in: ONNX Runtime (its library looked for at `options.ort_lib`, else
    /// where `ferroserve_backend_onnx::library_path` says, and loaded with the first ONNX model),
    /// candle, and Python (`model.py` folders, run with `options.python` unless the model names
    /// its own interpreter).
    pub fn builtin(options: &BuiltinOptions) -> Self {
        #[allow(unused_mut)] // with no backend compiled in, nothing is added
        let mut b = Self::new();
        #[cfg(feature = "onnx")]
        let onnx = Arc::new(onnx::OnnxLoader::new(
            ferroserve_backend_onnx::library_path(options.ort_lib.as_deref()),
        ));
        #[cfg(feature = "onnx")]
        b.add_shared(onnx.clone());
        #[cfg(feature = "candle")]
        b.add(candle::CandleLoader);
        #[cfg(feature = "python")]
        let python = options
            .python
            .clone()
            .unwrap_or_else(python::default_python);
        #[cfg(feature = "python")]
        b.add(python::PythonLoader {
            python: python.clone(),
        });
        #[cfg(all(feature = "python", feature = "onnx"))]
        b.add(torchscript::TorchScriptLoader::new(onnx, python.clone()));
        #[cfg(feature = "python")]
        b.add(torchserve::TorchServeLoader {
            python,
            install_requirements: options.install_requirements,
        });
        let _ = options;
        b
    }

    /// Adds `loader`; it is matched after those added before. A loader of the same name is
    /// replaced in place.
    pub fn add(&mut self, loader: impl BackendLoader) -> &mut Self {
        self.add_shared(Arc::new(loader))
    }

    /// [`Backends::add`] for a loader another one also holds (TorchScript's exports run on the
    /// ONNX loader's runtime).
    fn add_shared(&mut self, loader: Arc<dyn BackendLoader>) -> &mut Self {
        match self.loaders.iter_mut().find(|l| l.name() == loader.name()) {
            Some(slot) => *slot = loader,
            None => self.loaders.push(loader),
        }
        self
    }

    /// The backends' names, in matching order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.loaders.iter().map(|l| l.name())
    }

    /// The backend called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn BackendLoader>> {
        self.loaders.iter().find(|l| l.name() == name)
    }

    /// The backends that can serve `task`, in matching order.
    pub(crate) fn for_task(
        &self,
        task: Option<TaskKind>,
    ) -> impl Iterator<Item = &Arc<dyn BackendLoader>> {
        self.loaders.iter().filter(move |l| l.serves_task(task))
    }

    /// The loader `config` names, or an error listing the ones there are.
    pub(crate) fn named(&self, name: &str) -> std::result::Result<&Arc<dyn BackendLoader>, String> {
        self.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            format!(
                "unknown backend '{name}' (this server has: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// The folders of a model where a version's files may be: its numeric version folders, in
/// ascending order, then the model folder itself (a bare, unversioned model).
pub(crate) fn version_folders(dir: &Path) -> std::io::Result<Vec<(Option<u64>, PathBuf)>> {
    let mut versions: Vec<(Option<u64>, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if entry.path().is_dir() {
            versions.push((Some(n), entry.path()));
        }
    }
    versions.sort();
    versions.push((None, dir.to_path_buf()));
    Ok(versions)
}
