//! ferroserve's model store: what TorchServe's `.mar` files and `model_store` are, with the
//! checks TorchServe lacks.
//!
//! - [`archive`]: `ferroserve archive` — a model folder (or a model file with its config and
//!   extra files) into one `NAME.far` (a zstd-compressed tar) holding the model folder and a
//!   [`Manifest`] with every file's size and sha256.
//! - [`unpack`]: an archive into a cache folder named by the archive's sha256, refusing absolute
//!   paths, `..`, links, device files and archives over a size limit, and verifying every file
//!   against the manifest before anything is served from it.
//! - [`mar`]: TorchServe's `.mar` archives (zip, tgz, `no-archive` folders), unpacked with the
//!   same checks into a version folder, cached by the archive's sha256.
//! - [`Store`]: a model store folder, and the archives `--models` picks from it.
//! - [`fetch`]: downloading an archive from an allow-listed URL (the caller checks the list).
//! - [`cache`]: removing what no served model needs from the cache, within a size limit.
//!
//! ```no_run
//! use ferroserve_store::{archive, ArchiveFormat, ArchiveSpec, Limits, Store};
//!
//! let far = archive::create(&ArchiveSpec {
//!     model_name: "resnet".into(),
//!     model_path: "models/resnet".into(),
//!     export_path: "model_store".into(),
//!     ..ArchiveSpec::default()
//! })?;
//! let store = Store::new("model_store".into(), "/tmp/ferroserve-cache".into(), Limits::default());
//! for (name, model) in store.select(&ferroserve_store::Selection::All)? {
//!     match model {
//!         Ok(m) => println!("{name}: {} versions in {}", m.archives.len(), m.dir.display()),
//!         Err(e) => println!("{name}: {e}"),
//!     }
//! }
//! # let _ = far;
//! # Ok::<(), ferroserve_store::StoreError>(())
//! ```

#![warn(missing_docs)]

pub mod archive;
pub mod cache;
mod entries;
mod error;
pub mod fetch;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod manifest;
pub mod mar;
mod store;
pub mod unpack;

pub use archive::{ArchiveFormat, ArchiveSpec};
pub use error::StoreError;
pub use manifest::{FileEntry, Manifest, MANIFEST_PATH};
pub use store::{Selected, Selection, Store, StoredModel};
pub use unpack::{Limits, Unpacked};

/// File extension of ferroserve model archives.
pub const ARCHIVE_EXTENSION: &str = "far";

/// Checks that `name` can name a model: letters, digits, `-`, `_` and `.`, not starting with `.`
/// (it becomes a URL path segment and a file name).
pub fn check_model_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "model name '{name}' must be letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}
