//! The model store and its management: archives, `--model-store/--models`, the management API
//! and its security defaults, versions, hot reload and the memory budget — all through a real
//! server and real clients.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{client, ferroserve_binary, model_dir, wait_for, Repo, Server};
use serde_json::{json, Value};

/// Runs `ferroserve archive ARGS`, asserting it succeeds; returns its standard output.
fn archive(args: &[&str]) -> String {
    let out = Command::new(ferroserve_binary())
        .arg("archive")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "archive {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A server over `repo` (may be empty) and the store `store`, with extra flags.
fn serve(repo: Repo, store: Option<&Path>, cache: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--store-cache", path(cache)];
    if let Some(s) = store {
        args.extend(["--model-store", path(s)]);
    }
    args.extend_from_slice(extra);
    Server::start(repo, &args)
}

/// `http://127.0.0.1:PORT` of the management listener.
fn management(server: &Server) -> String {
    server.listener_url("management API")
}

/// Archives Triton's `simple` model file as `name` into `dir`, with more `archive` flags.
fn archive_simple(name: &str, dir: &Path, extra: &[&str]) -> String {
    let file = model_dir("simple").join("1/model.onnx");
    let mut args = vec![
        "--model-name",
        name,
        "--model-file",
        path(&file),
        "--export-path",
        path(dir),
    ];
    args.extend_from_slice(extra);
    archive(&args)
}

/// Sends `method url` with an optional bearer token; returns status and JSON.
fn call(method: &str, url: &str, token: Option<&str>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().unwrap();
    let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!("not JSON: {}", String::from_utf8_lossy(&body));
    });
    (status, json)
}

/// A V2 request to Triton's `simple` (INPUT0 + INPUT1, INPUT0 - INPUT1).
fn simple_request() -> Value {
    json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": (0..16).collect::<Vec<i32>>()},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]},
    ]})
}

/// Posts `simple_request` to `route`; returns status and the answering version (or the error).
fn infer_simple(server: &Server, route: &str) -> (u16, String) {
    let (status, body) = server.post_json(route, &simple_request());
    if status == 200 {
        let sums: Vec<i64> = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "OUTPUT0")
            .unwrap()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(sums, (1..17).collect::<Vec<i64>>(), "simple's sums");
        (status, body["model_version"].as_str().unwrap().to_string())
    } else {
        (
            status,
            body["error"].as_str().unwrap_or_default().to_string(),
        )
    }
}

/// A model folder named `name` inside `repo` whose versions link to `simple`'s model.
fn simple_versions(repo: &Repo, name: &str, versions: &[u64], yaml: Option<&str>) {
    std::fs::create_dir_all(repo.path().join(name)).unwrap();
    for v in versions {
        repo.link(&format!("{name}/{v}"), &model_dir("simple").join("1"));
    }
    if let Some(y) = yaml {
        repo.write(&format!("{name}/model.yaml"), y.as_bytes());
    }
}

#[test]
fn archive_round_trip_serves_the_same_answers_as_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cache = tmp.path().join("cache");
    // A whole model folder (config, labels and a version folder) and a single model file.
    let out = archive(&[
        "--model-name",
        "efficientnet-lite0",
        "--model-file",
        path(&model_dir("efficientnet-lite0")),
        "--export-path",
        path(&store),
    ]);
    assert!(out.contains("efficientnet-lite0.far"), "{out}");
    archive_simple("adder", &store, &["--version", "3"]);
    // Writing over an archive needs --force.
    let again = Command::new(ferroserve_binary())
        .args(["archive", "--model-name", "adder", "--model-file"])
        .arg(model_dir("simple").join("1/model.onnx"))
        .arg("--export-path")
        .arg(&store)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let manifest: Value =
        serde_json::from_str(&archive(&["--inspect", path(&store.join("adder.far"))])).unwrap();
    assert_eq!(manifest["model_name"], "adder");
    assert_eq!(manifest["model_version"], 3);
    let file = &manifest["files"][0];
    assert_eq!(file["path"], "3/model.onnx");
    assert_eq!(
        file["size"],
        std::fs::metadata(model_dir("simple").join("1/model.onnx"))
            .unwrap()
            .len()
    );
    assert_eq!(file["sha256"].as_str().unwrap().len(), 64);

    let from_store = serve(Repo::with(&[]), Some(&store), &cache, &["--models", "all"]);
    let from_folder = Server::start(Repo::with(&["efficientnet-lite0"]), &[]);
    let image = std::fs::read(common::fixture("images/dog.jpg")).unwrap();
    let classify = |s: &Server| {
        s.send(
            "POST",
            "/predictions/efficientnet-lite0",
            None,
            image.clone(),
        )
    };
    let (status, answer) = classify(&from_store);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        classify(&from_folder).1,
        "same labels and scores as from the folder"
    );
    assert_eq!(
        infer_simple(&from_store, "/v2/models/adder/infer"),
        (200, "3".into())
    );
    // The cache holds the unpacked archives under their checksums.
    let cached: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 64)
        .collect();
    assert_eq!(cached.len(), 2, "{cached:?}");

    // NAME=FILE serves one archive under a name of the caller's choosing.
    let named = serve(
        Repo::with(&[]),
        Some(&store),
        &cache,
        &["--models", "sum=adder.far"],
    );
    assert_eq!(
        infer_simple(&named, "/v2/models/sum/infer"),
        (200, "3".into())
    );
    assert_eq!(named.get("/v2/models/efficientnet-lite0/ready").0, 404);
}

