//! Generation parameters: what a request (or model.yaml's `generation:`) may set, and the
//! checkpoint's defaults (`generation_config.json`) they are resolved over.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::unsupported::{refusal, screen};
use super::Generation;
use crate::CandleError;

/// When beam search stops (transformers' `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// Stop once `num_beams` hypotheses are finished.
    Always,
    /// Stop when no running beam can beat the finished ones at the current length.
    #[default]
    Heuristic,
    /// Stop only when no running beam could beat them at any length (`"never"`).
    Never,
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(true) => Ok(Self::Always),
            Value::Bool(false) => Ok(Self::Heuristic),
            Value::String(s) if s == "never" => Ok(Self::Never),
            other => Err(serde::de::Error::custom(format!(
                "early_stopping must be true, false or \"never\", got {other}"
            ))),
        }
    }
}

/// One token id or several (transformers' `forced_eos_token_id`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    pub(super) fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(t) => vec![*t],
            Self::Many(ts) => ts.clone(),
        }
    }
}

/// Parameters a request may set; each is optional and falls back to the model's default.
///
/// The names and meanings are transformers' `generate` ones. The sampling parameters
/// (`temperature`, `top_k`, `top_p`, `min_p`, `typical_p`, `epsilon_cutoff`, `eta_cutoff`,
/// `top_h`, `seed`) only count when `do_sample` is true: otherwise they are accepted and
/// ignored, as transformers does (it only warns). The other parameters `generate` knows are
/// refused with a sentence each (see [`UNSUPPORTED`](super::UNSUPPORTED)), or accepted at the
/// value that changes nothing (`num_return_sequences: 1`); any other name is an error listing
/// [`NAMES`].
//
// `remote = "Self"` makes the derived code an inherent `GenerationParams::deserialize`, which
// the `Deserialize` impl below calls after screening the names (so model.yaml's `generation:`
// gets the same checks and messages as requests).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct GenerationParams {
    /// Beams of beam search; 1 is greedy (or plain sampling).
    pub num_beams: Option<usize>,
    /// Longest output in tokens, counting the decoder's start token.
    pub max_length: Option<usize>,
    /// New tokens at most (overrides `max_length`).
    pub max_new_tokens: Option<usize>,
    /// Shortest output, counting the start token: end-of-sequence is forbidden before.
    pub min_length: Option<usize>,
    /// New tokens at least (overrides `min_length`).
    pub min_new_tokens: Option<usize>,
    /// Penalty (> 0) on tokens already generated: > 1 discourages repeating them.
    pub repetition_penalty: Option<f32>,
    /// Exponent of the length normalisation of finished beams: > 0 favours longer outputs.
    pub length_penalty: Option<f32>,
    /// When beam search stops.
    pub early_stopping: Option<EarlyStopping>,
    /// No n-gram of this size appears twice (0: off).
    pub no_repeat_ngram_size: Option<usize>,
    /// Draw each token from the processed distribution instead of taking the best one(s):
    /// multinomial sampling with `num_beams` 1, beam sampling above.
    pub do_sample: Option<bool>,
    /// Sampling: the logits are divided by it (> 0; below 1 sharpens, above 1 flattens).
    pub temperature: Option<f32>,
    /// Sampling: only the `top_k` most likely tokens may be drawn (0: off; default 50).
    pub top_k: Option<usize>,
    /// Sampling: only the most likely tokens whose probabilities add up to `top_p` (0 to 1).
    pub top_p: Option<f32>,
    /// Sampling: only tokens at least `min_p` times as likely as the most likely one (0 to 1).
    pub min_p: Option<f32>,
    /// Sampling: typical decoding's mass (0 < typical_p ≤ 1; 1: off).
    pub typical_p: Option<f32>,
    /// Sampling: only tokens of probability at least this (0 ≤ x < 1; 0: off).
    pub epsilon_cutoff: Option<f32>,
    /// Sampling: eta-sampling's epsilon (0 ≤ x < 1; 0: off).
    pub eta_cutoff: Option<f32>,
    /// Sampling: Top-H's entropy coefficient (0 < top_h ≤ 1).
    pub top_h: Option<f32>,
    /// Sampling: seed of the random draws. Every input of the batch gets its own generator
    /// seeded with it, so an output does not depend on what it was batched with; without a
    /// seed each input gets a fresh random one. (ferroserve's own; not a transformers name.)
    pub seed: Option<u64>,
    /// Seconds the generation may take: when they are up, the outputs end where they are.
    pub max_time: Option<f64>,
    /// Penalty (> 0) on the tokens of the input: > 1 favours them (they are encouraged).
    pub encoder_repetition_penalty: Option<f32>,
    /// No n-gram of this size of the input appears in the output (0: off).
    pub encoder_no_repeat_ngram_size: Option<usize>,
    /// Token sequences that must not be generated.
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    /// `[[token ids], bias]` pairs: the bias is added to the last token's score whenever the
    /// output ends with the others.
    pub sequence_bias: Option<Vec<(Vec<u32>, f32)>>,
    /// The token forced right after the decoder start token.
    pub forced_bos_token_id: Option<u32>,
    /// The token (or one of the tokens) forced last when `max_length` is reached.
    pub forced_eos_token_id: Option<TokenIds>,
    /// Replace NaN scores by 0 and infinite ones by the largest finite ones.
    pub remove_invalid_values: Option<bool>,
    /// `[start, factor]`: after `start` generated tokens, the end-of-sequence score grows by
    /// `factor` per token.
    pub exponential_decay_length_penalty: Option<(usize, f32)>,
    /// Tokens never generated.
    pub suppress_tokens: Option<Vec<u32>>,
    /// Tokens not generated first (after the forced first token, if any).
    pub begin_suppress_tokens: Option<Vec<u32>>,
    /// Turn the processed scores back into log-probabilities (matters for beam search).
    pub renormalize_logits: Option<bool>,
}

