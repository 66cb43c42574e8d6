//! Sampling and the other transformers generate parameters on tiny-t5: a seed gives the same
//! tokens twice, `top_k = 1` gives greedy search's tokens, beam sampling, `max_time`, and the
//! processors wired into the search.

use std::path::PathBuf;

use candle_core::Device;
use ferroserve_backend_candle::generation::{
    generate, Generation, GenerationDefaults, GenerationParams,
};
use ferroserve_backend_candle::t5::T5;
use serde_json::{json, Value};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/fixtures/models/tiny-t5")
}

struct Setup {
    model: T5,
    defaults: GenerationDefaults,
    inputs: Vec<Vec<u32>>,
}

fn setup() -> Setup {
    let model = T5::load(&fixture(), &Device::Cpu).unwrap();
    let defaults = GenerationDefaults::load(&fixture(), &GenerationParams::default(), 512).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(fixture().join("tokenizer.json")).unwrap();
    let inputs = [
        "Men have landed and walked on the moon.",
        "Beautiful is better than ugly. Explicit is better than implicit.",
        "Readability counts, and errors should never pass silently.",
    ]
    .iter()
    .map(|t| tokenizer.encode(*t, true).unwrap().get_ids().to_vec())
    .collect();
    Setup {
        model,
        defaults,
        inputs,
    }
}

impl Setup {
    fn generation(&self, v: Value) -> Generation {
        let params = GenerationParams::from_parameters(v.as_object().unwrap()).unwrap();
        self.defaults.resolve(&params).unwrap()
    }

    fn run(&self, inputs: &[Vec<u32>], v: Value) -> Vec<Vec<u32>> {
        let never = |_: usize| false;
        generate(&self.model, inputs, &self.generation(v), &never)
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect()
    }
}

#[test]
fn sampling_with_a_seed_gives_the_same_tokens_twice() {
    let s = setup();
    let params = json!({"do_sample": true, "seed": 3, "temperature": 1.5, "max_new_tokens": 15});
    let first = s.run(&s.inputs, params.clone());
    assert_eq!(first, s.run(&s.inputs, params.clone()));
    // Each input has its own generator: alone, it gets what it got in the batch.
    assert_eq!(s.run(&s.inputs[1..2], params)[0], first[1]);
    for out in &first {
        assert_eq!(out[0], 0, "the decoder start token first");
        assert!(out.len() <= 16);
    }
    // Other seeds (at a high temperature) give other outputs.
    let mut outputs: Vec<Vec<u32>> = (0..6)
        .map(|seed| {
            let params =
                json!({"do_sample": true, "seed": seed, "temperature": 3.0, "max_new_tokens": 15});
            s.run(&s.inputs[..1], params).remove(0)
        })
        .collect();
    outputs.sort();
    outputs.dedup();
    assert!(outputs.len() > 1, "six seeds gave one output: {outputs:?}");
    // Without a seed, each request draws its own: it runs, and gives a valid output.
    let out = s.run(&s.inputs, json!({"do_sample": true, "max_new_tokens": 5}));
    assert!(out.iter().all(|o| o.len() <= 6 && o[0] == 0));
}

#[test]
fn top_k_1_sampling_gives_greedy_tokens() {
    let s = setup();
    for extra in [
        json!({}),
        json!({"repetition_penalty": 2.5, "no_repeat_ngram_size": 2}),
        json!({"min_length": 8}),
    ] {
        let mut greedy = json!({"max_length": 30});
        let mut sampled = json!({"max_length": 30, "do_sample": true, "top_k": 1, "temperature": 0.7, "seed": 11});
        for (k, v) in extra.as_object().unwrap() {
            greedy[k] = v.clone();
            sampled[k] = v.clone();
        }
        let want = s.run(&s.inputs, greedy);
        assert_eq!(s.run(&s.inputs, sampled), want, "{extra}");
        // `do_sample: false` is greedy search, whatever the sampling parameters say.
        let mut off =
            json!({"max_length": 30, "do_sample": false, "top_k": 1, "temperature": 0.01});
        for (k, v) in extra.as_object().unwrap() {
            off[k] = v.clone();
        }
        assert_eq!(s.run(&s.inputs, off), want, "{extra}");
    }
}

