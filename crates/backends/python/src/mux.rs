//! A connection to a worker that serves many requests at once (Ray Serve deployments, see
//! `PROTOCOL.md`): every request and answer carries an id, a reader thread hands each answer to
//! its caller, and what the worker asks of the server (deployment handles) goes to the owner's
//! [`Calls`]. Nothing travels through shared memory: buffers are inline in the frame.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferroserve_core::{Error, Health, Result};
use serde_json::{json, Map, Value};

use crate::frame::{self, BufRef};
use crate::process::{death, wait_until, Kid, Process, Tail};
use crate::worker::{Restarts, WorkerSpec};

/// How long the worker's stop may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// One frame from the worker: its header and the bytes its references name.
pub struct Frame {
    /// The JSON header.
    pub header: Map<String, Value>,
    payload: Vec<u8>,
}

impl Frame {
    /// The header's `op`.
    pub fn op(&self) -> &str {
        self.header
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The bytes of the buffer reference at `key` of the header; an error naming the key when
    /// it is missing or points outside the frame.
    pub fn bytes(&self, key: &str) -> std::result::Result<&[u8], String> {
        let r = self
            .header
            .get(key)
            .ok_or_else(|| format!("an answer without '{key}'"))?;
        self.bytes_at(r)
    }

    /// The bytes a buffer reference names.
    pub fn bytes_at(&self, r: &Value) -> std::result::Result<&[u8], String> {
        match BufRef::from_json(r)? {
            BufRef::Frame { offset, len } => offset
                .checked_add(len)
                .and_then(|end| self.payload.get(offset..end))
                .ok_or_else(|| format!("buffer {r} lies outside the frame")),
            BufRef::Shm { .. } => Err(format!(
                "buffer {r} is in shared memory, which this kind of worker does not use"
            )),
        }
    }
}

/// The payload of a frame being built: buffers back to back, each named by the reference
/// [`Payload::put`] returns.
#[derive(Default)]
pub struct Payload(Vec<u8>);

impl Payload {
    /// Appends `data`; returns its reference for the header.
    pub fn put(&mut self, data: &[u8]) -> Value {
        let offset = self.0.len();
        self.0.extend_from_slice(data);
        json!(["frame", offset, data.len()])
    }
}

/// What the server does when the worker asks it something (an `op` that is not an answer).
pub trait Calls: Send + Sync + 'static {
    /// Handles `request`, answering through `reply` now or later, from any thread.
    fn call(&self, request: Frame, reply: Responder);
}

/// Answers one request the worker made. One dropped without an answer (its task cancelled at
/// shutdown, say) answers `handle_error`, so the worker's caller never waits forever.
pub struct Responder {
    shared: Weak<Shared>,
    id: Value,
    sent: bool,
}

impl Responder {
    /// Sends the answer (with the request's id). A worker gone by then gets nothing: its own
    /// callers were answered when it died.
    pub fn send(mut self, header: Map<String, Value>, payload: Payload) {
        self.sent = true;
        self.write(header, &payload.0);
    }

    /// Answers with a failure (`handle_error`): `message`, and the pickled exception for the
    /// worker's caller to raise again, when there is one.
    pub fn fail(self, message: String, exception: Option<&[u8]>) {
        let mut payload = Payload::default();
        let mut header = error_header(message);
        if let Some(x) = exception {
            header.insert("exception".into(), payload.put(x));
        }
        self.send(header, payload);
    }

    fn write(&self, mut header: Map<String, Value>, payload: &[u8]) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        header.insert("id".into(), self.id.clone());
        let _ = shared.write(&Value::Object(header), payload);
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.sent {
            let message = "the server dropped this call unanswered (it is shutting down)";
            self.write(error_header(message.into()), &[]);
        }
    }
}

fn error_header(message: String) -> Map<String, Value> {
    let mut h = Map::new();
    h.insert("op".into(), "handle_error".into());
    h.insert("error".into(), message.into());
    h
}

struct Shared {
    writer: Mutex<UnixStream>,
    waiting: Mutex<HashMap<u64, mpsc::SyncSender<Result<Frame>>>>,
    /// Set once the worker is gone or broke the protocol; no request is sent after.
    broken: AtomicBool,
    next: AtomicU64,
    child: Mutex<Kid>,
    tail: Tail,
    /// What it serves, for messages (`deployment 'Summarizer' replica 0`).
    name: String,
}

impl Shared {
    fn write(&self, header: &Value, payload: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        frame::write(&mut w, header, payload)
    }

    /// Marks the worker gone (killing it) and answers everyone still waiting with `error`.
    /// Stops waiting for request `id`; false when its answer was taken already.
    fn forget(&self, id: u64) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .is_some()
    }

    fn fail_all(&self, error: Error) {
        self.broken.store(true, Ordering::Release);
        self.child.lock().unwrap_or_else(|p| p.into_inner()).kill();
        // A process the worker forked may hold the socket open after the worker is gone: shut
        // it here so the reader thread ends.
        let _ = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .shutdown(std::net::Shutdown::Both);
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, tx) in waiting {
            let _ = tx.send(Err(error.clone()));
        }
    }

    fn died(&self, why: &str) -> Error {
        let how = {
            let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
            death(&mut child, &self.tail, why)
        };
        Error::internal(format!("{}: {how}; it is being restarted", self.name))
    }
}

