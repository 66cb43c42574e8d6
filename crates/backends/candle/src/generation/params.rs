//! Generation parameters: what a request may set, the checkpoint's defaults, and their bounds.

use std::path::Path;

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

/// Parameters a request may set; each is optional and falls back to the model's default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationParams {
    /// Beams of beam search; 1 is greedy.
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
];

impl GenerationParams {
    /// Reads the generation parameters among a request's parameters (protocol ones such as
    /// `timeout` are skipped); an unknown name is an error that lists the known ones.
    pub fn from_parameters(parameters: &Map<String, Value>) -> Result<Self, CandleError> {
        crate::request::own_parameters(parameters, NAMES, "generation")
    }

    /// These parameters over `base`: each one set here wins.
    fn over(&self, base: &GenerationParams) -> GenerationParams {
        macro_rules! pick {
            ($($f:ident),*) => { GenerationParams { $($f: self.$f.or(base.$f)),* } };
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
            no_repeat_ngram_size
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
        // The file also holds fields this backend does not use (sampling, token ids).
        let from_file = if path.is_file() {
            let mut file: Map<String, Value> = crate::files::json(&path)?;
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
        Ok(Generation {
            num_beams,
            max_length,
            min_length,
            repetition_penalty,
            length_penalty,
            early_stopping: p.early_stopping.unwrap_or_default(),
            no_repeat_ngram_size,
        })
    }
}

/// Checked settings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Beams; 1 is greedy.
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
}
