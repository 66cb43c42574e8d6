//! What a listener allows its connections: how many, and for how long.

use std::time::Duration;

/// Bounds on the connections of one listener. The defaults are far beyond what a slow but
/// honest client needs, and close what a client holds open without using it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are closed as soon as they are accepted. Default: 2048.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (HTTP/1.1), counted from when the
    /// connection is ready for the next request, so it also closes idle keep-alive connections.
    /// Default: 30 s.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 and HTTP/2,
    /// gRPC included). Default: 120 s.
    pub idle_timeout: Duration,
    /// Longest wait for the next piece of a request body; also the grace period before
    /// `min_body_rate` applies. Default: 30 s. Not for gRPC, whose request streams may pause.
    pub body_read_timeout: Duration,
    /// Bytes per second a request body must average once `body_read_timeout` has passed.
    /// Default: 1024.
    pub min_body_rate: u64,
    /// How often an HTTP/2 connection is pinged to find peers that went away without closing
    /// it. Default: 60 s.
    pub http2_keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed. Default: 20 s.
    pub http2_keep_alive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 2048,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            body_read_timeout: Duration::from_secs(30),
            min_body_rate: 1024,
            http2_keep_alive_interval: Duration::from_secs(60),
            http2_keep_alive_timeout: Duration::from_secs(20),
        }
    }
}