#[test]
fn a_tampered_archive_is_refused_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    archive_simple("adder", &store, &["--archive-format", "no-archive"]);
    archive_simple("intact", &store, &[]);
    let weights = store.join("adder/1/model.onnx");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();

    let server = serve(
        Repo::with(&[]),
        Some(&store),
        &tmp.path().join("cache"),
        &["--models", "all"],
    );
    let (status, body) = server.post_json("/v2/repository/index", &json!({}));
    assert_eq!(status, 200);
    let row = body
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "adder")
        .unwrap()
        .clone();
    assert_eq!(row["state"], "UNAVAILABLE");
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains("'1/model.onnx'") && reason.contains("sha256"),
        "{reason}"
    );
    let (status, body) = server.post_json("/v2/models/adder/infer", &simple_request());
    assert_eq!(status, 503, "{body}");
    // The other archive of the store still serves.
    assert_eq!(infer_simple(&server, "/v2/models/intact/infer").0, 200);
}

/// A zstd tar holding one entry with a raw (unchecked) path, type and link target.
fn evil_archive(file: &Path, name: &str, kind: tar::EntryType, link: Option<&str>) {
    let enc = zstd::Encoder::new(std::fs::File::create(file).unwrap(), 1).unwrap();
    let mut tar = tar::Builder::new(enc);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(4);
    h.set_mode(0o644);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    tar.append(&h, &b"evil"[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn unsafe_archives_are_refused_without_writing_outside_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let cache = tmp.path().join("cache");
    let cases = [
        (
            "traversal.far",
            "../../escaped.txt",
            tar::EntryType::Regular,
            None,
            "'..'",
        ),
        (
            "absolute.far",
            "/tmp/ferroserve-escaped.txt",
            tar::EntryType::Regular,
            None,
            "absolute",
        ),
        (
            "symlink.far",
            "1/model.onnx",
            tar::EntryType::Symlink,
            Some("/etc/passwd"),
            "links",
        ),
        ("device.far", "1/null", tar::EntryType::Char, None, "device"),
    ];
    for (file, entry, kind, link, _) in &cases {
        evil_archive(&store.join(file), entry, *kind, *link);
    }
    // Bigger than the limit set below.
    archive(&[
        "--model-name",
        "big",
        "--model-file",
        path(&model_dir("slow").join("1/model.onnx")),
        "--export-path",
        path(&store),
    ]);
    let server = serve(
        Repo::with(&[]),
        Some(&store),
        &cache,
        &["--max-archive-bytes", "100K"],
    );
    let admin = management(&server);
    for (file, entry, _, _, why) in &cases {
        let (status, body) = call("POST", &format!("{admin}/models?url={file}"), None);
        assert_eq!(status, 400, "{file}: {body}");
        let e = body["error"].as_str().unwrap();
        assert!(e.contains(entry) && e.contains(why), "{file}: {e}");
    }
    let (status, body) = call("POST", &format!("{admin}/models?url=big.far"), None);
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("too large"),
        "{body}"
    );
    assert!(!tmp.path().join("escaped.txt").exists());
    assert!(!Path::new("/tmp/ferroserve-escaped.txt").exists());
    // Nothing was left in the cache: no half-unpacked folder.
    let left: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        call("GET", &format!("{admin}/models"), None).1["models"],
        json!([])
    );
}

