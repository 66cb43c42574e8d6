//! The shared-memory file a worker and the server pass big tensors through, so they do not
//! travel through the socket (two copies through the kernel) but are written once and read in
//! place.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

/// Largest the file may grow to, whoever grows it (the worker reports its size; a larger claim
/// is a broken worker).
pub(crate) const MAX_SHM: usize = 1 << 34;

/// A file in `/dev/shm` (memory, not disk), mapped by both sides.
pub(crate) struct Shm {
    file: File,
    map: Option<MmapMut>,
    path: Option<PathBuf>,
}

impl Shm {
    /// Creates an empty file only this user can open.
    pub fn create() -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = Path::new("/dev/shm");
        let dir = if dir.is_dir() {
            dir.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!(
            "ferroserve-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Self {
            file,
            map: None,
            path: Some(path),
        })
    }

    /// Where the worker opens it (until [`Shm::unlink`]).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Removes the name once both sides hold the file open, so nothing is left behind whatever
    /// happens to either process later.
    pub fn unlink(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// Grows the file to hold at least `needed` bytes (doubling, so a growing model does not
    /// grow it every request).
    pub fn ensure(&mut self, needed: usize) -> std::io::Result<()> {
        if needed <= self.len() {
            return Ok(());
        }
        if needed > MAX_SHM {
            return Err(std::io::Error::other(format!(
                "{needed} bytes of tensors are more than the shared memory's limit ({MAX_SHM})"
            )));
        }
        let size = needed.max(self.len() * 2).min(MAX_SHM);
        self.file.set_len(size as u64)?;
        reserve(&self.file, size)?;
        self.remap()
    }

    /// Maps the file again at `size`, the size the worker says it grew it to.
    pub fn follow(&mut self, size: usize) -> Result<(), String> {
        if size == self.len() {
            return Ok(());
        }
        let actual = self
            .file
            .metadata()
            .map_err(|e| format!("cannot read the shared memory's size: {e}"))?
            .len() as usize;
        if size > actual || size > MAX_SHM || size < self.len() {
            return Err(format!(
                "the worker said the shared memory holds {size} bytes, but it holds {actual}"
            ));
        }
        self.remap().map_err(|e| e.to_string())
    }

    fn remap(&mut self) -> std::io::Result<()> {
        self.map = None;
        // SAFETY: the file is private to this server and its worker; the worker only writes
        // past `shm_free` while the server waits for its reply, and the server reads those
        // bytes only after the reply, so no one sees a slice change under it.
        self.map = Some(unsafe { MmapMut::map_mut(&self.file)? });
        Ok(())
    }

    /// `len` bytes from `offset`, if they lie inside the file.
    pub fn slice(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        self.map.as_ref()?.get(offset..end)
    }

    /// The same, to write.
    pub fn slice_mut(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let end = offset.checked_add(len)?;
        self.map.as_mut()?.get_mut(offset..end)
    }
}

/// Reserves the file's pages now: `/dev/shm` can be small (64 MiB in a container), and touching
/// a page tmpfs cannot supply through the mapping is a SIGBUS for the whole server, where this is
/// an error for one request.
fn reserve(file: &File, size: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor this struct owns.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "cannot reserve {size} bytes of shared memory ({}); /dev/shm may be too small for the model's tensors",
            std::io::Error::from_raw_os_error(rc)
        )))
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        self.unlink();
    }
}
