//! The task sections of `model.yaml`: which task, and how it pre- and post-processes.
//!
//! ```yaml
//! task: image-classification
//! image:
//!   resize: {shorter_side: 256}
//!   crop: 224
//!   scale: 1.0
//!   mean: [127, 127, 127]
//!   std: [128, 128, 128]
//! classification:
//!   labels: index_to_name.json
//!   top_k: 5
//! ```
//!
//! Every field has a default that fits the common case (ImageNet normalisation, the model's own
//! input size, sentence-transformers' pooling files), so `task:` alone is often enough.

use serde::{Deserialize, Serialize};

/// Which built-in task serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Encoded image in, class probabilities and labels out.
    ImageClassification,
    /// Text in, one pooled (and by default normalised) vector out.
    TextEmbedding,
    /// Text in, class probabilities and labels out.
    TextClassification,
    /// Text in, shorter text out (a text-to-text model such as T5, `backend: candle`).
    Summarization,
    /// A prompt in, an image out (a Stable Diffusion pipeline, `backend: candle`).
    TextToImage,
}

impl TaskKind {
    /// The name `model.yaml` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::ImageClassification => "image-classification",
            TaskKind::TextEmbedding => "text-embedding",
            TaskKind::TextClassification => "text-classification",
            TaskKind::Summarization => "summarization",
            TaskKind::TextToImage => "text-to-image",
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest side `image.resize` and `image.crop` may ask for.
pub const MAX_SIDE: u32 = 16384;

/// How an image becomes the model's input tensor (the `image:` section).
///
/// The order is torchvision's: decode, convert to RGB, resize, centre crop, then per channel
/// `(pixel * scale - mean) / std`, laid out as the model wants.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// The model input that takes the pixels. Default: the model's only input.
    pub input: Option<String>,
    /// How to resize before cropping. Default: shorter side to `crop / 0.875` (256 for 224),
    /// the torchvision evaluation transform.
    pub resize: Option<Resize>,
    /// Resampling filter. Default: `bilinear` (with antialiasing, as Pillow does).
    pub filter: Filter,
    /// Centre crop, `224` or `[height, width]`. Default: the model input's height and width.
    pub crop: Option<Size>,
    /// Channel order the model expects. Default: `rgb`.
    pub channel_order: ChannelOrder,
    /// Multiplies each 0–255 pixel value first. Default: `1/255`.
    pub scale: f32,
    /// Subtracted per channel (in `channel_order`) after scaling. Default: ImageNet's
    /// `[0.485, 0.456, 0.406]`.
    pub mean: [f32; 3],
    /// Divides per channel after subtracting the mean. Default: ImageNet's
    /// `[0.229, 0.224, 0.225]`.
    pub std: [f32; 3],
    /// `nchw` or `nhwc`. Default: read from the model input's shape (the dimension that is 3).
    /// The input may be FP32, FP16 or UINT8; a UINT8 input gets the raw 0–255 pixels, without
    /// `scale`, `mean` and `std`.
    pub layout: Option<Layout>,
    /// Largest image accepted, in pixels (width × height), checked from the header before any
    /// pixel is decoded. Default: 40,000,000.
    pub max_pixels: u64,
    /// Largest number of pixels of all a request's images together, checked from their headers
    /// before any is decoded: decoding costs time and memory by the pixel, whatever the size of
    /// the file (a 6000x6000 1-bit PNG is a few kilobytes). Default: 100,000,000.
    pub max_request_pixels: u64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            input: None,
            resize: None,
            filter: Filter::Bilinear,
            crop: None,
            channel_order: ChannelOrder::Rgb,
            scale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            layout: None,
            max_pixels: 40_000_000,
            max_request_pixels: 100_000_000,
        }
    }
}

/// How to resize an image before cropping: `{shorter_side: 256}` or `{exact: [224, 224]}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ResizeRepr")]
pub enum Resize {
    /// Scale so the shorter side has this length, keeping the aspect ratio.
    ShorterSide(u32),
    /// Scale to exactly `[height, width]`, ignoring the aspect ratio.
    Exact([u32; 2]),
}

