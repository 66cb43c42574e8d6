//! Generation parameters: what a request may set, the checkpoint's defaults, and their bounds.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::CandleError;

/// Most beams a request may ask for: each beam is a row of every decoder step.
pub const MAX_BEAMS: usize = 16;
/// Largest n of `no_repeat_ngram_size`.
pub const MAX_NGRAM: usize = 32;

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
    fn to_vec(&self) -> Vec<u32> {
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
/// refused with a sentence each (see [`UNSUPPORTED`]), or accepted at the value that changes
/// nothing (`num_return_sequences: 1`); any other name is an error listing [`NAMES`].
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

/// A parameter of transformers' `generate` (or its `GenerationConfig`) that ferroserve does
/// not implement.
#[derive(Debug, Clone, Copy)]
pub struct Unsupported {
    /// The parameter.
    pub name: &'static str,
    /// Values (JSON) that change nothing and are therefore accepted; `null` always is.
    pub accepted: &'static [&'static str],
    /// Why not, and what to do instead.
    pub why: &'static str,
}

const fn no(
    name: &'static str,
    accepted: &'static [&'static str],
    why: &'static str,
) -> Unsupported {
    Unsupported {
        name,
        accepted,
        why,
    }
}

const OUTPUTS: &str = "the answer is the generated text; scores, logits, attentions and hidden states are not returned";
const ASSISTED: &str = "assisted (speculative) generation is not implemented";
const CODE: &str = "it takes Python code, which a request cannot carry";
const TOKEN_IDS: &str = "the token ids of the checkpoint's config.json are used";
const CACHE: &str = "the decoder always uses ferroserve's own key/value cache";
const GUIDANCE: &str = "classifier-free guidance of text generation (a second, unconditional decoder pass per step) is not implemented";
const CONSTRAINED: &str = "constrained beam search has left transformers for the Hub (custom_generate); bad_words_ids and sequence_bias steer the output instead";
const TEXT: &str = "the task tokenises the request's text itself";

/// Every other parameter transformers' `generate` accepts for an encoder-decoder model (its
/// arguments, `GenerationConfig`'s fields and the model inputs it passes on), each with the
/// reason it is refused. The one place these are listed.
pub const UNSUPPORTED: &[Unsupported] = &[
    // Decoding strategies transformers moved to the Hub, or that do not fit this model.
    no("num_beam_groups", &["1"], "group (diverse) beam search has left transformers for the Hub (custom_generate); use num_beams, or do_sample for varied outputs"),
    no("diversity_penalty", &["0"], "it belongs to group beam search (num_beam_groups), which is not implemented"),
    no("penalty_alpha", &["0"], "contrastive search has left transformers for the Hub (custom_generate); use greedy or beam search, or do_sample"),
    no("low_memory", &["false"], "it belongs to contrastive search (penalty_alpha), which is not implemented"),
    no("dola_layers", &[], "DoLa decoding is for decoder-only models"),
    no("constraints", &[], CONSTRAINED),
    no("force_words_ids", &[], CONSTRAINED),
    no("guidance_scale", &["1"], GUIDANCE),
    no("negative_prompt_ids", &[], GUIDANCE),
    no("negative_prompt_attention_mask", &[], GUIDANCE),
    no("watermarking_config", &[], "watermarking is not implemented"),
    no("token_healing", &["false"], "token healing re-tokenises a decoder-only model's prompt; a text-to-text model has none"),
    no("stop_strings", &[], "stopping at a string needs the tokenizer inside the decoding loop; use max_new_tokens, or cut the text afterwards"),
    // What comes back.
    no("num_return_sequences", &["1"], "one output comes back per input; send the input again (with another seed) for more samples"),
    no("output_scores", &["false"], OUTPUTS),
    no("output_logits", &["false"], OUTPUTS),
    no("output_attentions", &["false"], OUTPUTS),
    no("output_hidden_states", &["false"], OUTPUTS),
    no("return_dict_in_generate", &["false"], OUTPUTS),
    no("streamer", &[], "the answer comes whole, not streamed"),
    // Special tokens.
    no("pad_token_id", &[], TOKEN_IDS),
    no("bos_token_id", &[], TOKEN_IDS),
    no("eos_token_id", &[], TOKEN_IDS),
    no("decoder_start_token_id", &[], TOKEN_IDS),
    // How the work is done: these change no output.
    no("use_cache", &["true", "false"], "the output is the same with or without a cache (ferroserve always uses one)"),
    no("disable_compile", &["true", "false"], "the model is never compiled, so there is nothing to disable"),
    no("cache_implementation", &[], CACHE),
    no("cache_config", &[], CACHE),
    no("max_cache_len", &[], CACHE),
    no("prefill_chunk_size", &[], "prefill chunking is for decoder-only prompts; the encoder reads the whole input at once"),
    no("compile_config", &[], "the model is not compiled (torch.compile has no counterpart here)"),
    no("continuous_batching_config", &[], "requests are batched by the server (dynamic_batching in model.yaml)"),
    no("synced_gpus", &["false"], "it is for DeepSpeed ZeRO-3 / FSDP runs over several GPUs; each replica generates on its own device"),
    // Assisted generation.
    no("assistant_model", &[], ASSISTED),
    no("assistant_tokenizer", &[], ASSISTED),
    no("is_assistant", &["false"], ASSISTED),
    no("num_assistant_tokens", &[], ASSISTED),
    no("num_assistant_tokens_schedule", &[], ASSISTED),
    no("assistant_confidence_threshold", &[], ASSISTED),
    no("assistant_early_exit", &[], ASSISTED),
    no("assistant_lookbehind", &[], ASSISTED),
    no("target_lookbehind", &[], ASSISTED),
    no("assistant_ensemble_weight", &[], ASSISTED),
    no("prompt_lookup_num_tokens", &[], ASSISTED),
    no("max_matching_ngram_size", &[], ASSISTED),
    no("speculation_type", &[], ASSISTED),
    no("use_mtp", &["false"], ASSISTED),
    // Arguments that are Python objects or code.
    no("generation_config", &[], "give its fields as parameters of their own"),
    no("logits_processor", &[], CODE),
    no("stopping_criteria", &[], CODE),
    no("prefix_allowed_tokens_fn", &[], CODE),
    no("custom_generate", &[], CODE),
    no("trust_remote_code", &[], CODE),
    no("tokenizer", &[], TEXT),
    // Model inputs `generate` passes on.
    no("inputs", &[], TEXT),
    no("input_ids", &[], TEXT),
    no("attention_mask", &[], TEXT),
    no("encoder_outputs", &[], "the encoder runs on the request's text"),
    no("decoder_input_ids", &[], "a decoder prompt is not supported: every output starts with the decoder start token alone"),
    no("decoder_attention_mask", &[], "a decoder prompt is not supported: every output starts with the decoder start token alone"),
];