#[test]
fn beam_sampling_with_a_seed_is_reproducible() {
    let s = setup();
    let params =
        json!({"do_sample": true, "num_beams": 3, "seed": 5, "temperature": 2.0, "max_length": 20});
    let first = s.run(&s.inputs, params.clone());
    assert_eq!(first, s.run(&s.inputs, params.clone()));
    assert_eq!(s.run(&s.inputs[2..], params)[0], first[2]);
    for out in &first {
        assert_eq!(out[0], 0);
        assert!(out.len() <= 20);
    }
    // Beam sampling is not beam search (here, with these draws).
    let search = s.run(&s.inputs, json!({"num_beams": 3, "max_length": 20}));
    let sampled: Vec<Vec<Vec<u32>>> = (0..4)
        .map(|seed| {
            s.run(
                &s.inputs,
                json!({"do_sample": true, "num_beams": 3, "seed": seed, "temperature": 3.0, "max_length": 20}),
            )
        })
        .collect();
    assert!(sampled.iter().any(|o| *o != search));
}

#[test]
fn max_time_ends_the_outputs_where_they_are() {
    let s = setup();
    for params in [
        json!({"max_time": 0.0, "max_length": 30}),
        json!({"max_time": 0.0, "max_length": 30, "num_beams": 2}),
        json!({"max_time": 0.0, "max_length": 30, "do_sample": true, "seed": 1}),
    ] {
        for out in s.run(&s.inputs, params.clone()) {
            assert_eq!(out.len(), 2, "{params}: {out:?}");
        }
    }
    // A generous limit changes nothing.
    assert_eq!(
        s.run(&s.inputs, json!({"max_time": 600, "max_length": 30})),
        s.run(&s.inputs, json!({"max_length": 30}))
    );
}

#[test]
fn token_processors_steer_the_search() {
    let s = setup();
    let greedy = s.run(&s.inputs, json!({"max_length": 12}));
    for beams in [1, 2] {
        let forced = s.run(
            &s.inputs,
            json!({"max_length": 12, "num_beams": beams, "forced_bos_token_id": 5, "forced_eos_token_id": 1}),
        );
        for out in &forced {
            assert_eq!(out[1], 5, "{out:?}");
            assert_eq!(*out.last().unwrap(), 1, "{out:?}");
        }
        // The greedy first tokens banned, and suppressed at the start.
        let firsts: Vec<u32> = greedy.iter().map(|o| o[1]).collect();
        let bad: Vec<Vec<u32>> = firsts.iter().map(|&t| vec![t]).collect();
        for params in [
            json!({"max_length": 12, "num_beams": beams, "bad_words_ids": bad}),
            json!({"max_length": 12, "num_beams": beams, "suppress_tokens": firsts}),
            json!({"max_length": 12, "num_beams": beams, "begin_suppress_tokens": firsts}),
        ] {
            for out in s.run(&s.inputs, params.clone()) {
                assert!(!firsts.contains(&out[1]), "{params}: {out:?}");
            }
        }
    }
    // Token ids outside the vocabulary (600) are errors naming the parameter.
    let never = |_: usize| false;
    for (params, name) in [
        (json!({"forced_bos_token_id": 600}), "forced_bos_token_id"),
        (json!({"bad_words_ids": [[1, 700]]}), "bad_words_ids"),
        (json!({"sequence_bias": [[[650], 1.0]]}), "sequence_bias"),
    ] {
        let g = s.generation(params);
        let e = generate(&s.model, &s.inputs, &g, &never).unwrap_err();
        assert!(e.to_string().contains(name), "{e}");
    }
}

