//! The building blocks diffusers' UNet and VAE share, in diffusers' weight names, computed with
//! [`kernels`](super::kernels).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::kernels;

/// A 2-D convolution with bias, square kernel, dilation 1.
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    /// Loads `weight` (c_out, c_in, k, k) and `bias` from `vb`.
    pub fn load(
        vb: VarBuilder,
        (c_in, c_out): (usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((c_out, c_in, kernel, kernel), "weight")?,
            bias: vb.get(c_out, "bias")?,
            stride,
            padding,
        })
    }

    /// `x` is (batch, c_in, h, w).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::conv2d(x, &self.weight, &self.bias, self.stride, self.padding)
    }
}

/// Group normalisation with a per-channel scale and shift.
pub struct GroupNorm {
    gamma: Tensor,
    beta: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias` of `channels` values.
    pub fn load(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("{channels} channels cannot form {groups} groups");
        }
        Ok(Self {
            gamma: vb.get(channels, "weight")?,
            beta: vb.get(channels, "bias")?,
            groups,
            eps,
        })
    }

    /// Normalises `x` (batch, channels, ...), then applies SiLU when `silu` is set.
    pub fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        kernels::group_norm(x, &self.gamma, &self.beta, self.groups, self.eps, silu)
    }
}

/// A linear layer whose weight may be stored as a 1x1 convolution (older VAE checkpoints).
fn linear_or_pointwise(vb: VarBuilder, channels: usize) -> Result<Linear> {
    let weight = match vb.get((channels, channels), "weight") {
        Ok(w) => w,
        Err(_) => vb
            .get((channels, channels, 1, 1), "weight")?
            .reshape((channels, channels))?,
    };
    Ok(Linear::new(weight, Some(vb.get(channels, "bias")?)))
}

/// diffusers' `ResnetBlock2D`: two normalised, SiLU-activated 3x3 convolutions with the time
/// embedding added between them and a (1x1-projected where the width changes) shortcut.
pub struct Resnet {
    norm1: GroupNorm,
    conv1: Conv,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv,
    shortcut: Option<Conv>,
    output_scale: f64,
}

/// How a ResNet block is built.
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    /// Normalisation groups.
    pub groups: usize,
    /// Normalisation epsilon.
    pub eps: f64,
    /// Width of the time embedding, for UNet blocks.
    pub temb_channels: Option<usize>,
    /// The sum with the shortcut is divided by this.
    pub output_scale: f64,
}

impl Resnet {
    /// Loads a block from `c_in` to `c_out` channels.
    pub fn load(vb: VarBuilder, c_in: usize, c_out: usize, cfg: ResnetConfig) -> Result<Self> {
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => Some(candle_nn::linear(t, c_out, vb.pp("time_emb_proj"))?),
            None => None,
        };
        let shortcut = if c_in != c_out {
            Some(Conv::load(vb.pp("conv_shortcut"), (c_in, c_out), 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::load(vb.pp("norm1"), cfg.groups, c_in, cfg.eps)?,
            conv1: Conv::load(vb.pp("conv1"), (c_in, c_out), 3, 1, 1)?,
            time_emb_proj,
            norm2: GroupNorm::load(vb.pp("norm2"), cfg.groups, c_out, cfg.eps)?,
            conv2: Conv::load(vb.pp("conv2"), (c_out, c_out), 3, 1, 1)?,
            shortcut,
            output_scale: cfg.output_scale,
        })
    }

    /// `silu_temb` is the time embedding after SiLU (batch or 1, temb_channels).
    pub fn forward(&self, x: &Tensor, silu_temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        if let (Some(t), Some(proj)) = (silu_temb, &self.time_emb_proj) {
            h = h.broadcast_add(
                &proj
                    .forward(t)?
                    .unsqueeze(D::Minus1)?
                    .unsqueeze(D::Minus1)?,
            )?;
        }
        let h = self.conv2.forward(&self.norm2.forward(&h, true)?)?;
        let out = match &self.shortcut {
            Some(s) => (s.forward(x)? + h)?,
            None => (x + h)?,
        };
        if self.output_scale == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale
        }
    }
}

/// Multi-head attention over (batch, tokens, channels), on itself or on a context.
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    /// diffusers' `Attention` of a transformer block: no bias on q/k/v.
    pub fn load(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
        })
    }

    /// The VAE's single-head attention, in either generation of diffusers' names.
    pub fn load_vae(vb: VarBuilder, channels: usize) -> Result<Self> {
        let [q, k, v, out] = if vb.contains_tensor("to_q.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        Ok(Self {
            to_q: linear_or_pointwise(vb.pp(q), channels)?,
            to_k: linear_or_pointwise(vb.pp(k), channels)?,
            to_v: linear_or_pointwise(vb.pp(v), channels)?,
            to_out: linear_or_pointwise(vb.pp(out), channels)?,
            heads: 1,
        })
    }

    /// `x` (batch, tokens, query_dim); `context` (batch, context tokens, context_dim) or
    /// itself when `None`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let out = kernels::attention(
            &self.to_q.forward(x)?,
            &self.to_k.forward(context)?,
            &self.to_v.forward(context)?,
            self.heads,
        )?;
        self.to_out.forward(&out)
    }
}

/// diffusers' `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each
/// after a layer norm and added to its input.
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn load(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let head_dim = dim / heads;
        let inner = dim * 4;
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::load(vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::load(vb.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_in: candle_nn::linear(dim, inner * 2, vb.pp("ff.net.0.proj"))?,
            ff_out: candle_nn::linear(inner, dim, vb.pp("ff.net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + x)?;
        let ff = kernels::geglu(&self.ff_in.forward(&self.norm3.forward(&x)?)?)?;
        self.ff_out.forward(&ff)? + x
    }
}

/// How image features enter and leave the token sequence.
enum Projection {
    Pointwise(Conv),
    Linear(Linear),
}

/// diffusers' `Transformer2DModel` over an image's features, conditioned on the text.
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

/// How a [`Transformer2D`] is built.
#[derive(Debug, Clone, Copy)]
pub struct TransformerConfig {
    /// Attention heads.
    pub heads: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Width of the text encoder's hidden states.
    pub context_dim: usize,
    /// Normalisation groups.
    pub groups: usize,
    /// Linear projections in and out (SD 2.x) instead of 1x1 convolutions.
    pub linear_projection: bool,
}

impl Transformer2D {
    /// Loads a transformer over `channels` features.
    pub fn load(vb: VarBuilder, channels: usize, cfg: TransformerConfig) -> Result<Self> {
        let projection = |name: &str| -> Result<Projection> {
            Ok(if cfg.linear_projection {
                Projection::Linear(candle_nn::linear(channels, channels, vb.pp(name))?)
            } else {
                Projection::Pointwise(Conv::load(vb.pp(name), (channels, channels), 1, 1, 0)?)
            })
        };
        let blocks = (0..cfg.depth)
            .map(|i| {
                TransformerBlock::load(
                    vb.pp(format!("transformer_blocks.{i}")),
                    channels,
                    cfg.context_dim,
                    cfg.heads,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            norm: GroupNorm::load(vb.pp("norm"), cfg.groups, channels, 1e-6)?,
            proj_in: projection("proj_in")?,
            blocks,
            proj_out: projection("proj_out")?,
        })
    }

    /// `x` (batch, channels, h, w), `context` (batch, tokens, context_dim).
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x, false)?;
        let to_tokens = |t: &Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let mut tokens = match &self.proj_in {
            Projection::Pointwise(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(l) => l.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_image = |t: &Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous();
        let out = match &self.proj_out {
            Projection::Pointwise(conv) => conv.forward(&to_image(&tokens)?)?,
            Projection::Linear(l) => to_image(&l.forward(&tokens)?)?,
        };
        out + x
    }
}

/// The VAE's attention over all pixels of an image, single-headed, with a residual.
pub struct VaeAttention {
    norm: GroupNorm,
    attention: Attention,
}

impl VaeAttention {
    /// Loads the block over `channels` features.
    pub fn load(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm::load(vb.pp("group_norm"), groups, channels, 1e-6)?,
            attention: Attention::load_vae(vb, channels)?,
        })
    }

    /// `x` (batch, channels, h, w).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .norm
            .forward(x, false)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let out = self
            .attention
            .forward(&tokens, None)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        out + x
    }
}

/// A stride-2 3x3 convolution that halves the image.
pub struct Downsample {
    conv: Conv,
    padding: usize,
}

impl Downsample {
    /// Loads `conv` of `channels` features.
    pub fn load(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv::load(vb.pp("conv"), (channels, channels), 3, 2, padding)?,
            padding,
        })
    }

    /// `x` (batch, channels, h, w).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            // diffusers pads right and bottom only in this configuration.
            let x = x
                .pad_with_zeros(D::Minus1, 0, 1)?
                .pad_with_zeros(D::Minus2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour upsampling followed by a 3x3 convolution.
pub struct Upsample {
    conv: Conv,
}

impl Upsample {
    /// Loads `conv` of `channels` features.
    pub fn load(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv::load(vb.pp("conv"), (channels, channels), 3, 1, 1)?,
        })
    }

    /// Upsamples `x` (batch, channels, h, w) to `size` (twice the size when `None`).
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&x.upsample_nearest2d(th, tw)?)
    }
}
