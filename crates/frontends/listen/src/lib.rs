//! Accepting connections for ferroserve's HTTP and gRPC frontends.
//!
//! Every listener of the server (inference HTTP, gRPC, management, metrics) accepts through
//! [`serve`], so each has the same bounds on what a connection may hold:
//!
//! - at most [`Limits::max_connections`] open at once; the excess is closed as soon as it is
//!   accepted, before it can cost anything, and counted in one summary log line per 10 s;
//! - headers must arrive within [`Limits::header_read_timeout`] (HTTP/1.1);
//! - a body must keep coming: no gap over [`Limits::body_read_timeout`] and, after that grace,
//!   at least [`Limits::min_body_rate`] bytes/s on average (a handler reading it gets
//!   [`BodyTooSlow`]);
//! - a connection with no request in flight for [`Limits::idle_timeout`] is closed;
//! - HTTP/2 peers are pinged, and dropped when they stop answering.
//!
//! Shutdown stops accepting, asks each connection to close once its requests are answered,
//! and returns when all have.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! ferroserve_listen::serve(listener, app, ferroserve_listen::Limits::default(), std::future::pending()).await
//! # }
//! ```

#![warn(missing_docs)]

mod body;
mod connection;
mod limits;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ferroserve_core::Tally;
use tokio::sync::{mpsc, watch, Semaphore};

pub use body::BodyTooSlow;
pub use limits::Limits;

/// Serves `app` on `listener` with `limits` until `shutdown` completes, then lets the requests
/// in flight finish and returns once every connection has closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (close, closing) = watch::channel(false);
    let (alive, mut all_closed) = mpsc::channel(1);
    let max = limits.max_connections;
    let shared = Arc::new(connection::Shared {
        app,
        limits,
        closing,
        alive,
    });
    let refused = Tally::new("connections refused", Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most often: wait for connections to close
                    // instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused.note(&format!(
                "{max} connections are open (the listener's limit)"
            ));
            drop(stream);
            continue;
        };
        // Small HTTP/2 frames must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection::serve(stream, shared.clone(), permit));
    }
    drop(listener);
    let _ = close.send(true);
    drop(shared);
    // Every connection task holds a sender: `None` means the last one has ended.
    let _ = all_closed.recv().await;
    Ok(())
}
