//! One worker process: started with the user's interpreter, connected over a Unix socket, loaded,
//! then fed one request at a time.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::frame::{self, Outbox, ReadError, Reply};
use crate::shm::Shm;
use crate::worker::WorkerSpec;

/// Lines of the worker's output (stdout and stderr together) kept for error messages.
const KEPT_LINES: usize = 20;
/// Longest line kept (a worker printing a megabyte on one line does not end in a client's
/// error message whole).
const KEPT_LINE_CHARS: usize = 1000;

/// Why a call did not get the answer it asked for.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The user's code raised; the worker goes on.
    User { error: String, traceback: String },
    /// The worker is gone (it died, or closed the socket); why, with its last lines.
    Died(String),
    /// The deadline passed before the answer; the worker was killed.
    Hung,
    /// The worker broke the protocol; it was killed.
    Malformed(String),
    /// The request could not be handed over (its tensors do not fit in shared memory); the
    /// worker is fine.
    Refused(String),
}

/// The last lines a worker wrote, for the message of a failure.
#[derive(Clone, Default)]
pub(crate) struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
    /// Pipes read to their end (stdout and stderr: 2 when the worker is gone).
    done: Arc<AtomicUsize>,
}

impl Tail {
    fn push(&self, line: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == KEPT_LINES {
            lines.pop_front();
        }
        lines.push_back(line.chars().take(KEPT_LINE_CHARS).collect());
    }

    fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// A worker's process, killed when dropped unless it already ended.
pub(crate) struct Kid(pub Child);

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub(crate) struct Process {
    child: Kid,
    stream: UnixStream,
    shm: Shm,
    threshold: usize,
    tail: Tail,
    /// The worker's `ready` header (what a Jina executor handles, say).
    pub ready: Map<String, Value>,
}

impl Process {
    /// Starts a worker and waits (up to `spec.timeout_ready`) until it loaded the user's code.
    pub fn start(spec: &WorkerSpec) -> Result<Self, String> {
        let code = crate::code::folder()?;
        let dir = tempfile::Builder::new()
            .prefix("ferroserve-py-")
            .tempdir()
            .map_err(|e| format!("cannot make a folder for the worker's socket: {e}"))?;
        let socket = dir.path().join("worker.sock");
        let listener = UnixListener::bind(&socket)
            .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot set up the worker's socket: {e}"))?;
        let mut shm = Shm::create().map_err(|e| format!("cannot create shared memory: {e}"))?;
        let shm_path = shm.path().map(|p| p.to_path_buf()).unwrap_or_default();
        let mut child = Command::new(&spec.python)
            .arg("-u")
            .arg(code.join(crate::code::ENTRY))
            .arg("--socket")
            .arg(&socket)
            .arg("--shm")
            .arg(&shm_path)
            .current_dir(&spec.cwd)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "the Python interpreter '{}' was not found (set python: in model.yaml or the Flow, or --python)",
                        spec.python.display()
                    )
                } else {
                    format!("cannot start '{}': {e}", spec.python.display())
                }
            })?;
        let tail = Tail::default();
        let who = format!("{} replica {}", spec.name, spec.replica);
        if let Some(out) = child.stdout.take() {
            log_lines(out, who.clone(), tail.clone(), false);
        }
        if let Some(err) = child.stderr.take() {
            log_lines(err, who, tail.clone(), true);
        }
        let deadline = spec.timeout_ready.map(|t| Instant::now() + t);
        let waited = || {
            spec.timeout_ready.map_or(String::new(), |t| {
                format!(" within {} ms (timeout_ready)", t.as_millis())
            })
        };
        let fail = |child: &mut Child, tail: &Tail, why: String| -> String {
            let _ = child.kill();
            let _ = child.wait();
            wait_for_tail(tail);
            with_lines(why, &tail.text())
        };
        // Connecting: the interpreter may take a while to import the user's dependencies, so
        // only the worker exiting or the deadline ends the wait.
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    return Err(fail(
                        &mut child,
                        &tail,
                        format!("cannot accept the worker: {e}"),
                    ))
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                wait_for_tail(&tail);
                return Err(with_lines(
                    format!("the worker {} before it connected", describe(status)),
                    &tail.text(),
                ));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(fail(
                    &mut child,
                    &tail,
                    format!("the worker did not become ready{}", waited()),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        drop(listener);
        drop(dir);
        if let Err(e) = stream.set_nonblocking(false) {
            return Err(fail(
                &mut child,
                &tail,
                format!("cannot set up the worker's socket: {e}"),
            ));
        }
        match frame::read(&mut stream, deadline) {
            Ok((h, _)) if h.get("op").and_then(Value::as_str) == Some("hello") => {}
            Ok((h, _)) => {
                return Err(fail(
                    &mut child,
                    &tail,
                    format!("the worker greeted with {:?}, not hello", h.get("op")),
                ))
            }
            Err(e) => return Err(fail(&mut child, &tail, read_failure(e, &waited()))),
        }
        let mut load = spec.load.clone();
        load.insert("op".into(), "load".into());
        load.insert("shm_threshold".into(), crate::worker::SHM_THRESHOLD.into());
        if let Err(e) = frame::write(&mut stream, &Value::Object(load), &[]) {
            return Err(fail(
                &mut child,
                &tail,
                format!("cannot send the worker its model: {e}"),
            ));
        }
        let ready = match frame::read(&mut stream, deadline) {
            Ok((h, _)) => match h.get("op").and_then(Value::as_str) {
                Some("ready") => h,
                Some("error") => {
                    let (error, traceback) = user_error(&h);
                    tracing::warn!(worker = %spec.name, replica = spec.replica, "loading failed:\n{traceback}");
                    return Err(fail(
                        &mut child,
                        &tail,
                        format!("loading the Python code raised {error}"),
                    ));
                }
                other => {
                    return Err(fail(
                        &mut child,
                        &tail,
                        format!("the worker answered load with {other:?}"),
                    ))
                }
            },
            Err(e) => return Err(fail(&mut child, &tail, read_failure(e, &waited()))),
        };
        // Both sides hold the file open now: its name is no longer needed.
        shm.unlink();
        Ok(Self {
            child: Kid(child),
            stream,
            shm,
            threshold: crate::worker::SHM_THRESHOLD,
            tail,
            ready,
        })
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The process, its socket and its last lines, for a connection that serves many requests
    /// at once (Ray deployments); nothing travels through its shared memory.
    pub fn into_parts(self) -> (Kid, UnixStream, Tail) {
        (self.child, self.stream, self.tail)
    }

    /// Sends the request `build` makes (its buffers through the outbox) and reads the answer
    /// `op` with `read`, waiting until `deadline` at most.
    pub fn call<T>(
        &mut self,
        build: impl FnOnce(&mut Outbox<'_>) -> std::io::Result<Map<String, Value>>,
        op: &str,
        read: impl FnOnce(&Reply<'_>) -> Result<T, String>,
        deadline: Option<Instant>,
    ) -> Result<T, CallError> {
        let mut outbox = Outbox::new(&mut self.shm, self.threshold);
        let mut header = build(&mut outbox).map_err(|e| CallError::Refused(e.to_string()))?;
        let (payload, free, size) = outbox.finish();
        header.insert("shm_size".into(), size.into());
        header.insert("shm_free".into(), free.into());
        if let Err(e) = frame::write(&mut self.stream, &Value::Object(header), &payload) {
            return Err(CallError::Died(
                self.death(&format!("the socket broke ({e})")),
            ));
        }
        let (header, payload) = match frame::read(&mut self.stream, deadline) {
            Ok(f) => f,
            Err(ReadError::TimedOut) => {
                self.kill();
                return Err(CallError::Hung);
            }
            Err(ReadError::Closed(why)) => return Err(CallError::Died(self.death(&why))),
            Err(ReadError::Malformed(what)) => {
                self.kill();
                return Err(CallError::Malformed(what));
            }
        };
        match header.get("op").and_then(Value::as_str) {
            Some("error") => {
                let (error, traceback) = user_error(&header);
                return Err(CallError::User { error, traceback });
            }
            Some(o) if o == op => {}
            other => {
                self.kill();
                return Err(CallError::Malformed(format!(
                    "an answer {other:?} where {op} was due"
                )));
            }
        }
        let followed = match header.get("shm_size").map(Value::as_u64) {
            None => Ok(()),
            Some(Some(n)) => self.shm.follow(n as usize),
            Some(None) => Err("shm_size is not a number".into()),
        };
        let reply = Reply::new(header, payload, &self.shm);
        match followed.and_then(|()| read(&reply)) {
            Ok(t) => Ok(t),
            Err(what) => {
                self.kill();
                Err(CallError::Malformed(what))
            }
        }
    }

    /// Asks the worker to run the user's finaliser and exit; kills it when it takes longer than
    /// `grace`.
    pub fn stop(mut self, grace: Duration) {
        let stop = serde_json::json!({"op": "stop"});
        if frame::write(&mut self.stream, &stop, &[]).is_ok() {
            let deadline = Instant::now() + grace;
            let _ = frame::read(&mut self.stream, Some(deadline));
            if wait_until(deadline, || self.child.has_exited()) {
                return;
            }
        }
        self.kill();
    }

    fn kill(&mut self) {
        self.child.kill();
    }

    fn death(&mut self, why: &str) -> String {
        death(&mut self.child, &self.tail, why)
    }
}

impl Kid {
    /// Whether the process has ended (and is reaped).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `done` until it says so (true) or `deadline` passes (false).
pub(crate) fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Why a worker is gone: how it ended, and its last lines. A worker that closed the socket but
/// lives on is killed.
pub(crate) fn death(child: &mut Kid, tail: &Tail, why: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                child.kill();
                break None;
            }
        }
    };
    wait_for_tail(tail);
    let how = match status {
        Some(s) => format!("the worker (pid {}) {}", child.0.id(), describe(s)),
        None => format!(
            "the worker (pid {}) stopped answering ({why}) and was killed",
            child.0.id()
        ),
    };
    with_lines(how, &tail.text())
}

/// Logs each line a worker writes, naming the model and replica (stderr's as warnings), and
/// keeps the last ones in `tail`.
fn log_lines(pipe: impl std::io::Read + Send + 'static, who: String, tail: Tail, stderr: bool) {
    let spawned = std::thread::Builder::new()
        .name("python-log".into())
        .spawn(move || {
            let reader = BufReader::new(pipe);
            for line in reader.split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end();
                tail.push(line);
                if stderr {
                    tracing::warn!(target: "ferroserve::python", "{who}: {line}");
                } else {
                    tracing::info!(target: "ferroserve::python", "{who}: {line}");
                }
            }
            tail.done.fetch_add(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a thread for the worker's output: {e}");
    }
}

/// Gives the output threads a moment to take the last lines of a worker that just ended.
fn wait_for_tail(tail: &Tail) {
    let deadline = Instant::now() + Duration::from_millis(500);
    while tail.done.load(Ordering::Acquire) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn with_lines(message: String, lines: &str) -> String {
    if lines.trim().is_empty() {
        message
    } else {
        format!("{message}; its last lines:\n{lines}")
    }
}

/// How a process ended, in words.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(9)) => "was killed (SIGKILL)".into(),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".into(),
    }
}

fn read_failure(e: ReadError, waited: &str) -> String {
    match e {
        ReadError::TimedOut => format!("the worker did not become ready{waited}"),
        ReadError::Closed(why) => format!("the worker closed its socket while loading ({why})"),
        ReadError::Malformed(what) => format!("the worker sent {what} while loading"),
    }
}

/// `error` and `traceback` of an error reply.
pub(crate) fn user_error(h: &Map<String, Value>) -> (String, String) {
    let field = |k: &str| {
        h.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let error = field("error");
    let error = if error.is_empty() {
        "an unnamed error".into()
    } else {
        error
    };
    (error, field("traceback"))
}
