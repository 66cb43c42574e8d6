//! A loaded model's own word on whether it can still serve.

use std::sync::{Arc, Mutex};

/// Shared by a model version's replicas: a backend whose replicas keep failing (a worker
/// process that dies at every start) marks the version failed, and the runtime then reports it
/// `UNAVAILABLE` with the reason instead of queueing requests for it.
///
/// ```
/// use ferroserve_core::Health;
///
/// let health = Health::default();
/// assert_eq!(health.failure(), None);
/// health.fail("the worker died 5 times in a row");
/// assert_eq!(health.failure().as_deref(), Some("the worker died 5 times in a row"));
/// health.recover();
/// assert_eq!(health.failure(), None);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    /// Marks it unable to serve, for `reason`.
    pub fn fail(&self, reason: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.into());
    }

    /// Marks it able to serve again.
    pub fn recover(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why it cannot serve, if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
