//! Test harness: a real `ferroserve serve` process on 127.0.0.1 with an ephemeral port, over a
//! repository assembled from the committed fixtures, and small V2 client helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fixture model folder by name: the demo repository first, then test-only fixtures.
pub fn model_dir(name: &str) -> PathBuf {
    for base in ["examples/models", "tests/fixtures/models"] {
        let p = root().join(base).join(name);
        if p.is_dir() {
            return p;
        }
    }
    panic!("no fixture model '{name}' (run scripts/setup.sh for the fetched ones)");
}

/// A file under tests/fixtures.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// A model repository in a temporary folder.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    /// A repository holding links to the named fixture models.
    pub fn with(models: &[&str]) -> Self {
        let repo = Repo {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for m in models {
            repo.link(m, &model_dir(m));
        }
        repo
    }

    /// A repository holding the named fixture models without their `model.yaml`: plain models,
    /// tensors in and out, even for those the demo serves as tasks.
    pub fn plain(models: &[&str]) -> Self {
        let repo = Self::with(&[]);
        for m in models {
            std::fs::create_dir(repo.path().join(m)).expect("model dir");
            repo.link(&format!("{m}/1"), &model_dir(m).join("1"));
        }
        repo
    }

    /// Adds `target` to the repository under `name`.
    pub fn link(&self, name: &str, target: &Path) {
        std::os::unix::fs::symlink(target, self.dir.path().join(name)).expect("symlink");
    }

    /// Writes a file inside the repository.
    pub fn write(&self, rel: &str, contents: &[u8]) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The `ferroserve` binary of this build (only the ferroserve crate's tests have it).
pub fn ferroserve_binary() -> &'static str {
    match option_env!("CARGO_BIN_EXE_ferroserve") {
        Some(path) => path,
        // Other crates' tests include this harness and bring their own binary.
        None => panic!("only the ferroserve crate's tests have the ferroserve binary"),
    }
}

/// A running server; killed (by its PID) when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    pub log: Arc<Mutex<String>>,
    _repo: Repo,
}

impl Server {
    /// Starts `ferroserve serve` on `repo` and waits until it is ready.
    pub fn start(repo: Repo, extra: &[&str]) -> Self {
        let repo_path = repo.path().to_str().unwrap().to_string();
        let mut args = vec![
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--management-port",
            "0",
            "--model-repository",
            &repo_path,
        ];
        args.extend_from_slice(extra);
        Self::spawn(ferroserve_binary(), &args, repo)
    }

    /// Starts `BINARY run FILE --port 0` (a Deployment or Flow; `repo` holds what the file
    /// needs) and waits until it is ready.
    pub fn run_flow(binary: &str, file: &Path, repo: Repo) -> Self {
        let file = file.to_str().unwrap();
        Self::spawn(
            binary,
            &["run", file, "--host", "127.0.0.1", "--port", "0"],
            repo,
        )
    }