#[test]
fn management_api_registers_scales_describes_and_unregisters() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    archive_simple(
        "adder",
        &store,
        &[
            "--config",
            path(&{
                let c = tmp.path().join("adder.yaml");
                std::fs::write(
                    &c,
                    "max_batch_size: 8\ndynamic_batching: {max_queue_delay_us: 100}\n",
                )
                .unwrap();
                c
            }),
        ],
    );
    let allowed = tmp.path().join("allowed");
    std::fs::create_dir_all(allowed.join("local/1")).unwrap();
    std::fs::copy(
        model_dir("simple").join("1/model.onnx"),
        allowed.join("local/1/model.onnx"),
    )
    .unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(outside.path().join("m/1")).unwrap();
    std::fs::copy(
        model_dir("simple").join("1/model.onnx"),
        outside.path().join("m/1/model.onnx"),
    )
    .unwrap();

    let repo = Repo::with(&[]);
    simple_versions(&repo, "multi", &[1, 2], None);
    let server = serve(
        repo,
        Some(&store),
        &tmp.path().join("cache"),
        &["--allowed-paths", path(&allowed)],
    );
    let admin = management(&server);

    // Nothing from the store is served until registered.
    assert_eq!(
        server
            .post_json("/v2/models/adder/infer", &simple_request())
            .0,
        404
    );
    let (status, body) = call(
        "POST",
        &format!("{admin}/models?url=adder.far&initial_workers=1"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(infer_simple(&server, "/v2/models/adder/infer").0, 200);
    let (status, body) = call("POST", &format!("{admin}/models?url=adder.far"), None);
    assert_eq!(status, 409, "{body}");
    let (status, body) = call(
        "POST",
        &format!("{admin}/models?url=adder.far&batch_size=4"),
        None,
    );
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("model.yaml"),
        "{body}"
    );

    // Paths: only under --allowed-paths; URLs: only allow-listed prefixes (none here).
    let local = allowed.join("local");
    let (status, body) = call(
        "POST",
        &format!("{admin}/models?url={}", path(&local)),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(infer_simple(&server, "/v2/models/local/infer").0, 200);
    let sneaky = format!(
        "{}/../{}",
        path(&allowed),
        path(&outside.path().join("m")).trim_start_matches('/')
    );
    for url in [path(&outside.path().join("m")).to_string(), sneaky] {
        let (status, body) = call(
            "POST",
            &format!("{admin}/models?url={url}&model_name=m"),
            None,
        );
        assert!(status == 403 || status == 404, "{url}: {status} {body}");
    }
    let (status, body) = call(
        "POST",
        &format!(
            "{admin}/models?url={}&model_name=m",
            path(&outside.path().join("m"))
        ),
        None,
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(
        "POST",
        &format!("{admin}/models?url=http://127.0.0.1:1/m.far"),
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("allow-listed"),
        "{body}"
    );

    // Scale up and down while a client keeps sending: no request fails.
    let stop = AtomicBool::new(false);
    let failures = thread::scope(|s| {
        let load = s.spawn(|| {
            let mut failures = Vec::new();
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) || sent < 20 {
                let (status, answer) = infer_simple(&server, "/v2/models/adder/infer");
                sent += 1;
                if status != 200 {
                    failures.push(format!("{status} {answer}"));
                }
            }
            failures
        });
        for (workers, expected) in [(3, 3), (1, 1), (2, 2)] {
            let (status, body) = call(
                "PUT",
                &format!("{admin}/models/adder?min_worker={workers}&synchronous=true"),
                None,
            );
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["replicas"], expected);
            let (_, d) = call("GET", &format!("{admin}/models/adder"), None);
            assert_eq!(d["versions"][0]["replicas"], expected, "{d}");
        }
        // Asynchronous by default, as TorchServe: 202, then it happens.
        let (status, _) = call("PUT", &format!("{admin}/models/adder?min_worker=1"), None);
        assert_eq!(status, 202);
        assert!(wait_for(Duration::from_secs(10), || {
            call("GET", &format!("{admin}/models/adder"), None).1["versions"][0]["replicas"] == 1
        }));
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap()
    });
    assert!(failures.is_empty(), "{failures:?}");
    let (status, _) = call(
        "PUT",
        &format!("{admin}/models/adder?min_worker=3&max_worker=2"),
        None,
    );
    assert_eq!(status, 400);
    let (status, body) = call(
        "PUT",
        &format!("{admin}/models/adder?min_worker=100000000000&synchronous=true"),
        None,
    );
    assert_eq!(status, 400, "{body}");

    // Describe: state, versions, replicas, devices, memory, batching, load time.
    let (status, d) = call("GET", &format!("{admin}/models/adder"), None);
    assert_eq!(status, 200);
    assert_eq!(d["state"], "READY");
    assert_eq!(d["load"], "eager");
    assert!(d["source"].as_str().unwrap().contains("adder.far"), "{d}");
    let v = &d["versions"][0];
    assert_eq!(v["version"], "1");
    assert_eq!(v["devices"], json!(["cpu"]));
    assert_eq!(v["max_batch_size"], 8);
    assert_eq!(v["dynamic_batching"]["max_queue_delay_us"], 100);
    let size = std::fs::metadata(model_dir("simple").join("1/model.onnx"))
        .unwrap()
        .len();
    assert_eq!(v["memory_bytes"], size);
    assert!(v["load_ms"].is_u64() && v["loaded_at"].is_string(), "{v}");
    assert_eq!(call("GET", &format!("{admin}/models/nope"), None).0, 404);

    // List, a page at a time.
    let (_, page) = call("GET", &format!("{admin}/models?limit=2"), None);
    assert_eq!(page["models"].as_array().unwrap().len(), 2);
    assert_eq!(page["models"][0]["modelName"], "adder");
    let token = page["nextPageToken"].as_str().unwrap().to_string();
    let (_, rest) = call(
        "GET",
        &format!("{admin}/models?limit=2&next_page_token={token}"),
        None,
    );
    assert_eq!(rest["models"][0]["modelName"], "multi");
    assert!(rest.get("nextPageToken").is_none(), "{rest}");

    // Default version: the highest, until set; then requests without a version go to it.
    assert_eq!(
        infer_simple(&server, "/v2/models/multi/infer"),
        (200, "2".into())
    );
    let (status, body) = call("PUT", &format!("{admin}/models/multi/1/set-default"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        infer_simple(&server, "/v2/models/multi/infer"),
        (200, "1".into())
    );
    assert_eq!(
        call("GET", &format!("{admin}/models/multi"), None).1["default_version"],
        "1"
    );
    assert_eq!(
        call("PUT", &format!("{admin}/models/multi/7/set-default"), None).0,
        404
    );

    // Unregister one version, then whole models.
    assert_eq!(
        call("DELETE", &format!("{admin}/models/multi/2"), None).0,
        200
    );
    assert_eq!(
        server
            .post_json("/v2/models/multi/versions/2/infer", &simple_request())
            .0,
        404
    );
    assert_eq!(
        infer_simple(&server, "/v2/models/multi/infer"),
        (200, "1".into())
    );
    let failures = thread::scope(|s| {
        let load = s.spawn(|| {
            let mut bad = Vec::new();
            for _ in 0..200 {
                let (status, answer) = infer_simple(&server, "/v2/models/adder/infer");
                if status == 404 {
                    break;
                }
                if status != 200 && status != 503 {
                    bad.push(format!("{status} {answer}"));
                }
            }
            bad
        });
        thread::sleep(Duration::from_millis(50));
        assert_eq!(
            call("DELETE", &format!("{admin}/models/adder"), None).0,
            200
        );
        load.join().unwrap()
    });
    assert!(failures.is_empty(), "{failures:?}");
    let (status, body) = server.post_json("/v2/models/adder/infer", &simple_request());
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("adder"), "{body}");
    assert_eq!(
        call("DELETE", &format!("{admin}/models/adder"), None).0,
        404
    );

    // Triton's repository extension reaches the same implementation on this port.
    let (status, _) = call(
        "POST",
        &format!("{admin}/v2/repository/models/multi/unload"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        server
            .post_json("/v2/models/multi/infer", &simple_request())
            .0,
        503,
        "unloaded"
    );
    let (status, _) = call(
        "POST",
        &format!("{admin}/v2/repository/models/multi/load"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(infer_simple(&server, "/v2/models/multi/infer").0, 200);
}

#[test]
fn management_api_security_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    // Not on a loopback address without a token: the server refuses to start.
    let out = Command::new(ferroserve_binary())
        .args([
            "serve",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--management-host",
            "0.0.0.0",
        ])
        .arg("--model-repository")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--management-token"), "{err}");

    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let repo = Repo::with(&["simple"]);
    let server = serve(
        repo,
        None,
        &tmp.path().join("cache"),
        &["--management-token-file", path(&token_file)],
    );
    let admin = management(&server);
    assert_eq!(call("GET", &format!("{admin}/models"), None).0, 401);
    assert_eq!(
        call("GET", &format!("{admin}/models"), Some("wrong")).0,
        401
    );
    assert_eq!(
        call("GET", &format!("{admin}/models"), Some("s3cret-toke")).0,
        401
    );
    let (status, body) = call("GET", &format!("{admin}/models"), Some("s3cret-token"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["models"][0]["modelName"], "simple");
    // With a token, the inference port's repository load and unload need it too.
    let (status, _) = call(
        "POST",
        &server.at("/v2/repository/models/simple/unload"),
        None,
    );
    assert_eq!(status, 401);
    assert_eq!(infer_simple(&server, "/v2/models/simple/infer").0, 200);
    let (status, _) = call(
        "POST",
        &server.at("/v2/repository/models/simple/unload"),
        Some("s3cret-token"),
    );
    assert_eq!(status, 200);
}

#[test]
fn versions_answer_at_their_routes_and_policy_picks_them() {
    let repo = Repo::with(&[]);
    simple_versions(&repo, "all", &[1, 2], None);
    simple_versions(
        &repo,
        "newest",
        &[1, 2],
        Some("version_policy: {latest: 1}\n"),
    );
    simple_versions(
        &repo,
        "picked",
        &[1, 2, 3],
        Some("version_policy: {specific: [1, 3]}\n"),
    );
    let server = Server::start(repo, &[]);
    assert_eq!(
        infer_simple(&server, "/v2/models/all/versions/1/infer"),
        (200, "1".into())
    );
    assert_eq!(
        infer_simple(&server, "/v2/models/all/versions/2/infer"),
        (200, "2".into())
    );
    assert_eq!(
        infer_simple(&server, "/v2/models/all/infer"),
        (200, "2".into())
    );
    assert_eq!(
        infer_simple(&server, "/v2/models/newest/infer"),
        (200, "2".into())
    );
    assert_eq!(
        infer_simple(&server, "/v2/models/newest/versions/1/infer").0,
        404
    );
    assert_eq!(
        infer_simple(&server, "/v2/models/picked/infer"),
        (200, "3".into())
    );
    assert_eq!(
        infer_simple(&server, "/v2/models/picked/versions/2/infer").0,
        404
    );
    let (_, meta) = server.get("/v2/models/picked");
    assert_eq!(meta["versions"], json!(["1", "3"]));
}

#[test]
fn hot_reload_adds_swaps_and_removes_without_failing_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::with(&[]);
    simple_versions(&repo, "steady", &[1], None);
    let repo_path = repo.path().to_path_buf();
    let server = serve(
        repo,
        None,
        &tmp.path().join("cache"),
        &["--poll-interval", "0.2"],
    );
    let stop = AtomicBool::new(false);
    let (steady, gone) = thread::scope(|s| {
        let steady = s.spawn(|| {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(infer_simple(&server, "/v2/models/steady/infer"));
            }
            answers
        });
        // Added: the new model serves.
        std::fs::create_dir_all(repo_path.join("fresh")).unwrap();
        std::os::unix::fs::symlink(model_dir("simple").join("1"), repo_path.join("fresh/1"))
            .unwrap();
        assert!(wait_for(Duration::from_secs(20), || {
            infer_simple(&server, "/v2/models/fresh/infer").0 == 200
        }));
        // Changed (a new version): swapped while `steady` keeps answering.
        std::os::unix::fs::symlink(model_dir("simple").join("1"), repo_path.join("steady/2"))
            .unwrap();
        assert!(wait_for(Duration::from_secs(20), || {
            infer_simple(&server, "/v2/models/steady/infer").1 == "2"
        }));
        // Removed: requests to it get 404 (or 503 while it goes), never anything else.
        let gone = s.spawn(|| {
            let mut answers = Vec::new();
            loop {
                let a = infer_simple(&server, "/v2/models/fresh/infer");
                let done = a.0 == 404;
                answers.push(a);
                if done {
                    break answers;
                }
            }
        });
        thread::sleep(Duration::from_millis(100));
        std::fs::remove_file(repo_path.join("fresh/1")).unwrap();
        std::fs::remove_dir(repo_path.join("fresh")).unwrap();
        let gone = gone.join().unwrap();
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (steady.join().unwrap(), gone)
    });
    assert!(steady.len() > 20, "only {} requests ran", steady.len());
    for (status, answer) in &steady {
        assert_eq!(*status, 200, "{answer}");
        assert!(answer == "1" || answer == "2", "{answer}");
    }
    // Each answer came from exactly one version, and after the swap only from the new one.
    let first_new = steady.iter().position(|a| a.1 == "2").unwrap();
    assert!(
        steady[first_new..].iter().all(|a| a.1 == "2"),
        "an old answer after the swap"
    );
    for (status, answer) in &gone {
        assert!(matches!(status, 200 | 404 | 503), "{status} {answer}");
    }
    let log = server.log.lock().unwrap();
    assert!(
        log.contains("model changed; swapping it") && log.contains("model removed from its source"),
        "{log}"
    );
}

#[test]
fn memory_budget_evicts_the_least_recently_used_idle_lazy_model() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::with(&[]);
    for name in ["a", "b", "c"] {
        repo.write(&format!("{name}/model.yaml"), b"load: lazy\nthreads: 1\n");
        repo.link(&format!("{name}/1"), &model_dir("slow").join("1"));
    }
    let size = std::fs::metadata(model_dir("slow").join("1/model.onnx"))
        .unwrap()
        .len();
    // Room for two of the three.
    let budget = format!("cpu={},cuda:0=1G", size * 5 / 2);
    let server = serve(
        repo,
        None,
        &tmp.path().join("cache"),
        &["--memory-budget", &budget],
    );
    let admin = management(&server);
    let run = |m: &str, iters: i64| {
        let (status, body) = server.post_json(
            &format!("/v2/models/{m}/infer"),
            &json!({"inputs": [{"name": "ITERS", "shape": [1, 1], "datatype": "INT64", "data": [iters]}]}),
        );
        assert_eq!(status, 200, "{m}: {body}");
    };
    let state = |m: &str| call("GET", &format!("{admin}/models/{m}"), None).1["state"].clone();
    let count = |metric: &str, m: &str| server.metric(metric, &[("model", m)]).unwrap_or(0.0);
    for m in ["a", "b", "c"] {
        assert_eq!(state(m), "NOT_LOADED");
    }
    run("a", 1);
    run("b", 1);
    assert_eq!((state("a"), state("b")), (json!("READY"), json!("READY")));
    // c needs room: a is the least recently used.
    run("c", 1);
    assert_eq!(state("a"), "NOT_LOADED");
    assert_eq!(count("ferroserve_model_evictions_total", "a"), 1.0);
    // b is used, so c is now the least recently used when a comes back.
    run("b", 1);
    run("a", 1);
    assert_eq!(
        (state("a"), state("b"), state("c")),
        (json!("READY"), json!("READY"), json!("NOT_LOADED"))
    );
    assert_eq!(count("ferroserve_model_loads_total", "a"), 2.0);
    assert_eq!(count("ferroserve_model_loads_total", "b"), 1.0);
    let used = server
        .metric("ferroserve_memory_used_bytes", &[("device", "cpu")])
        .unwrap();
    assert_eq!(
        server.metric("ferroserve_memory_budget_bytes", &[("device", "cpu")]),
        Some((size * 5 / 2) as f64)
    );
    assert_eq!(used, (2 * size) as f64);

    // A model with a request in flight is never evicted: a is busy and least recently used,
    // so loading c evicts b instead.
    run("b", 1);
    thread::scope(|s| {
        let busy = s.spawn(|| run("a", 3000));
        while server.metric("ferroserve_inflight_requests", &[("model", "a")]) != Some(1.0) {
            thread::sleep(Duration::from_millis(5));
        }
        run("c", 1);
        assert_eq!(state("b"), "NOT_LOADED");
        assert_eq!(state("a"), "READY");
        busy.join().unwrap();
    });
    assert_eq!(count("ferroserve_model_evictions_total", "a"), 1.0);
    let (_, d) = call("GET", &format!("{admin}/models/a"), None);
    assert_eq!(d["load"], "lazy");
    assert_eq!(d["memory_bytes"], size);
}

