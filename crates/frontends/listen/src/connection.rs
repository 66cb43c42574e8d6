//! Serving one connection: HTTP/1.1 or HTTP/2 (cleartext), with its timeouts, until the peer
//! closes it, it idles too long, or the server shuts down.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::body::{Guarded, Paced};
use crate::Limits;

/// How long an idle connection that was asked to close has to finish closing.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Requests of one connection that have not finished, and when the last one did.
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    last_done: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_done: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection becomes idle for too long if nothing starts: `None` while requests
    /// are in flight.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.last_done.lock().unwrap_or_else(|p| p.into_inner()) + idle)
    }
}

/// One request in flight; done when dropped (its response sent, or abandoned).
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last_done.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What every connection of a listener shares.
pub(crate) struct Shared {
    pub app: Router,
    pub limits: Limits,
    pub closing: watch::Receiver<bool>,
    /// Held by every connection task: the listener knows they are all done when the channel
    /// closes.
    pub alive: mpsc::Sender<Infallible>,
}

/// Serves `stream` until it closes. `permit` is the connection's place under the cap.
pub(crate) async fn serve(stream: TcpStream, shared: Arc<Shared>, permit: OwnedSemaphorePermit) {
    let _permit = permit;
    let _alive = shared.alive.clone();
    let mut closing = shared.closing.clone();
    let limits = &shared.limits;
    let activity = Arc::new(Activity::new());

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout);

    let service = {
        let (app, activity) = (shared.app.clone(), activity.clone());
        let (body_timeout, min_rate) = (limits.body_read_timeout, limits.min_body_rate);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_flight = activity.begin();
            // A gRPC request body is a stream of messages that may rightly pause for minutes
            // (a client's stream of inferences); HTTP/2 pings and the message size bound it.
            let grpc = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let req = if grpc {
                req.map(Body::new)
            } else {
                req.map(|b| Body::new(Paced::new(b, body_timeout, min_rate)))
            };
            let app = app.clone();
            async move {
                let response = app.oneshot(req).await?;
                Ok::<_, Infallible>(response.map(|inner| {
                    Body::new(Guarded {
                        inner,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut shutting_down = false;
    // An idle connection asked to close is dropped if the peer does not finish closing (an
    // HTTP/2 peer must answer a ping first) within this time.
    let mut drop_at: Option<Instant> = None;
    loop {
        // While requests run, look again after a full idle period; the deadline only counts
        // from when the last one finished.
        let wake = activity
            .idle_deadline(limits.idle_timeout)
            .unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection closed with an error");
                }
                return;
            }
            changed = closing.changed(), if !shutting_down => {
                if changed.is_err() || *closing.borrow() {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep_until(wake), if !shutting_down => {
                if activity
                    .idle_deadline(limits.idle_timeout)
                    .is_some_and(|d| d <= Instant::now())
                {
                    tracing::debug!("closing a connection idle for {:?}", limits.idle_timeout);
                    shutting_down = true;
                    drop_at = Some(Instant::now() + CLOSE_GRACE);
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = sleep_until_some(drop_at) => {
                tracing::debug!("dropping an idle connection that did not close");
                return;
            }
        }
    }
}
