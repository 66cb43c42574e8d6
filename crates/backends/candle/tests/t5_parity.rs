//! tiny-t5 against transformers: the encoder's hidden states and `generate`'s token ids.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use ferroserve_backend_candle::generation::{generate, GenerationDefaults, GenerationParams};
use ferroserve_backend_candle::t5::T5;
use serde_json::Value;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/fixtures/models/tiny-t5")
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn encoder_hidden_states_match_transformers() {
    let model = T5::load(&fixture(), &Device::Cpu).unwrap();
    let reference = json("reference_encoder_eagle.json");
    let input = ids(&reference["input_ids"]);
    let n = input.len();
    let tokens = Tensor::from_vec(input, (1, n), &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, n), candle_core::DType::U8, &Device::Cpu).unwrap();
    let hidden = model.encode(&tokens, &mask).unwrap().squeeze(0).unwrap();
    let got: Vec<Vec<f32>> = hidden.to_vec2().unwrap();
    let want = reference["last_hidden_state"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(want) {
        for (a, b) in g.iter().zip(w.as_array().unwrap()) {
            worst = worst.max((a - b.as_f64().unwrap() as f32).abs());
        }
    }
    assert!(worst < 1e-4, "largest difference {worst}");
    // Asked between layers, the encoder stops after as many as it was allowed.
    let layers = std::cell::Cell::new(0);
    let stop = || {
        layers.set(layers.get() + 1);
        layers.get() > 1
    };
    assert!(model.encode_until(&tokens, &mask, &stop).unwrap().is_none());
    assert_eq!(layers.get(), 2, "stopped before the second layer");
    let never = || false;
    assert!(model
        .encode_until(&tokens, &mask, &never)
        .unwrap()
        .is_some());
}

#[test]
fn generate_matches_transformers_for_every_reference_case() {
    let model = T5::load(&fixture(), &Device::Cpu).unwrap();
    let defaults = GenerationDefaults::load(&fixture(), &GenerationParams::default(), 512).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(fixture().join("tokenizer.json")).unwrap();
    let cases = json("reference_generations.json");
    let never = |_: usize| false;
    for case in cases.as_array().unwrap() {
        let kwargs = case["generate_kwargs"].as_object().unwrap().clone();
        // Sampling is off in every case (transformers' draws are torch's, not ferroserve's).
        assert_ne!(kwargs.get("do_sample"), Some(&Value::Bool(true)));
        let params = GenerationParams::from_parameters(&kwargs).unwrap();
        let generation = defaults.resolve(&params).unwrap();
        if let Some(batch) = case.get("batch_inputs") {
            let inputs: Vec<Vec<u32>> = batch
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    tokenizer
                        .encode(t.as_str().unwrap(), true)
                        .unwrap()
                        .get_ids()
                        .to_vec()
                })
                .collect();
            let out = generate(&model, &inputs, &generation, &never).unwrap();
            let out: Vec<Vec<u32>> = out.into_iter().map(Option::unwrap).collect();
            // transformers returns the batch as one tensor: shorter outputs are filled, with
            // the eos token here (its fill is the pad id unless that is 0).
            let width = out.iter().map(Vec::len).max().unwrap();
            let want: Vec<Vec<u32>> = case["output_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(ids)
                .collect();
            for (i, (mut got, want)) in out.into_iter().zip(want).enumerate() {
                got.resize(width, 1);
                assert_eq!(got, want, "batch row {i} with {kwargs:?}");
            }
        } else {
            let input = ids(&case["input_ids"]);
            let want = ids(&case["output_ids"]);
            let got = generate(&model, &[input], &generation, &never).unwrap();
            assert_eq!(got[0].as_ref().unwrap(), &want, "{kwargs:?}");
            let text = tokenizer.decode(&want, true).unwrap();
            assert_eq!(text, case["output_text"].as_str().unwrap());
        }
    }
}