/// `resize:` as written; exactly one key must be set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeRepr {
    shorter_side: Option<u32>,
    exact: Option<[u32; 2]>,
}

impl TryFrom<ResizeRepr> for Resize {
    type Error = String;

    fn try_from(r: ResizeRepr) -> Result<Self, String> {
        match (r.shorter_side, r.exact) {
            (Some(s), None) if s > 0 => Ok(Resize::ShorterSide(s)),
            (None, Some([h, w])) if h > 0 && w > 0 => Ok(Resize::Exact([h, w])),
            (Some(_), Some(_)) => Err("set one of shorter_side and exact, not both".into()),
            (None, None) => Err("set shorter_side: N or exact: [height, width]".into()),
            _ => Err("resize sizes must be at least 1".into()),
        }
    }
}

/// A size given as one number (a square) or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// `n` by `n`.
    Square(u32),
    /// `[height, width]`.
    Rect([u32; 2]),
}

impl Size {
    /// `(height, width)`.
    pub fn hw(self) -> (u32, u32) {
        match self {
            Size::Square(n) => (n, n),
            Size::Rect([h, w]) => (h, w),
        }
    }
}

/// Resampling filter for resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (triangle) convolution.
    Bilinear,
    /// Bicubic (Catmull-Rom) convolution.
    Bicubic,
    /// Lanczos with a = 3.
    Lanczos3,
}

/// Channel order of the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue (PyTorch and most exports).
    Rgb,
    /// Blue, green, red (OpenCV and Caffe exports).
    Bgr,
}

/// Memory layout of the model's image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Batch, channel, height, width (PyTorch).
    Nchw,
    /// Batch, height, width, channel (TensorFlow).
    Nhwc,
}

/// How text becomes token ids and how hidden states become one vector (the `text:` section).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextConfig {
    /// Hugging Face `tokenizer.json`, looked up in the version folder, then the model folder.
    /// Default: `tokenizer.json`.
    pub tokenizer: String,
    /// Longest input in tokens; longer ones are truncated. Default: `max_seq_length` of
    /// `sentence_bert_config.json`, else the tokenizer's own truncation, else
    /// `model_max_length` of `tokenizer_config.json` (a huge one means no limit), else
    /// `max_position_embeddings` of `config.json`, else 512; never more than
    /// `max_position_embeddings` or `max_batch_tokens`.
    pub max_length: Option<usize>,
    /// Pooling of token vectors (`text-embedding` only): `mean`, `cls` or `max`. Default: what
    /// sentence-transformers' `1_Pooling/config.json` says, else `mean`.
    pub pooling: Option<Pooling>,
    /// L2-normalise embeddings (`text-embedding` only). Default: true.
    pub normalize: bool,
    /// Most tokens (rows × the longest row, padding included) in one batch the model runs, so
    /// a few long inputs cannot blow up memory. Default: 16384.
    pub max_batch_tokens: usize,
    /// Most texts one request may carry. Default: 2048.
    pub max_inputs: usize,
    /// The model output holding hidden states or sentence vectors (`text-embedding` only;
    /// classifiers use `classification.output`). Default: the model's first output.
    pub output: Option<String>,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            tokenizer: "tokenizer.json".to_string(),
            max_length: None,
            pooling: None,
            normalize: true,
            max_batch_tokens: 16384,
            max_inputs: 2048,
            output: None,
        }
    }
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Average of the tokens' vectors, padding excluded.
    Mean,
    /// The first token's vector.
    Cls,
    /// Element-wise maximum over the tokens, padding excluded.
    Max,
}

