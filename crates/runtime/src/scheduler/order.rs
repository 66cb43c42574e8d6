//! `preserve_ordering`: answers leave in the order the requests arrived, whichever replica
//! finished first.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ferroserve_core::Result;
use tokio::sync::oneshot;

/// Where a request's answer goes.
pub(crate) type Reply<O> = oneshot::Sender<Result<O>>;

/// An answer and where it goes.
pub(crate) type Answer<O> = (Reply<O>, Result<O>);

/// Holds answers back until every earlier request (by arrival number) has been answered or has
/// left the queue unanswered.
pub(crate) struct Gate<O> {
    inner: Mutex<GateInner<O>>,
}

impl<O> Default for Gate<O> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(GateInner {
                next: 0,
                held: BTreeMap::new(),
            }),
        }
    }
}

struct GateInner<O> {
    next: u64,
    /// Finished requests waiting for an earlier one; `None` for one that needs no answer
    /// (its client left).
    held: BTreeMap<u64, Option<Answer<O>>>,
}

impl<O> Gate<O> {
    /// Request `seq` is finished; sends every answer that is now in order.
    pub fn complete(&self, seq: u64, answer: Option<Answer<O>>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.held.insert(seq, answer);
        loop {
            let next = g.next;
            let Some(entry) = g.held.remove(&next) else {
                break;
            };
            if let Some((reply, result)) = entry {
                let _ = reply.send(result);
            }
            g.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_answers_wait_for_earlier_ones() {
        let gate = Gate::<Vec<u8>>::default();
        let (tx0, mut rx0) = oneshot::channel();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        gate.complete(1, Some((tx1, Ok(vec![]))));
        assert!(rx1.try_recv().is_err(), "1 waits for 0");
        gate.complete(0, Some((tx0, Ok(vec![]))));
        assert!(rx0.try_recv().is_ok());
        assert!(rx1.try_recv().is_ok());
        gate.complete(3, Some((tx3, Ok(vec![]))));
        assert!(rx3.try_recv().is_err(), "3 waits for 2");
        gate.complete(2, None);
        assert!(
            rx3.try_recv().is_ok(),
            "an abandoned request does not hold the line"
        );
    }
}
