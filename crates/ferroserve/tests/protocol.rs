//! The Open Inference Protocol over HTTP, end to end: metadata, every datatype in JSON and
//! binary form, output selection, bad input, and the repository index.

mod common;

use common::{binary_body, Repo, Server};
use serde_json::{json, Value};

fn simple_request(a: &[i32], b: &[i32]) -> Value {
    json!({
        "id": "req-1",
        "parameters": {"anything": 1},
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b},
        ]
    })
}

fn seq() -> Vec<i32> {
    (0..16).collect()
}

#[test]
fn health_and_metadata() {
    let server = Server::start(Repo::with(&["simple", "identity"]), &[]);
    assert_eq!(server.get("/v2/health/live"), (200, json!({"live": true})));
    assert_eq!(
        server.get("/v2/health/ready"),
        (200, json!({"ready": true}))
    );

    let (status, meta) = server.get("/v2");
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "ferroserve");
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"));
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));

    let expected = json!({
        "name": "simple",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
        ],
        "outputs": [
            {"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
            {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]},
        ],
    });
    assert_eq!(server.get("/v2/models/simple"), (200, expected.clone()));
    assert_eq!(server.get("/v2/models/simple/versions/1"), (200, expected));
    assert_eq!(
        server.get("/v2/models/simple/ready"),
        (200, json!({"name": "simple", "ready": true}))
    );
    assert_eq!(server.get("/v2/models/simple/versions/1/ready").0, 200);

    for path in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/simple/versions/2",
        "/v2/models/simple/versions/x/ready",
    ] {
        let (status, body) = server.get(path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("unknown"),
            "{path}: {body}"
        );
    }
    let (status, body) = server.get("/v2/no/such/route");
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
}

