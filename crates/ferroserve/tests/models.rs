//! Real models served over V2 HTTP, checked against numbers from the Python reference stack
//! (onnxruntime, transformers): tests/fixtures/reference.

mod common;

use common::{as_f32, binary_body, cosine, f32_bytes, f32s, fixture, reference, Repo, Server};
use image::imageops::FilterType;
use serde_json::{json, Value};

/// EfficientNet-Lite0's preprocessing as in the reference: RGB, shorter side to 256 (bilinear),
/// centre crop 224, (x - 127) / 128, NCHW float32.
fn preprocess(path: &std::path::Path) -> Vec<f32> {
    let img = image::open(path).expect("image").to_rgb8();
    let (w, h) = img.dimensions();
    let (nw, nh) = if w < h {
        (256, (h as f64 * 256.0 / w as f64) as u32)
    } else {
        ((w as f64 * 256.0 / h as f64) as u32, 256)
    };
    let resized = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
    let (x0, y0) = ((nw - 224) / 2, (nh - 224) / 2);
    let mut out = vec![0f32; 3 * 224 * 224];
    for y in 0..224 {
        for x in 0..224 {
            let p = resized.get_pixel(x0 + x, y0 + y);
            for c in 0..3 {
                out[c * 224 * 224 + (y * 224 + x) as usize] = (p[c] as f32 - 127.0) / 128.0;
            }
        }
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

#[test]
fn efficientnet_top1_matches_reference_json_and_binary() {
    let server = Server::start(Repo::plain(&["efficientnet-lite0"]), &[]);
    let refs = reference("efficientnet_top5.json");
    let images = refs["images"].as_object().unwrap();
    assert_eq!(images.len(), 7, "every test image has a reference");
    let mut batch = Vec::new();
    for (name, top5) in images {
        let expected = top5[0]["index"].as_u64().unwrap() as usize;
        let pixels = preprocess(&fixture(&format!("images/{name}")));

        // JSON tensors, nested data.
        let nested: Vec<Vec<Vec<f32>>> = pixels
            .chunks(224 * 224)
            .map(|plane| plane.chunks(224).map(<[f32]>::to_vec).collect())
            .collect();
        let (status, body) = server.post_json(
            "/v2/models/efficientnet-lite0/infer",
            &json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [nested]}]}),
        );
        assert_eq!(status, 200, "{body}");
        let logits = as_f32(&body["outputs"][0]["data"]);
        assert_eq!(logits.len(), 1000);
        assert_eq!(argmax(&logits), expected, "{name}: top-1 (JSON)");
        batch.extend_from_slice(&pixels);

        // Binary input and output.
        let header = json!({
            "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                        "parameters": {"binary_data_size": pixels.len() * 4}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": true}}],
        });
        let (body, len) = binary_body(&header, &[&f32_bytes(&pixels)]);
        let (status, json, bin) =
            server.post_binary("/v2/models/efficientnet-lite0/infer", body, Some(len));
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 4000);
        let bin_logits = f32s(&bin);
        assert_eq!(bin_logits, logits, "{name}: binary and JSON outputs agree");
    }

    // The whole set as one batch of 7 gives the same answers.
    let n = images.len();
    let header = json!({
        "inputs": [{"name": "input", "shape": [n, 3, 224, 224], "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.len() * 4}}],
        "parameters": {"binary_data_output": true},
    });
    let (body, len) = binary_body(&header, &[&f32_bytes(&batch)]);
    let (status, json, bin) =
        server.post_binary("/v2/models/efficientnet-lite0/infer", body, Some(len));
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["outputs"][0]["shape"], json!([n, 1000]));
    let logits = f32s(&bin);
    for (i, top5) in images.values().enumerate() {
        let expected = top5[0]["index"].as_u64().unwrap() as usize;
        assert_eq!(argmax(&logits[i * 1000..(i + 1) * 1000]), expected);
    }
}

/// Mean pooling over the attention mask, then L2 normalisation (sentence-transformers).
fn pool(hidden: &[f32], mask: &[i64], seq: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; dim];
    let mut n = 0f32;
    for t in 0..seq {
        if mask[t] == 1 {
            n += 1.0;
            for d in 0..dim {
                out[d] += hidden[t * dim + d];
            }
        }
    }
    out.iter_mut().for_each(|x| *x /= n);
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    out.iter_mut().for_each(|x| *x /= norm);
    out
}