/// The names a request may use, for error messages.
pub const NAMES: &[&str] = &[
    "num_beams",
    "max_length",
    "max_new_tokens",
    "min_length",
    "min_new_tokens",
    "repetition_penalty",
    "length_penalty",
    "early_stopping",
    "no_repeat_ngram_size",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "top_h",
    "seed",
    "max_time",
    "encoder_repetition_penalty",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "sequence_bias",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "renormalize_logits",
];

/// The parameters in `map` (already screened), each error naming its parameter.
fn parse(map: Map<String, Value>) -> Result<GenerationParams, String> {
    if let Some(k) = map.keys().find(|k| !NAMES.contains(&k.as_str())) {
        return Err(format!(
            "unknown generation parameter '{k}' (expected one of: {})",
            NAMES.join(", ")
        ));
    }
    GenerationParams::deserialize(Value::Object(map.clone())).map_err(|e| {
        // serde_json does not say which field it was: try them one at a time.
        map.into_iter()
            .find_map(|(k, v)| {
                let one = Value::Object(Map::from_iter([(k.clone(), v)]));
                GenerationParams::deserialize(one)
                    .err()
                    .map(|e| format!("{k}: {e}"))
            })
            .unwrap_or_else(|| e.to_string())
    })
}

impl<'de> Deserialize<'de> for GenerationParams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = Map::<String, Value>::deserialize(d)?;
        screen(&mut map).map_err(D::Error::custom)?;
        parse(map).map_err(D::Error::custom)
    }
}

impl GenerationParams {
    /// Reads the generation parameters among a request's parameters (protocol ones such as
    /// `timeout` are skipped); a transformers parameter ferroserve does not support is an
    /// error saying so, and an unknown name is an error that lists the known ones.
    pub fn from_parameters(parameters: &Map<String, Value>) -> Result<Self, CandleError> {
        let mut own = parameters.clone();
        screen(&mut own).map_err(CandleError::Invalid)?;
        crate::request::own_parameters(&own, NAMES, "generation")
    }

    /// These parameters over `base`: each one set here wins.
    fn over(&self, base: &GenerationParams) -> GenerationParams {
        macro_rules! pick {
            ($($f:ident),*) => {
                GenerationParams { $($f: self.$f.clone().or_else(|| base.$f.clone())),* }
            };
        }
        pick!(
            num_beams,
            max_length,
            max_new_tokens,
            min_length,
            min_new_tokens,
            repetition_penalty,
            length_penalty,
            early_stopping,
            no_repeat_ngram_size,
            do_sample,
            temperature,
            top_k,
            top_p,
            min_p,
            typical_p,
            epsilon_cutoff,
            eta_cutoff,
            top_h,
            seed,
            max_time,
            encoder_repetition_penalty,
            encoder_no_repeat_ngram_size,
            bad_words_ids,
            sequence_bias,
            forced_bos_token_id,
            forced_eos_token_id,
            remove_invalid_values,
            exponential_decay_length_penalty,
            suppress_tokens,
            begin_suppress_tokens,
            renormalize_logits
        )
    }
}

