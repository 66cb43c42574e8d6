use std::path::PathBuf;

/// Why an archive could not be written, read or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS's error.
        source: std::io::Error,
    },
    /// The archive holds an entry that unpacking refuses to write.
    #[error("archive {archive}: entry '{entry}' is refused: {reason}")]
    Unsafe {
        /// The archive.
        archive: PathBuf,
        /// The entry's path as the archive names it.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The archive, or what it unpacks to, is over a limit.
    #[error("archive {archive} is too large: {reason}")]
    TooLarge {
        /// The archive.
        archive: PathBuf,
        /// Which limit.
        reason: String,
    },
    /// A file does not match the archive's manifest.
    #[error(
        "archive {archive}: file '{file}' {reason}; the archive was changed after it was made"
    )]
    Tampered {
        /// The archive.
        archive: PathBuf,
        /// The file, relative to the model folder.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The manifest is missing or unreadable.
    #[error("archive {archive}: {reason}")]
    Manifest {
        /// The archive.
        archive: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// What `ferroserve archive` was asked to do cannot be done.
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}
