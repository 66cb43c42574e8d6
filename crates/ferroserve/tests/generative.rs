//! Generative tasks through the server: T5 summarization and Stable Diffusion text-to-image on
//! the candle backend, answers checked against transformers' reference outputs, batching,
//! bad input and cancellation.

mod common;

use std::time::Duration;

use common::{client, fixture, model_dir, wait_for, Repo, Server};
use serde_json::{json, Value};

/// A repository with the tiny checkpoints as they are (recognised without model.yaml), and
/// batched copies configured by model.yaml.
fn repo() -> Repo {
    let repo = Repo::with(&[]);
    repo.link("t5", &model_dir("tiny-t5"));
    // transformers was given the reference article whole (699 tokens: its tokenizer says "no
    // limit"); ferroserve cuts T5 inputs at 512 tokens unless text.max_length says otherwise.
    repo.write(
        "t5long/model.yaml",
        b"backend: candle\ntask: summarization\ntext: {max_length: 1024}\n",
    );
    repo.link("t5long/1", &model_dir("tiny-t5"));
    repo.link("sd", &model_dir("tiny-sd"));
    repo.write(
        "summarizer/model.yaml",
        b"backend: candle\ntask: summarization\nmax_batch_size: 8\ndynamic_batching: {max_queue_delay_us: 400000}\ntext: {max_length: 64}\n",
    );
    repo.link("summarizer/1", &model_dir("tiny-t5"));
    repo.write(
        "imagine/model.yaml",
        b"backend: candle\ntask: text-to-image\nmax_batch_size: 4\ndynamic_batching: {max_queue_delay_us: 400000}\ndiffusion: {num_inference_steps: 4}\n",
    );
    repo.link("imagine/1", &model_dir("tiny-sd"));
    repo
}

fn get(server: &Server, path: &str, query: &[(&str, &str)]) -> reqwest::blocking::Response {
    client()
        .get(server.at(path))
        .query(query)
        .send()
        .expect("GET")
}

fn text(server: &Server, path: &str, query: &[(&str, &str)]) -> String {
    let r = get(server, path, query);
    assert_eq!(r.status(), 200, "{path} {query:?}");
    r.text().unwrap()
}

fn error(server: &Server, path: &str, query: &[(&str, &str)]) -> (u16, String) {
    let r = get(server, path, query);
    let status = r.status().as_u16();
    let body: Value = r.json().expect("JSON error");
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

fn png(server: &Server, path: &str, query: &[(&str, &str)]) -> image::RgbImage {
    let r = get(server, path, query);
    assert_eq!(r.status(), 200, "{path} {query:?}");
    assert_eq!(r.headers()["content-type"], "image/png");
    let bytes = r.bytes().unwrap();
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .expect("a PNG")
        .to_rgb8()
}

fn batches(server: &Server, model: &str) -> f64 {
    server
        .metric("ferroserve_batch_size_count", &[("model", model)])
        .unwrap_or(0.0)
}

#[test]
fn summaries_match_transformers_through_every_route() {
    let server = Server::start(repo(), &[]);
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("models/tiny-t5/reference_generations.json")).unwrap(),
    )
    .unwrap();
    for case in cases.as_array().unwrap() {
        let Some(input) = case["input"].as_str() else {
            continue;
        };
        let want = case["output_text"].as_str().unwrap();
        let kwargs = case["generate_kwargs"].as_object().unwrap();
        // `do_sample=false` included: the query string's "false" is the boolean.
        let params: Vec<(String, String)> = kwargs
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let mut query: Vec<(&str, &str)> = vec![("txt", input)];
        query.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // Ray Serve's tutorial shape: GET /{model}?txt= answers the text itself.
        assert_eq!(text(&server, "/t5long", &query), want, "{kwargs:?}");
        let (status, answer) = server.post_json(
            "/predictions/t5long",
            &json!({"text": input, "parameters": kwargs}),
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["summary_text"], want, "{kwargs:?}");
    }
    // The model of that task answers /summarize when several are loaded only by name.
    let (status, e) = error(&server, "/summarize", &[("txt", "Flat is better.")]);
    assert_eq!(status, 400, "{e}");
    assert!(e.contains("summarizer") && e.contains("t5"), "{e}");

    // V2 infer takes the texts as BYTES and answers BYTES.
    let (status, answer) = server.post_json(
        "/v2/models/t5/infer",
        &json!({
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Men have landed and walked on the moon."]}],
            "parameters": {"num_beams": 4, "max_length": 20, "early_stopping": true}
        }),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["name"], "summary");
    assert_eq!(answer["outputs"][0]["data"][0], "Mhen Mlen Mlen Mlen Ml");
}