#[test]
fn polling_the_store_serves_new_versions_and_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let staging = tmp.path().join("staging");
    for (name, version, dir) in [("adder", "1", &store), ("adder", "2", &staging)] {
        archive_simple(name, dir, &["--version", version]);
    }
    let server = serve(
        Repo::with(&[]),
        Some(&store),
        &tmp.path().join("cache"),
        &["--models", "all", "--poll-interval", "0.2"],
    );
    assert_eq!(
        infer_simple(&server, "/v2/models/adder/infer"),
        (200, "1".into())
    );
    // A second version of the model arrives as its own archive: both versions serve.
    std::fs::rename(staging.join("adder.far"), store.join("adder-v2.far")).unwrap();
    assert!(wait_for(Duration::from_secs(20), || {
        infer_simple(&server, "/v2/models/adder/infer").1 == "2"
    }));
    assert_eq!(
        infer_simple(&server, "/v2/models/adder/versions/1/infer"),
        (200, "1".into())
    );
    // A new model's archive: served under its manifest's name.
    archive_simple("other", &store, &[]);
    assert!(wait_for(Duration::from_secs(20), || {
        infer_simple(&server, "/v2/models/other/infer").0 == 200
    }));
    // Its archive removed: the model goes.
    std::fs::remove_file(store.join("other.far")).unwrap();
    assert!(wait_for(Duration::from_secs(20), || {
        infer_simple(&server, "/v2/models/other/infer").0 == 404
    }));
    assert_eq!(
        infer_simple(&server, "/v2/models/adder/infer"),
        (200, "2".into())
    );
}

