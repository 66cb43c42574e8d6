//! Counting frequent events for one summary log line per interval instead of a line each.
//!
//! Under overload a server refuses thousands of requests a second; a log line for each would
//! cost more than the refusals and bury everything else. Each event is counted under a short
//! reason, and the first event after an interval has passed writes one warning per reason with
//! the counts for that interval.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts events by reason and reports them at most once per interval.
///
/// ```
/// use std::time::Duration;
/// use ferroserve_core::Tally;
///
/// let refused = Tally::new("requests rejected", Duration::from_secs(10));
/// refused.note("queue full on model 'resnet'");
/// ```
#[derive(Debug)]
pub struct Tally {
    what: &'static str,
    interval: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    counts: BTreeMap<String, u64>,
}

impl Tally {
    /// A tally whose summary reads "N `what` in the last S s: reason", written at most once per
    /// `interval`.
    pub fn new(what: &'static str, interval: Duration) -> Self {
        Self {
            what,
            interval,
            state: Mutex::new(Window {
                started: Instant::now(),
                counts: BTreeMap::new(),
            }),
        }
    }

    /// Counts one event for `reason`, and writes the summary of the interval that ended, if
    /// one did.
    pub fn note(&self, reason: &str) {
        let Some((elapsed, counts)) = self.count(reason) else {
            return;
        };
        for (reason, n) in counts {
            tracing::warn!(
                count = n,
                seconds = elapsed.as_secs(),
                "{n} {} in the last {} s: {reason}",
                self.what,
                elapsed.as_secs()
            );
        }
    }

    /// Adds the event; returns the finished interval's length and counts when it is time to
    /// report them.
    fn count(&self, reason: &str) -> Option<(Duration, BTreeMap<String, u64>)> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Reasons name models or peers: bound how many one window keeps.
        let key = if w.counts.contains_key(reason) || w.counts.len() < 64 {
            reason
        } else {
            "other reasons"
        };
        *w.counts.entry(key.to_string()).or_default() += 1;
        let elapsed = w.started.elapsed();
        if elapsed < self.interval {
            return None;
        }
        w.started = Instant::now();
        Some((elapsed, std::mem::take(&mut w.counts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_once_per_interval_with_counts() {
        let t = Tally::new("refused", Duration::from_millis(50));
        for _ in 0..1000 {
            assert!(t.count("queue full").is_none());
        }
        std::thread::sleep(Duration::from_millis(60));
        let (elapsed, counts) = t.count("queue full").unwrap();
        assert!(elapsed >= Duration::from_millis(50));
        assert_eq!(counts["queue full"], 1001);
        assert!(t.count("queue full").is_none(), "a new interval has begun");
    }

    #[test]
    fn reasons_are_bounded() {
        let t = Tally::new("refused", Duration::from_secs(3600));
        for i in 0..1000 {
            t.count(&format!("peer {i}"));
        }
        let w = t.state.lock().unwrap();
        assert_eq!(w.counts.len(), 65);
        assert_eq!(w.counts["other reasons"], 936);
    }
}
