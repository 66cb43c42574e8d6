//! Installing a model's or executor's `requirements.txt` into its interpreter, which the server
//! does only when its operator opted in (`--install-requirements`).

use std::path::Path;

/// Runs `python -m pip install -r file`; the error holds the last lines pip printed.
pub fn pip_install(python: &Path, file: &Path) -> Result<(), String> {
    tracing::info!("installing {} into {}", file.display(), python.display());
    let out = std::process::Command::new(python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run {} -m pip: {e}", python.display()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "installing {} failed:\n{}",
        file.display(),
        ferroserve_core::last_lines(&String::from_utf8_lossy(&out.stderr), 10)
    ))
}