/// A one-file HTTP server on 127.0.0.1: `GET /models/adder.far` answers `body`, anything else
/// 404. Returns its base URL.
fn file_server(body: Vec<u8>) -> String {
    file_server_at("/models/adder.far", body)
}

/// [`file_server`] answering `GET {path}`.
fn file_server_at(path: &'static str, body: Vec<u8>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let found = request_line.starts_with(&format!("GET {path} "));
            let (status, payload) = if found {
                ("200 OK", body.clone())
            } else {
                ("404 Not Found", b"no".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                payload.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&payload);
        }
    });
    url
}

#[test]
fn registering_from_an_allow_listed_url_downloads_and_verifies_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    archive_simple("adder", &out, &[]);
    let base = file_server(std::fs::read(out.join("adder.far")).unwrap());
    let allowed = format!("{base}/models/");
    let server = serve(
        Repo::with(&[]),
        None,
        &tmp.path().join("cache"),
        &["--allowed-urls", &allowed],
    );
    let admin = management(&server);
    // Under the prefix but not there: the download's failure, named.
    let (status, body) = call(
        "POST",
        &format!("{admin}/models?url={base}/models/missing.far"),
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("404"), "{body}");
    // Outside the prefix: refused before any request is made.
    let (status, _) = call(
        "POST",
        &format!("{admin}/models?url={base}/elsewhere/adder.far"),
        None,
    );
    assert_eq!(status, 403);
    let (status, body) = call(
        "POST",
        &format!("{admin}/models?url={base}/models/adder.far&model_name=remote"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        infer_simple(&server, "/v2/models/remote/infer"),
        (200, "1".into())
    );
}

