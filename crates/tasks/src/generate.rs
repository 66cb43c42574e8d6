//! The generative tasks: `summarization` (text in, text out, on a text-to-text model) and
//! `text-to-image` (a prompt in, an image out, on a diffusion pipeline).
//!
//! The task tokenises and decodes; the model's backend generates. Per-request values that must
//! travel with each row (negative prompt, seed) become input tensors, so requests that share
//! their other parameters batch together.

use bytes::Bytes;
use ferroserve_core::{DataType, Error, NamedTensor, Parameters, Result, Signature, Tensor};
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::config::TextConfig;
use crate::files::Files;
use crate::text::{read_json, TextPipeline};
use crate::{find, named, prepare_texts_with, ranges, Plan, Prepared};

/// Text a model generated for one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The generated text, special tokens removed.
    pub text: String,
    /// Whether the input was cut to the model's longest input first.
    pub truncated: bool,
}

/// An image a model generated for one prompt: 8-bit RGB, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `height * width * 3` bytes.
    pub rgb: Vec<u8>,
    /// Whether the prompt was cut to the text encoder's length first.
    pub truncated: bool,
}

impl GeneratedImage {
    /// The image as a PNG file.
    pub fn png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut out),
            &self.rgb,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::internal(format!("cannot encode the image as PNG: {e}")))?;
        Ok(out)
    }
}

/// Name of the model input of generated ids (text-to-text models).
const OUTPUT_IDS: &str = "output_ids";
/// Names of the diffusion model's inputs and output.
const INPUT_IDS: &str = "input_ids";
const NEGATIVE_IDS: &str = "negative_ids";
const SEED: &str = "seed";
const IMAGE: &str = "image";

/// Summarization: an optional prefix (T5's `summarize: `), tokenising and decoding.
pub(crate) struct Summarizer {
    pub text: TextPipeline,
    prefix: String,
}

impl Summarizer {
    pub fn new(
        config: &TextConfig,
        files: &Files,
        model: &Signature,
    ) -> std::result::Result<Self, String> {
        if model.output(OUTPUT_IDS).is_none() {
            return Err(format!(
                "summarization needs a text-to-text model with an '{OUTPUT_IDS}' output (backend: candle)"
            ));
        }
        let text = TextPipeline::new(config, files, model)?;
        // transformers' summarization pipeline puts the checkpoint's prefix before each text.
        let prefix = files
            .try_find("config.json")
            .and_then(|p| read_json(&p))
            .and_then(|c| {
                c.pointer("/task_specific_params/summarization/prefix")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default();
        Ok(Self { text, prefix })
    }

    pub fn prepare(&self, texts: &[String], max_rows: usize) -> Result<Prepared> {
        prepare_texts_with(&self.text, texts, max_rows, |i, t| {
            if t.trim().is_empty() {
                return Err(Error::invalid(format!("input {i} is empty")));
            }
            self.text.encode(i, &format!("{}{t}", self.prefix))
        })
    }

    pub fn finish(&self, plan: Plan, outputs: Vec<Vec<NamedTensor>>) -> Result<Vec<Generated>> {
        let mut texts = Vec::with_capacity(plan.truncated.len());
        for (out, &rows) in outputs.iter().zip(&plan.rows) {
            let t = find(out, OUTPUT_IDS)?;
            let ids = int64_rows(t, rows)?;
            for row in ids {
                let ids: Vec<u32> = row.iter().filter_map(|&v| u32::try_from(v).ok()).collect();
                texts.push(self.text.decode(&ids)?);
            }
        }
        if texts.len() != plan.truncated.len() {
            return Err(Error::internal(format!(
                "the model gave {} outputs for {} inputs",
                texts.len(),
                plan.truncated.len()
            )));
        }
        Ok(texts
            .into_iter()
            .zip(plan.truncated)
            .map(|(text, truncated)| Generated { text, truncated })
            .collect())
    }
}

/// Rows of an INT64 tensor of `rows` rows.
fn int64_rows(t: &Tensor, rows: usize) -> Result<Vec<Vec<i64>>> {
    if t.dtype() != DataType::Int64 || t.shape().len() != 2 || t.shape()[0] != rows {
        return Err(Error::internal(format!(
            "output is {} {:?}, expected INT64 [{rows}, length]",
            t.dtype(),
            t.shape()
        )));
    }
    let values: Vec<i64> = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let width = t.shape()[1];
    Ok(if width == 0 {
        vec![Vec::new(); rows]
    } else {
        values.chunks(width).map(<[i64]>::to_vec).collect()
    })
}

/// Most prompts one text-to-image request may carry.
const MAX_PROMPTS: usize = 16;

/// Prompt tokenising for a diffusion pipeline's CLIP text encoder: truncated and padded to its
/// fixed length, as diffusers' pipelines do.
pub(crate) struct PromptPipeline {
    tokenizer: Tokenizer,
    length: usize,
    pad: u32,
}

impl PromptPipeline {
    pub fn new(
        config: Option<&TextConfig>,
        files: &Files,
        model: &Signature,
    ) -> std::result::Result<Self, String> {
        let length = model
            .input(INPUT_IDS)
            .filter(|_| model.input(NEGATIVE_IDS).is_some() && model.input(SEED).is_some())
            .and_then(|s| s.shape.get(1).copied())
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                format!("text-to-image needs a diffusion pipeline with inputs {INPUT_IDS} [batch, tokens], {NEGATIVE_IDS} and {SEED} (backend: candle)")
            })? as usize;
        let name = config.map_or("tokenizer/tokenizer.json", |c| c.tokenizer.as_str());
        let path = files.find(name)?;
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| format!("{}: not a usable tokenizer.json: {e}", path.display()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| format!("{}: cannot truncate to {length}: {e}", path.display()))?;
        tokenizer.with_padding(None);
        let pad = pad_token(files, &tokenizer)
            .ok_or_else(|| format!("{}: no pad token (<|endoftext|>)", path.display()))?;
        Ok(Self {
            tokenizer,
            length,
            pad,
        })
    }

