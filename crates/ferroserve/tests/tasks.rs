//! Built-in tasks end to end: images and texts in through TorchServe's, OpenAI's and the V2
//! routes, answers checked against the Python reference stack's numbers.

mod common;

use std::thread;

use base64::Engine;
use common::{as_f32, cosine, fixture, multipart, reference, Repo, Server};
use serde_json::{json, Value};

/// The reference images and their expected top-1 label and probability.
fn image_references() -> Vec<(String, Vec<u8>, String, f64)> {
    let refs = reference("efficientnet_top5.json");
    refs["images"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(file, top)| {
            let bytes = std::fs::read(fixture(&format!("images/{file}"))).unwrap();
            let label = top[0]["label"].as_str().unwrap().to_string();
            (
                file.clone(),
                bytes,
                label,
                top[0]["probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The most likely label of a TorchServe image answer and its probability.
fn top1(answer: &Value) -> (String, f64) {
    let map = answer
        .as_object()
        .unwrap_or_else(|| panic!("not a map: {answer}"));
    let (label, p) = map
        .iter()
        .map(|(k, v)| (k, v.as_f64().unwrap()))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    (label.clone(), p)
}

#[test]
fn image_classification_matches_the_reference_as_body_and_multipart() {
    let server = Server::start(Repo::with(&["efficientnet-lite0"]), &[]);
    let images = image_references();
    assert_eq!(images.len(), 7);
    for (file, bytes, label, p) in &images {
        // `curl -T img` (PUT) and `curl --data-binary @img` (POST).
        for method in ["PUT", "POST"] {
            let (status, answer) = server.send(
                method,
                "/predictions/efficientnet-lite0",
                None,
                bytes.clone(),
            );
            assert_eq!(status, 200, "{file}: {answer}");
            assert_eq!(
                answer.as_object().unwrap().len(),
                5,
                "{file}: top 5 by default"
            );
            let (got, gp) = top1(&answer);
            assert_eq!(&got, label, "{file}: {answer}");
            assert!((gp - p).abs() <= 0.05, "{file}: {gp} vs reference {p}");
        }
        let (ct, body) = multipart(&[("data", file, bytes)]);
        let (status, answer) = server.send(
            "POST",
            "/predictions/efficientnet-lite0/1?topk=2",
            Some(&ct),
            body,
        );
        assert_eq!(status, 200, "{file}: {answer}");
        assert_eq!(answer.as_object().unwrap().len(), 2, "{answer}");
        assert_eq!(&top1(&answer).0, label, "{file}");
    }

    // TorchServe lists the most likely class first (the test's JSON maps sort keys, so look at
    // the text).
    let (_, bytes, label, _) = &images[1];
    let text = common::client()
        .put(server.at("/predictions/efficientnet-lite0"))
        .body(bytes.clone())
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(text.starts_with(&format!("{{\"{label}\":")), "{text}");

    // Several files in one form: a list of answers, in order.
    let parts: Vec<(&str, &str, &[u8])> = images
        .iter()
        .map(|(f, b, _, _)| ("data", f.as_str(), b.as_slice()))
        .collect();
    let (ct, body) = multipart(&parts);
    let (status, answer) = server.send("POST", "/predictions/efficientnet-lite0", Some(&ct), body);
    assert_eq!(status, 200, "{answer}");
    let answers = answer.as_array().unwrap();
    for ((file, _, label, _), a) in images.iter().zip(answers) {
        assert_eq!(&top1(a).0, label, "{file} in a multi-file form");
    }

    // V2 with a BYTES input: probabilities for every class and the top label.
    let (status, v2) = server.post_json(
        "/v2/models/efficientnet-lite0/infer",
        &json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                            "data": [base64::engine::general_purpose::STANDARD.encode(&images[1].1)]}],
                "parameters": {"binary_data_output": false}}),
    );
    // Plain JSON BYTES data is text; an encoded image needs the binary extension.
    assert_eq!(status, 400, "{v2}");
    let bytes = &images[1].1;
    let mut element = (bytes.len() as u32).to_le_bytes().to_vec();
    element.extend_from_slice(bytes);
    let header = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                    "parameters": {"binary_data_size": element.len()}}],
                        "outputs": [{"name": "label", "parameters": {"binary_data": false}},
                                    {"name": "probabilities", "parameters": {"binary_data": false}}]});
    let (body, len) = common::binary_body(&header, &[&element]);
    let (status, v2) = server.post_raw("/v2/models/efficientnet-lite0/infer", body, Some(len));
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["outputs"][0]["data"][0], images[1].2.as_str());
    let probs = as_f32(&v2["outputs"][1]["data"]);
    assert_eq!(probs.len(), 1000);
    assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-3);
    server.assert_healthy();
}