/// The refusal of `name`, if it is one of [`UNSUPPORTED`] given at a value that would change
/// something.
fn refusal(name: &str, value: &Value) -> Option<String> {
    let entry = UNSUPPORTED.iter().find(|u| u.name == name)?;
    let same = |literal: &&str| match (serde_json::from_str::<Value>(literal), value) {
        (Ok(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Ok(a), b) => &a == b,
        (Err(_), _) => false,
    };
    if value.is_null() || entry.accepted.iter().any(same) {
        return None;
    }
    let mut message = format!(
        "'{name}' is a transformers generate parameter that ferroserve does not support: {}",
        entry.why
    );
    if !entry.accepted.is_empty() {
        message.push_str(&format!(" (accepted: {})", entry.accepted.join(" or ")));
    }
    Some(message)
}

/// Takes out of `map` the transformers parameters given at values that change nothing; any
/// other one is an error that says why it is not supported.
fn screen(map: &mut Map<String, Value>) -> Result<(), String> {
    let mut harmless = Vec::new();
    for (k, v) in map.iter() {
        if UNSUPPORTED.iter().any(|u| u.name == k) {
            match refusal(k, v) {
                Some(message) => return Err(message),
                None => harmless.push(k.clone()),
            }
        }
    }
    for k in harmless {
        map.remove(&k);
    }
    Ok(())
}

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
        let p = request.over(&self.defaults);
        let invalid = |m: String| Err(CandleError::Invalid(m));
        // A decoder start token always comes first.
        let prompt = 1;
        let max_length = match (p.max_new_tokens, p.max_length) {
            (Some(n), _) => n + prompt,
            (None, Some(n)) => n,
            // transformers' default.
            (None, None) => 20,
        };
        if max_length <= prompt {
            return invalid("max_length must be at least 2 (the start token and one more); max_new_tokens at least 1".into());
        }
        if max_length > self.max_length_limit {
            return invalid(format!(
                "max_length {max_length} is over this model's limit of {} tokens",
                self.max_length_limit
            ));
        }
        let min_length = match (p.min_new_tokens, p.min_length) {
            (Some(n), _) => n + prompt,
            (None, Some(n)) => n,
            (None, None) => 0,
        };
        if min_length > max_length {
            return invalid(format!(
                "min_length {min_length} is over max_length {max_length}"
            ));
        }
        let num_beams = p.num_beams.unwrap_or(1);
        if num_beams == 0 || num_beams > MAX_BEAMS {
            return invalid(format!(
                "num_beams must be between 1 and {MAX_BEAMS}, got {num_beams}"
            ));
        }
        let repetition_penalty = p.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty.is_finite()
            && repetition_penalty > 0.0
            && repetition_penalty <= 100.0)
        {
            return invalid(format!(
                "repetition_penalty must be above 0 and at most 100, got {repetition_penalty}"
            ));
        }
        let length_penalty = p.length_penalty.unwrap_or(1.0);
        if !(length_penalty.is_finite() && length_penalty.abs() <= 100.0) {
            return invalid(format!(
                "length_penalty must be between -100 and 100, got {length_penalty}"
            ));
        }
        let no_repeat_ngram_size = p.no_repeat_ngram_size.unwrap_or(0);
        if no_repeat_ngram_size > MAX_NGRAM {
            return invalid(format!(
                "no_repeat_ngram_size must be at most {MAX_NGRAM}, got {no_repeat_ngram_size}"
            ));
        }
        let sampling = if p.do_sample.unwrap_or(false) {
            Some(Sampling::check(&p)?)
        } else {
            None
        };
        let max_time = match p.max_time {
            None => None,
            Some(t) => Some(Duration::try_from_secs_f64(t).map_err(|_| {
                CandleError::Invalid(format!(
                    "max_time must be a number of seconds from 0, got {t}"
                ))
            })?),
        };
        let encoder_repetition_penalty = p.encoder_repetition_penalty.unwrap_or(1.0);
        if !(encoder_repetition_penalty.is_finite()
            && encoder_repetition_penalty > 0.0
            && encoder_repetition_penalty <= 100.0)
        {
            return invalid(format!(
                "encoder_repetition_penalty must be above 0 and at most 100, got {encoder_repetition_penalty}"
            ));
        }
        let encoder_no_repeat_ngram_size = p.encoder_no_repeat_ngram_size.unwrap_or(0);
        if encoder_no_repeat_ngram_size > MAX_NGRAM {
            return invalid(format!(
                "encoder_no_repeat_ngram_size must be at most {MAX_NGRAM}, got {encoder_no_repeat_ngram_size}"
            ));
        }
        let bad_words_ids = match p.bad_words_ids {
            None => Vec::new(),
            Some(lists) if !lists.is_empty() && lists.iter().all(|l| !l.is_empty()) => lists,
            Some(_) => {
                return invalid(
                    "bad_words_ids must be a non-empty list of non-empty lists of token ids".into(),
                )
            }
        };
        let sequence_bias = match p.sequence_bias {
            None => Vec::new(),
            Some(pairs) => {
                if pairs.is_empty()
                    || pairs
                        .iter()
                        .any(|(ids, bias)| ids.is_empty() || !bias.is_finite())
                {
                    return invalid("sequence_bias must be a non-empty list of [[token ids], bias] pairs, each with at least one token and a finite bias".into());
                }
                // transformers turns the list into a dict: a later pair wins over an earlier one.
                let mut unique: Vec<(Vec<u32>, f32)> = Vec::with_capacity(pairs.len());
                for (ids, bias) in pairs {
                    match unique.iter_mut().find(|(u, _)| *u == ids) {
                        Some(pair) => pair.1 = bias,
                        None => unique.push((ids, bias)),
                    }
                }
                unique
            }
        };
        if let Some((_, factor)) = p.exponential_decay_length_penalty {
            if !factor.is_finite() {
                return invalid(format!(
                    "exponential_decay_length_penalty's factor must be a finite number, got {factor}"
                ));
            }
        }
        Ok(Generation {
            num_beams,
            max_length,
            min_length,
            repetition_penalty,
            length_penalty,
            early_stopping: p.early_stopping.unwrap_or_default(),
            no_repeat_ngram_size,
            sampling,
            max_time,
            encoder_repetition_penalty,
            encoder_no_repeat_ngram_size,
            bad_words_ids,
            sequence_bias,
            forced_bos_token_id: p.forced_bos_token_id,
            forced_eos_token_id: p
                .forced_eos_token_id
                .as_ref()
                .map(TokenIds::to_vec)
                .unwrap_or_default(),
            remove_invalid_values: p.remove_invalid_values.unwrap_or(false),
            exponential_decay_length_penalty: p.exponential_decay_length_penalty,
            suppress_tokens: p.suppress_tokens.unwrap_or_default(),
            begin_suppress_tokens: p.begin_suppress_tokens.unwrap_or_default(),
            renormalize_logits: p.renormalize_logits.unwrap_or(false),
        })
    }
}