/// Labels, probabilities and top-k (the `classification:` section).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassificationConfig {
    /// File with the class names: TorchServe's `index_to_name.json` (`{"0": "tench"}` or
    /// `{"0": ["n01440764", "tench"]}`) or a Hugging Face `config.json` (its `id2label`),
    /// looked up in the version folder, then the model folder. Default: `index_to_name.json`
    /// if present, else `config.json` if it has `id2label`, else `LABEL_0`, `LABEL_1`, ...
    pub labels: Option<String>,
    /// Apply softmax to the model's output; turn off when the model already outputs
    /// probabilities. Default: true.
    pub softmax: bool,
    /// Classes returned when the request does not say (`?topk=`). Default: 5 for images, 1 for
    /// text.
    pub top_k: Option<usize>,
    /// The model output holding the logits. Default: the model's first output.
    pub output: Option<String>,
}

impl Default for ClassificationConfig {
    fn default() -> Self {
        Self {
            labels: None,
            softmax: true,
            top_k: None,
            output: None,
        }
    }
}

/// Everything about a model's task, as `model.yaml` gives it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskConfig {
    /// The task.
    pub kind: Option<TaskKind>,
    /// The `image:` section.
    pub image: Option<ImageConfig>,
    /// The `text:` section.
    pub text: Option<TextConfig>,
    /// The `classification:` section.
    pub classification: Option<ClassificationConfig>,
}

impl TaskConfig {
    /// Checks that every section given belongs to the task.
    pub fn check(&self) -> Result<(), String> {
        let sections = [
            (
                "image",
                self.image.is_some(),
                [TaskKind::ImageClassification].as_slice(),
            ),
            (
                "text",
                self.text.is_some(),
                &[
                    TaskKind::TextEmbedding,
                    TaskKind::TextClassification,
                    TaskKind::Summarization,
                    TaskKind::TextToImage,
                ],
            ),
            (
                "classification",
                self.classification.is_some(),
                &[TaskKind::ImageClassification, TaskKind::TextClassification],
            ),
        ];
        for (name, present, fits) in sections {
            if !present {
                continue;
            }
            match self.kind {
                Some(k) if fits.contains(&k) => {}
                Some(k) => return Err(format!("the '{name}' section does not apply to task {k}")),
                None => {
                    return Err(format!(
                        "the '{name}' section needs a task (task: {})",
                        fits[0]
                    ))
                }
            }
        }
        if let Some(t) = &self.text {
            if t.max_batch_tokens == 0 || t.max_inputs == 0 || t.max_length == Some(0) {
                return Err(
                    "text.max_batch_tokens, text.max_inputs and text.max_length must be at least 1"
                        .into(),
                );
            }
        }
        if let Some(t) = &self.text {
            if self.kind == Some(TaskKind::TextClassification)
                && (t.pooling.is_some() || t.output.is_some())
            {
                return Err(
                    "text.pooling and text.output apply to text-embedding; text-classification reads classification.output"
                        .into(),
                );
            }
        }
        if let Some(i) = &self.image {
            let finite = i.mean.iter().chain(&i.std).all(|v| v.is_finite()) && i.scale.is_finite();
            if !finite || i.std.contains(&0.0) {
                return Err(
                    "image.scale, image.mean and image.std must be finite numbers, and std not 0"
                        .into(),
                );
            }
            if i.max_pixels == 0 || i.max_request_pixels == 0 {
                return Err(
                    "image.max_pixels and image.max_request_pixels must be at least 1".into(),
                );
            }
            let sizes = match i.resize {
                Some(Resize::ShorterSide(n)) => vec![n],
                Some(Resize::Exact([h, w])) => vec![h, w],
                None => vec![],
            };
            let (ch, cw) = i.crop.map_or((1, 1), Size::hw);
            if ch == 0 || cw == 0 || sizes.iter().chain([&ch, &cw]).any(|&n| n > MAX_SIDE) {
                return Err(format!(
                    "image.resize and image.crop must be between 1 and {MAX_SIDE} pixels"
                ));
            }
        }
        if self.classification.as_ref().and_then(|c| c.top_k) == Some(0) {
            return Err("classification.top_k must be at least 1".into());
        }
        Ok(())
    }
}