#[test]
fn sampled_summaries_are_reproducible_with_a_seed() {
    let server = Server::start(repo(), &[]);
    let txt = "Men have landed and walked on the moon.";
    let query = [
        ("txt", txt),
        ("do_sample", "true"),
        ("temperature", "1.5"),
        ("top_p", "0.9"),
        ("seed", "3"),
    ];
    let first = text(&server, "/t5", &query);
    assert_eq!(text(&server, "/t5", &query), first);
    // The same parameters as JSON give the same text.
    let (status, answer) = server.post_json(
        "/predictions/t5",
        &json!({"text": txt, "parameters": {"do_sample": true, "temperature": 1.5, "top_p": 0.9, "seed": 3}}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["summary_text"], first);
    // top_k=1 sampling is greedy search.
    let greedy = text(&server, "/t5", &[("txt", txt)]);
    let top1 = [("txt", txt), ("do_sample", "true"), ("top_k", "1")];
    assert_eq!(text(&server, "/t5", &top1), greedy);
}

#[test]
fn concurrent_summaries_batch_and_equal_one_at_a_time() {
    let server = Server::start(repo(), &[]);
    let texts = [
        "Men have landed and walked on the moon.",
        "Flat is better than nested.",
    ];
    let alone: Vec<String> = texts
        .iter()
        .map(|t| text(&server, "/summarizer", &[("txt", t), ("num_beams", "2")]))
        .collect();
    let before = batches(&server, "summarizer");
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = texts
            .iter()
            .map(|t| {
                let server = &server;
                s.spawn(move || text(server, "/summarizer", &[("txt", t), ("num_beams", "2")]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    assert_eq!(alone[1], "Feat is nted ntted nat n");
    // Both requests went through the decoder as one batch.
    assert_eq!(batches(&server, "summarizer") - before, 1.0);
}

#[test]
fn images_are_pngs_of_the_asked_size_and_batch_without_changing() {
    let server = Server::start(repo(), &[]);
    // The template's exact route and parameter.
    let img = png(
        &server,
        "/imagine",
        &[
            ("prompt", "a photo of the moon"),
            ("img_size", "32"),
            ("seed", "7"),
        ],
    );
    assert_eq!(img.dimensions(), (32, 32));
    let img = png(
        &server,
        "/sd",
        &[
            ("prompt", "a photo of the moon"),
            ("num_inference_steps", "2"),
        ],
    );
    assert_eq!(img.dimensions(), (64, 64));

    let prompts = [
        ("rainbow unicorn butterfly kitten", "1"),
        ("a photo of the moon", "2"),
    ];
    let alone: Vec<Vec<u8>> = prompts
        .iter()
        .map(|(p, seed)| png(&server, "/imagine", &[("prompt", p), ("seed", seed)]).into_raw())
        .collect();
    assert_ne!(alone[0], alone[1]);
    let before = batches(&server, "imagine");
    let together: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|(p, seed)| {
                let server = &server;
                s.spawn(move || {
                    png(server, "/imagine", &[("prompt", p), ("seed", seed)]).into_raw()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        batches(&server, "imagine") - before,
        1.0,
        "the two prompts share UNet steps"
    );
    for (a, b) in alone.iter().zip(&together) {
        let worst = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(worst <= 1, "batched image differs by {worst} levels");
    }

    // V2 infer answers the pixels the PNG route encodes.
    let (status, answer) = server.post_json(
        "/v2/models/imagine/infer",
        &json!({
            "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["rainbow unicorn butterfly kitten"]}],
            "parameters": {"seed": 1}
        }),
    );
    assert_eq!(status, 200, "{answer}");
    let out = &answer["outputs"][0];
    assert_eq!(out["datatype"], "UINT8");
    assert_eq!(out["shape"], json!([1, 64, 64, 3]));
    let pixels: Vec<u8> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(pixels, alone[0]);

    // POST /predictions with JSON: a PNG for one prompt, base64 PNGs for a list.
    let r = client()
        .post(server.at("/predictions/imagine"))
        .json(&json!({"prompt": ["a photo of the moon"], "parameters": {"seed": 2}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().unwrap();
    assert_eq!(list[0]["width"], 64);
    use base64::Engine;
    let png_bytes = base64::engine::general_purpose::STANDARD
        .decode(list[0]["image"].as_str().unwrap())
        .unwrap();
    let decoded = image::load_from_memory(&png_bytes).unwrap().to_rgb8();
    assert_eq!(decoded.into_raw(), alone[1]);
}

#[test]
fn bad_generation_requests_are_clear_4xx() {
    let server = Server::start(repo(), &[]);
    let prompt = ("prompt", "a photo of the moon");
    for (query, status, needle) in [
        (vec![("prompt", "")], 400, "empty"),
        (vec![("prompt", "  ")], 400, "empty"),
        (vec![prompt, ("img_size", "63")], 400, "multiple of 8"),
        (vec![prompt, ("img_size", "4096")], 400, "2048"),
        (
            vec![prompt, ("num_inference_steps", "0")],
            400,
            "num_inference_steps",
        ),
        (
            vec![prompt, ("num_inference_steps", "201")],
            400,
            "num_inference_steps",
        ),
        (
            vec![prompt, ("scheduler", "karras")],
            400,
            "euler, ddim, pndm",
        ),
        (
            vec![prompt, ("guidance_scale", "-1")],
            400,
            "guidance_scale",
        ),
        (vec![prompt, ("seed", "-3")], 400, "seed"),
        (vec![prompt, ("steps", "3")], 400, "'steps'"),
        (vec![("q", "no prompt here")], 400, "prompt"),
    ] {
        let (got, e) = error(&server, "/imagine", &query);
        assert_eq!(got, status, "{query:?}: {e}");
        assert!(e.contains(needle), "{query:?}: {e}");
    }
    let txt = ("txt", "Flat is better than nested.");
    for (query, needle) in [
        (vec![("txt", "")], "empty"),
        (vec![txt, ("num_beams", "17")], "num_beams"),
        (vec![txt, ("max_length", "100000")], "limit"),
        (
            vec![txt, ("min_length", "30"), ("max_length", "20")],
            "min_length",
        ),
        (vec![txt, ("num_beam", "2")], "'num_beam'"),
        (vec![txt, ("repetition_penalty", "0")], "repetition_penalty"),
        (
            vec![txt, ("do_sample", "true"), ("temperature", "0")],
            "temperature",
        ),
        (vec![txt, ("do_sample", "true"), ("top_p", "1.5")], "top_p"),
        (vec![txt, ("do_sample", "maybe")], "do_sample"),
        (vec![txt, ("seed", "-3")], "seed"),
        (
            vec![txt, ("num_return_sequences", "3")],
            "'num_return_sequences' is a transformers generate parameter that ferroserve does not support",
        ),
        (
            vec![txt, ("early_stopping", "\"sometimes\"")],
            "early_stopping",
        ),
        (vec![("q", "x")], "txt"),
    ] {
        let (got, e) = error(&server, "/t5", &query);
        assert_eq!(got, 400, "{query:?}: {e}");
        assert!(e.contains(needle), "{query:?}: {e}");
    }
    let (status, e) = error(&server, "/nothing-here", &[("txt", "x")]);
    assert_eq!(status, 404, "{e}");

    // Text longer than the model takes (text.max_length 64) is cut, and the answer says so.
    let long = "Men have landed and walked on the moon. ".repeat(20);
    let r = get(&server, "/summarizer", &[("txt", &long)]);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-truncated"], "true");
    let r = get(&server, "/summarizer", &[("txt", "Men have landed.")]);
    assert!(r.headers().get("x-truncated").is_none());
    let (status, answer) = server.post_json("/predictions/summarizer", &json!({"text": long}));
    assert_eq!(status, 200);
    assert_eq!(answer["truncated"], true);
    server.assert_healthy();
}

#[test]
fn a_client_that_leaves_stops_its_generation() {
    let server = Server::start(repo(), &[]);
    // Hundreds of UNet steps on a larger image: far longer than the client waits.
    let gone = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap()
        .get(server.at("/sd"))
        .query(&[
            ("prompt", "a photo of the moon"),
            ("num_inference_steps", "200"),
            ("img_size", "128"),
        ])
        .send();
    assert!(gone.is_err(), "the generation should outlast the client");
    let stopped = wait_for(Duration::from_secs(60), || {
        server
            .log
            .lock()
            .unwrap()
            .contains("image generation stopped early")
    });
    let log = server.log.lock().unwrap().clone();
    assert!(stopped, "no early stop in the log:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("image generation stopped early"))
        .unwrap();
    let step: usize = line
        .split("step=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {line}"));
    assert!(step < 200, "{line}");

    // Same for text: a long beam search whose client leaves at once.
    let gone = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap()
        .get(server.at("/t5"))
        .query(&[
            (
                "txt",
                "Men have landed and walked on the moon. "
                    .repeat(12)
                    .as_str(),
            ),
            ("num_beams", "16"),
            ("max_length", "512"),
            ("min_length", "500"),
        ])
        .send();
    assert!(gone.is_err());
    assert!(
        wait_for(Duration::from_secs(60), || {
            server
                .log
                .lock()
                .unwrap()
                .contains("text generation stopped early")
        }),
        "no early stop of the text generation:\n{}",
        server.log.lock().unwrap()
    );
    // The replicas are free again.
    assert_eq!(
        text(
            &server,
            "/t5",
            &[("txt", "Flat is better than nested."), ("num_beams", "2")]
        ),
        "Feat is nted ntted nat n"
    );
}

/// One Server-Sent Event: its name and its JSON data.
#[derive(Debug)]
struct Sse {
    event: String,
    data: Value,
}

/// The events of a whole `text/event-stream` answer (keep-alive comments skipped).
fn events(response: reqwest::blocking::Response) -> Vec<Sse> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().unwrap();
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = name.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            Sse {
                event,
                data: serde_json::from_str(&data).unwrap_or_else(|e| panic!("{data}: {e}")),
            }
        })
        .collect()
}

/// The text of a summarization stream's `token` events, checked to end with `done`.
fn streamed_text(events: &[Sse]) -> String {
    let (done, tokens) = events.split_last().expect("events");
    assert_eq!(done.event, "done", "{events:?}");
    assert!(tokens.iter().all(|e| e.event == "token"), "{events:?}");
    let text: String = tokens
        .iter()
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(done.data["summary_text"], text.as_str());
    text
}

#[test]
fn streamed_answers_put_together_equal_the_plain_ones() {
    let server = Server::start(repo(), &[]);
    let article = "Men have landed and walked on the moon. Two Americans, astronauts of Apollo 11, steered their fragile four-legged lunar module safely to the historic landing.";
    for params in [
        vec![("max_new_tokens", "40")],
        vec![
            ("max_new_tokens", "40"),
            ("do_sample", "true"),
            ("temperature", "1.5"),
            ("seed", "7"),
        ],
        // Beam search knows its tokens only at the end: one piece.
        vec![("max_new_tokens", "12"), ("num_beams", "3")],
    ] {
        let mut query = vec![("txt", article)];
        query.extend(params.iter().copied());
        let plain = text(&server, "/t5", &query);
        query.push(("stream", "true"));
        let streamed = events(get(&server, "/t5", &query));
        assert_eq!(streamed_text(&streamed), plain, "{params:?}");
        if params.iter().any(|(k, _)| *k == "num_beams") {
            assert_eq!(streamed.len(), 2, "{streamed:?}");
        }
        // The JSON body's "stream": true, as OpenAI-style clients send it.
        let parameters: serde_json::Map<String, Value> = params
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::from_str(v).unwrap()))
            .collect();
        let response = client()
            .post(server.at("/predictions/t5"))
            .json(&json!({"text": article, "stream": true, "parameters": parameters}))
            .send()
            .unwrap();
        assert_eq!(streamed_text(&events(response)), plain, "{params:?}");
    }

    // Text to image: each step's progress, then the same PNG as the plain route's.
    let query = [
        ("prompt", "a photo of the moon"),
        ("num_inference_steps", "6"),
        ("img_size", "64"),
        ("seed", "3"),
    ];
    let plain = png(&server, "/sd", &query);
    let mut with_stream = query.to_vec();
    with_stream.push(("stream", "true"));
    let streamed = events(get(&server, "/sd", &with_stream));
    let (done, steps) = streamed.split_last().unwrap();
    assert_eq!(done.event, "done", "{streamed:?}");
    assert!(!steps.is_empty(), "{streamed:?}");
    let mut last = 0;
    for e in steps {
        assert_eq!(e.event, "progress", "{e:?}");
        let step = e.data["step"].as_u64().unwrap();
        assert!(step > last && e.data["of"] == 6, "{streamed:?}");
        last = step;
    }
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(done.data["image"].as_str().unwrap())
        .unwrap();
    let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    assert_eq!(
        (done.data["width"].clone(), done.data["height"].clone()),
        (json!(64), json!(64))
    );
    assert_eq!(image, plain);

    // What is wrong before the first step is a plain 4xx, not a stream.
    let (status, e) = error(
        &server,
        "/t5",
        &[
            ("txt", article),
            ("stream", "true"),
            ("do_sample", "true"),
            ("temperature", "0"),
        ],
    );
    assert_eq!(status, 400, "{e}");
    assert!(e.contains("temperature"), "{e}");
    let (status, e) = error(&server, "/t5", &[("txt", article), ("stream", "yes")]);
    assert_eq!(status, 400, "{e}");
    assert!(e.contains("'stream'"), "{e}");
    let (status, e) = server.post_json(
        "/predictions/t5",
        &json!({"text": [article, article], "stream": true}),
    );
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("one text"), "{e}");
}

#[test]
fn a_streaming_client_that_leaves_stops_its_generation() {
    use std::io::Read;
    let server = Server::start(repo(), &[]);
    let mut response = client()
        .get(server.at("/sd"))
        .query(&[
            ("prompt", "a photo of the moon"),
            ("num_inference_steps", "200"),
            ("img_size", "128"),
            ("stream", "true"),
        ])
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    // The first progress event, then the client goes.
    let mut first = [0u8; 64];
    let n = response.read(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).contains("progress"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    drop(response);
    let stopped = wait_for(Duration::from_secs(60), || {
        server
            .log
            .lock()
            .unwrap()
            .contains("image generation stopped early")
    });
    assert!(
        stopped,
        "no early stop in the log:\n{}",
        server.log.lock().unwrap()
    );
}
