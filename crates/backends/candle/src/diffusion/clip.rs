//! The CLIP text encoder of Stable Diffusion (transformers' `CLIPTextModel`), configured from
//! the checkpoint's `config.json` (candle-transformers' CLIP only has presets).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use crate::{files, CandleError};

/// The fields of `text_encoder/config.json` the encoder reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Longest token sequence (77 for Stable Diffusion).
    pub max_position_embeddings: usize,
    /// `quick_gelu` (SD 1.x) or `gelu` (SD 2.x).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Layer norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_act() -> String {
    "quick_gelu".to_string()
}
fn default_eps() -> f64 {
    1e-5
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
}

#[derive(Debug, Clone)]
struct Layer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The text encoder; its last hidden state conditions the UNet.
#[derive(Debug, Clone)]
pub struct ClipTextEncoder {
    tokens: Embedding,
    positions: Embedding,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    heads: usize,
    activation: Activation,
    config: ClipConfig,
}

impl ClipTextEncoder {
    /// Loads `config.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, CandleError> {
        let c: ClipConfig = files::json(&dir.join("config.json"))?;
        let vb = files::var_builder(dir, "model", device)?;
        // transformers' CLIPTextModel keeps its weights under `text_model.`.
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        Self::new(c, vb)
    }

    fn new(c: ClipConfig, vb: VarBuilder) -> Result<Self, CandleError> {
        let activation = match c.hidden_act.as_str() {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => {
                return Err(CandleError::Unsupported(format!(
                    "text encoder hidden_act '{other}' (supported: quick_gelu, gelu)"
                )))
            }
        };
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(CandleError::Invalid(format!(
                "text encoder hidden_size {} is not a multiple of its {} heads",
                c.hidden_size, c.num_attention_heads
            )));
        }
        let h = c.hidden_size;
        let eps = c.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let tokens = embedding(c.vocab_size, h, emb.pp("token_embedding"))?;
        let positions = embedding(c.max_position_embeddings, h, emb.pp("position_embedding"))?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("encoder.layers.{i}"));
            let a = l.pp("self_attn");
            layers.push(Layer {
                norm1: layer_norm(h, eps, l.pp("layer_norm1"))?,
                q: linear(h, h, a.pp("q_proj"))?,
                k: linear(h, h, a.pp("k_proj"))?,
                v: linear(h, h, a.pp("v_proj"))?,
                out: linear(h, h, a.pp("out_proj"))?,
                norm2: layer_norm(h, eps, l.pp("layer_norm2"))?,
                fc1: linear(h, c.intermediate_size, l.pp("mlp.fc1"))?,
                fc2: linear(c.intermediate_size, h, l.pp("mlp.fc2"))?,
            });
        }
        let final_norm = layer_norm(h, eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            tokens,
            positions,
            layers,
            final_norm,
            heads: c.num_attention_heads,
            activation,
            config: c,
        })
    }

    /// The encoder's configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Token ids (batch, len), u32 → last hidden state (batch, len, hidden), with CLIP's causal
    /// mask and no padding mask (as Stable Diffusion pipelines call it).
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, len) = ids.dims2()?;
        let device = ids.device();
        let positions = Tensor::arange(0u32, len as u32, device)?;
        let mut xs = self
            .tokens
            .forward(ids)?
            .broadcast_add(&self.positions.forward(&positions)?)?;
        let causal: Vec<f32> = (0..len)
            .flat_map(|q| (0..len).map(move |k| if k > q { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let causal = Tensor::from_vec(causal, (1, 1, len, len), device)?;
        let h = self.config.hidden_size;
        let d = h / self.heads;
        let scale = (d as f64).powf(-0.5);
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, len, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        for l in &self.layers {
            let residual = xs.clone();
            let n = l.norm1.forward(&xs)?;
            let q = split((l.q.forward(&n)? * scale)?)?;
            let k = split(l.k.forward(&n)?)?;
            let v = split(l.v.forward(&n)?)?;
            let scores = q.matmul(&k.t()?.contiguous()?)?.broadcast_add(&causal)?;
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let attn = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, len, h))?;
            xs = (residual + l.out.forward(&attn)?)?;
            let residual = xs.clone();
            let n = l.fc1.forward(&l.norm2.forward(&xs)?)?;
            let n = match self.activation {
                Activation::QuickGelu => (&n * candle_nn::ops::sigmoid(&(&n * 1.702)?)?)?,
                Activation::Gelu => n.gelu_erf()?,
            };
            xs = (residual + l.fc2.forward(&n)?)?;
        }
        self.final_norm.forward(&xs)?.to_dtype(DType::F32)
    }
}
