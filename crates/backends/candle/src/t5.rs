//! T5 (the original relu checkpoints and the gated-gelu v1.1 / FLAN ones) as an encoder and a
//! step-by-step decoder whose key/value cache the caller owns.
//!
//! candle-transformers has a T5 too, but it keeps its cache inside the layers and takes no
//! attention mask: beam search needs to reorder the cache, and batching requests of different
//! lengths needs the padding masked, so the model is written here against transformers'
//! `modeling_t5.py`.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{embedding, linear_no_bias, Embedding, Linear, VarBuilder};
use serde::Deserialize;

use crate::{files, CandleError};

/// The fields of a checkpoint's `config.json` that the model reads.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    /// Tokens in the vocabulary (rows of the shared embedding).
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub d_model: usize,
    /// Width of each attention head.
    pub d_kv: usize,
    /// Width of the feed-forward layer.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Decoder blocks (the encoder's count when absent).
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    /// Attention heads.
    pub num_heads: usize,
    /// Buckets of the relative position bias.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share the last bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    /// RMS norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` (T5) or `gated-gelu` (T5 v1.1, FLAN-T5).
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    /// Whether the output projection is the shared embedding.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Whether decoder outputs are scaled by `d_model^-0.5` before the projection (transformers
    /// does it when the embeddings are tied).
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    /// The first decoder token.
    #[serde(default)]
    pub decoder_start_token_id: u32,
    /// End of sequence.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    /// Padding.
    #[serde(default)]
    pub pad_token_id: u32,
    /// Longest input the checkpoint was trained on, when it says.
    #[serde(default)]
    pub n_positions: Option<usize>,
}

fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "relu".to_string()
}
fn default_true() -> bool {
    true
}
fn default_eos() -> u32 {
    1
}

impl T5Config {
    /// Reads `config.json` from a checkpoint folder.
    pub fn load(dir: &Path) -> Result<Self, CandleError> {
        files::json(&dir.join("config.json"))
    }
}

/// T5's layer norm: scale only, no mean subtraction.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn new(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(xs, &self.weight, self.eps)
    }
}

#[derive(Debug, Clone)]
enum FeedForward {
    Relu {
        wi: Linear,
        wo: Linear,
    },
    GatedGelu {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
}

impl FeedForward {
    fn new(vb: VarBuilder, c: &T5Config) -> Result<Self, CandleError> {
        Ok(match c.feed_forward_proj.as_str() {
            "relu" => Self::Relu {
                wi: linear_no_bias(c.d_model, c.d_ff, vb.pp("wi"))?,
                wo: linear_no_bias(c.d_ff, c.d_model, vb.pp("wo"))?,
            },
            "gated-gelu" => Self::GatedGelu {
                wi_0: linear_no_bias(c.d_model, c.d_ff, vb.pp("wi_0"))?,
                wi_1: linear_no_bias(c.d_model, c.d_ff, vb.pp("wi_1"))?,
                wo: linear_no_bias(c.d_ff, c.d_model, vb.pp("wo"))?,
            },
            other => {
                return Err(CandleError::Unsupported(format!(
                    "feed_forward_proj '{other}' (supported: relu, gated-gelu)"
                )))
            }
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Relu { wi, wo } => wo.forward(&wi.forward(xs)?.relu()?),
            // transformers' `gelu_new` is the tanh approximation, candle's `gelu`.
            Self::GatedGelu { wi_0, wi_1, wo } => {
                wo.forward(&(wi_0.forward(xs)?.gelu()? * wi_1.forward(xs)?)?)
            }
        }
    }
}

/// Relative position bias: T5's only position information.
#[derive(Debug, Clone)]
struct RelativeBias {
    embedding: Embedding,
    bidirectional: bool,
    buckets: usize,
    max_distance: usize,
}

impl RelativeBias {
    /// Bias for `q_len` queries starting at position `past` against `k_len` keys, shaped
    /// (1, heads, q_len, k_len).
    fn compute(
        &self,
        q_len: usize,
        k_len: usize,
        past: usize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut ids = Vec::with_capacity(q_len * k_len);
        for q in 0..q_len {
            for k in 0..k_len {
                ids.push(self.bucket(k as i64 - (q + past) as i64));
            }
        }
        let ids = Tensor::from_vec(ids, (q_len, k_len), device)?;
        self.embedding
            .forward(&ids)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()
    }

