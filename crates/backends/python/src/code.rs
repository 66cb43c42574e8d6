//! The worker's own Python code, shipped inside the binary and written out once per content
//! (so nothing needs to be `pip install`ed into the user's interpreter).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `(path under the folder, contents)` of every file the worker needs.
const FILES: &[(&str, &str)] = &[
    (
        "ferroserve_worker.py",
        include_str!("../python/ferroserve_worker.py"),
    ),
    (
        "triton_python_backend_utils.py",
        include_str!("../python/triton_python_backend_utils.py"),
    ),
    (
        "ferroserve_torchserve.py",
        include_str!("../python/ferroserve_torchserve.py"),
    ),
    (
        "ferroserve_torchscript.py",
        include_str!("../python/ferroserve_torchscript.py"),
    ),
    (
        "torchscript_export.py",
        include_str!("../python/torchscript_export.py"),
    ),
    (
        "shim/jina/__init__.py",
        include_str!("../python/shim/jina/__init__.py"),
    ),
    (
        "shim/docarray/__init__.py",
        include_str!("../python/shim/docarray/__init__.py"),
    ),
    (
        "ferroserve_ray.py",
        include_str!("../python/ferroserve_ray.py"),
    ),
    (
        "shim_ray/ray/__init__.py",
        include_str!("../python/shim_ray/ray/__init__.py"),
    ),
    (
        "shim_ray/ray/serve/__init__.py",
        include_str!("../python/shim_ray/ray/serve/__init__.py"),
    ),
    (
        "shim_ray/ray/serve/batching.py",
        include_str!("../python/shim_ray/ray/serve/batching.py"),
    ),
    (
        "shim_ray/ray/serve/config.py",
        include_str!("../python/shim_ray/ray/serve/config.py"),
    ),
    (
        "shim_ray/ray/serve/context.py",
        include_str!("../python/shim_ray/ray/serve/context.py"),
    ),
    (
        "shim_ray/ray/serve/deployment.py",
        include_str!("../python/shim_ray/ray/serve/deployment.py"),
    ),
    (
        "shim_ray/ray/serve/exceptions.py",
        include_str!("../python/shim_ray/ray/serve/exceptions.py"),
    ),
    (
        "shim_ray/ray/serve/handle.py",
        include_str!("../python/shim_ray/ray/serve/handle.py"),
    ),
];

/// The path of a file shipped with the worker (`ferroserve_torchserve.py`, the model that runs
/// TorchServe handlers; `torchscript_export.py`, ...), written out on first use.
pub fn bundled(file: &str) -> Result<PathBuf, String> {
    if !FILES.iter().any(|(path, _)| *path == file) {
        return Err(format!("no bundled Python file '{file}'"));
    }
    Ok(folder()?.join(file))
}

/// The worker's entry point inside the folder [`folder`] returns.
pub(crate) const ENTRY: &str = "ferroserve_worker.py";

/// The folder holding the worker's code, written on first use: under
/// `$FERROSERVE_HOME/python/<content hash>`, else (a read-only home) under the temp folder.
pub(crate) fn folder() -> Result<&'static Path, String> {
    static FOLDER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOLDER
        .get_or_init(|| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            FILES.hash(&mut h);
            let name = format!("{:016x}", h.finish());
            let home = ferroserve_core::default_home().join("python").join(&name);
            write_once(&home).or_else(|first| {
                let uid = unsafe { libc::getuid() };
                let tmp = std::env::temp_dir().join(format!("ferroserve-python-{uid}-{name}"));
                write_once(&tmp).map_err(|second| {
                    format!("cannot write the Python worker's code to {} ({first}) nor to {} ({second})", home.display(), tmp.display())
                })
            })
        })
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(Clone::clone)
}

/// Writes the files into `dir` unless a complete copy is there; a copy is complete once it
/// was renamed into place, so a half-written folder is never used.
fn write_once(dir: &Path) -> std::io::Result<PathBuf> {
    if dir.join(ENTRY).is_file() {
        return Ok(dir.to_path_buf());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)?;
    for (path, text) in FILES {
        let file = staging.path().join(path);
        if let Some(p) = file.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(file, text)?;
    }
    match std::fs::rename(staging.path(), dir) {
        Ok(()) => {
            // Renamed away: nothing left for the guard to remove.
            let _ = staging.keep();
            Ok(dir.to_path_buf())
        }
        // Another process wrote the same content first.
        Err(_) if dir.join(ENTRY).is_file() => Ok(dir.to_path_buf()),
        Err(e) => Err(e),
    }
}