/// A model's generation defaults and limits.
#[derive(Debug, Clone)]
pub struct GenerationDefaults {
    defaults: GenerationParams,
    /// Longest output a request may ask for (counting the start token).
    pub max_length_limit: usize,
}

impl GenerationDefaults {
    /// Reads `generation_config.json` in `dir` when there is one; `overrides` (from model.yaml)
    /// win over it, and `max_length_limit` bounds what requests may ask.
    pub fn load(
        dir: &Path,
        overrides: &GenerationParams,
        max_length_limit: usize,
    ) -> Result<Self, CandleError> {
        let path = dir.join("generation_config.json");
        // The file also holds fields this backend does not use (token ids, version).
        let from_file = if path.is_file() {
            let mut file: Map<String, Value> = crate::files::json(&path)?;
            for (k, v) in &file {
                // The token ids of config.json are the ones used; others deserve a word.
                if !k.ends_with("_token_id") {
                    if let Some(message) = refusal(k, v) {
                        tracing::warn!(file = %path.display(), "ignored: {message}");
                    }
                }
            }
            file.retain(|k, v| NAMES.contains(&k.as_str()) && !v.is_null());
            serde_json::from_value(Value::Object(file)).map_err(|e| CandleError::file(&path, e))?
        } else {
            GenerationParams::default()
        };
        let defaults = overrides.over(&from_file);
        let me = Self {
            defaults,
            max_length_limit,
        };
        // The defaults themselves must make a valid request.
        me.resolve(&GenerationParams::default())?;
        Ok(me)
    }

    /// Defaults of a model with no `generation_config.json` and no overrides.
    #[cfg(test)]
    fn plain(max_length_limit: usize) -> Self {
        Self {
            defaults: GenerationParams::default(),
            max_length_limit,
        }
    }