    /// transformers' `_relative_position_bucket`, with its float32 logarithm so the bucket edges
    /// fall where the checkpoint learnt them.
    fn bucket(&self, relative: i64) -> u32 {
        let mut buckets = self.buckets as i64;
        let mut base = 0;
        let distance = if self.bidirectional {
            buckets /= 2;
            if relative > 0 {
                base = buckets;
            }
            relative.abs()
        } else {
            (-relative).max(0)
        };
        let exact = buckets / 2;
        let offset = if distance < exact {
            distance
        } else {
            let scale = (distance as f32 / exact as f32).ln()
                / (self.max_distance as f64 / exact as f64).ln() as f32
                * (buckets - exact) as f32;
            (exact + scale as i64).min(buckets - 1)
        };
        (base + offset) as u32
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    d_kv: usize,
}

impl Attention {
    fn new(vb: VarBuilder, c: &T5Config) -> candle_core::Result<Self> {
        let inner = c.num_heads * c.d_kv;
        Ok(Self {
            q: linear_no_bias(c.d_model, inner, vb.pp("q"))?,
            k: linear_no_bias(c.d_model, inner, vb.pp("k"))?,
            v: linear_no_bias(c.d_model, inner, vb.pp("v"))?,
            o: linear_no_bias(inner, c.d_model, vb.pp("o"))?,
            heads: c.num_heads,
            d_kv: c.d_kv,
        })
    }

    /// (batch, len, d_model) → (batch, heads, len, d_kv).
    fn split(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        xs.reshape((b, l, self.heads, self.d_kv))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn keys_values(&self, xs: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.split(&self.k.forward(xs)?)?,
            self.split(&self.v.forward(xs)?)?,
        ))
    }

