//! Text in: tokenising with a Hugging Face `tokenizer.json`, truncation, grouping into batches
//! under a token budget, and the padded id tensors the model takes.

use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use ferroserve_core::{DataType, Error, NamedTensor, Result, Signature, Tensor};
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::config::TextConfig;
use crate::files::Files;
use crate::image::names;

/// One tokenised text.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Whether the text was cut to the longest input.
    pub truncated: bool,
}

/// Tokenising resolved against a model's inputs.
pub(crate) struct TextPipeline {
    tokenizer: Tokenizer,
    /// Tokens an input keeps (the truncation length).
    max_length: usize,
    pub max_batch_tokens: usize,
    pub max_inputs: usize,
    ids: (String, DataType),
    mask: Option<(String, DataType)>,
    types: Option<(String, DataType)>,
}

impl TextPipeline {
    pub fn new(
        config: &TextConfig,
        files: &Files,
        model: &Signature,
    ) -> std::result::Result<Self, String> {
        let path = files.find(&config.tokenizer)?;
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| format!("{}: not a usable tokenizer.json: {e}", path.display()))?;
        let max_length = match config.max_length {
            Some(n) => n,
            None => default_max_length(files, &tokenizer).min(config.max_batch_tokens),
        };
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        if max_length <= special {
            return Err(format!(
                "text.max_length {max_length} leaves no room for text: the tokenizer adds {special} special tokens"
            ));
        }
        if max_length > config.max_batch_tokens {
            return Err(format!(
                "text.max_length {max_length} is more than text.max_batch_tokens {}, so the longest input could never run",
                config.max_batch_tokens
            ));
        }
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| format!("{}: cannot truncate to {max_length}: {e}", path.display()))?;
        tokenizer.with_padding(None);
        let mut ids = None;
        let mut mask = None;
        let mut types = None;
        for spec in &model.inputs {
            let slot = match spec.name.as_str() {
                "input_ids" => &mut ids,
                "attention_mask" => &mut mask,
                "token_type_ids" => &mut types,
                other => {
                    return Err(format!(
                        "the model has an input '{other}' a text task cannot fill (it fills input_ids, attention_mask and token_type_ids)"
                    ))
                }
            };
            if !matches!(spec.datatype, DataType::Int64 | DataType::Int32)
                || spec.shape.len() != 2
                || spec.shape[1] >= 0
            {
                return Err(format!(
                    "input '{}' is {} {:?}; a text task fills INT64 or INT32 inputs of shape [batch, tokens] with a dynamic token dimension",
                    spec.name, spec.datatype, spec.shape
                ));
            }
            *slot = Some((spec.name.clone(), spec.datatype));
        }
        let ids = ids.ok_or_else(|| {
            format!(
                "the model has no 'input_ids' input (inputs: {})",
                names(&model.inputs)
            )
        })?;
        Ok(Self {
            tokenizer,
            max_length,
            max_batch_tokens: config.max_batch_tokens,
            max_inputs: config.max_inputs,
            ids,
            mask,
            types,
        })
    }

    /// The inputs the scheduler pads to the longest in a batch, with their padding value.
    pub fn padded_inputs(&self) -> Vec<(String, f64)> {
        [Some(&self.ids), self.mask.as_ref(), self.types.as_ref()]
            .into_iter()
            .flatten()
            .map(|(n, _)| (n.clone(), 0.0))
            .collect()
    }

    /// Tokenises text `index` of a request.
    pub fn encode(&self, index: usize, text: &str) -> Result<Encoded> {
        if text.is_empty() {
            return Err(Error::invalid(format!("input {index} is an empty string")));
        }
        let (enc, cut) = self
            .encode_bounded(text)
            .map_err(|e| Error::invalid(format!("input {index} could not be tokenised: {e}")))?;
        if enc.get_ids().is_empty() {
            return Err(Error::invalid(format!(
                "input {index} has no tokens once tokenised"
            )));
        }
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            truncated: cut || !enc.get_overflowing().is_empty(),
        })
    }

    /// Tokenises no more of `text` than truncation keeps: growing prefixes, each ending at a
    /// whitespace boundary, until one yields more tokens than `max_length` (then the kept
    /// tokens are those of the whole text) or the prefix is the whole text. Tokenising a 20 MB
    /// text whole to keep its first 256 tokens would cost gigabytes and tens of seconds.
    /// Also says whether a prefix was cut off.
    fn encode_bounded(&self, text: &str) -> tokenizers::Result<(tokenizers::Encoding, bool)> {
        let mut len = self.max_length.saturating_mul(16).max(4096);
        loop {
            let end = prefix_end(text, len);
            let enc = self.tokenizer.encode(&text[..end], true)?;
            if end == text.len() || !enc.get_overflowing().is_empty() {
                return Ok((enc, end < text.len()));
            }
            len = len.saturating_mul(4);
        }
    }

    /// Token ids back to text, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::internal(format!("cannot decode the model's tokens: {e}")))
    }

    /// Splits `encoded` (in order) into runs that each fit `max_rows` rows and the token budget
    /// once padded to their longest member.
    pub fn chunks(&self, encoded: &[Encoded], max_rows: usize) -> Vec<Range<usize>> {
        chunks(
            encoded.iter().map(|e| e.ids.len()),
            max_rows,
            self.max_batch_tokens,
        )
    }

    /// The model inputs for `encoded`, padded to the longest with zeros.
    pub fn tensors(&self, encoded: &[Encoded]) -> Result<Vec<NamedTensor>> {
        let longest = encoded.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let build = |(name, dtype): &(String, DataType), value: &dyn Fn(&Encoded, usize) -> i64| {
            let mut data = Vec::with_capacity(encoded.len() * longest * 8);
            for e in encoded {
                for t in 0..longest {
                    let v = if t < e.ids.len() { value(e, t) } else { 0 };
                    match dtype {
                        DataType::Int32 => data.extend_from_slice(&(v as i32).to_le_bytes()),
                        _ => data.extend_from_slice(&v.to_le_bytes()),
                    }
                }
            }
            let tensor = Tensor::new(*dtype, vec![encoded.len(), longest], Bytes::from(data))
                .map_err(|e| Error::internal(e.to_string()))?;
            Ok::<_, Error>(NamedTensor {
                name: name.clone(),
                tensor,
            })
        };
        let mut out = vec![build(&self.ids, &|e, t| e.ids[t] as i64)?];
        if let Some(m) = &self.mask {
            out.push(build(m, &|_, _| 1)?);
        }
        if let Some(ty) = &self.types {
            out.push(build(ty, &|e, t| {
                e.type_ids.get(t).map_or(0, |&v| v as i64)
            })?);
        }
        Ok(out)
    }
}