/// Checked settings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Beams; 1 is greedy (or plain sampling).
    pub num_beams: usize,
    /// Longest output, counting the start token.
    pub max_length: usize,
    /// End-of-sequence is forbidden while the output is shorter (counting the start token).
    pub min_length: usize,
    /// Repetition penalty (1: off).
    pub repetition_penalty: f32,
    /// Length normalisation exponent of beam search.
    pub length_penalty: f32,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
    /// No n-gram of this size twice (0: off).
    pub no_repeat_ngram_size: usize,
    /// How tokens are drawn when `do_sample` is true; `None` is greedy or beam search.
    pub sampling: Option<Sampling>,
    /// When the outputs end where they are.
    pub max_time: Option<Duration>,
    /// Penalty on the input's tokens (1: off).
    pub encoder_repetition_penalty: f32,
    /// No n-gram of the input of this size (0: off).
    pub encoder_no_repeat_ngram_size: usize,
    /// Token sequences never generated.
    pub bad_words_ids: Vec<Vec<u32>>,
    /// Token sequences and the bias of their last token (each sequence once).
    pub sequence_bias: Vec<(Vec<u32>, f32)>,
    /// The token after the start token.
    pub forced_bos_token_id: Option<u32>,
    /// The tokens allowed last when `max_length` is reached (empty: off).
    pub forced_eos_token_id: Vec<u32>,
    /// NaN and infinite scores made finite.
    pub remove_invalid_values: bool,
    /// Generated tokens after which the end-of-sequence score grows, and by what factor.
    pub exponential_decay_length_penalty: Option<(usize, f32)>,
    /// Tokens never generated.
    pub suppress_tokens: Vec<u32>,
    /// Tokens not generated first.
    pub begin_suppress_tokens: Vec<u32>,
    /// Scores turned back into log-probabilities after processing (beam search).
    pub renormalize_logits: bool,
}

