//! The checked settings of one generation: a request's parameters over the model's defaults,
//! with transformers' defaults for what neither sets, each within its bounds.

use std::time::Duration;

use super::{EarlyStopping, GenerationParams, TokenIds};
use crate::CandleError;

/// Most beams a request may ask for: each beam is a row of every decoder step.
pub const MAX_BEAMS: usize = 16;
/// Largest n of `no_repeat_ngram_size`.
pub const MAX_NGRAM: usize = 32;

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

impl Generation {
    /// The parameters `p` (a request's over the model's defaults) checked, with transformers'
    /// defaults for those it leaves out; `max_length_limit` is the longest output the model
    /// allows (counting the start token).
    pub(super) fn check(p: GenerationParams, max_length_limit: usize) -> Result<Self, CandleError> {
        let invalid = |m: String| Err(CandleError::Invalid(m));
        // A decoder start token always comes first.
        let prompt = 1;
        let max_length = match (p.max_new_tokens, p.max_length) {
            (Some(n), _) => n.saturating_add(prompt),
            (None, Some(n)) => n,
            // transformers' default.
            (None, None) => 20,
        };
        if max_length <= prompt {
            return invalid("max_length must be at least 2 (the start token and one more); max_new_tokens at least 1".into());
        }
        if max_length > max_length_limit {
            return invalid(format!(
                "max_length {max_length} is over this model's limit of {max_length_limit} tokens"
            ));
        }
        let min_length = match (p.min_new_tokens, p.min_length) {
            (Some(n), _) => n.saturating_add(prompt),
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
        let repetition_penalty = penalty("repetition_penalty", p.repetition_penalty)?;
        let length_penalty = p.length_penalty.unwrap_or(1.0);
        if !(length_penalty.is_finite() && length_penalty.abs() <= 100.0) {
            return invalid(format!(
                "length_penalty must be between -100 and 100, got {length_penalty}"
            ));
        }
        let no_repeat_ngram_size = ngram_size("no_repeat_ngram_size", p.no_repeat_ngram_size)?;
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
        let encoder_repetition_penalty =
            penalty("encoder_repetition_penalty", p.encoder_repetition_penalty)?;
        let encoder_no_repeat_ngram_size = ngram_size(
            "encoder_no_repeat_ngram_size",
            p.encoder_no_repeat_ngram_size,
        )?;
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

/// The penalty `name` (1, off, when not given): above 0 and at most 100.
fn penalty(name: &str, value: Option<f32>) -> Result<f32, CandleError> {
    let v = value.unwrap_or(1.0);
    if v.is_finite() && v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err(CandleError::Invalid(format!(
            "{name} must be above 0 and at most 100, got {v}"
        )))
    }
}

/// The n-gram size `name` (0, off, when not given): at most [`MAX_NGRAM`].
fn ngram_size(name: &str, value: Option<usize>) -> Result<usize, CandleError> {
    let n = value.unwrap_or(0);
    if n <= MAX_NGRAM {
        Ok(n)
    } else {
        Err(CandleError::Invalid(format!(
            "{name} must be at most {MAX_NGRAM}, got {n}"
        )))
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
    use serde_json::{json, Value};

    /// The settings of a request with the parameters `v` on a model with no defaults whose
    /// outputs may have 64 tokens.
    fn check(v: Value) -> Result<Generation, CandleError> {
        let p: GenerationParams = serde_json::from_value(v).unwrap();
        Generation::check(p, 64)
    }

    /// The message of the error `check` gives for `v`.
    fn error(v: Value) -> String {
        check(v).expect_err("an error").to_string()
    }

    #[test]
    fn lengths_and_beams_within_bounds() {
        let g = check(json!({"num_beams": 2, "max_new_tokens": 9})).unwrap();
        assert_eq!((g.num_beams, g.max_length), (2, 10));
        let e = error(json!({"num_beams": 17}));
        assert!(e.contains("num_beams"), "{e}");
        let e = error(json!({"max_length": 65}));
        assert!(e.contains("limit of 64"), "{e}");
        let e = error(json!({"min_length": 30, "max_length": 20}));
        assert!(e.contains("min_length"), "{e}");
        // The largest counts a client can send are over the limit, not wrapped round.
        let e = error(json!({"max_new_tokens": u64::MAX}));
        assert!(e.contains("limit of 64"), "{e}");
        let e = error(json!({"min_new_tokens": u64::MAX}));
        assert!(e.contains("min_length"), "{e}");
    }

    #[test]
    fn sampling_with_transformers_defaults_and_bounds() {
        // transformers' GenerationConfig defaults.
        let s = check(json!({"do_sample": true})).unwrap().sampling.unwrap();
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
        let g = check(json!({"do_sample": false, "temperature": 0.0, "top_p": 7})).unwrap();
        assert_eq!(g, Generation::default());
        // Beam sampling.
        let g = check(json!({"do_sample": true, "num_beams": 3})).unwrap();
        assert_eq!((g.num_beams, g.sampling.is_some()), (3, true));
        // top_k 0 turns it off; top_p 0 keeps the most likely token only (transformers accepts both).
        let s = check(json!({"do_sample": true, "top_k": 0, "top_p": 0}))
            .unwrap()
            .sampling
            .unwrap();
        assert_eq!((s.top_k, s.top_p), (0, 0.0));
        // Each value out of bounds is an error that names its parameter.
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
            (json!({"sequence_bias": [[[], 1.0]]}), "sequence_bias"),
        ] {
            let e = error(v.clone());
            assert!(e.contains(name), "{v}: {e}");
        }
    }

    #[test]
    fn other_transformers_parameters() {
        let g = check(json!({
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
        .unwrap();
        assert_eq!(g.max_time, Some(Duration::from_millis(1500)));
        assert_eq!(g.forced_eos_token_id, vec![1, 2]);
        assert_eq!(g.forced_bos_token_id, Some(3));
        assert_eq!(g.bad_words_ids, vec![vec![6], vec![7, 8]]);
        // A later bias of the same sequence wins, as in transformers' dict.
        assert_eq!(g.sequence_bias, vec![(vec![9], 0.5), (vec![10, 11], 2.0)]);
        assert_eq!(g.exponential_decay_length_penalty, Some((4, 1.25)));
        assert!(g.remove_invalid_values && g.renormalize_logits);
        let g = check(json!({"forced_eos_token_id": 1})).unwrap();
        assert_eq!(g.forced_eos_token_id, vec![1]);
    }
}