#[test]
fn concurrent_images_batch_and_answer_as_one_by_one() {
    let server = Server::start(Repo::with(&["efficientnet-lite0"]), &[]);
    let images = image_references();
    let alone: Vec<Value> = images
        .iter()
        .map(|(_, b, _, _)| {
            server
                .send("PUT", "/predictions/efficientnet-lite0", None, b.clone())
                .1
        })
        .collect();
    // 8 different requests at once (one image twice), several times over.
    let order: Vec<usize> = (0..8).map(|i| i % images.len()).collect();
    for _ in 0..3 {
        let answers: Vec<Value> = thread::scope(|s| {
            let handles: Vec<_> = order
                .iter()
                .map(|&i| {
                    let (server, body) = (&server, images[i].1.clone());
                    s.spawn(move || {
                        server.send("PUT", "/predictions/efficientnet-lite0", None, body)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().1).collect()
        });
        for (&i, got) in order.iter().zip(&answers) {
            let want = alone[i].as_object().unwrap();
            let got = got.as_object().unwrap_or_else(|| panic!("{got}"));
            assert_eq!(
                want.keys().collect::<Vec<_>>(),
                got.keys().collect::<Vec<_>>()
            );
            for (k, v) in want {
                assert!(
                    (v.as_f64().unwrap() - got[k].as_f64().unwrap()).abs() < 1e-4,
                    "{k}"
                );
            }
        }
    }
    let batches = server
        .metric(
            "ferroserve_batch_size_count",
            &[("model", "efficientnet-lite0")],
        )
        .unwrap_or(0.0);
    let requests = server
        .metric(
            "ferroserve_requests_total",
            &[("model", "efficientnet-lite0"), ("result", "success")],
        )
        .unwrap();
    assert!(requests >= 31.0, "{requests}");
    assert!(
        batches > 0.0 && batches < requests,
        "{batches} batches for {requests} requests"
    );
}

fn embedding_references() -> (Vec<String>, Vec<Vec<f32>>, Vec<usize>) {
    let refs = reference("minilm_embeddings.json");
    let sentences: Vec<String> = serde_json::from_value(refs["sentences"].clone()).unwrap();
    let expected: Vec<Vec<f32>> = serde_json::from_value(refs["embeddings"].clone()).unwrap();
    let ids: Vec<Vec<i64>> = serde_json::from_value(refs["input_ids"].clone()).unwrap();
    (sentences, expected, ids.iter().map(Vec::len).collect())
}

#[test]
fn embeddings_match_the_reference_through_openai_torchserve_and_v2() {
    let server = Server::start(Repo::with(&["minilm"]), &[]);
    let (sentences, expected, tokens) = embedding_references();
    let check = |vectors: &[Vec<f32>], how: &str| {
        assert_eq!(vectors.len(), expected.len(), "{how}");
        for (i, (v, e)) in vectors.iter().zip(&expected).enumerate() {
            assert_eq!(v.len(), 384);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{how}: not normalised");
            let c = cosine(v, e);
            assert!(c >= 0.999, "{how}, sentence {i}: cosine {c}");
        }
    };

    // One array.
    let (status, body) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": sentences}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "minilm");
    let total: usize = tokens.iter().sum();
    assert_eq!(body["usage"]["prompt_tokens"], total);
    assert_eq!(body["usage"]["total_tokens"], total);
    let data = body["data"].as_array().unwrap();
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["object"], "embedding");
    }
    let vectors: Vec<Vec<f32>> = data.iter().map(|d| as_f32(&d["embedding"])).collect();
    check(&vectors, "one array");

    // One by one, concurrently; each reports its own token count.
    let singles: Vec<(Vec<f32>, u64)> = thread::scope(|s| {
        let handles: Vec<_> = sentences
            .iter()
            .map(|t| {
                let server = &server;
                s.spawn(move || {
                    let (status, b) =
                        server.post_json("/v1/embeddings", &json!({"model": "minilm", "input": t}));
                    assert_eq!(status, 200, "{b}");
                    (
                        as_f32(&b["data"][0]["embedding"]),
                        b["usage"]["prompt_tokens"].as_u64().unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((_, used), want) in singles.iter().zip(&tokens) {
        assert_eq!(*used as usize, *want);
    }
    check(
        &singles.into_iter().map(|s| s.0).collect::<Vec<_>>(),
        "one by one",
    );

    // base64: the same floats, little-endian.
    let (_, b64) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": [sentences[0]], "encoding_format": "base64"}),
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    check_close(&common::f32s(&raw), &vectors[0]);

    // The model may be left out when only one embedding model is loaded.
    let (status, b) = server.post_json("/v1/embeddings", &json!({"input": sentences[0]}));
    assert_eq!(status, 200, "{b}");

    // TorchServe's route: one text gives one vector, a list gives a list.
    let (status, one) = server.post_json("/predictions/minilm", &json!({"text": sentences[0]}));
    assert_eq!(status, 200, "{one}");
    check_close(&as_f32(&one), &vectors[0]);
    let (_, many) = server.post_json("/predictions/minilm", &json!({"text": sentences}));
    let many: Vec<Vec<f32>> = many.as_array().unwrap().iter().map(as_f32).collect();
    check(&many, "predictions list");
    let (status, plain) = server.send(
        "POST",
        "/predictions/minilm",
        Some("text/plain"),
        sentences[0].clone().into_bytes(),
    );
    assert_eq!(status, 200, "{plain}");
    check_close(&as_f32(&plain), &vectors[0]);

    // V2 with a BYTES input.
    let (status, v2) = server.post_json(
        "/v2/models/minilm/infer",
        &json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [sentences.len()], "data": sentences}],
                "parameters": {"binary_data_output": false}}),
    );
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["outputs"][0]["name"], "embedding");
    assert_eq!(v2["outputs"][0]["shape"], json!([sentences.len(), 384]));
    let flat = as_f32(&v2["outputs"][0]["data"]);
    check(
        &flat.chunks(384).map(<[f32]>::to_vec).collect::<Vec<_>>(),
        "V2",
    );
}

fn check_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}

#[test]
fn text_classification_matches_the_reference_labels_and_scores() {
    let server = Server::start(Repo::with(&["tiny-bert-classifier"]), &[]);
    let refs = reference("tiny_bert_logits.json");
    let examples = refs["examples"].as_array().unwrap();
    for ex in examples {
        let (status, answer) = server.post_json(
            "/predictions/tiny-bert-classifier",
            &json!({"text": ex["text"]}),
        );
        assert_eq!(status, 200, "{answer}");
        let top = &answer.as_array().unwrap()[0];
        assert_eq!(
            answer.as_array().unwrap().len(),
            1,
            "top 1 by default: {answer}"
        );
        assert_eq!(top["label"], ex["label"], "{}", ex["text"]);
        let score = top["score"].as_f64().unwrap();
        assert!(
            (score - ex["score"].as_f64().unwrap()).abs() < 1e-4,
            "{answer} vs {ex}"
        );
    }
    // A list of texts in one request (padded into one batch) and both labels with ?topk=2.
    let texts: Vec<&Value> = examples.iter().map(|e| &e["text"]).collect();
    let (status, answer) = server.post_json(
        "/predictions/tiny-bert-classifier?topk=2",
        &json!({"text": texts}),
    );
    assert_eq!(status, 200, "{answer}");
    for (ex, got) in examples.iter().zip(answer.as_array().unwrap()) {
        let logits = as_f32(&ex["logits"]);
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let got = got.as_array().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["label"], ex["label"]);
        for g in got {
            let i = if g["label"] == "NEGATIVE" { 0 } else { 1 };
            assert!(
                (g["score"].as_f64().unwrap() as f32 - exp[i] / sum).abs() < 1e-4,
                "{g}"
            );
        }
    }
}

#[test]
fn bad_task_inputs_are_clear_client_errors_and_the_server_stays_healthy() {
    let server = Server::start(Repo::with(&["efficientnet-lite0", "minilm"]), &[]);
    let classify =
        |body: Vec<u8>| server.send("PUT", "/predictions/efficientnet-lite0", None, body);
    let dog = std::fs::read(fixture("images/dog.jpg")).unwrap();

    let cases: Vec<(&str, (u16, Value), u16, &str)> = vec![
        ("not an image", classify(b"hello, I am text".to_vec()), 400, "is not an image"),
        ("truncated JPEG", classify(dog[..dog.len() / 2].to_vec()), 400, "JPEG"),
        ("huge PNG header", classify(huge_png(20000, 20000)), 413, "20000x20000"),
        ("empty body", classify(Vec::new()), 400, "no image"),
        (
            "empty text",
            server.post_json("/v1/embeddings", &json!({"model": "minilm", "input": ""})),
            400,
            "empty string",
        ),
        (
            "empty text in a list",
            server.post_json("/predictions/minilm", &json!({"text": ["fine", ""]})),
            400,
            "input 1 is an empty string",
        ),
        (
            "non-UTF-8 text",
            server.send("POST", "/predictions/minilm", Some("text/plain"), vec![0xff, 0xfe, 0x41]),
            400,
            "UTF-8",
        ),
        (
            "10,000 inputs",
            server.post_json(
                "/v1/embeddings",
                &json!({"model": "minilm", "input": vec!["hello"; 10_000]}),
            ),
            413,
            "at most 2048",
        ),
        (
            "unknown encoding_format",
            server.post_json(
                "/v1/embeddings",
                &json!({"model": "minilm", "input": "hi", "encoding_format": "int8"}),
            ),
            400,
            "encoding_format",
        ),
        (
            "token ids as input",
            server.post_json("/v1/embeddings", &json!({"model": "minilm", "input": [[101, 102]]})),
            400,
            "token ids",
        ),
        (
            "not an embedding model",
            server.post_json("/v1/embeddings", &json!({"model": "efficientnet-lite0", "input": "hi"})),
            400,
            "not a text-embedding model",
        ),
        (
            "unknown model",
            server.post_json("/v1/embeddings", &json!({"model": "nope", "input": "hi"})),
            404,
            "nope",
        ),
        (
            "unknown field",
            server.post_json("/v1/embeddings", &json!({"model": "minilm", "inputs": "hi"})),
            400,
            "unknown field 'inputs'",
        ),
        (
            "bad topk",
            server.send("PUT", "/predictions/efficientnet-lite0?topk=zero", None, dog.clone()),
            400,
            "topk",
        ),
        (
            "text to an image model",
            server.post_json("/v2/models/efficientnet-lite0/infer",
                &json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not an image"]}]})),
            400,
            "not an image",
        ),
    ];
    for (what, (status, body), want, needle) in cases {
        assert_eq!(status, want, "{what}: {body}");
        let msg = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {body}"));
        assert!(msg.contains(needle), "{what}: {msg}");
    }
    // Degenerate but valid images get an answer, without resizing the whole image first
    // (4000x1 would be 1,024,000 pixels wide at a shorter side of 256).
    for (w, h) in [(4000, 1), (1, 4000), (1, 1)] {
        let mut png = Vec::new();
        image::RgbImage::from_pixel(w, h, image::Rgb([200, 100, 50]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let (status, body) = classify(png);
        assert_eq!(status, 200, "{w}x{h}: {body}");
    }
    server.assert_healthy();
    let (status, _) = server.send("PUT", "/predictions/efficientnet-lite0", None, dog);
    assert_eq!(status, 200);
}

/// A PNG whose header declares `w`×`h` pixels but carries almost no data: decoding it would
/// need gigabytes, so it must be refused from the header.
fn huge_png(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}