impl Default for Generation {
    /// transformers' defaults: greedy search of at most 20 tokens.
    fn default() -> Self {
        Self {
            num_beams: 1,
            max_length: 20,
            min_length: 0,
            repetition_penalty: 1.0,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            no_repeat_ngram_size: 0,
            sampling: None,
            max_time: None,
            encoder_repetition_penalty: 1.0,
            encoder_no_repeat_ngram_size: 0,
            bad_words_ids: Vec::new(),
            sequence_bias: Vec::new(),
            forced_bos_token_id: None,
            forced_eos_token_id: Vec::new(),
            remove_invalid_values: false,
            exponential_decay_length_penalty: None,
            suppress_tokens: Vec::new(),
            begin_suppress_tokens: Vec::new(),
            renormalize_logits: false,
        }
    }
}

/// Checked sampling settings: transformers' logits warpers, applied in this order after the
/// other processors, then a multinomial draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Divides the logits (1: off).
    pub temperature: f32,
    /// Top-H's entropy coefficient.
    pub top_h: Option<f32>,
    /// Tokens kept (0: off).
    pub top_k: usize,
    /// Probability mass kept (1: off).
    pub top_p: f32,
    /// Least probability kept, relative to the most likely token's.
    pub min_p: Option<f32>,
    /// Typical decoding's mass (1: off).
    pub typical_p: f32,
    /// Least probability kept (0: off).
    pub epsilon_cutoff: f32,
    /// Eta-sampling's epsilon (0: off).
    pub eta_cutoff: f32,
    /// Seed of every input's generator; `None`: a random one each.
    pub seed: Option<u64>,
}

impl Default for Sampling {
    /// transformers' defaults: `top_k` 50, the other warpers off.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_h: None,
            top_k: 50,
            top_p: 1.0,
            min_p: None,
            typical_p: 1.0,
            epsilon_cutoff: 0.0,
            eta_cutoff: 0.0,
            seed: None,
        }
    }
}

