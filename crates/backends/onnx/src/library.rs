//! Finding and loading the ONNX Runtime shared library.

use std::path::{Path, PathBuf};

use ort::environment::Environment;

/// Environment variable that names the ONNX Runtime library (ort's own convention).
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

pub use ferroserve_core::{default_home, HOME_ENV};

/// File name of the library inside `$FERROSERVE_HOME/lib`.
pub const LIBRARY_FILE: &str = "libonnxruntime.so";

/// Why the ONNX Runtime library could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// No candidate path exists.
    #[error("ONNX Runtime library not found at {0}: run scripts/setup.sh (it extracts libonnxruntime.so from the onnxruntime wheel on PyPI), or pass --ort-lib PATH / set ORT_DYLIB_PATH")]
    NotFound(PathBuf),
    /// The file exists but is not a usable ONNX Runtime (wrong file, too old, wrong architecture).
    #[error("could not load ONNX Runtime from {path}: {reason} (ferroserve needs onnxruntime 1.20 or newer; scripts/setup.sh installs one)")]
    Load {
        /// The file that was tried.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
}

/// Where the ONNX Runtime library is looked for: `explicit` (the `--ort-lib` flag) first, then
/// `$ORT_DYLIB_PATH`, then `$FERROSERVE_HOME/lib/libonnxruntime.so` with `FERROSERVE_HOME`
/// defaulting to `~/.ferroserve`, which `scripts/setup.sh` fills.
pub fn library_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(ORT_DYLIB_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    default_home().join("lib").join(LIBRARY_FILE)
}

/// A loaded ONNX Runtime: the process-wide environment that sessions are created in.
///
/// Load it once at startup; clones share the same environment.
#[derive(Clone)]
pub struct OnnxRuntime {
    env: Environment,
    path: PathBuf,
    shared: std::sync::Arc<crate::shared::SharedModels>,
}

impl OnnxRuntime {
    /// Loads the library at `path` and creates the environment.
    pub fn load(path: &Path) -> Result<Self, LibraryError> {
        if !path.is_file() {
            return Err(LibraryError::NotFound(path.to_path_buf()));
        }
        let load_err = |reason: String| LibraryError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let env = ort::init_from(path)
            .map_err(|e| load_err(e.to_string()))?
            .with_name("ferroserve")
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        Ok(Self {
            env,
            path: path.to_path_buf(),
            shared: Default::default(),
        })
    }

    /// The file the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn environment(&self) -> &Environment {
        &self.env
    }

    pub(crate) fn shared_models(&self) -> &crate::shared::SharedModels {
        &self.shared
    }
}

impl std::fmt::Debug for OnnxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxRuntime")
            .field("path", &self.path)
            .finish()
    }
}
