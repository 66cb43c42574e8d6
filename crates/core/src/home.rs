//! ferroserve's home directory, where set-up puts libraries and the server caches archives.

use std::path::PathBuf;

/// Environment variable that moves ferroserve's home directory (default `~/.ferroserve`).
pub const HOME_ENV: &str = "FERROSERVE_HOME";

/// ferroserve's home directory: `$FERROSERVE_HOME`, else `$HOME/.ferroserve`.
pub fn default_home() -> PathBuf {
    if let Some(p) = std::env::var_os(HOME_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".ferroserve")
}
