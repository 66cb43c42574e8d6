//! How far a request has come, for clients that stream its answer.

use std::sync::Arc;

use tokio::sync::watch;

/// A request's state while its answer is being made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partial {
    /// The token ids generated so far, the decoder's start token first.
    Tokens(Vec<u32>),
    /// Steps done of the steps planned (denoising steps of an image).
    Steps {
        /// Steps done.
        done: usize,
        /// Steps in all.
        of: usize,
    },
}

/// The backend's end of a request's progress. Each report replaces the one before (the channel
/// holds only the latest state), so a slow reader never holds the model back and never loses
/// where the request stands: a reader that wakes up late sees the newest tokens or step.
///
/// ```
/// use ferroserve_core::{Partial, Progress};
///
/// let (progress, mut reader) = Progress::channel();
/// progress.report(Partial::Steps { done: 1, of: 20 });
/// progress.report(Partial::Steps { done: 2, of: 20 });
/// assert!(reader.has_changed().unwrap());
/// assert_eq!(*reader.borrow_and_update(), Some(Partial::Steps { done: 2, of: 20 }));
/// ```
#[derive(Debug, Clone)]
pub struct Progress(Arc<watch::Sender<Option<Partial>>>);

/// The reader's end of a request's [`Progress`]: `None` until the first report.
pub type ProgressReader = watch::Receiver<Option<Partial>>;

impl Progress {
    /// A progress and its reader.
    pub fn channel() -> (Self, ProgressReader) {
        let (tx, rx) = watch::channel(None);
        (Self(Arc::new(tx)), rx)
    }

    /// Records where the request stands now.
    pub fn report(&self, partial: Partial) {
        self.0.send_replace(Some(partial));
    }
}
