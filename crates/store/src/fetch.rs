//! Downloading an archive. Only ever called for URLs the operator allow-listed: the server never
//! fetches what a client names on its own (TorchServe's management API did, and became a
//! remote-code-execution CVE).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::{Limits, StoreError};

/// Downloads `url` into `dir` (at most `limits.max_archive_bytes`) and returns the file.
///
/// Blocking; call it off async threads.
pub fn download(url: &str, dir: &Path, limits: &Limits) -> Result<PathBuf, StoreError> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(limits.download_timeout_s))
        // A redirect could lead off the allow-listed prefix.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| StoreError::Invalid(format!("cannot make an HTTP client: {e}")))?;
    let response = client
        .get(url)
        .send()
        .map_err(|e| StoreError::Invalid(format!("cannot download {url}: {e}")))?;
    if !response.status().is_success() {
        return Err(StoreError::Invalid(format!(
            "cannot download {url}: HTTP {}",
            response.status()
        )));
    }
    let limit = limits.max_archive_bytes;
    if let Some(n) = response.content_length().filter(|&n| n > limit) {
        return Err(StoreError::TooLarge {
            archive: PathBuf::from(url),
            reason: format!("the server declares {n} bytes, over the limit of {limit} bytes"),
        });
    }
    std::fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
    let segment: String = url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    let key = hex::encode(sha2::Sha256::digest(url.as_bytes()));
    let file = dir.join(format!(
        "{}-{}",
        &key[..16],
        segment.trim_start_matches('.')
    ));
    // Named by the writing process, so a sweep of the cache can tell a dead download's.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let partial = dir.join(format!(
        ".{}-{nanos}-{}.partial",
        &key[..16],
        std::process::id()
    ));
    let mut out = std::fs::File::create(&partial).map_err(StoreError::io(&partial))?;
    let n = std::io::copy(&mut response.take(limit.saturating_add(1)), &mut out)
        .map_err(StoreError::io(&partial));
    let n = match n {
        Ok(n) if n <= limit => n,
        other => {
            let _ = std::fs::remove_file(&partial);
            return match other {
                Err(e) => Err(e),
                Ok(_) => Err(StoreError::TooLarge {
                    archive: PathBuf::from(url),
                    reason: format!("over the limit of {limit} bytes"),
                }),
            };
        }
    };
    tracing::info!(url, bytes = n, file = %file.display(), "archive downloaded");
    std::fs::rename(&partial, &file).map_err(StoreError::io(&file))?;
    Ok(file)
}