    /// Attention of `xs` over precomputed keys and values; `bias` holds the position bias and the
    /// mask (added to the scores, which T5 does not scale).
    fn attend(
        &self,
        xs: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        bias: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let q = self.split(&self.q.forward(xs)?)?;
        let scores = q.matmul(&keys.t()?.contiguous()?)?.broadcast_add(bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out =
            weights
                .matmul(values)?
                .transpose(1, 2)?
                .reshape((b, l, self.heads * self.d_kv))?;
        self.o.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct EncoderBlock {
    attn_norm: RmsNorm,
    attn: Attention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

#[derive(Debug, Clone)]
struct DecoderBlock {
    self_norm: RmsNorm,
    self_attn: Attention,
    cross_norm: RmsNorm,
    cross_attn: Attention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// A T5 encoder-decoder loaded from a checkpoint folder.
#[derive(Debug, Clone)]
pub struct T5 {
    config: T5Config,
    shared: Embedding,
    encoder: Vec<EncoderBlock>,
    encoder_bias: RelativeBias,
    encoder_norm: RmsNorm,
    decoder: Vec<DecoderBlock>,
    decoder_bias: RelativeBias,
    decoder_norm: RmsNorm,
    lm_head: Tensor,
    output_scale: Option<f64>,
    device: Device,
}

/// What the decoder keeps between steps for a batch of sequences: each layer's self-attention
/// keys and values so far, the cross-attention keys and values of the encoder output, and the
/// encoder padding mask.
#[derive(Debug, Clone)]
pub struct DecoderState {
    own: Vec<Option<(Tensor, Tensor)>>,
    cross: Vec<(Tensor, Tensor)>,
    encoder_mask: Tensor,
    len: usize,
}

impl DecoderState {
    /// Keeps the rows at `rows`, in that order (beam search's reordering; also drops finished
    /// sequences from the batch). A row may appear several times.
    pub fn select(&self, rows: &[u32]) -> candle_core::Result<Self> {
        let index = Tensor::new(rows, self.encoder_mask.device())?;
        let pick = |t: &Tensor| t.index_select(&index, 0);
        Ok(Self {
            own: self
                .own
                .iter()
                .map(|kv| {
                    kv.as_ref()
                        .map(|(k, v)| Ok((pick(k)?, pick(v)?)))
                        .transpose()
                })
                .collect::<candle_core::Result<_>>()?,
            cross: self
                .cross
                .iter()
                .map(|(k, v)| Ok((pick(k)?, pick(v)?)))
                .collect::<candle_core::Result<_>>()?,
            encoder_mask: pick(&self.encoder_mask)?,
            len: self.len,
        })
    }
}

/// Added to the scores of padding positions: large enough that softmax gives them exactly zero,
/// small enough to stay finite when added to the bias.
const MASKED: f32 = -1e30;

impl T5 {
    /// Loads `config.json` and `model.safetensors` (or sharded safetensors) from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, CandleError> {
        let config = T5Config::load(dir)?;
        let vb = files::var_builder(dir, "model", device)?;
        Self::new(config, vb)
    }

    fn new(c: T5Config, vb: VarBuilder) -> Result<Self, CandleError> {
        let shared = embedding(c.vocab_size, c.d_model, vb.pp("shared"))?;
        let bias = |vb: VarBuilder, bidirectional| -> candle_core::Result<RelativeBias> {
            Ok(RelativeBias {
                embedding: embedding(c.relative_attention_num_buckets, c.num_heads, vb)?,
                bidirectional,
                buckets: c.relative_attention_num_buckets,
                max_distance: c.relative_attention_max_distance,
            })
        };
        let eps = c.layer_norm_epsilon;
        let enc = vb.pp("encoder");
        let mut encoder = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let b = enc.pp(format!("block.{i}.layer"));
            encoder.push(EncoderBlock {
                attn_norm: RmsNorm::new(b.pp("0.layer_norm"), c.d_model, eps)?,
                attn: Attention::new(b.pp("0.SelfAttention"), &c)?,
                ff_norm: RmsNorm::new(b.pp("1.layer_norm"), c.d_model, eps)?,
                ff: FeedForward::new(b.pp("1.DenseReluDense"), &c)?,
            });
        }
        let encoder_bias = bias(
            enc.pp("block.0.layer.0.SelfAttention.relative_attention_bias"),
            true,
        )?;
        let encoder_norm = RmsNorm::new(enc.pp("final_layer_norm"), c.d_model, eps)?;
        let dec = vb.pp("decoder");
        let layers = c.num_decoder_layers.unwrap_or(c.num_layers);
        let mut decoder = Vec::with_capacity(layers);
        for i in 0..layers {
            let b = dec.pp(format!("block.{i}.layer"));
            decoder.push(DecoderBlock {
                self_norm: RmsNorm::new(b.pp("0.layer_norm"), c.d_model, eps)?,
                self_attn: Attention::new(b.pp("0.SelfAttention"), &c)?,
                cross_norm: RmsNorm::new(b.pp("1.layer_norm"), c.d_model, eps)?,
                cross_attn: Attention::new(b.pp("1.EncDecAttention"), &c)?,
                ff_norm: RmsNorm::new(b.pp("2.layer_norm"), c.d_model, eps)?,
                ff: FeedForward::new(b.pp("2.DenseReluDense"), &c)?,
            });
        }
        let decoder_bias = bias(
            dec.pp("block.0.layer.0.SelfAttention.relative_attention_bias"),
            false,
        )?;
        let decoder_norm = RmsNorm::new(dec.pp("final_layer_norm"), c.d_model, eps)?;
        let lm_head = if c.tie_word_embeddings {
            shared.embeddings().clone()
        } else {
            vb.pp("lm_head").get((c.vocab_size, c.d_model), "weight")?
        };
        let output_scale = c
            .scale_decoder_outputs
            .unwrap_or(c.tie_word_embeddings)
            .then(|| (c.d_model as f64).powf(-0.5));
        Ok(Self {
            device: vb.device().clone(),
            config: c,
            shared,
            encoder,
            encoder_bias,
            encoder_norm,
            decoder,
            decoder_bias,
            decoder_norm,
            lm_head,
            output_scale,
        })
    }

    /// The checkpoint's configuration.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encodes a batch of token ids (batch, len), u32, with `mask` (batch, len) 1 for tokens and 0
    /// for padding; returns the last hidden state (batch, len, d_model).
    pub fn encode(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let never = || false;
        let encoded = self.encode_until(ids, mask, &never)?;
        encoded.ok_or_else(|| candle_core::Error::Msg("the encoder was stopped".into()))
    }

    /// [`T5::encode`], asking `stop()` before each layer: a long input's encoder pass takes
    /// seconds, and nobody may be waiting for it any more. `None` when it stopped.
    pub fn encode_until(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        stop: &dyn Fn() -> bool,
    ) -> candle_core::Result<Option<Tensor>> {
        let (_, len) = ids.dims2()?;
        let mut xs = self.shared.forward(ids)?;
        let bias = self
            .encoder_bias
            .compute(len, len, 0, &self.device)?
            .broadcast_add(&additive_mask(mask)?)?;
        for block in &self.encoder {
            if stop() {
                return Ok(None);
            }
            let h = block.attn_norm.forward(&xs)?;
            let (k, v) = block.attn.keys_values(&h)?;
            xs = (xs + block.attn.attend(&h, &k, &v, &bias)?)?;
            let h = block.ff_norm.forward(&xs)?;
            xs = (&xs + block.ff.forward(&h)?)?;
        }
        self.encoder_norm.forward(&xs).map(Some)
    }

    /// The decoder's state before its first token, for an encoder output and its mask.
    pub fn start(&self, encoded: &Tensor, mask: &Tensor) -> candle_core::Result<DecoderState> {
        let cross = self
            .decoder
            .iter()
            .map(|b| b.cross_attn.keys_values(encoded))
            .collect::<candle_core::Result<_>>()?;
        Ok(DecoderState {
            own: vec![None; self.decoder.len()],
            cross,
            encoder_mask: additive_mask(mask)?,
            len: 0,
        })
    }

    /// Feeds one token per row (`ids`: batch, u32) and returns the next-token logits
    /// (batch, vocab) as f32.
    pub fn step(&self, ids: &Tensor, state: &mut DecoderState) -> candle_core::Result<Tensor> {
        let mut xs = self.shared.forward(&ids.unsqueeze(1)?)?;
        let past = state.len;
        // A single new query sees every earlier key, so the causal mask is not needed.
        let own_bias = self.decoder_bias.compute(1, past + 1, past, &self.device)?;
        for (i, block) in self.decoder.iter().enumerate() {
            let h = block.self_norm.forward(&xs)?;
            let (k, v) = block.self_attn.keys_values(&h)?;
            let (k, v) = match state.own[i].take() {
                None => (k, v),
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            };
            xs = (&xs + block.self_attn.attend(&h, &k, &v, &own_bias)?)?;
            state.own[i] = Some((k, v));
            let h = block.cross_norm.forward(&xs)?;
            let (ck, cv) = &state.cross[i];
            xs = (&xs + block.cross_attn.attend(&h, ck, cv, &state.encoder_mask)?)?;
            let h = block.ff_norm.forward(&xs)?;
            xs = (&xs + block.ff.forward(&h)?)?;
        }
        state.len += 1;
        let mut xs = self.decoder_norm.forward(&xs)?.i((.., 0, ..))?;
        if let Some(scale) = self.output_scale {
            xs = (xs * scale)?;
        }
        xs.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)
    }
}

/// (batch, len) of 1/0 → (batch, 1, 1, len) of 0/[`MASKED`], to add to attention scores.
fn additive_mask(mask: &Tensor) -> candle_core::Result<Tensor> {
    let (b, len) = mask.dims2()?;
    ((mask.to_dtype(DType::F32)? - 1.0)? * -(MASKED as f64))?.reshape((b, 1, 1, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_transformers() {
        // Values from transformers' _relative_position_bucket with 32 buckets, distance 128.
        let bi = RelativeBias {
            embedding: Embedding::new(Tensor::zeros((32, 1), DType::F32, &Device::Cpu).unwrap(), 1),
            bidirectional: true,
            buckets: 32,
            max_distance: 128,
        };
        assert_eq!(bi.bucket(0), 0);
        assert_eq!(bi.bucket(3), 19);
        assert_eq!(bi.bucket(-3), 3);
        assert_eq!(bi.bucket(20), 16 + 10);
        assert_eq!(bi.bucket(-500), 15);
        let uni = RelativeBias {
            bidirectional: false,
            ..bi
        };
        assert_eq!(uni.bucket(5), 0);
        assert_eq!(uni.bucket(-5), 5);
        assert_eq!(uni.bucket(-40), 23);
    }
}
