//! ferroserve's built-in tasks: the pre- and post-processing around a model that turns it into
//! a service people call with an image or a sentence (TorchServe's handlers).
//!
//! A [`Task`] is loaded next to a model from the `model.yaml` sections in [`config`]. The runtime
//! calls [`Task::prepare`] to turn a request's images or texts into model inputs (already split
//! into pieces that fit the model's batch limit and token budget), runs those through the
//! model's scheduler, and calls [`Task::finish`] on the outputs. Both run on the runtime's CPU
//! pool and use rayon to work on the items of a request in parallel.
//!
//! This crate knows nothing of queues or protocols; it only converts.

#![warn(missing_docs)]

mod classify;
pub mod config;
mod files;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod generate;
mod image;
mod pooling;
mod text;

use std::ops::Range;

use bytes::Bytes;
use ferroserve_core::{
    DataType, Error, InferRequest, NamedTensor, Result, Signature, Tensor, TensorSpec,
};
use rayon::prelude::*;

pub use classify::{Labels, Scores};
pub use config::{TaskConfig, TaskKind};
pub use files::Files;
pub use generate::{Generated, GeneratedImage};

use crate::config::{ClassificationConfig, Pooling};
use crate::generate::{PromptPipeline, Summarizer};
use crate::image::ImagePipeline;
use crate::text::{Encoded, TextPipeline};

/// Name of the V2 input of image tasks: one encoded image per element.
pub const IMAGE_INPUT: &str = "image";
/// Name of the V2 input of text tasks: one UTF-8 text per element.
pub const TEXT_INPUT: &str = "text";
/// V2 output of classification tasks: probabilities per class, `[batch, classes]`.
pub const PROBABILITIES_OUTPUT: &str = "probabilities";
/// V2 output of classification tasks: the most likely class's name, `[batch]`.
pub const LABEL_OUTPUT: &str = "label";
/// V2 output of embedding tasks: one vector per input, `[batch, dim]`.
pub const EMBEDDING_OUTPUT: &str = "embedding";
/// V2 input of text-to-image: one prompt per element.
pub const PROMPT_INPUT: &str = "prompt";
/// V2 output of summarization: one text per input, `[batch]`.
pub const SUMMARY_OUTPUT: &str = "summary";
/// V2 output of text-to-image: 8-bit RGB images, `[batch, height, width, 3]`.
pub const IMAGE_OUTPUT: &str = "image";

/// Most images one request may carry.
const MAX_IMAGES: usize = 256;

/// What a task takes: encoded images, or texts.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskInput {
    /// Encoded images (JPEG, PNG, WebP, GIF, BMP), one per item.
    Images(Vec<Bytes>),
    /// Texts, one per item.
    Texts(Vec<String>),
}