/// Sends every reference sentence in one padded batch and returns the pooled embeddings.
fn embed_all(server: &Server, model: &str, ids: &[Vec<i64>]) -> Vec<Vec<f32>> {
    let seq = ids.iter().map(Vec::len).max().unwrap();
    let n = ids.len();
    let mut input_ids = vec![0i64; n * seq];
    let mut mask = vec![0i64; n * seq];
    for (i, row) in ids.iter().enumerate() {
        input_ids[i * seq..i * seq + row.len()].copy_from_slice(row);
        mask[i * seq..i * seq + row.len()].fill(1);
    }
    let types = vec![0i64; n * seq];
    let (status, body) = server.post_json(
        &format!("/v2/models/{model}/infer"),
        &json!({
            "inputs": [
                {"name": "input_ids", "shape": [n, seq], "datatype": "INT64", "data": input_ids},
                {"name": "attention_mask", "shape": [n, seq], "datatype": "INT64", "data": mask},
                {"name": "token_type_ids", "shape": [n, seq], "datatype": "INT64", "data": types},
            ],
            "outputs": [{"name": "last_hidden_state"}],
        }),
    );
    assert_eq!(status, 200, "{body}");
    let out = &body["outputs"][0];
    assert_eq!(out["shape"], json!([n, seq, 384]));
    let hidden = as_f32(&out["data"]);
    (0..n)
        .map(|i| {
            pool(
                &hidden[i * seq * 384..(i + 1) * seq * 384],
                &mask[i * seq..(i + 1) * seq],
                seq,
                384,
            )
        })
        .collect()
}

/// The reference sentences' token ids and their sentence-transformers embeddings.
fn minilm_reference() -> (Vec<Vec<i64>>, Vec<Vec<f32>>) {
    let refs = reference("minilm_embeddings.json");
    let ids = serde_json::from_value(refs["input_ids"].clone()).unwrap();
    let expected = serde_json::from_value(refs["embeddings"].clone()).unwrap();
    (ids, expected)
}

#[test]
fn minilm_embeddings_match_reference() {
    let (ids, expected) = minilm_reference();

    let repo = Repo::plain(&["minilm"]);
    // The fp32 export lives in ../shared on the team's machines only; check it where present.
    let fp32 = common::root().join("../shared/models/all-MiniLM-L6-v2");
    let have_fp32 = fp32.join("model.onnx").is_file();
    if have_fp32 {
        repo.write("minilm-fp32/1/.keep", b"");
        std::os::unix::fs::symlink(
            fp32.join("model.onnx"),
            repo.path().join("minilm-fp32/1/model.onnx"),
        )
        .unwrap();
    } else {
        eprintln!(
            "note: {} not present; checking the int8 model only",
            fp32.display()
        );
    }
    let server = Server::start(repo, &[]);

    let check = |model: &str, min: f32| {
        let got = embed_all(&server, model, &ids);
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            let c = cosine(g, e);
            assert!(
                c >= min,
                "{model}, sentence {i}: cosine {c} < {min} with the fp32 reference"
            );
        }
    };
    check("minilm", 0.999);
    if have_fp32 {
        check("minilm-fp32", 0.9999);
    }
}

/// The optimised model files `ferroserve serve` (process `pid`) holds for the weights its CPU
/// replicas share: open, and already unlinked from the temporary folder.
fn shared_weight_files(pid: u32) -> Vec<String> {
    let prefix = std::env::temp_dir()
        .join(format!("ferroserve-{pid}-"))
        .display()
        .to_string();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's open files")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|t| t.starts_with(&prefix) && t.ends_with(".onnx (deleted)"))
        .collect()
}

/// Files of process `pid`'s shared weights still in the temporary folder (there should be none:
/// a server that is killed must not leave them behind).
fn left_in_temp(pid: u32) -> usize {
    let prefix = format!("ferroserve-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .count()
}

#[test]
fn replicas_share_one_copy_of_the_weights_and_answer_as_one_session_does() {
    let (ids, expected) = minilm_reference();
    let repo = Repo::plain(&["minilm"]);
    repo.write("minilm/model.yaml", b"replicas: 3\nthreads: 1\n");
    let server = Server::start(repo, &[]);
    // One group for the three replicas: one optimised model file, held open while they live
    // and never left in the temporary folder.
    assert_eq!(shared_weight_files(server.pid()).len(), 1);
    assert_eq!(left_in_temp(server.pid()), 0);
    // The memory accounting (what --memory-budget keeps within) counts the one copy.
    let version_folder = folder_bytes(&common::model_dir("minilm").join("1"));
    assert_eq!(
        server.metric("ferroserve_memory_used_bytes", &[("device", "cpu")]),
        Some(version_folder as f64)
    );
    answers_at_once_as_the_reference(&server, &ids, &expected);
    let batches = server
        .metric("ferroserve_batch_size_count", &[("model", "minilm")])
        .unwrap_or(0.0);
    assert!(batches >= 3.0, "{batches} batches");
    // Unloaded, the group goes with its last replica.
    let (status, body) = server.post_json("/v2/repository/models/minilm/unload", &json!({}));
    assert_eq!(status, 200, "{body}");
    assert!(
        common::wait_for(std::time::Duration::from_secs(30), || {
            shared_weight_files(server.pid()).is_empty()
        }),
        "the shared weights outlived the model: {:?}",
        shared_weight_files(server.pid())
    );
    // Loaded again, it is grouped again and answers as before.
    let (status, body) = server.post_json("/v2/repository/models/minilm/load", &json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(shared_weight_files(server.pid()).len(), 1);
    let got = embed_all(&server, "minilm", &ids[..1]);
    assert!(cosine(&got[0], &expected[0]) >= 0.999);
    assert_eq!(left_in_temp(server.pid()), 0);
}

/// Three clients at once, whose requests the scheduler spreads over free replicas, get the
/// reference's embeddings from `minilm`.
fn answers_at_once_as_the_reference(server: &Server, ids: &[Vec<i64>], expected: &[Vec<f32>]) {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| embed_all(server, "minilm", ids)))
            .collect();
        for worker in workers {
            let got = worker.join().expect("client thread");
            for (i, (g, e)) in got.iter().zip(expected).enumerate() {
                let c = cosine(g, e);
                assert!(
                    c >= 0.999,
                    "sentence {i}: cosine {c} < 0.999 with the reference"
                );
            }
        }
    });
}