    /// Starts `binary` with `args` and waits for its "HTTP listening" line and readiness.
    pub fn spawn(binary: &str, args: &[&str], repo: Repo) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferroserve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        // Drain stderr for the server's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("HTTP listening on http://") {
                    // The URL ends at a quote in JSON logs and at the line's end in text logs.
                    let url: String = line[i + "HTTP listening on ".len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    let _ = tx.send(url);
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start:\n{}", log.lock().unwrap());
            }
        };
        let server = Server {
            child,
            url,
            log,
            _repo: repo,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(r) = client().get(self.at("/v2/health/ready")).send() {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server never became ready:\n{}", self.log.lock().unwrap());
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// GET, returning status and parsed JSON.
    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = client().get(self.at(path)).send().expect("GET");
        let status = r.status().as_u16();
        (status, r.json().expect("JSON body"))
    }

    /// POST a JSON body, returning status and parsed JSON.
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, serde_json::to_vec(body).unwrap(), None)
    }

    /// POST raw bytes, optionally with an Inference-Header-Content-Length, returning status and
    /// parsed JSON (the JSON part only, for binary responses).
    pub fn post_raw(&self, path: &str, body: Vec<u8>, header_len: Option<usize>) -> (u16, Value) {
        let (status, json, _) = self.post_binary(path, body, header_len);
        (status, json)
    }

    /// POST, returning status, the JSON part and the binary part of the response.
    pub fn post_binary(
        &self,
        path: &str,
        body: Vec<u8>,
        header_len: Option<usize>,
    ) -> (u16, Value, Vec<u8>) {
        let mut req = client().post(self.at(path)).body(body);
        if let Some(n) = header_len {
            req = req.header("Inference-Header-Content-Length", n.to_string());
        }
        let r = req.send().expect("POST");
        let status = r.status().as_u16();
        let json_len = r
            .headers()
            .get("inference-header-content-length")
            .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
        let bytes = r.bytes().expect("body").to_vec();
        let split = json_len.unwrap_or(bytes.len());
        let json = serde_json::from_slice(&bytes[..split]).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, json, bytes[split..].to_vec())
    }

    /// `http://host:port` of the gRPC listener (logged before the server reports ready).
    pub fn grpc_url(&self) -> String {
        self.listener_url("gRPC")
    }

    /// `http://host:port` of the listener the log names `what` (`gRPC`, `management API`).
    pub fn listener_url(&self, what: &str) -> String {
        let needle = format!("{what} listening on http://");
        // The listeners are logged one after another: the one asked for may come a moment after
        // the HTTP one the server was found by.
        let deadline = Instant::now() + Duration::from_secs(30);
        let log = loop {
            let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            if log.contains(&needle) || Instant::now() > deadline {
                break log;
            }
            drop(log);
            std::thread::sleep(Duration::from_millis(20));
        };
        let line = log
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no {what} listener in the log:\n{log}"));
        let at = line.find(&needle).unwrap() + needle.len() - "http://".len();
        line[at..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"')
            .collect()
    }

    /// The server's model repository.
    pub fn repo_path(&self) -> &Path {
        self._repo.path()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        self.child.wait().expect("wait")
    }

    /// The text of `GET /metrics`.
    pub fn metrics(&self) -> String {
        client()
            .get(self.at("/metrics"))
            .send()
            .expect("GET /metrics")
            .text()
            .unwrap()
    }

    /// One sample of `/metrics`: the line of metric `name` whose labels include `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// Sends `body` with `method` and an optional Content-Type, returning status and parsed JSON.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client().request(method, self.at(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let r = req.send().expect("request");
        let status = r.status().as_u16();
        let bytes = r.bytes().expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, json)
    }

    /// Asserts the server still answers health checks and a real inference.
    pub fn assert_healthy(&self) {
        assert_eq!(self.get("/v2/health/live").0, 200);
        assert_eq!(self.get("/v2/health/ready").0, 200);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Reads a reference JSON file from tests/fixtures/reference.
pub fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(&format!("reference/{name}"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Builds a binary-extension body: the JSON header, then each input's bytes in order.
pub fn binary_body(header: &Value, blobs: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(header).unwrap();
    let len = body.len();
    for b in blobs {
        body.extend_from_slice(b);
    }
    (body, len)
}

/// A multipart/form-data body with one part per `(field name, file name, bytes)`, and its
/// Content-Type.
pub fn multipart(parts: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "ferroserve-test-boundary-7d3f";
    let mut body = Vec::new();
    for (field, file, data) in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Keeps `clients` threads posting `body` to `path` on `server` while reading `watch` every
/// 100 ms, until it reaches `until` (and half a second more) or 15 s pass. Returns the highest
/// value `watch` gave and how many requests failed.
pub fn load_while_watching(
    server: &Server,
    clients: usize,
    path: &str,
    body: &Value,
    watch: impl Fn(&Server) -> f64,
    until: f64,
) -> (f64, usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    let mut most = f64::MIN;
    let failed = std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let stop = &stop;
                s.spawn(move || {
                    let mut failed = 0;
                    while !stop.load(Ordering::Relaxed) {
                        failed += usize::from(server.post_json(path, body).0 != 200);
                    }
                    failed
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && most < until {
            most = most.max(watch(server));
            std::thread::sleep(Duration::from_millis(100));
        }
        for _ in 0..5 {
            most = most.max(watch(server));
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum::<usize>()
    });
    (most, failed)
}

/// Waits up to `timeout` for `done`; true when it came.
pub fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn as_f32(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Finds the sample of `name` whose labels include all of `labels` in OpenMetrics text.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let (l, v) = r.split_once('}')?;
                (l, v)
            }
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        let found: Vec<(String, String)> = label_text
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        if labels
            .iter()
            .all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v))
        {
            return value.trim().parse().ok();
        }
    }
    None
}