/// One worker process serving many requests at once.
pub struct Channel {
    shared: Arc<Shared>,
    pid: u32,
    ready: Map<String, Value>,
}

impl Channel {
    /// Starts the worker `spec` describes and waits until it is ready; `calls` serves what it
    /// asks of the server.
    pub fn start(spec: &WorkerSpec, calls: Arc<dyn Calls>) -> std::result::Result<Self, String> {
        let process = Process::start(spec)?;
        let pid = process.pid();
        let ready = process.ready.clone();
        let (child, stream, tail) = process.into_parts();
        let mut reader = stream
            .try_clone()
            .map_err(|e| format!("cannot share the worker's socket: {e}"))?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream),
            waiting: Mutex::default(),
            broken: AtomicBool::new(false),
            next: AtomicU64::new(1),
            child: Mutex::new(child),
            tail,
            name: format!("{} replica {}", spec.name, spec.replica),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name(format!("python-mux-{pid}"))
            .spawn(move || read_loop(&mut reader, &weak, calls.as_ref()))
            .map_err(|e| format!("cannot start a thread for the worker's answers: {e}"))?;
        Ok(Self { shared, pid, ready })
    }

    /// The worker's `ready` header.
    pub fn ready(&self) -> &Map<String, Value> {
        &self.ready
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the worker still serves (it has not died, hung or broken the protocol).
    pub fn is_alive(&self) -> bool {
        !self.shared.broken.load(Ordering::Acquire)
    }

    /// Sends a request (an id is added) and waits for its answer until `deadline` at most. A
    /// worker that dies meanwhile is `Internal` with its last lines; one that passes the
    /// deadline is killed (`DeadlineExceeded`), and so are the other requests it was running.
    pub fn request(
        &self,
        header: Map<String, Value>,
        payload: Payload,
        deadline: Option<Instant>,
    ) -> Result<Frame> {
        self.exchange(header, payload, deadline, true)
    }

    /// [`Channel::request`] whose deadline passing is only this request's failure: the worker
    /// is not killed (a health check that a long request delays).
    pub fn probe(&self, header: Map<String, Value>, deadline: Instant) -> Result<Frame> {
        self.exchange(header, Payload::default(), Some(deadline), false)
    }

    fn exchange(
        &self,
        mut header: Map<String, Value>,
        payload: Payload,
        deadline: Option<Instant>,
        kill_when_late: bool,
    ) -> Result<Frame> {
        let shared = &self.shared;
        if !self.is_alive() {
            return Err(Error::unavailable(format!(
                "{}: the Python worker is restarting; retry shortly",
                shared.name
            )));
        }
        let id = shared.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        // Failed between the check above and the insert: nobody would answer this one.
        if !self.is_alive() {
            shared.forget(id);
            return Err(Error::unavailable(format!(
                "{}: the Python worker is restarting; retry shortly",
                shared.name
            )));
        }
        header.insert("id".into(), id.into());
        if let Err(e) = shared.write(&Value::Object(header), &payload.0) {
            shared.forget(id);
            let error = shared.died(&format!("the socket broke ({e})"));
            shared.fail_all(error.clone());
            return Err(error);
        }
        let answer = match deadline {
            None => rx.recv().map_err(|_| ()),
            Some(d) => rx
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .map_err(|_| ()),
        };
        match answer {
            Ok(result) => result,
            Err(()) => {
                if !shared.forget(id) {
                    // The answer (or the worker's failure) is being handed over right now.
                    return rx.recv().unwrap_or_else(|_| {
                        Err(Error::internal(format!(
                            "{}: the answer was lost",
                            shared.name
                        )))
                    });
                }
                if !kill_when_late {
                    return Err(Error::deadline_exceeded(format!(
                        "{}: no answer before the deadline",
                        shared.name
                    )));
                }
                let error = Error::deadline_exceeded(format!(
                    "{}: the Python worker did not answer before the request's deadline; it was killed and is being restarted",
                    shared.name
                ));
                shared.fail_all(error.clone());
                Err(error)
            }
        }
    }

    /// Whether no request is waiting for an answer.
    pub fn is_idle(&self) -> bool {
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Asks the worker to exit, killing it when it takes longer than the grace period.
    fn stop(&self) {
        let shared = &self.shared;
        // Marked first: the socket closing after `stop` is no death to report.
        let was_alive = !shared.broken.swap(true, Ordering::AcqRel);
        if was_alive && shared.write(&json!({"op": "stop"}), &[]).is_ok() {
            let exited = || {
                let mut child = shared.child.lock().unwrap_or_else(|p| p.into_inner());
                child.has_exited()
            };
            if wait_until(Instant::now() + STOP_GRACE, exited) {
                return;
            }
        }
        shared
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .kill();
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads the worker's frames until its socket closes: answers go to their callers, anything
/// else to `calls`.
fn read_loop(reader: &mut UnixStream, shared: &Weak<Shared>, calls: &dyn Calls) {
    loop {
        let read = frame::read(reader, None);
        let Some(s) = shared.upgrade() else { return };
        match read {
            Ok((header, payload)) => {
                let frame = Frame { header, payload };
                match frame.op() {
                    "result" | "http_response" | "error" => {
                        let Some(id) = frame.header.get("id").and_then(Value::as_u64) else {
                            s.fail_all(Error::internal(format!(
                                "{}: the Python worker sent an answer without an id; it was killed and is being restarted",
                                s.name
                            )));
                            return;
                        };
                        let waiter = s
                            .waiting
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&id);
                        // No waiter: its caller gave up (deadline) and the answer is late.
                        if let Some(tx) = waiter {
                            let _ = tx.send(Ok(frame));
                        }
                    }
                    "stopped" => {}
                    _ => {
                        let id = frame.header.get("id").cloned().unwrap_or(Value::Null);
                        calls.call(
                            frame,
                            Responder {
                                shared: shared.clone(),
                                id,
                                sent: false,
                            },
                        );
                    }
                }
            }
            Err(frame::ReadError::Malformed(what)) => {
                s.fail_all(Error::internal(format!(
                    "{}: the Python worker sent {what}; it was killed and is being restarted",
                    s.name
                )));
                return;
            }
            Err(e) => {
                let why = match e {
                    frame::ReadError::Closed(why) => why,
                    _ => "the socket timed out".into(),
                };
                if s.broken.load(Ordering::Acquire) {
                    // Stopped (or already failed): whoever still waits is told, quietly.
                    s.fail_all(Error::unavailable(format!("{}: stopped", s.name)));
                } else {
                    let error = s.died(&why);
                    tracing::error!("{error}");
                    s.fail_all(error);
                }
                return;
            }
        }
    }
}

/// One replica's worker for many requests at once, restarted (with backoff) when it dies,
/// hangs or breaks the protocol, and stopped when the last holder lets go.
pub struct SharedWorker {
    spec: WorkerSpec,
    calls: Arc<dyn Calls>,
    state: Mutex<(Option<Arc<Channel>>, Restarts)>,
    health: Health,
}

impl SharedWorker {
    /// Starts the worker and waits until it is ready.
    pub fn start(spec: WorkerSpec, calls: Arc<dyn Calls>, health: Health) -> Result<Self> {
        let channel = Channel::start(&spec, calls.clone())
            .map_err(|e| Error::unavailable(format!("{}: {e}", spec.name)))?;
        tracing::info!(
            pid = channel.pid(),
            "{} replica {}: Python worker ready",
            spec.name,
            spec.replica
        );
        Ok(Self {
            spec,
            calls,
            state: Mutex::new((Some(Arc::new(channel)), Restarts::default())),
            health,
        })
    }

    /// Sends a request to the live worker (restarting it first when the last one failed) and
    /// waits for its answer; see [`Channel::request`].
    pub fn request(
        &self,
        header: Map<String, Value>,
        payload: Payload,
        deadline: Option<Instant>,
    ) -> Result<Frame> {
        let answer = self.live(deadline)?.request(header, payload, deadline);
        if answer.is_ok() {
            self.state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .succeeded();
        }
        answer
    }

    /// The worker's process id, while one runs.
    pub fn pid(&self) -> Option<u32> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.as_ref().filter(|c| c.is_alive()).map(|c| c.pid())
    }

    /// Sends a request that only fails itself when `deadline` passes (see
    /// [`Channel::probe`]); a worker that is not running is not started for it.
    pub fn probe(&self, header: Map<String, Value>, deadline: Instant) -> Result<Frame> {
        let live = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.0.clone().filter(|c| c.is_alive())
        };
        match live {
            Some(c) => c.probe(header, deadline),
            None => Err(Error::unavailable("the worker is restarting")),
        }
    }

    /// Whether the live worker has no request in flight.
    pub fn is_idle(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.as_ref().is_none_or(|c| c.is_idle())
    }

    /// Kills the live worker (its requests in flight fail); the next request starts a new one.
    pub fn restart(&self) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &state.0 {
            c.shared.fail_all(Error::unavailable(format!(
                "{}: the replica failed its health check and is being restarted",
                c.shared.name
            )));
        }
    }

    fn live(&self, deadline: Option<Instant>) -> Result<Arc<Channel>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &state.0 {
            Some(c) if c.is_alive() => return Ok(c.clone()),
            Some(_) => {
                state.0 = None;
                state.1.failed();
            }
            None => {}
        }
        state.1.wait(deadline, &self.spec.name)?;
        match Channel::start(&self.spec, self.calls.clone()) {
            Ok(c) => {
                tracing::info!(
                    pid = c.pid(),
                    "{} replica {}: Python worker restarted",
                    self.spec.name,
                    self.spec.replica
                );
                self.health.recover();
                let c = Arc::new(c);
                state.0 = Some(c.clone());
                Ok(c)
            }
            Err(why) => Err(state.1.start_failed(&self.spec.name, &why, &self.health)),
        }
    }
}
