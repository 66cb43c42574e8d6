//! Entry points for `cargo fuzz` (the repository's `fuzz/` folder), built with the `fuzzing`
//! feature only. A panic, a hang or an allocation far beyond the input's size is a bug.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::Limits;

struct Dirs {
    _root: tempfile::TempDir,
    archive: PathBuf,
    cache: PathBuf,
    outside: PathBuf,
}

fn dirs() -> &'static Dirs {
    static DIRS: OnceLock<Dirs> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = tempfile::tempdir().expect("temporary folder");
        let outside = root.path().join("outside");
        let cache = outside.join("cache");
        std::fs::create_dir_all(&cache).expect("cache folder");
        Dirs {
            archive: root.path().join("input.far"),
            cache,
            outside,
            _root: root,
        }
    })
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// An archive as a hostile client or store hands it over: whatever it holds, unpacking writes
/// only inside the cache, and leaves nothing behind when it fails. One input at a time (the
/// folders are shared).
pub fn unpack(data: &[u8]) {
    let d = dirs();
    std::fs::write(&d.archive, data).expect("write the archive");
    let limits = Limits {
        max_archive_bytes: 1 << 20,
        max_unpacked_bytes: 4 << 20,
        max_entries: 256,
        ..Limits::default()
    };
    let result = crate::unpack::unpack(&d.archive, &d.cache, &limits);
    assert_eq!(entries(&d.outside), ["cache"], "written outside the cache");
    match result {
        Ok(u) => {
            assert!(u.dir.starts_with(&d.cache));
            std::fs::remove_dir_all(&u.dir).expect("remove the unpacked folder");
        }
        Err(_) => assert!(
            entries(&d.cache).is_empty(),
            "a failed unpack left {:?}",
            entries(&d.cache)
        ),
    }
}
