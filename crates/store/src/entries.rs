//! Reading an archive's entries with the checks every format gets: a bounded number of entries,
//! relative paths that stay inside the target (no `/`, no `..`), only regular files and folders
//! (no symbolic or hard links, devices or FIFOs), and a bound on the bytes they hold, counted as
//! read rather than as a header claims. `.far` (zstd tar), TorchServe's `.mar` (zip) and its
//! `tgz` form all go through here, so one set of guards covers them.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::unpack::{safe_relative, Limits};
use crate::StoreError;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
}

/// Reads every entry of an archive, checked, handing each to a visitor.
pub(crate) struct Scan<'a> {
    archive: &'a Path,
    limits: &'a Limits,
    /// Most bytes the files may hold together.
    room: u64,
    read: u64,
    count: usize,
}

/// A visitor: the entry's checked relative path, its kind, and (for a file) its contents, read
/// at most to the room left. Returns the bytes it read.
pub(crate) type Visit<'v> = dyn FnMut(&Path, Kind, &mut dyn Read) -> Result<u64, StoreError> + 'v;

impl<'a> Scan<'a> {
    pub fn new(archive: &'a Path, limits: &'a Limits, room: u64) -> Self {
        Self {
            archive,
            limits,
            room,
            read: 0,
            count: 0,
        }
    }

    fn refuse(&self, entry: &str, reason: &str) -> StoreError {
        StoreError::Unsafe {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Counts an entry and checks its path.
    fn admit(&mut self, raw: &str) -> Result<PathBuf, StoreError> {
        self.count += 1;
        if self.count > self.limits.max_entries {
            return Err(StoreError::TooLarge {
                archive: self.archive.to_path_buf(),
                reason: format!("more than {} entries", self.limits.max_entries),
            });
        }
        safe_relative(raw).map_err(|why| self.refuse(raw, why))
    }

    /// Hands a file's contents to `visit`, stopping one byte past the room left so a lying
    /// header cannot make it read (or write) without end.
    fn file(
        &mut self,
        rel: &Path,
        reader: &mut dyn Read,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let left = self.room.saturating_sub(self.read);
        let mut bounded = reader.take(left.saturating_add(1));
        let n = visit(rel, Kind::File, &mut bounded)?;
        self.read += n;
        if n > left {
            return Err(StoreError::TooLarge {
                archive: self.archive.to_path_buf(),
                reason: if self.room < self.limits.max_unpacked_bytes {
                    format!(
                        "it unpacks to more than {} bytes, {} times its own size (an archive that expands this much is not a model)",
                        self.room, self.limits.max_expansion
                    )
                } else {
                    format!("it unpacks to more than {} bytes", self.room)
                },
            });
        }
        Ok(())
    }

    /// The entries of a tar stream (already decompressed).
    pub fn tar(
        mut self,
        reader: impl Read,
        format: &str,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let archive = self.archive.to_path_buf();
        let unreadable = |e: std::io::Error| StoreError::Manifest {
            archive: archive.clone(),
            reason: format!("not {format}: {e}"),
        };
        let mut tar = tar::Archive::new(reader);
        for entry in tar.entries().map_err(unreadable)? {
            let mut entry = entry.map_err(unreadable)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            // Metadata entries (pax headers, GNU long names) are consumed by the tar reader.
            if matches!(
                kind,
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
            ) {
                continue;
            }
            let rel = self.admit(&raw)?;
            match kind {
                tar::EntryType::Directory => {
                    visit(&rel, Kind::Dir, &mut std::io::empty())?;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    self.file(&rel, &mut entry, visit)?;
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    return Err(self.refuse(&raw, LINKS))
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    return Err(self.refuse(&raw, DEVICES))
                }
                other => {
                    return Err(
                        self.refuse(&raw, &format!("entries of type {other:?} are not allowed"))
                    )
                }
            }
        }
        Ok(())
    }

    /// The entries of a zip file.
    pub fn zip(mut self, file: std::fs::File, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        let archive = self.archive.to_path_buf();
        let unreadable = |e: zip::result::ZipError| StoreError::Manifest {
            archive: archive.clone(),
            reason: format!("not a readable zip file: {e}"),
        };
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(unreadable)?;
        if zip.len() > self.limits.max_entries {
            return Err(StoreError::TooLarge {
                archive: self.archive.to_path_buf(),
                reason: format!("more than {} entries", self.limits.max_entries),
            });
        }
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(unreadable)?;
            let raw = String::from_utf8_lossy(entry.name_raw()).into_owned();
            let rel = self.admit(&raw)?;
            // The file type lives in the Unix mode's high bits, when the archiver wrote one.
            let mode = entry.unix_mode().unwrap_or(0) & 0o170_000;
            match mode {
                0o120_000 => return Err(self.refuse(&raw, LINKS)),
                0 | 0o100_000 | 0o040_000 => {}
                _ => return Err(self.refuse(&raw, DEVICES)),
            }
            if entry.is_dir() {
                visit(&rel, Kind::Dir, &mut std::io::empty())?;
            } else {
                self.file(&rel, &mut entry, visit)?;
            }
        }
        Ok(())
    }
}

const LINKS: &str = "links are not allowed in archives (they could point outside the model folder)";
const DEVICES: &str = "device files and FIFOs are not allowed in archives";

/// A visitor writing entries under `target`, refusing one the archive holds twice.
pub(crate) fn write_under<'t>(
    archive: &'t Path,
    target: &'t Path,
) -> impl FnMut(&Path, Kind, &mut dyn Read) -> Result<u64, StoreError> + 't {
    move |rel, kind, reader| {
        let path = target.join(rel);
        match kind {
            Kind::Dir => {
                std::fs::create_dir_all(&path).map_err(StoreError::io(&path))?;
                Ok(0)
            }
            Kind::File => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(StoreError::io(parent))?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::AlreadyExists => StoreError::Unsafe {
                            archive: archive.to_path_buf(),
                            entry: rel.display().to_string(),
                            reason: "the archive holds it twice".into(),
                        },
                        _ => StoreError::io(&path)(e),
                    })?;
                std::io::copy(reader, &mut out).map_err(StoreError::io(&path))
            }
        }
    }
}