/// `max_seq_length` of sentence-transformers, else the tokenizer's truncation, else the
/// model's position limit, else 512.
fn default_max_length(files: &Files, tokenizer: &Tokenizer) -> usize {
    let json_field = |file: &str, field: &str| -> Option<usize> {
        let path = files.try_find(file)?;
        read_json(&path)?.get(field)?.as_u64().map(|n| n as usize)
    };
    // T5 checkpoints have no absolute positions, but were trained on 512 tokens, transformers'
    // limit for them; a longer input is slow, not better.
    let positions = json_field("config.json", "max_position_embeddings")
        .or_else(|| json_field("config.json", "n_positions"))
        .or_else(|| {
            let path = files.try_find("config.json")?;
            (read_json(&path)?.get("model_type")?.as_str()? == "t5").then_some(512)
        });
    // transformers writes a huge model_max_length (1e30) for "no limit" (T5's relative
    // positions have none): then only the token budget bounds an input.
    let tokenizer_limit = || {
        let path = files.try_find("tokenizer_config.json")?;
        let n = read_json(&path)?.get("model_max_length")?.as_f64()?;
        Some(if n >= 1e6 { usize::MAX } else { n as usize })
    };
    json_field("sentence_bert_config.json", "max_seq_length")
        .or_else(|| tokenizer.get_truncation().map(|t| t.max_length))
        .or_else(tokenizer_limit)
        .or(positions)
        .unwrap_or(512)
        .min(positions.unwrap_or(usize::MAX))
}

/// The end (a byte index) of the longest prefix of `text` of at most `len` bytes that ends just
/// before whitespace, so no word is cut; a prefix cut inside the first word that long when
/// there is none; the whole text when it is no longer.
fn prefix_end(text: &str, len: usize) -> usize {
    if text.len() <= len {
        return text.len();
    }
    let mut end = len;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text[..end].rfind(char::is_whitespace) {
        Some(i) if i > 0 => i,
        _ => end,
    }
}

pub(crate) fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Splits items of the given lengths, in order, into runs of at most `max_rows` whose rows
/// times their longest length stay within `budget`.
fn chunks(
    lengths: impl Iterator<Item = usize>,
    max_rows: usize,
    budget: usize,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut longest = 0;
    let mut end = 0;
    for (i, len) in lengths.enumerate() {
        let rows = i - start + 1;
        if i > start && (rows > max_rows || rows * longest.max(len) > budget) {
            out.push(start..i);
            start = i;
            longest = 0;
        }
        longest = longest.max(len);
        end = i + 1;
    }
    if start < end {
        out.push(start..end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_before_whitespace() {
        assert_eq!(prefix_end("short", 10), 5);
        assert_eq!(prefix_end("one two three", 9), 7);
        assert_eq!(prefix_end("onetwothree", 5), 5);
        // Never inside a multi-byte character.
        assert_eq!(prefix_end("ééé", 3), 2);
    }

    #[test]
    fn chunks_respect_rows_and_tokens() {
        let lengths = [10, 10, 10, 50, 10];
        assert_eq!(chunks(lengths.into_iter(), 32, 100), [0..3, 3..5]);
        assert_eq!(chunks(lengths.into_iter(), 2, 100), [0..2, 2..4, 4..5]);
        assert!(chunks(std::iter::empty(), 2, 100).is_empty());
    }
}