/// The other logits processors against transformers' `generate` on the same checkpoint and
/// texts: the expected ids are what `python scripts/sampling_reference.py` prints for its
/// GENERATE_CASES (lines 101-116, transformers 5.23, greedy or beam search).
#[test]
fn processors_match_transformers() {
    let s = setup();
    let tokenizer = tokenizers::Tokenizer::from_file(fixture().join("tokenizer.json")).unwrap();
    let texts = [
        "Men have landed and walked on the moon.",
        "Readability counts, and errors should never pass silently.",
    ];
    let cases = [
        (
            r#"{"max_length": 16, "forced_bos_token_id": 5, "forced_eos_token_id": 2}"#,
            r#"[[0, 5, 3, 84, 24, 95, 3, 84, 84, 24, 95, 3, 84, 84, 24, 2], [0, 5, 3, 31, 42, 3, 182, 5, 1]]"#,
        ),
        (
            r#"{"max_length": 16, "suppress_tokens": [3, 9], "begin_suppress_tokens": [27]}"#,
            r#"[[0, 29, 39, 48, 48, 95, 47, 48, 95, 47, 48, 95, 47, 48, 95, 47], [0, 298, 298, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447]]"#,
        ),
        (
            r#"{"max_length": 16, "bad_words_ids": [[3], [27, 9]], "num_beams": 2}"#,
            r#"[[0, 48, 95, 47, 48, 95, 24, 47, 48, 107, 5, 48, 48, 48, 107, 83], [0, 298, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447]]"#,
        ),
        (
            r#"{"max_length": 16, "sequence_bias": [[[3], -5.0], [[9, 3], 2.0], [[27], 1.5]]}"#,
            r#"[[0, 3, 84, 24, 95, 95, 95, 95, 95, 95, 95, 95, 95, 95, 95, 95], [0, 298, 298, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447, 447]]"#,
        ),
        (
            r#"{"max_length": 16, "encoder_repetition_penalty": 1.5}"#,
            r#"[[0, 3, 84, 24, 95, 3, 84, 24, 95, 3, 84, 24, 95, 3, 84, 48], [0, 3, 405, 3, 25, 3, 1]]"#,
        ),
        (
            r#"{"max_length": 16, "encoder_no_repeat_ngram_size": 2, "num_beams": 3}"#,
            r#"[[0, 3, 62, 48, 48, 107, 95, 29, 456, 3, 82, 95, 47, 48, 48, 95], [0, 3, 293, 148, 12, 3, 37, 26, 3, 65, 3, 13, 149, 149, 5, 3]]"#,
        ),
        (
            r#"{"max_length": 16, "exponential_decay_length_penalty": [3, 1.6], "min_length": 6}"#,
            r#"[[0, 3, 84, 24, 95, 3, 84, 24, 95, 1], [0, 3, 293, 148, 12, 3, 1]]"#,
        ),
        (
            r#"{"max_length": 16, "num_beams": 3, "renormalize_logits": true, "repetition_penalty": 2.0}"#,
            r#"[[0, 3, 84, 48, 95, 3, 84, 24, 95, 3, 84, 24, 95, 3, 84, 24], [0, 3, 293, 148, 12, 3, 68, 42, 3, 13, 149, 5, 1]]"#,
        ),
        (
            r#"{"max_length": 16, "num_beams": 2, "remove_invalid_values": true, "no_repeat_ngram_size": 1}"#,
            r#"[[0, 3, 84, 48, 95, 29, 456, 83, 52, 18, 21, 19, 24, 87, 42, 1], [0, 3, 293, 148, 12, 57, 132, 1]]"#,
        ),
    ];
    for (kwargs, want) in cases {
        let kwargs: Value = serde_json::from_str(kwargs).unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_str(want).unwrap();
        for (text, want) in texts.iter().zip(want) {
            let input = tokenizer.encode(*text, true).unwrap().get_ids().to_vec();
            let got = s.run(&[input], kwargs.clone()).remove(0);
            assert_eq!(got, want, "{kwargs} on {text:?}");
        }
    }
}