#[test]
fn an_archive_with_python_code_is_never_registered_from_a_url() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let code = tmp.path().join("model.py");
    std::fs::write(&code, "import os\nos.system('echo pwned')\n").unwrap();
    archive_simple("adder", &out, &["--extra-files", path(&code)]);
    let base = file_server(std::fs::read(out.join("adder.far")).unwrap());
    let server = serve(
        Repo::with(&[]),
        None,
        &tmp.path().join("cache"),
        &["--allowed-urls", &format!("{base}/models/")],
    );
    let admin = management(&server);
    let (status, body) = call(
        "POST",
        &format!("{admin}/models?url={base}/models/adder.far"),
        None,
    );
    assert_eq!(status, 403, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("holds Python code (1/model.py)"),
        "{message}"
    );
}

#[test]
fn a_torchserve_archive_asking_for_code_is_never_registered_from_a_url() {
    use std::io::Write;
    // No .py file: a handler named as a module, which Python would import from the compiled
    // file beside it.
    let mut mar = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (name, data) in [
        (
            "MAR-INF/MANIFEST.json",
            &br#"{"model": {"modelName": "evil", "handler": "evil", "modelVersion": "1.0"}}"#[..],
        ),
        ("evil.cpython-311.pyc", b"\x00compiled"),
    ] {
        mar.start_file(name, options).unwrap();
        mar.write_all(data).unwrap();
    }
    let bytes = mar.finish().unwrap().into_inner();
    let tmp = tempfile::tempdir().unwrap();
    let base = file_server_at("/models/evil.mar", bytes);
    let server = serve(
        Repo::with(&[]),
        None,
        &tmp.path().join("cache"),
        &["--allowed-urls", &format!("{base}/models/")],
    );
    let admin = management(&server);
    let (status, body) = call(
        "POST",
        &format!("{admin}/models?url={base}/models/evil.mar"),
        None,
    );
    assert_eq!(status, 403, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("evil.cpython-311.pyc"), "{message}");
}