#[test]
fn simple_infer_json_versions_and_output_selection() {
    let server = Server::start(Repo::with(&["simple"]), &[]);
    let a = seq();
    let b = vec![1; 16];
    let sum: Vec<i32> = a.iter().map(|x| x + 1).collect();
    let diff: Vec<i32> = a.iter().map(|x| x - 1).collect();

    for path in [
        "/v2/models/simple/infer",
        "/v2/models/simple/versions/1/infer",
    ] {
        let (status, body) = server.post_json(path, &simple_request(&a, &b));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_name"], "simple");
        assert_eq!(body["model_version"], "1");
        assert_eq!(body["id"], "req-1");
        assert_eq!(
            body["outputs"][0],
            json!({"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16], "data": sum})
        );
        assert_eq!(
            body["outputs"][1],
            json!({"name": "OUTPUT1", "datatype": "INT32", "shape": [1, 16], "data": diff})
        );
    }

    // Nested data decodes like flat data.
    let mut req = simple_request(&a, &b);
    req["inputs"][0]["data"] = json!([a]);
    req["inputs"][1]["shape"] = json!([1, 16]);
    let (status, body) = server.post_json("/v2/models/simple/infer", &req);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!(sum));

    // Only the requested outputs come back, in the requested order.
    let mut req = simple_request(&a, &b);
    req["outputs"] = json!([{"name": "OUTPUT1"}]);
    let (_, body) = server.post_json("/v2/models/simple/infer", &req);
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(body["outputs"][0]["name"], "OUTPUT1");
    req["outputs"] =
        json!([{"name": "OUTPUT1"}, {"name": "OUTPUT0", "parameters": {"binary_data": true}}]);
    let (body, len) = binary_body(&req, &[]);
    let (status, json, bin) = server.post_binary("/v2/models/simple/infer", body, Some(len));
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["outputs"][0]["data"], json!(diff));
    assert_eq!(json["outputs"][1]["parameters"]["binary_data_size"], 64);
    assert!(json["outputs"][1].get("data").is_none());
    let got: Vec<i32> = bin
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, sum);

    // A batch of 3 rows.
    let (status, body) = server.post_json(
        "/v2/models/simple/infer",
        &json!({"inputs": [
            {"name": "INPUT0", "shape": [3, 16], "datatype": "INT32", "data": vec![2; 48]},
            {"name": "INPUT1", "shape": [3, 16], "datatype": "INT32", "data": vec![3; 48]},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([3, 16]));
    assert_eq!(body["outputs"][1]["data"], json!(vec![-1; 48]));
}

/// Two values of each type, including its extremes, as JSON and as little-endian bytes.
fn every_type() -> Vec<(&'static str, Value, Vec<u8>)> {
    let le = |v: Vec<Vec<u8>>| v.concat();
    vec![
        ("BOOL", json!([true, false]), vec![1, 0]),
        ("UINT8", json!([0, 255]), vec![0, 255]),
        (
            "UINT16",
            json!([1, 65535]),
            le(vec![
                1u16.to_le_bytes().to_vec(),
                65535u16.to_le_bytes().to_vec(),
            ]),
        ),
        (
            "UINT32",
            json!([1, 4294967295u32]),
            le(vec![
                1u32.to_le_bytes().to_vec(),
                u32::MAX.to_le_bytes().to_vec(),
            ]),
        ),
        (
            "UINT64",
            json!([1, u64::MAX]),
            le(vec![
                1u64.to_le_bytes().to_vec(),
                u64::MAX.to_le_bytes().to_vec(),
            ]),
        ),
        ("INT8", json!([-128, 127]), vec![0x80, 0x7f]),
        (
            "INT16",
            json!([i16::MIN, i16::MAX]),
            le(vec![
                i16::MIN.to_le_bytes().to_vec(),
                i16::MAX.to_le_bytes().to_vec(),
            ]),
        ),
        (
            "INT32",
            json!([i32::MIN, i32::MAX]),
            le(vec![
                i32::MIN.to_le_bytes().to_vec(),
                i32::MAX.to_le_bytes().to_vec(),
            ]),
        ),
        (
            "INT64",
            json!([i64::MIN, i64::MAX]),
            le(vec![
                i64::MIN.to_le_bytes().to_vec(),
                i64::MAX.to_le_bytes().to_vec(),
            ]),
        ),
        (
            "FP16",
            json!([1.5, -65504.0]),
            le(vec![
                half::f16::from_f32(1.5).to_le_bytes().to_vec(),
                half::f16::MIN.to_le_bytes().to_vec(),
            ]),
        ),
        (
            "BF16",
            json!([1.5, -2.0]),
            le(vec![
                half::bf16::from_f32(1.5).to_le_bytes().to_vec(),
                half::bf16::from_f32(-2.0).to_le_bytes().to_vec(),
            ]),
        ),
        (
            "FP32",
            json!([0.1f32, -3.25]),
            le(vec![
                0.1f32.to_le_bytes().to_vec(),
                (-3.25f32).to_le_bytes().to_vec(),
            ]),
        ),
        (
            "FP64",
            json!([0.1, -1e300]),
            le(vec![
                0.1f64.to_le_bytes().to_vec(),
                (-1e300f64).to_le_bytes().to_vec(),
            ]),
        ),
        (
            "BYTES",
            json!(["héllo wörld", ""]),
            le(vec![
                ("héllo wörld".len() as u32).to_le_bytes().to_vec(),
                "héllo wörld".as_bytes().to_vec(),
                0u32.to_le_bytes().to_vec(),
            ]),
        ),
    ]
}

#[test]
fn every_datatype_round_trips_in_json_and_binary() {
    let server = Server::start(Repo::with(&["dtypes"]), &[]);
    let types = every_type();

    // All JSON.
    let inputs: Vec<Value> = types
        .iter()
        .map(|(t, data, _)| json!({"name": format!("IN_{t}"), "shape": [2], "datatype": t, "data": data}))
        .collect();
    let (status, body) = server.post_json("/v2/models/dtypes/infer", &json!({"inputs": inputs}));
    assert_eq!(status, 200, "{body}");
    for (i, (t, data, _)) in types.iter().enumerate() {
        let out = &body["outputs"][i];
        assert_eq!(out["name"], format!("OUT_{t}"));
        assert_eq!(out["datatype"], *t);
        assert_eq!(out["shape"], json!([2]));
        if *t == "FP32" {
            // 0.1 is not exact in f32; compare after the same rounding.
            assert_eq!(out["data"][0].as_f64().unwrap() as f32, 0.1f32);
            assert_eq!(out["data"][1], json!(-3.25));
        } else {
            assert_eq!(out["data"], *data, "{t}");
        }
    }

    // All binary, in and out: bytes come back exactly (FP16 and BF16 included).
    let inputs: Vec<Value> = types
        .iter()
        .map(|(t, _, bytes)| json!({"name": format!("IN_{t}"), "shape": [2], "datatype": t, "parameters": {"binary_data_size": bytes.len()}}))
        .collect();
    let blobs: Vec<&[u8]> = types.iter().map(|(_, _, b)| b.as_slice()).collect();
    let (body, len) = binary_body(
        &json!({"inputs": inputs, "parameters": {"binary_data_output": true}}),
        &blobs,
    );
    let (status, json, bin) = server.post_binary("/v2/models/dtypes/infer", body, Some(len));
    assert_eq!(status, 200, "{json}");
    let mut offset = 0;
    for (i, (t, _, bytes)) in types.iter().enumerate() {
        let size = json["outputs"][i]["parameters"]["binary_data_size"]
            .as_u64()
            .unwrap() as usize;
        assert_eq!(&bin[offset..offset + size], bytes.as_slice(), "{t}");
        offset += size;
    }
    assert_eq!(offset, bin.len());
}

#[test]
fn bytes_tensors_through_string_identity() {
    let server = Server::start(Repo::with(&["string_identity"]), &[]);
    let words = json!([["ferroserve"], ["ünïcode ✓"], [""]]);
    let (status, body) = server.post_json(
        "/v2/models/string_identity/infer",
        &json!({"inputs": [{"name": "TEXT", "shape": [3, 1], "datatype": "BYTES", "data": words}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["outputs"][0]["data"],
        json!(["ferroserve", "ünïcode ✓", ""])
    );

    // Binary BYTES: length-prefixed elements.
    let mut blob = Vec::new();
    for w in ["a", "bc"] {
        blob.extend_from_slice(&(w.len() as u32).to_le_bytes());
        blob.extend_from_slice(w.as_bytes());
    }
    let header = json!({
        "inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "parameters": {"binary_data_size": blob.len()}}],
        "outputs": [{"name": "TEXT_OUT", "parameters": {"binary_data": true}}],
    });
    let (body, len) = binary_body(&header, &[&blob]);
    let (status, json, bin) =
        server.post_binary("/v2/models/string_identity/infer", body, Some(len));
    assert_eq!(status, 200, "{json}");
    assert_eq!(bin, blob);
}

#[test]
fn bad_input_gets_a_4xx_that_names_the_problem() {
    let server = Server::start(
        Repo::with(&["simple", "string_identity", "identity"]),
        &["--max-request-bytes", "100000"],
    );
    let good = simple_request(&seq(), &seq());
    let with = |f: &dyn Fn(&mut Value)| {
        let mut r = good.clone();
        f(&mut r);
        serde_json::to_vec(&r).unwrap()
    };
    let infer = "/v2/models/simple/infer";
    let mut bad_bytes_blob = 100u32.to_le_bytes().to_vec();
    bad_bytes_blob.extend_from_slice(b"short");
    let (bad_bytes_body, bad_bytes_len) = binary_body(
        &json!({"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}),
        &[&bad_bytes_blob],
    );
    let (short_body, short_len) = binary_body(
        &json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}}]}),
        &[&[0u8; 10]],
    );
    let (huge_bin_body, huge_bin_len) = binary_body(
        &json!({"inputs": [{"name": "INPUT0", "shape": [1000000000000u64, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]}),
        &[&[0u8; 64]],
    );

    type Case<'a> = (&'a str, &'a str, Vec<u8>, Option<usize>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed JSON", infer, b"{\"inputs\": [".to_vec(), None, 400, "malformed inference request JSON"),
        ("not an object", infer, b"[1,2]".to_vec(), None, 400, "malformed inference request JSON"),
        ("unknown model", "/v2/models/nope/infer", with(&|_| {}), None, 404, "unknown model 'nope'"),
        ("unknown version", "/v2/models/simple/versions/9/infer", with(&|_| {}), None, 404, "unknown version '9'"),
        ("unknown input", infer, with(&|r| r["inputs"][1]["name"] = json!("INPUT9")), None, 400, "has no input 'INPUT9'"),
        ("missing input", infer, with(&|r| { r["inputs"].as_array_mut().unwrap().pop(); }), None, 400, "missing input 'INPUT1'"),
        ("duplicate input", infer, with(&|r| r["inputs"][1]["name"] = json!("INPUT0")), None, 400, "given twice"),
        ("wrong dtype", infer, with(&|r| r["inputs"][0]["datatype"] = json!("FP32")), None, 400, "has datatype FP32 but model 'simple' expects INT32"),
        ("unknown dtype", infer, with(&|r| r["inputs"][0]["datatype"] = json!("FLOAT32")), None, 400, "unknown datatype 'FLOAT32'"),
        ("wrong rank", infer, with(&|r| r["inputs"][0]["shape"] = json!([16])), None, 400, "has rank 1"),
        ("wrong dim", infer, with(&|r| { r["inputs"][0]["shape"] = json!([2, 8]); }), None, 400, "dimension 1 is 8 but the model expects 16"),
        ("count mismatch", infer, with(&|r| { r["inputs"][0]["data"].as_array_mut().unwrap().pop(); }), None, 400, "needs 16 elements but data holds 15"),
        ("too many elements", infer, with(&|r| { r["inputs"][0]["data"].as_array_mut().unwrap().push(json!(1)); }), None, 400, "more elements than the shape's 16"),
        ("wrong element type", infer, with(&|r| r["inputs"][0]["data"][3] = json!("x")), None, 400, "element 3 is a string"),
        ("out of range", infer, with(&|r| r["inputs"][0]["data"][0] = json!(3_000_000_000u64)), None, 400, "out of range for INT32"),
        ("negative dim", infer, with(&|r| r["inputs"][0]["shape"] = json!([-1, 16])), None, 400, "negative dimension"),
        ("no data", infer, with(&|r| { r["inputs"][0].as_object_mut().unwrap().remove("data"); }), None, 400, "has no \"data\""),
        ("unknown output", infer, with(&|r| r["outputs"] = json!([{"name": "OUT"}])), None, 400, "has no output 'OUT'"),
        ("bad binary_data flag", infer, with(&|r| r["outputs"] = json!([{"name": "OUTPUT0", "parameters": {"binary_data": "yes"}}])), None, 400, "must be true or false"),
        ("BYTES element malformed (binary)", "/v2/models/string_identity/infer", bad_bytes_body, Some(bad_bytes_len), 400, "malformed BYTES"),
        ("BYTES element malformed (JSON)", "/v2/models/string_identity/infer", serde_json::to_vec(&json!({"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [5]}]})).unwrap(), None, 400, "not a valid BYTES value"),
        ("binary header longer than body", infer, b"{}".to_vec(), Some(1000), 400, "Inference-Header-Content-Length is 1000 but the body has only 2 bytes"),
        ("binary header not a number", infer, b"{}".to_vec(), None, 400, "Inference-Header-Content-Length must be a non-negative integer"),
        ("binary data shorter than declared", infer, short_body, Some(short_len), 400, "binary_data_size is 64 but only 10 bytes"),
        ("huge declared shape (JSON)", "/v2/models/identity/infer", serde_json::to_vec(&json!({"inputs": [{"name": "INPUT0", "shape": [1000000000000u64, 16], "datatype": "FP32", "data": [1.0]}]})).unwrap(), None, 400, "needs 16000000000000 elements but data holds 1"),
        ("overflowing shape", "/v2/models/identity/infer", serde_json::to_vec(&json!({"inputs": [{"name": "INPUT0", "shape": [4294967296u64, 4294967296u64, 16], "datatype": "FP32", "data": [1.0]}]})).unwrap(), None, 400, "more elements than can be addressed"),
        ("huge declared shape (binary)", "/v2/models/identity/infer", huge_bin_body, Some(huge_bin_len), 400, "needs 64000000000000 bytes, got 64"),
        ("body over the limit", infer, vec![b' '; 200_000], None, 413, "larger than the server's limit of 100000 bytes"),
    ];
    for (what, path, body, header_len, status, needle) in cases {
        let mut req = common::client().post(server.at(path)).body(body);
        if let Some(n) = header_len {
            req = req.header("Inference-Header-Content-Length", n.to_string());
        } else if what == "binary header not a number" {
            req = req.header("Inference-Header-Content-Length", "ten");
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{what}");
        let body: Value = resp.json().unwrap();
        let msg = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error field in {body}"));
        assert!(
            msg.contains(needle),
            "{what}: '{msg}' should contain '{needle}'"
        );
    }

    // The server is unharmed.
    server.assert_healthy();
    let (status, _) = server.post_json(infer, &good);
    assert_eq!(status, 200);
}

#[test]
fn broken_models_are_reported_and_the_rest_serve() {
    let repo = Repo::with(&["simple"]);
    repo.write("garbage/1/model.onnx", b"this is not an onnx file");
    repo.write("typo/model.yaml", b"backend: onnx\nthread: 2\n");
    repo.link("typo/1", &common::model_dir("simple").join("1"));
    repo.write("empty/README", b"no model here");
    let server = Server::start(repo, &[]);

    let (status, index) = server.post_json("/v2/repository/index", &json!({}));
    assert_eq!(status, 200);
    let rows = index.as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {index}"))
    };
    assert_eq!(row("simple")["state"], "READY");
    assert_eq!(row("simple")["version"], "1");
    assert_eq!(row("garbage")["state"], "UNAVAILABLE");
    assert!(
        row("garbage")["reason"]
            .as_str()
            .unwrap()
            .contains("could not load"),
        "{index}"
    );
    let typo = row("typo")["reason"].as_str().unwrap();
    assert!(typo.contains("model.yaml"), "{typo}");
    assert!(typo.contains("unknown key 'thread'"), "{typo}");
    assert!(typo.contains("did you mean 'threads'?"), "{typo}");
    assert_eq!(row("empty")["state"], "UNAVAILABLE");
    assert!(
        row("empty")["reason"]
            .as_str()
            .unwrap()
            .contains("no model.onnx"),
        "{index}"
    );

    // The ready filter and an empty body.
    let (_, ready) = server.post_json("/v2/repository/index", &json!({"ready": true}));
    assert_eq!(
        ready,
        json!([{"name": "simple", "version": "1", "state": "READY"}])
    );
    let (status, all) = server.post_raw("/v2/repository/index", Vec::new(), None);
    assert_eq!(status, 200);
    assert_eq!(all.as_array().unwrap().len(), 4);

    // Broken models answer 503 with their reason; the good one serves.
    let (status, body) = server.get("/v2/models/garbage/ready");
    assert_eq!((status, &body["ready"]), (503, &json!(false)));
    let (status, body) = server.get("/v2/models/typo");
    assert_eq!(status, 503);
    assert!(body["error"].as_str().unwrap().contains("thread"), "{body}");
    let (status, body) =
        server.post_json("/v2/models/garbage/infer", &simple_request(&seq(), &seq()));
    assert_eq!(status, 503, "{body}");
    let (status, _) = server.post_json("/v2/models/simple/infer", &simple_request(&seq(), &seq()));
    assert_eq!(status, 200);
    server.assert_healthy();
}

#[test]
fn several_versions_side_by_side() {
    let repo = Repo::with(&[]);
    repo.write("m/.keep", b"");
    repo.link("m/1", &common::model_dir("simple").join("1"));
    repo.link("m/3", &common::model_dir("identity").join("1"));
    let server = Server::start(repo, &[]);
    // The default is the highest version.
    let (_, meta) = server.get("/v2/models/m");
    assert_eq!(meta["versions"], json!(["1", "3"]));
    assert_eq!(meta["inputs"][0]["datatype"], "FP32");
    let (_, meta) = server.get("/v2/models/m/versions/1");
    assert_eq!(meta["inputs"][0]["datatype"], "INT32");
    let (status, body) = server.post_json(
        "/v2/models/m/versions/1/infer",
        &simple_request(&seq(), &seq()),
    );
    assert_eq!(
        (status, &body["model_version"]),
        (200, &json!("1")),
        "{body}"
    );
    let (status, body) = server.post_json(
        "/v2/models/m/infer",
        &json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": vec![0.5; 16]}]}),
    );
    assert_eq!(
        (status, &body["model_version"]),
        (200, &json!("3")),
        "{body}"
    );
}

#[test]
fn compressed_requests_are_decompressed_within_the_limit() {
    use std::io::Write;
    let server = Server::start(Repo::with(&["simple"]), &["--max-request-bytes", "100000"]);
    let gzip = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let body = gzip(&serde_json::to_vec(&simple_request(&seq(), &seq())).unwrap());
    let resp = common::client()
        .post(server.at("/v2/models/simple/infer"))
        .header("Content-Encoding", "gzip")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let json: Value = resp.json().unwrap();
    assert_eq!(json["outputs"][0]["data"][15], 30);

    // A small compressed body that inflates past the limit is refused, not inflated.
    let bomb = gzip(&vec![b' '; 10_000_000]);
    assert!(bomb.len() < 100_000);
    let resp = common::client()
        .post(server.at("/v2/models/simple/infer"))
        .header("Content-Encoding", "gzip")
        .body(bomb)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 413);
    server.assert_healthy();
}

#[test]
fn backend_failure_is_a_500_and_the_model_keeps_serving() {
    let server = Server::start(Repo::with(&["reshape3"]), &[]);
    let req = |n: usize| json!({"inputs": [{"name": "X", "shape": [n], "datatype": "FP32", "data": vec![1.5; n]}]});
    let (status, body) = server.post_json("/v2/models/reshape3/infer", &req(4));
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("ONNX Runtime failed"),
        "{body}"
    );
    let (status, body) = server.post_json("/v2/models/reshape3/infer", &req(3));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([1.5, 1.5, 1.5]));
}

#[test]
fn repository_load_and_unload_by_name() {
    let repo = Repo::with(&["simple"]);
    // A real folder (not a link) whose model.yaml the test can change between loads.
    repo.write("ident/model.yaml", b"replicas: 1\n");
    repo.link("ident/1", &common::model_dir("identity").join("1"));
    let server = Server::start(repo, &[]);
    let post = |path: &str| server.post_raw(path, Vec::new(), None);
    let ident_req = json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0; 16]}]});

    assert_eq!(post("/v2/repository/models/ident/unload").0, 200);
    let (_, index) = server.post_json("/v2/repository/index", &json!({}));
    let row = index
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "ident")
        .unwrap()
        .clone();
    assert_eq!(
        (row["state"].as_str(), row["reason"].as_str()),
        (Some("UNAVAILABLE"), Some("unloaded"))
    );
    assert_eq!(
        server.post_json("/v2/models/ident/infer", &ident_req).0,
        503
    );

    // Reload picks up the folder as it is now.
    std::fs::write(
        server_repo_file(&server, "ident/model.yaml"),
        b"replicas: 2\n",
    )
    .unwrap();
    assert_eq!(post("/v2/repository/models/ident/load").0, 200);
    assert_eq!(
        server.post_json("/v2/models/ident/infer", &ident_req).0,
        200
    );
    let (_, config) = server.get("/v2/models/ident/config");
    assert_eq!(config["instance_group"][0]["count"], 2);

    for (path, status, needle) in [
        ("/v2/repository/models/nope/load", 404, "no model 'nope'"),
        (
            "/v2/repository/models/nope/unload",
            404,
            "unknown model 'nope'",
        ),
        (
            "/v2/repository/models/..%2Fetc/load",
            400,
            "not a model name",
        ),
    ] {
        let (s, body) = post(path);
        assert_eq!(s, status, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    let (s, body) = server.post_json(
        "/v2/repository/models/ident/load",
        &json!({"parameters": {"config": "{}"}}),
    );
    assert_eq!(s, 400, "{body}");
    // A folder that fails to load answers with the reason and is listed unavailable.
    std::fs::write(
        server_repo_file(&server, "ident/model.yaml"),
        b"replica: 2\n",
    )
    .unwrap();
    let (s, body) = post("/v2/repository/models/ident/load");
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown key 'replica'"),
        "{body}"
    );
    // The other model never noticed.
    assert_eq!(
        server
            .post_json("/v2/models/simple/infer", &simple_request(&seq(), &seq()))
            .0,
        200
    );
}

/// A file inside the server's repository.
fn server_repo_file(server: &Server, rel: &str) -> std::path::PathBuf {
    server.repo_path().join(rel)
}

#[test]
fn torchserve_ping_and_predictions_for_plain_models() {
    let server = Server::start(Repo::with(&["simple"]), &[]);
    assert_eq!(server.get("/ping"), (200, json!({"status": "Healthy"})));
    let sum: Vec<i32> = (0..16).map(|x| 2 * x).collect();
    for path in ["/predictions/simple", "/predictions/simple/1"] {
        let (status, body) = server.post_json(path, &simple_request(&seq(), &seq()));
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["outputs"][0]["data"], json!(sum), "{path}");
    }
    let (status, body) = server.post_json("/predictions/nope", &simple_request(&seq(), &seq()));
    assert_eq!(status, 404);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("unknown model 'nope'"));
    let (status, body) = server.post_raw("/predictions/simple", b"not json".to_vec(), None);
    assert_eq!(status, 400, "{body}");
}