impl Sampling {
    /// The sampling parameters of `p` over transformers' defaults, with transformers' bounds.
    fn check(p: &GenerationParams) -> Result<Self, CandleError> {
        let d = Self::default();
        let invalid = |m: String| Err(CandleError::Invalid(m));
        let temperature = p.temperature.unwrap_or(d.temperature);
        if !(temperature.is_finite() && temperature > 0.0) {
            return invalid(format!(
                "temperature must be above 0 (for greedy decoding, set do_sample to false), got {temperature}"
            ));
        }
        let unit = |name: &str, v: f32, zero: bool, one: bool| {
            let ok = (v > 0.0 || (zero && v == 0.0)) && (v < 1.0 || (one && v == 1.0));
            if ok {
                Ok(v)
            } else {
                let (lo, hi) = (
                    if zero { "[0" } else { "(0" },
                    if one { "1]" } else { "1)" },
                );
                Err(CandleError::Invalid(format!(
                    "{name} must be in {lo}, {hi}, got {v}"
                )))
            }
        };
        let top_p = unit("top_p", p.top_p.unwrap_or(d.top_p), true, true)?;
        let typical_p = unit("typical_p", p.typical_p.unwrap_or(d.typical_p), false, true)?;
        let epsilon_cutoff = unit(
            "epsilon_cutoff",
            p.epsilon_cutoff.unwrap_or(d.epsilon_cutoff),
            true,
            false,
        )?;
        let eta_cutoff = unit(
            "eta_cutoff",
            p.eta_cutoff.unwrap_or(d.eta_cutoff),
            true,
            false,
        )?;
        let min_p = p.min_p.map(|v| unit("min_p", v, true, true)).transpose()?;
        let top_h = p.top_h.map(|v| unit("top_h", v, false, true)).transpose()?;
        Ok(Self {
            temperature,
            top_h,
            top_k: p.top_k.unwrap_or(d.top_k),
            top_p,
            min_p,
            typical_p,
            epsilon_cutoff,
            eta_cutoff,
            seed: p.seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Result<GenerationParams, CandleError> {
        GenerationParams::from_parameters(v.as_object().unwrap())
    }

    #[test]
    fn request_over_defaults_with_bounds() {
        let d = GenerationDefaults::plain(64);
        let g = d
            .resolve(&params(json!({"num_beams": 2, "max_new_tokens": 9, "timeout": 5})).unwrap())
            .unwrap();
        assert_eq!((g.num_beams, g.max_length), (2, 10));
        let e = d
            .resolve(&params(json!({"num_beams": 17})).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("num_beams"), "{e}");
        let e = d
            .resolve(&params(json!({"max_length": 65})).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("limit of 64"), "{e}");
        let e = d
            .resolve(&params(json!({"min_length": 30, "max_length": 20})).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("min_length"), "{e}");
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
    }

    /// The message of the error `params` or `resolve` gives for `v`.
    fn error(v: Value) -> String {
        match params(v) {
            Err(e) => e.to_string(),
            Ok(p) => GenerationDefaults::plain(64)
                .resolve(&p)
                .expect_err("an error")
                .to_string(),
        }
    }

    #[test]
    fn sampling_parameters_with_transformers_defaults_and_bounds() {
        let d = GenerationDefaults::plain(64);
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
        let g = d
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
        // transformers' GenerationConfig defaults.
        let s = d
            .resolve(&params(json!({"do_sample": true})).unwrap())
            .unwrap()
            .sampling
            .unwrap();
        assert_eq!(
            (s.temperature, s.top_k, s.top_p, s.typical_p),
            (1.0, 50, 1.0, 1.0)
        );
        assert_eq!(
            (s.min_p, s.top_h, s.epsilon_cutoff, s.eta_cutoff),
            (None, None, 0.0, 0.0)
        );
        // `do_sample: false` is today's search, and sampling parameters are then ignored (as
        // transformers only warns), even out of their bounds.
        let g = d
            .resolve(&params(json!({"do_sample": false, "temperature": 0.0, "top_p": 7})).unwrap())
            .unwrap();
        assert_eq!(g, Generation::default());
        // Beam sampling.
        let g = d
            .resolve(&params(json!({"do_sample": true, "num_beams": 3})).unwrap())
            .unwrap();
        assert_eq!((g.num_beams, g.sampling.is_some()), (3, true));
        // top_k 0 turns it off; top_p 0 keeps the most likely token only (transformers accepts both).
        let s = d
            .resolve(&params(json!({"do_sample": true, "top_k": 0, "top_p": 0})).unwrap())
            .unwrap()
            .sampling
            .unwrap();
        assert_eq!((s.top_k, s.top_p), (0, 0.0));
        // Each bad value is an error that names its parameter.
        for (v, name) in [
            (json!({"do_sample": true, "temperature": 0}), "temperature"),
            (
                json!({"do_sample": true, "temperature": -1.5}),
                "temperature",
            ),
            (json!({"do_sample": true, "top_p": 1.5}), "top_p"),
            (json!({"do_sample": true, "top_p": -0.1}), "top_p"),
            (json!({"do_sample": true, "typical_p": 0}), "typical_p"),
            (json!({"do_sample": true, "min_p": 2}), "min_p"),
            (json!({"do_sample": true, "top_h": 0}), "top_h"),
            (
                json!({"do_sample": true, "epsilon_cutoff": 1}),
                "epsilon_cutoff",
            ),
            (json!({"do_sample": true, "eta_cutoff": -0.5}), "eta_cutoff"),
            (json!({"do_sample": true, "top_k": -1}), "top_k"),
            (json!({"do_sample": true, "top_k": 2.5}), "top_k"),
            (json!({"do_sample": "yes"}), "do_sample"),
            (json!({"seed": -3}), "seed"),
            (json!({"seed": 1.5}), "seed"),
            (json!({"seed": "abc"}), "seed"),
            (json!({"max_time": -1}), "max_time"),
            (json!({"max_time": 1e300}), "max_time"),
            (
                json!({"encoder_repetition_penalty": 0}),
                "encoder_repetition_penalty",
            ),
            (
                json!({"encoder_no_repeat_ngram_size": 33}),
                "encoder_no_repeat_ngram_size",
            ),
            (json!({"bad_words_ids": []}), "bad_words_ids"),
            (json!({"bad_words_ids": [[1], []]}), "bad_words_ids"),
            (json!({"bad_words_ids": [1, 2]}), "bad_words_ids"),
            (json!({"sequence_bias": [[[], 1.0]]}), "sequence_bias"),
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
    }

    #[test]
    fn other_transformers_parameters() {
        let d = GenerationDefaults::plain(64);
        let g = d
            .resolve(
                &params(json!({
                    "max_time": 1.5,
                    "forced_eos_token_id": [1, 2],
                    "forced_bos_token_id": 3,
                    "suppress_tokens": [4],
                    "begin_suppress_tokens": [5],
                    "bad_words_ids": [[6], [7, 8]],
                    "sequence_bias": [[[9], -1.0], [[10, 11], 2.0], [[9], 0.5]],
                    "exponential_decay_length_penalty": [4, 1.25],
                    "encoder_repetition_penalty": 1.2,
                    "encoder_no_repeat_ngram_size": 3,
                    "remove_invalid_values": true,
                    "renormalize_logits": true,
                }))
                .unwrap(),
            )
            .unwrap();
        assert_eq!(g.max_time, Some(Duration::from_millis(1500)));
        assert_eq!(g.forced_eos_token_id, vec![1, 2]);
        assert_eq!(g.forced_bos_token_id, Some(3));
        assert_eq!(g.bad_words_ids, vec![vec![6], vec![7, 8]]);
        // A later bias of the same sequence wins, as in transformers' dict.
        assert_eq!(g.sequence_bias, vec![(vec![9], 0.5), (vec![10, 11], 2.0)]);
        assert_eq!(g.exponential_decay_length_penalty, Some((4, 1.25)));
        assert!(g.remove_invalid_values && g.renormalize_logits);
        let g = d
            .resolve(&params(json!({"forced_eos_token_id": 1})).unwrap())
            .unwrap();
        assert_eq!(g.forced_eos_token_id, vec![1]);

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
        // Unknown names stay errors listing the known ones.
        let e = error(json!({"temprature": 0.7}));
        assert!(
            e.contains("'temprature'") && e.contains("temperature, top_k"),
            "{e}"
        );
    }

    /// The name lists agree with the struct, and with each other.
    #[test]
    fn names_and_refusals() {
        for name in NAMES {
            let one = Value::Object(Map::from_iter([(name.to_string(), Value::Null)]));
            serde_json::from_value::<GenerationParams>(one).unwrap();
            assert!(!UNSUPPORTED.iter().any(|u| u.name == *name), "{name}");
        }
        let mut seen = std::collections::HashSet::new();
        for u in UNSUPPORTED {
            assert!(seen.insert(u.name), "{} twice", u.name);
            for literal in u.accepted {
                let v: Value = serde_json::from_str(literal).unwrap();
                assert!(refusal(u.name, &v).is_none(), "{}: {literal}", u.name);
            }
            // A value that does change something.
            assert!(refusal(u.name, &json!("something")).is_some(), "{}", u.name);
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