/// Folders directly in the cache (unpacked archives and work in progress), by name.
fn cache_folders(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "models" && n != "downloads")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_cache_holds_only_what_served_models_need() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&allowed).unwrap();
    // 64 MiB of zeros pack into a few kilobytes: an archive that expands thousands of times.
    let zeros = tmp.path().join("zeros.bin");
    std::fs::write(&zeros, vec![0u8; 64 << 20]).unwrap();
    archive_simple("bomb", &allowed, &["--extra-files", path(&zeros)]);
    let bomb = allowed.join("bomb.far");
    assert!(std::fs::metadata(&bomb).unwrap().len() < 100_000);
    archive_simple("adder", &allowed, &[]);
    let server = serve(
        Repo::with(&[]),
        None,
        &cache,
        &["--allowed-paths", path(&allowed)],
    );
    let admin = management(&server);
    let (status, body) = call("POST", &format!("{admin}/models?url={}", path(&bomb)), None);
    assert_eq!(status, 413, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("times its own size"), "{message}");
    assert!(
        !message.contains(path(&cache)) && !message.contains(".unpack-"),
        "server paths in {message}"
    );
    assert!(
        cache_folders(&cache).is_empty(),
        "{:?}",
        cache_folders(&cache)
    );

    // Registered, an archive has its folder; unregistered, the folder goes.
    let adder = allowed.join("adder.far");
    let (status, body) = call(
        "POST",
        &format!("{admin}/models?url={}", path(&adder)),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(cache_folders(&cache).len(), 1);
    assert_eq!(infer_simple(&server, "/v2/models/adder/infer").0, 200);
    let (status, body) = call("DELETE", &format!("{admin}/models/adder"), None);
    assert_eq!(status, 200, "{body}");
    assert!(
        cache_folders(&cache).is_empty(),
        "{:?}",
        cache_folders(&cache)
    );

    // A model that does not load leaves nothing behind either.
    let broken = tmp.path().join("broken.onnx");
    std::fs::write(&broken, b"not an onnx graph").unwrap();
    archive(&[
        "--model-name",
        "broken",
        "--model-file",
        path(&broken),
        "--export-path",
        path(&allowed),
    ]);
    let (status, body) = call(
        "POST",
        &format!("{admin}/models?url={}", path(&allowed.join("broken.far"))),
        None,
    );
    assert!(status >= 400, "{body}");
    assert!(
        cache_folders(&cache).is_empty(),
        "{:?}",
        cache_folders(&cache)
    );
}

#[test]
fn a_download_declaring_more_than_the_limit_is_refused_before_reading_it() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            // Declares a petabyte, sends a few bytes, and keeps the connection open.
            let _ =
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000\r\n\r\nabc");
            thread::sleep(Duration::from_secs(30));
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let server = serve(
        Repo::with(&[]),
        None,
        &cache,
        &["--allowed-urls", &format!("{base}/models/")],
    );
    let started = std::time::Instant::now();
    let (status, body) = call(
        "POST",
        &format!("{}/models?url={base}/models/huge.far", management(&server)),
        None,
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("declares 1000000000000000 bytes"),
        "{body}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("downloads"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