impl TaskInput {
    /// Number of items.
    pub fn len(&self) -> usize {
        match self {
            TaskInput::Images(v) => v.len(),
            TaskInput::Texts(v) => v.len(),
        }
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a task answers, one entry per input item, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutput {
    /// Class probabilities (image and text classification).
    Classes(Vec<Scores>),
    /// Sentence vectors, and how many tokens each input became (special tokens included, after
    /// truncation).
    Embeddings {
        /// One vector per input.
        vectors: Vec<Vec<f32>>,
        /// Tokens per input.
        tokens: Vec<usize>,
    },
    /// Generated texts (summarization).
    Texts(Vec<Generated>),
    /// Generated images (text-to-image).
    Images(Vec<GeneratedImage>),
}

/// Model inputs made from a request: run each of `requests` through the model, then hand the
/// outputs to [`Task::finish`] with `plan`.
#[derive(Debug)]
pub struct Prepared {
    /// Model requests, in input order; each fits the batch limit and token budget.
    pub requests: Vec<Vec<NamedTensor>>,
    /// What [`Task::finish`] needs to know about them.
    pub plan: Plan,
}

/// The shape of a prepared request, for [`Task::finish`].
#[derive(Debug)]
pub struct Plan {
    /// Tokens per text input (empty for images).
    tokens: Vec<usize>,
    /// Whether each text input was cut to the longest input (empty for images).
    truncated: Vec<bool>,
    /// Items in each model request.
    rows: Vec<usize>,
}

/// Class names, softmax and default top-k, resolved against the model's output.
#[derive(Debug)]
struct Classes {
    output: String,
    labels: Labels,
    softmax: bool,
    top_k: usize,
}

enum Head {
    Image {
        pipe: ImagePipeline,
        classes: Classes,
    },
    Embedding {
        text: TextPipeline,
        output: String,
        pooling: Pooling,
        normalize: bool,
    },
    TextClassification {
        text: TextPipeline,
        classes: Classes,
    },
    Summarization(Summarizer),
    TextToImage(PromptPipeline),
}

/// A loaded task: a model's pre- and post-processing.
pub struct Task {
    kind: TaskKind,
    head: Head,
    signature: Signature,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Task {
    /// Loads the task `config` names for a model with signature `model`, finding its files
    /// (tokenizer, labels, pooling) in `files`. Returns `None` when the config names no task.
    pub fn load(
        config: &TaskConfig,
        files: &Files,
        model: &Signature,
    ) -> std::result::Result<Option<Self>, String> {
        config.check()?;
        let Some(kind) = config.kind else {
            return Ok(None);
        };
        let classification = config.classification.clone().unwrap_or_default();
        let text_config = config.text.clone().unwrap_or_default();
        let head = match kind {
            TaskKind::ImageClassification => Head::Image {
                pipe: ImagePipeline::new(&config.image.clone().unwrap_or_default(), model)?,
                classes: Classes::load(&classification, files, model, 5)?,
            },
            TaskKind::TextClassification => Head::TextClassification {
                text: TextPipeline::new(&text_config, files, model)?,
                classes: Classes::load(&classification, files, model, 1)?,
            },
            TaskKind::TextEmbedding => {
                let output = pick_output(text_config.output.as_deref(), model, "text.output")?;
                let rank = model.output(&output).map_or(0, |o| o.shape.len());
                if rank != 2 && rank != 3 {
                    return Err(format!(
                        "output '{output}' has rank {rank}; text-embedding reads [batch, tokens, dim] hidden states or [batch, dim] sentence vectors"
                    ));
                }
                let pooling = match text_config.pooling {
                    Some(p) => p,
                    None => pooling::from_sentence_transformers(files)?.unwrap_or(Pooling::Mean),
                };
                Head::Embedding {
                    text: TextPipeline::new(&text_config, files, model)?,
                    output,
                    pooling,
                    normalize: text_config.normalize,
                }
            }
            TaskKind::Summarization => {
                Head::Summarization(Summarizer::new(&text_config, files, model)?)
            }
            TaskKind::TextToImage => {
                Head::TextToImage(PromptPipeline::new(config.text.as_ref(), files, model)?)
            }
        };
        let signature = public_signature(&head, model);
        Ok(Some(Self {
            kind,
            head,
            signature,
        }))
    }

    /// Which task this is.
    pub fn kind(&self) -> TaskKind {
        self.kind
    }

    /// The text of token ids a summarization model has generated so far (a streaming client's
    /// view of the answer in the making); other tasks make no text.
    pub fn text_so_far(&self, ids: &[u32]) -> Result<String> {
        match &self.head {
            Head::Summarization(s) => s.text.decode(ids),
            _ => Err(Error::invalid(format!(
                "a {} model makes no text",
                self.kind
            ))),
        }
    }

    /// The task's inputs and outputs as V2 clients see them: a BYTES input of images or texts,
    /// and the task's outputs.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Model inputs the scheduler must pad to the longest in a batch (token inputs), with the
    /// padding value.
    pub fn padded_inputs(&self) -> Vec<(String, f64)> {
        match &self.head {
            Head::Image { .. } | Head::TextToImage(_) => Vec::new(),
            Head::Embedding { text, .. } | Head::TextClassification { text, .. } => {
                text.padded_inputs()
            }
            Head::Summarization(s) => s.text.padded_inputs(),
        }
    }

    /// The most tokens (rows × longest, padding included) one batch may hold, for text tasks.
    pub fn max_batch_tokens(&self) -> Option<usize> {
        self.text().map(|t| t.max_batch_tokens)
    }

    /// How many classes to return when the request does not say.
    pub fn default_top_k(&self) -> usize {
        match &self.head {
            Head::Image { classes, .. } | Head::TextClassification { classes, .. } => classes.top_k,
            Head::Embedding { .. } | Head::Summarization(_) | Head::TextToImage(_) => 0,
        }
    }

    fn text(&self) -> Option<&TextPipeline> {
        match &self.head {
            Head::Image { .. } | Head::TextToImage(_) => None,
            Head::Embedding { text, .. } | Head::TextClassification { text, .. } => Some(text),
            Head::Summarization(s) => Some(&s.text),
        }
    }

    /// Decodes images or tokenises texts into model requests of at most `max_rows` items
    /// (0: no limit). CPU-heavy: call it on a blocking pool; items are processed in parallel
    /// on the current rayon pool.
    ///
    /// `parameters` are the request's; the task takes out those it turns into inputs
    /// (text-to-image's `negative_prompt`, `seed`, `img_size`) and leaves the rest for the model.
    /// `gone()` says whether the client has left; long work stops early when it has.
    pub fn prepare(
        &self,
        input: TaskInput,
        max_rows: usize,
        parameters: &mut ferroserve_core::Parameters,
        gone: &(dyn Fn() -> bool + Sync),
    ) -> Result<Prepared> {
        let max_rows = if max_rows == 0 { usize::MAX } else { max_rows };
        if input.is_empty() {
            return Err(Error::invalid("the request has no inputs"));
        }
        match (&self.head, input) {
            (Head::Image { pipe, .. }, TaskInput::Images(images)) => {
                prepare_images(pipe, &images, max_rows, gone)
            }
            (
                Head::Embedding { text, .. } | Head::TextClassification { text, .. },
                TaskInput::Texts(texts),
            ) => prepare_texts(text, &texts, max_rows),
            (Head::Summarization(s), TaskInput::Texts(texts)) => s.prepare(&texts, max_rows),
            (Head::TextToImage(p), TaskInput::Texts(prompts)) => {
                p.prepare(&prompts, max_rows, parameters)
            }
            (Head::Image { .. }, TaskInput::Texts(_)) => Err(Error::invalid(format!(
                "this model is an {} model: send images, not text",
                self.kind
            ))),
            (_, TaskInput::Images(_)) => Err(Error::invalid(format!(
                "this model is a {} model: send text, not images",
                self.kind
            ))),
        }
    }

    /// Turns the model's outputs for the requests of a [`Prepared`] (in the same order) into the
    /// task's answer.
    pub fn finish(&self, plan: Plan, outputs: Vec<Vec<NamedTensor>>) -> Result<TaskOutput> {
        match &self.head {
            Head::Image { classes, .. } | Head::TextClassification { classes, .. } => {
                let mut scores = Vec::new();
                for (out, &rows) in outputs.iter().zip(&plan.rows) {
                    let t = find(out, &classes.output)?;
                    let values = floats(t)?;
                    let per = t
                        .shape()
                        .get(1..)
                        .map_or(1, |s| s.iter().product::<usize>());
                    if t.shape().first() != Some(&rows) || per != classes.labels.len() {
                        return Err(Error::internal(format!(
                            "output '{}' has shape {:?}, expected [{rows}, {}]",
                            classes.output,
                            t.shape(),
                            classes.labels.len()
                        )));
                    }
                    for row in values.chunks_exact(per) {
                        let mut probabilities = row.to_vec();
                        if classes.softmax {
                            classify::softmax(&mut probabilities);
                        }
                        scores.push(Scores {
                            probabilities,
                            labels: classes.labels.clone(),
                        });
                    }
                }
                Ok(TaskOutput::Classes(scores))
            }
            Head::Embedding {
                output,
                pooling,
                normalize,
                ..
            } => {
                let mut vectors = Vec::with_capacity(plan.tokens.len());
                let mut lengths = plan.tokens.iter();
                for (out, &rows) in outputs.iter().zip(&plan.rows) {
                    let t = find(out, output)?;
                    let values = floats(t)?;
                    let shape = t.shape();
                    if shape.first() != Some(&rows) || !(2..=3).contains(&shape.len()) {
                        return Err(Error::internal(format!(
                            "output '{output}' has shape {shape:?} for {rows} inputs"
                        )));
                    }
                    let dim = shape[shape.len() - 1];
                    let per = values.len() / rows.max(1);
                    for row in values.chunks_exact(per.max(1)).take(rows) {
                        let len = lengths.next().copied().unwrap_or(1);
                        let mut v = if shape.len() == 3 {
                            pooling::pool(*pooling, row, dim, len)
                        } else {
                            row.to_vec()
                        };
                        if *normalize {
                            pooling::normalize(&mut v);
                        }
                        vectors.push(v);
                    }
                }
                if vectors.len() != plan.tokens.len() {
                    return Err(Error::internal(format!(
                        "the model gave {} vectors for {} inputs",
                        vectors.len(),
                        plan.tokens.len()
                    )));
                }
                Ok(TaskOutput::Embeddings {
                    vectors,
                    tokens: plan.tokens,
                })
            }
            Head::Summarization(s) => Ok(TaskOutput::Texts(s.finish(plan, outputs)?)),
            Head::TextToImage(_) => Ok(TaskOutput::Images(PromptPipeline::finish(plan, outputs)?)),
        }
    }

    /// The task input carried by a V2 request: the elements of its BYTES input.
    pub fn input_from_v2(&self, request: &InferRequest) -> Result<TaskInput> {
        let name = &self.signature.inputs[0].name;
        let tensor = request
            .inputs
            .iter()
            .find(|t| &t.name == name)
            .ok_or_else(|| Error::invalid(format!("the request has no input '{name}'")))?;
        let items = tensor.tensor.bytes_elements();
        Ok(match self.kind {
            TaskKind::ImageClassification => {
                TaskInput::Images(items.map(Bytes::copy_from_slice).collect())
            }
            TaskKind::TextEmbedding
            | TaskKind::TextClassification
            | TaskKind::Summarization
            | TaskKind::TextToImage => TaskInput::Texts(
                items
                    .enumerate()
                    .map(|(i, b)| {
                        String::from_utf8(b.to_vec()).map_err(|_| {
                            Error::invalid(format!("input '{name}' element {i} is not valid UTF-8"))
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
        })
    }

    /// The V2 output tensors of an answer: those `requested` in that order, or all when empty.
    pub fn outputs_to_v2(
        &self,
        output: TaskOutput,
        requested: &[String],
    ) -> Result<Vec<NamedTensor>> {
        let wanted = |name: &str| requested.is_empty() || requested.iter().any(|r| r == name);
        let mut out = Vec::new();
        match output {
            TaskOutput::Classes(scores) => {
                let n = scores.len();
                if wanted(PROBABILITIES_OUTPUT) {
                    let classes = scores.first().map_or(0, |s| s.probabilities.len());
                    let data: Vec<f32> = scores
                        .iter()
                        .flat_map(|s| s.probabilities.iter().copied())
                        .collect();
                    out.push(named(
                        PROBABILITIES_OUTPUT,
                        f32_tensor(vec![n, classes], &data)?,
                    ));
                }
                if wanted(LABEL_OUTPUT) {
                    let labels: Vec<String> = scores
                        .iter()
                        .map(|s| {
                            s.top_k(1)
                                .first()
                                .map(|t| t.1.to_string())
                                .unwrap_or_default()
                        })
                        .collect();
                    let t = Tensor::from_bytes_elements(vec![n], labels)
                        .map_err(|e| Error::internal(e.to_string()))?;
                    out.push(named(LABEL_OUTPUT, t));
                }
            }
            TaskOutput::Texts(texts) => {
                if wanted(SUMMARY_OUTPUT) {
                    let t = Tensor::from_bytes_elements(
                        vec![texts.len()],
                        texts.iter().map(|g| g.text.as_bytes()),
                    )
                    .map_err(|e| Error::internal(e.to_string()))?;
                    out.push(named(SUMMARY_OUTPUT, t));
                }
            }
            TaskOutput::Images(images) => {
                if wanted(IMAGE_OUTPUT) {
                    let (h, w) = images
                        .first()
                        .map_or((0, 0), |i| (i.height as usize, i.width as usize));
                    let data: Vec<u8> = images.iter().flat_map(|i| i.rgb.iter().copied()).collect();
                    let t = Tensor::new(DataType::Uint8, vec![images.len(), h, w, 3], data.into())
                        .map_err(|e| Error::internal(e.to_string()))?;
                    out.push(named(IMAGE_OUTPUT, t));
                }
            }
            TaskOutput::Embeddings { vectors, .. } => {
                if wanted(EMBEDDING_OUTPUT) {
                    let dim = vectors.first().map_or(0, Vec::len);
                    let data: Vec<f32> = vectors.concat();
                    out.push(named(
                        EMBEDDING_OUTPUT,
                        f32_tensor(vec![vectors.len(), dim], &data)?,
                    ));
                }
            }
        }
        // In the order the request listed them.
        out.sort_by_key(|t| requested.iter().position(|r| *r == t.name));
        Ok(out)
    }
}

impl Classes {
    fn load(
        config: &ClassificationConfig,
        files: &Files,
        model: &Signature,
        default_top_k: usize,
    ) -> std::result::Result<Self, String> {
        let output = pick_output(config.output.as_deref(), model, "classification.output")?;
        let shape = &model
            .output(&output)
            .map(|o| o.shape.clone())
            .unwrap_or_default();
        let classes = match shape.as_slice() {
            [_, c] if *c > 0 => *c as usize,
            _ => {
                return Err(format!(
                    "output '{output}' has shape {shape:?}; classification reads [batch, classes] with a fixed number of classes"
                ))
            }
        };
        Ok(Self {
            labels: Labels::load(config, files, classes)?,
            output,
            softmax: config.softmax,
            top_k: config.top_k.unwrap_or(default_top_k),
        })
    }
}

fn pick_output(
    name: Option<&str>,
    model: &Signature,
    key: &str,
) -> std::result::Result<String, String> {
    match name {
        Some(n) if model.output(n).is_some() => Ok(n.to_string()),
        Some(n) => Err(format!(
            "{key} names '{n}', which is not an output of the model (outputs: {})",
            image::names(&model.outputs)
        )),
        None => model
            .outputs
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| "the model has no outputs".to_string()),
    }
}

fn public_signature(head: &Head, model: &Signature) -> Signature {
    let spec = |name: &str, datatype, shape: Vec<i64>| TensorSpec {
        name: name.to_string(),
        datatype,
        shape,
    };
    match head {
        Head::Image { classes, .. } | Head::TextClassification { classes, .. } => Signature {
            inputs: vec![spec(
                if matches!(head, Head::Image { .. }) {
                    IMAGE_INPUT
                } else {
                    TEXT_INPUT
                },
                DataType::Bytes,
                vec![-1],
            )],
            outputs: vec![
                spec(
                    PROBABILITIES_OUTPUT,
                    DataType::Fp32,
                    vec![-1, classes.labels.len() as i64],
                ),
                spec(LABEL_OUTPUT, DataType::Bytes, vec![-1]),
            ],
        },
        Head::Embedding { output, .. } => {
            let dim = model
                .output(output)
                .and_then(|o| o.shape.last().copied())
                .unwrap_or(-1);
            Signature {
                inputs: vec![spec(TEXT_INPUT, DataType::Bytes, vec![-1])],
                outputs: vec![spec(EMBEDDING_OUTPUT, DataType::Fp32, vec![-1, dim])],
            }
        }
        Head::Summarization(_) => Signature {
            inputs: vec![spec(TEXT_INPUT, DataType::Bytes, vec![-1])],
            outputs: vec![spec(SUMMARY_OUTPUT, DataType::Bytes, vec![-1])],
        },
        Head::TextToImage(_) => Signature {
            inputs: vec![spec(PROMPT_INPUT, DataType::Bytes, vec![-1])],
            outputs: vec![spec(IMAGE_OUTPUT, DataType::Uint8, vec![-1, -1, -1, 3])],
        },
    }
}

fn prepare_images(
    pipe: &ImagePipeline,
    images: &[Bytes],
    max_rows: usize,
    gone: &(dyn Fn() -> bool + Sync),
) -> Result<Prepared> {
    if images.len() > MAX_IMAGES {
        return Err(Error::too_large(format!(
            "the request has {} images; at most {MAX_IMAGES} are accepted in one request",
            images.len()
        )));
    }
    // Every header first: a request whose images together are too large is refused before
    // any of them is decoded.
    let headers = images
        .iter()
        .enumerate()
        .map(|(i, img)| image::header(i, img, pipe.max_pixels))
        .collect::<Result<Vec<_>>>()?;
    let pixels: u64 = headers.iter().map(|h| h.pixels()).sum();
    if pixels > pipe.max_request_pixels {
        return Err(Error::too_large(format!(
            "the request's {} images have {pixels} pixels together, over the limit of {} per request (image.max_request_pixels)",
            images.len(),
            pipe.max_request_pixels
        )));
    }
    let per = pipe.values_per_image();
    let mut values = vec![0.0f32; images.len() * per];
    values
        .par_chunks_mut(per)
        .zip(images.par_iter().zip(headers))
        .enumerate()
        .try_for_each(|(i, (out, (img, head)))| {
            // A client that left is not decoded for.
            if gone() {
                return Err(Error::unavailable(
                    "the client went away before its images were decoded",
                ));
            }
            pipe.process(i, img, head, out)
        })?;
    let (h, w) = (pipe.height as usize, pipe.width as usize);
    let mut requests = Vec::new();
    let mut rows = Vec::new();
    for range in ranges(images.len(), max_rows) {
        let n = range.len();
        let shape = match pipe.layout {
            config::Layout::Nchw => vec![n, 3, h, w],
            config::Layout::Nhwc => vec![n, h, w, 3],
        };
        let slice = &values[range.start * per..range.end * per];
        let tensor = match pipe.dtype {
            DataType::Uint8 => {
                let data: Vec<u8> = slice.iter().map(|&v| v.clamp(0.0, 255.0) as u8).collect();
                Tensor::new(DataType::Uint8, shape, Bytes::from(data))
            }
            DataType::Fp16 => {
                let data: Vec<u8> = slice
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect();
                Tensor::new(DataType::Fp16, shape, Bytes::from(data))
            }
            _ => Tensor::new(
                DataType::Fp32,
                shape,
                Bytes::copy_from_slice(bytemuck_f32(slice)),
            ),
        }
        .map_err(|e| Error::internal(e.to_string()))?;
        requests.push(vec![named(&pipe.input, tensor)]);
        rows.push(n);
    }
    Ok(Prepared {
        requests,
        plan: Plan {
            tokens: Vec::new(),
            truncated: Vec::new(),
            rows,
        },
    })
}

fn prepare_texts(text: &TextPipeline, texts: &[String], max_rows: usize) -> Result<Prepared> {
    prepare_texts_with(text, texts, max_rows, |i, t| text.encode(i, t))
}

/// Texts into model requests of at most `max_rows` rows under the token budget, each text
/// tokenised by `encode(index, text)`.
fn prepare_texts_with(
    text: &TextPipeline,
    texts: &[String],
    max_rows: usize,
    encode: impl Fn(usize, &str) -> Result<Encoded> + Sync,
) -> Result<Prepared> {
    if texts.len() > text.max_inputs {
        return Err(Error::too_large(format!(
            "the request has {} texts; at most {} are accepted in one request (text.max_inputs)",
            texts.len(),
            text.max_inputs
        )));
    }
    let encoded: Vec<Encoded> = texts
        .par_iter()
        .enumerate()
        .map(|(i, t)| encode(i, t))
        .collect::<Result<_>>()?;
    let mut requests = Vec::new();
    let mut rows = Vec::new();
    for range in text.chunks(&encoded, max_rows) {
        rows.push(range.len());
        requests.push(text.tensors(&encoded[range])?);
    }
    Ok(Prepared {
        requests,
        plan: Plan {
            tokens: encoded.iter().map(|e| e.ids.len()).collect(),
            truncated: encoded.iter().map(|e| e.truncated).collect(),
            rows,
        },
    })
}

/// `0..n` in runs of at most `max` items.
fn ranges(n: usize, max: usize) -> impl Iterator<Item = Range<usize>> {
    (0..n).step_by(max).map(move |s| s..(s + max).min(n))
}

fn named(name: &str, tensor: Tensor) -> NamedTensor {
    NamedTensor {
        name: name.to_string(),
        tensor,
    }
}

fn find<'a>(outputs: &'a [NamedTensor], name: &str) -> Result<&'a Tensor> {
    outputs
        .iter()
        .find(|t| t.name == name)
        .map(|t| &t.tensor)
        .ok_or_else(|| Error::internal(format!("the model returned no output '{name}'")))
}

/// The values of an FP32 or FP16 tensor as f32.
fn floats(t: &Tensor) -> Result<Vec<f32>> {
    let data = t.data();
    match t.dtype() {
        DataType::Fp32 => Ok(data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        DataType::Fp16 => Ok(data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        other => Err(Error::internal(format!(
            "the model output is {other}; tasks read FP32 or FP16 outputs"
        ))),
    }
}

fn f32_tensor(shape: Vec<usize>, values: &[f32]) -> Result<Tensor> {
    Tensor::new(
        DataType::Fp32,
        shape,
        Bytes::copy_from_slice(bytemuck_f32(values)),
    )
    .map_err(|e| Error::internal(e.to_string()))
}

fn bytemuck_f32(values: &[f32]) -> &[u8] {
    bytemuck::cast_slice(values)
}