    /// A request's parameters over these defaults, checked.
    pub fn resolve(&self, request: &GenerationParams) -> Result<Generation, CandleError> {
        Generation::check(request.over(&self.defaults), self.max_length_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{Sampling, UNSUPPORTED};
    use serde_json::json;

    fn params(v: Value) -> Result<GenerationParams, CandleError> {
        GenerationParams::from_parameters(v.as_object().unwrap())
    }

    /// The message of the error `params` gives for `v`.
    fn error(v: Value) -> String {
        params(v).expect_err("an error").to_string()
    }

    #[test]
    fn parameters_by_name() {
        let e = params(json!({"num_beam": 2})).unwrap_err();
        assert!(e.to_string().contains("'num_beam'"), "{e}");
        let e = params(json!({"early_stopping": "sometimes"})).unwrap_err();
        assert!(e.to_string().contains("early_stopping"), "{e}");
        assert_eq!(
            params(json!({"early_stopping": "never"}))
                .unwrap()
                .early_stopping,
            Some(EarlyStopping::Never)
        );
        // Query strings arrive as JSON values: "do_sample=true&temperature=0.7&seed=3".
        let query: Map<String, Value> = [
            ("do_sample", "true"),
            ("temperature", "0.7"),
            ("seed", "3"),
            ("top_p", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::from_str(v).unwrap()))
        .collect();
        let g = GenerationDefaults::plain(64)
            .resolve(&GenerationParams::from_parameters(&query).unwrap())
            .unwrap();
        assert_eq!(
            g.sampling,
            Some(Sampling {
                temperature: 0.7,
                seed: Some(3),
                ..Sampling::default()
            })
        );
        // Each value of the wrong type is an error that names its parameter.
        for (v, name) in [
            (json!({"do_sample": true, "top_k": -1}), "top_k"),
            (json!({"do_sample": true, "top_k": 2.5}), "top_k"),
            (json!({"do_sample": "yes"}), "do_sample"),
            (json!({"seed": -3}), "seed"),
            (json!({"seed": 1.5}), "seed"),
            (json!({"seed": "abc"}), "seed"),
            (json!({"bad_words_ids": [1, 2]}), "bad_words_ids"),
            (json!({"sequence_bias": {"1": 1.0}}), "sequence_bias"),
            (json!({"forced_eos_token_id": "x"}), "forced_eos_token_id"),
            (
                json!({"exponential_decay_length_penalty": [3]}),
                "exponential_decay_length_penalty",
            ),
            (json!({"suppress_tokens": [-1]}), "suppress_tokens"),
        ] {
            let e = error(v.clone());
            assert!(e.contains(name), "{v}: {e}");
        }
        // Unknown names are errors listing the known ones.
        let e = error(json!({"temprature": 0.7}));
        assert!(
            e.contains("'temprature'") && e.contains("temperature, top_k"),
            "{e}"
        );
    }

    #[test]
    fn other_transformers_parameters() {
        // The rest of transformers' parameters: refused with a sentence, unless given at the
        // value that changes nothing.
        let e = error(json!({"num_return_sequences": 2}));
        assert!(
            e.starts_with("'num_return_sequences' is a transformers generate parameter that ferroserve does not support: "),
            "{e}"
        );
        assert!(e.contains("(accepted: 1)"), "{e}");
        for v in [
            json!({"num_return_sequences": 1, "output_scores": false, "return_dict_in_generate": false}),
            json!({"use_cache": false, "num_beam_groups": 1, "diversity_penalty": 0.0, "penalty_alpha": 0}),
            json!({"guidance_scale": 1.0, "low_memory": null, "constraints": null, "timeout": 3}),
        ] {
            assert_eq!(
                params(v.clone()).unwrap(),
                GenerationParams::default(),
                "{v}"
            );
        }
        for (v, name) in [
            (json!({"penalty_alpha": 0.6, "top_k": 4}), "penalty_alpha"),
            (json!({"num_beam_groups": 2}), "num_beam_groups"),
            (json!({"stop_strings": ["."]}), "stop_strings"),
            (json!({"eos_token_id": 1}), "eos_token_id"),
            (json!({"use_cache": "maybe"}), "use_cache"),
            (json!({"decoder_input_ids": [[0]]}), "decoder_input_ids"),
        ] {
            let e = error(v.clone());
            assert!(
                e.contains(&format!("'{name}' is a transformers generate parameter")),
                "{v}: {e}"
            );
        }
    }

    /// The names agree with the struct, and are none of the refused ones.
    #[test]
    fn names() {
        for name in NAMES {
            let one = Value::Object(Map::from_iter([(name.to_string(), Value::Null)]));
            serde_json::from_value::<GenerationParams>(one).unwrap();
            assert!(!UNSUPPORTED.iter().any(|u| u.name == *name), "{name}");
        }
        // model.yaml's `generation:` goes through the same checks (serde directly).
        let e =
            serde_json::from_value::<GenerationParams>(json!({"num_beam_groups": 4})).unwrap_err();
        assert!(
            e.to_string()
                .contains("'num_beam_groups' is a transformers"),
            "{e}"
        );
        let e =
            serde_json::from_value::<GenerationParams>(json!({"temperature": "hot"})).unwrap_err();
        assert!(e.to_string().starts_with("temperature: "), "{e}");
        let p: GenerationParams =
            serde_json::from_value(json!({"do_sample": true, "num_return_sequences": 1})).unwrap();
        assert_eq!(p.do_sample, Some(true));
    }

    /// generation_config.json's sampling defaults are read; request values win.
    #[test]
    fn sampling_defaults_from_generation_config() {
        let dir = std::env::temp_dir().join(format!("ferroserve-genconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("generation_config.json"),
            json!({
                "do_sample": true, "top_k": 10, "temperature": 0.5, "top_p": 0.9,
                "num_return_sequences": 1, "output_scores": false, "bad_words_ids": null,
                "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
                "num_beam_groups": 2, "transformers_version": "5.23.0"
            })
            .to_string(),
        )
        .unwrap();
        let overrides = GenerationParams {
            top_p: Some(0.8),
            ..GenerationParams::default()
        };
        let d = GenerationDefaults::load(&dir, &overrides, 64).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let s = d
            .resolve(&GenerationParams::default())
            .unwrap()
            .sampling
            .unwrap();
        assert_eq!((s.top_k, s.temperature, s.top_p), (10, 0.5, 0.8));
        let g = d
            .resolve(&params(json!({"do_sample": false})).unwrap())
            .unwrap();
        assert_eq!(g.sampling, None);
        let s = d
            .resolve(&params(json!({"temperature": 1.5, "seed": 9})).unwrap())
            .unwrap()
            .sampling
            .unwrap();
        assert_eq!((s.top_k, s.temperature, s.seed), (10, 1.5, Some(9)));
    }
}