#[test]
fn replicas_added_through_the_management_api_share_one_copy_between_them() {
    let (ids, expected) = minilm_reference();
    let repo = Repo::plain(&["minilm"]);
    repo.write("minilm/model.yaml", b"threads: 1\n");
    let server = Server::start(repo, &[]);
    // One replica keeps its own weights: nothing to share them with.
    assert!(shared_weight_files(server.pid()).is_empty());
    let admin = server.listener_url("management API");
    let scaled = common::client()
        .put(format!(
            "{admin}/models/minilm?min_worker=3&synchronous=true"
        ))
        .send()
        .expect("management API");
    assert_eq!(scaled.status().as_u16(), 200, "{:?}", scaled.text());
    // The two new replicas load as one group; the first keeps its copy.
    assert_eq!(shared_weight_files(server.pid()).len(), 1);
    assert_eq!(left_in_temp(server.pid()), 0);
    answers_at_once_as_the_reference(&server, &ids, &expected);
    // Not every CPU replica shares, so the memory accounting counts a copy each (it cannot tell
    // which replica a later scale-down stops), erring on the side of the budget.
    let version_folder = folder_bytes(&common::model_dir("minilm").join("1"));
    assert_eq!(
        server.metric("ferroserve_memory_used_bytes", &[("device", "cpu")]),
        Some(3.0 * version_folder as f64)
    );
}

/// Bytes of the files under `dir`, at any depth.
fn folder_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                folder_bytes(&path)
            } else {
                meta.len()
            }
        })
        .sum()
}

#[test]
fn tiny_bert_logits_match_reference() {
    let server = Server::start(Repo::plain(&["tiny-bert-classifier"]), &[]);
    let refs = reference("tiny_bert_logits.json");
    for ex in refs["examples"].as_array().unwrap() {
        let ids: Vec<i64> = serde_json::from_value(ex["input_ids"].clone()).unwrap();
        let expected = as_f32(&ex["logits"]);
        let n = ids.len();
        let inputs = |binary: bool| -> (Value, Vec<Vec<u8>>) {
            let tensors = [ids.clone(), vec![1i64; n], vec![0i64; n]];
            let names = ["input_ids", "attention_mask", "token_type_ids"];
            let mut blobs = Vec::new();
            let inputs: Vec<Value> = names
                .iter()
                .zip(&tensors)
                .map(|(name, t)| {
                    if binary {
                        let b: Vec<u8> = t.iter().flat_map(|x| x.to_le_bytes()).collect();
                        let v = json!({"name": name, "shape": [1, n], "datatype": "INT64", "parameters": {"binary_data_size": b.len()}});
                        blobs.push(b);
                        v
                    } else {
                        json!({"name": name, "shape": [1, n], "datatype": "INT64", "data": t})
                    }
                })
                .collect();
            (json!({"inputs": inputs, "id": ex["text"]}), blobs)
        };

        let (req, _) = inputs(false);
        let (status, body) = server.post_json("/v2/models/tiny-bert-classifier/infer", &req);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], ex["text"], "id is echoed");
        let logits = as_f32(&body["outputs"][0]["data"]);
        for (g, e) in logits.iter().zip(&expected) {
            assert!(
                (g - e).abs() <= 1e-4,
                "{}: logits {logits:?} vs {expected:?}",
                ex["text"]
            );
        }

        let (mut req, blobs) = inputs(true);
        req["parameters"] = json!({"binary_data_output": true});
        let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
        let (body, len) = binary_body(&req, &refs);
        let (status, json, bin) =
            server.post_binary("/v2/models/tiny-bert-classifier/infer", body, Some(len));
        assert_eq!(status, 200, "{json}");
        assert_eq!(f32s(&bin), logits, "binary output equals JSON output");
    }
}