    /// Token ids padded to the encoder's length, and whether the text was cut.
    fn encode(&self, what: &str, text: &str) -> Result<(Vec<i64>, bool)> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::invalid(format!("{what} could not be tokenised: {e}")))?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        ids.resize(self.length, i64::from(self.pad));
        Ok((ids, !enc.get_overflowing().is_empty()))
    }

    /// Prompts → model requests; takes `negative_prompt`, `seed` and `img_size` out of
    /// `parameters` (they become per-row inputs, or `height` and `width`).
    pub fn prepare(
        &self,
        prompts: &[String],
        max_rows: usize,
        parameters: &mut Parameters,
    ) -> Result<Prepared> {
        if prompts.len() > MAX_PROMPTS {
            return Err(Error::too_large(format!(
                "the request has {} prompts; at most {MAX_PROMPTS} are accepted in one request",
                prompts.len()
            )));
        }
        let negative = match parameters.remove("negative_prompt") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "negative_prompt must be a string, got {other}"
                )))
            }
        };
        let seed = match parameters.remove("seed") {
            None | Some(Value::Null) => rand::random::<u32>() as u64,
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::invalid(format!("seed must be a whole number from 0, got {v}"))
            })?,
        };
        if let Some(size) = parameters.remove("img_size") {
            for side in ["height", "width"] {
                if parameters.contains_key(side) {
                    return Err(Error::invalid(format!("give img_size or {side}, not both")));
                }
                parameters.insert(side.to_string(), size.clone());
            }
        }
        let (negative_ids, _) = self.encode("negative_prompt", &negative)?;
        let mut encoded = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            if p.trim().is_empty() {
                return Err(Error::invalid(format!("prompt {i} is empty")));
            }
            encoded.push(self.encode(&format!("prompt {i}"), p)?);
        }
        let mut requests = Vec::new();
        let mut rows = Vec::new();
        for range in ranges(encoded.len(), max_rows) {
            let n = range.len();
            let ids: Vec<i64> = encoded[range.clone()]
                .iter()
                .flat_map(|(ids, _)| ids.iter().copied())
                .collect();
            let negatives: Vec<i64> = std::iter::repeat_n(&negative_ids, n)
                .flatten()
                .copied()
                .collect();
            // Prompts of one request get consecutive seeds: different images, reproducible.
            let seeds: Vec<i64> = range.map(|i| seed.wrapping_add(i as u64) as i64).collect();
            requests.push(vec![
                named(INPUT_IDS, int64(vec![n, self.length], &ids)?),
                named(NEGATIVE_IDS, int64(vec![n, self.length], &negatives)?),
                named(SEED, int64(vec![n, 1], &seeds)?),
            ]);
            rows.push(n);
        }
        Ok(Prepared {
            requests,
            plan: Plan {
                tokens: Vec::new(),
                truncated: encoded.iter().map(|e| e.1).collect(),
                rows,
            },
        })
    }

    pub fn finish(plan: Plan, outputs: Vec<Vec<NamedTensor>>) -> Result<Vec<GeneratedImage>> {
        let mut images = Vec::with_capacity(plan.truncated.len());
        let mut truncated = plan.truncated.into_iter();
        for (out, &rows) in outputs.iter().zip(&plan.rows) {
            let t = find(out, IMAGE)?;
            let &[n, h, w, 3] = t.shape() else {
                return Err(Error::internal(format!(
                    "output '{IMAGE}' has shape {:?}, expected [batch, height, width, 3]",
                    t.shape()
                )));
            };
            if n != rows || t.dtype() != DataType::Fp32 {
                return Err(Error::internal(format!(
                    "output '{IMAGE}' is {} {:?} for {rows} prompts",
                    t.dtype(),
                    t.shape()
                )));
            }
            let per = h * w * 3;
            for chunk in t.data().chunks_exact(per * 4) {
                // diffusers' numpy_to_pil: round(value * 255).
                let rgb = chunk
                    .chunks_exact(4)
                    .map(|c| {
                        (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * 255.0)
                            .round()
                            .clamp(0.0, 255.0) as u8
                    })
                    .collect();
                images.push(GeneratedImage {
                    width: w as u32,
                    height: h as u32,
                    rgb,
                    truncated: truncated.next().unwrap_or(false),
                });
            }
        }
        Ok(images)
    }
}

/// The pad token named by `tokenizer_config.json` beside the tokenizer, else CLIP's
/// `<|endoftext|>`.
fn pad_token(files: &Files, tokenizer: &Tokenizer) -> Option<u32> {
    let named = files
        .try_find("tokenizer/tokenizer_config.json")
        .or_else(|| files.try_find("tokenizer_config.json"))
        .and_then(|p| read_json(&p))
        .and_then(|c| match c.get("pad_token") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        });
    named
        .and_then(|t| tokenizer.token_to_id(&t))
        .or_else(|| tokenizer.token_to_id("<|endoftext|>"))
}

fn int64(shape: Vec<usize>, values: &[i64]) -> Result<Tensor> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::new(DataType::Int64, shape, Bytes::from(data))
        .map_err(|e| Error::internal(e.to_string()))
}
