//! Request bodies that must keep arriving, and response bodies that mark their request done.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::connection::InFlight;

/// A request body that arrived too slowly: a gap longer than the body timeout, or an average
/// rate below the minimum once the grace period has passed. The handler reading the body gets
/// it as the body's error.
#[derive(Debug, Clone)]
pub struct BodyTooSlow(String);

impl std::fmt::Display for BodyTooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyTooSlow {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps a request body so that it fails when it stalls or trickles.
pub(crate) struct Paced<B> {
    inner: B,
    started: Instant,
    last: Instant,
    received: u64,
    timeout: Duration,
    min_rate: u64,
    /// Made the first time the body is not ready: most bodies arrive whole at once and never
    /// need one.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Paced<B> {
    pub(crate) fn new(inner: B, timeout: Duration, min_rate: u64) -> Self {
        let now = Instant::now();
        Self {
            inner,
            started: now,
            last: now,
            received: 0,
            timeout,
            min_rate,
            timer: None,
        }
    }

    /// When the body is too slow if nothing more arrives: the gap limit, or the moment the
    /// bytes received so far fall under the minimum average rate after the grace period.
    fn deadline(&self) -> Instant {
        let gap = self.last + self.timeout;
        if self.min_rate == 0 {
            return gap;
        }
        let covered = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        gap.min(self.started + self.timeout + covered)
    }

    fn too_slow(&self, now: Instant) -> BodyTooSlow {
        if now >= self.last + self.timeout {
            BodyTooSlow(format!(
                "the request body stalled: nothing arrived for {} s",
                self.timeout.as_secs_f64()
            ))
        } else {
            BodyTooSlow(format!(
                "the request body arrived too slowly: {} bytes in {:.0} s, under the server's minimum of {} bytes/s",
                self.received,
                (now - self.started).as_secs_f64(),
                self.min_rate
            ))
        }
    }
}

impl<B> http_body::Body for Paced<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                this.last = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline();
                let now = Instant::now();
                if now >= deadline {
                    return Poll::Ready(Some(Err(this.too_slow(now).into())));
                }
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(this.too_slow(Instant::now()).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped.
pub(crate) struct Guarded {
    pub(crate) inner: Body,
    pub(crate) _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    type Tx = mpsc::Sender<Result<Bytes, std::convert::Infallible>>;

    fn channel() -> (Tx, Body) {
        let (tx, rx) = mpsc::channel(4);
        (
            tx,
            Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_timeout() {
        let (tx, body) = channel();
        let mut paced = Paced::new(body, Duration::from_secs(5), 0);
        tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        let first = paced.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        let e = paced.frame().await.unwrap().unwrap_err().to_string();
        assert!(e.contains("nothing arrived for 5 s"), "{e}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_once_under_the_minimum_rate() {
        let (tx, body) = channel();
        let mut paced = Paced::new(body, Duration::from_secs(10), 100);
        let sender = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if tx.send(Ok(Bytes::from_static(b"x"))).await.is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        let e = loop {
            match paced.frame().await.unwrap() {
                Ok(_) => continue,
                Err(e) => break e.to_string(),
            }
        };
        assert!(e.contains("too slowly"), "{e}");
        // 1 byte every 2 s against 100 bytes/s after a 10 s grace: refused soon after the grace.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(14),
            "{waited:?}"
        );
        sender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_is_read_whole() {
        let (tx, body) = channel();
        let paced = Paced::new(body, Duration::from_secs(10), 100);
        tokio::spawn(async move {
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tx.send(Ok(Bytes::from(vec![0u8; 200]))).await.unwrap();
            }
        });
        let all = paced.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 6000);
    }
}
