//! diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x/2.x configure it, and the VAE's
//! decoder: what the denoising loop and the final decode run.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::layers::{
    Conv, Downsample, GroupNorm, Resnet, ResnetConfig, Transformer2D, TransformerConfig, Upsample,
    VaeAttention,
};

/// One resolution level of the UNet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockConfig {
    /// Feature channels at this level.
    pub channels: usize,
    /// A `CrossAttn*Block2D` (a transformer after each ResNet block) rather than a plain
    /// `DownBlock2D` / `UpBlock2D`.
    pub cross_attention: bool,
    /// Transformer blocks in each of those transformers (the middle block takes the last
    /// level's, whatever its kind, as diffusers does).
    pub transformer_depth: usize,
    /// Attention heads of those transformers.
    pub heads: usize,
}

/// The UNet's shape, from its `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// Latent channels in.
    pub in_channels: usize,
    /// Noise prediction channels out.
    pub out_channels: usize,
    /// Maps the input from [0, 1] to [-1, 1] first.
    pub center_input_sample: bool,
    /// Timestep embedding as [cos, sin] rather than [sin, cos].
    pub flip_sin_to_cos: bool,
    /// Shift of the timestep embedding's frequencies.
    pub freq_shift: f64,
    /// Levels, from the finest.
    pub blocks: Vec<BlockConfig>,
    /// ResNet blocks per level on the way down (one more on the way up).
    pub layers_per_block: usize,
    /// Padding of the downsampling convolutions.
    pub downsample_padding: usize,
    /// Output scale of the middle block's ResNets.
    pub mid_block_scale_factor: f64,
    /// Normalisation groups.
    pub norm_num_groups: usize,
    /// Normalisation epsilon of the ResNets.
    pub norm_eps: f64,
    /// Width of the text encoder's hidden states.
    pub cross_attention_dim: usize,
    /// Linear projections into the transformers (SD 2.x) instead of 1x1 convolutions.
    pub use_linear_projection: bool,
}

/// ResNet blocks, each optionally followed by a transformer, and a resampler.
struct Level<R> {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer2D>,
    resample: Option<R>,
}

impl<R> Level<R> {
    fn new() -> Self {
        Self {
            resnets: Vec::new(),
            attentions: Vec::new(),
            resample: None,
        }
    }

    /// Loads ResNet block `j` (`c_in` to the level's channels) and, at a cross-attention level,
    /// the transformer after it.
    fn load_layer(
        &mut self,
        vb: &VarBuilder,
        j: usize,
        c_in: usize,
        channels: usize,
        resnet: ResnetConfig,
        transformer: Option<TransformerConfig>,
    ) -> Result<()> {
        let r = vb.pp(format!("resnets.{j}"));
        self.resnets.push(Resnet::load(r, c_in, channels, resnet)?);
        if let Some(cfg) = transformer {
            let a = vb.pp(format!("attentions.{j}"));
            self.attentions.push(Transformer2D::load(a, channels, cfg)?);
        }
        Ok(())
    }

    fn resnet_and_attention(
        &self,
        i: usize,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        let x = self.resnets[i].forward(x, Some(temb))?;
        match self.attentions.get(i) {
            Some(attention) => attention.forward(&x, context),
            None => Ok(x),
        }
    }
}

/// The conditional UNet that predicts the noise in a latent.
pub struct UNet {
    config: UNetConfig,
    conv_in: Conv,
    time_linear_1: Linear,
    time_linear_2: Linear,
    down: Vec<Level<Downsample>>,
    mid_resnets: [Resnet; 2],
    mid_attentions: Transformer2D,
    up: Vec<Level<Upsample>>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl UNet {
    /// Loads the weights under `vb` in diffusers' names.
    pub fn load(vb: VarBuilder, config: UNetConfig) -> Result<Self> {
        let n = config.blocks.len();
        if n == 0 {
            candle_core::bail!("unet has no blocks");
        }
        let first = config.blocks[0].channels;
        let last = config.blocks[n - 1];
        let temb_channels = first * 4;
        let resnet = ResnetConfig {
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            temb_channels: Some(temb_channels),
            output_scale: 1.0,
        };
        let transformer = |block: &BlockConfig, depth: usize| TransformerConfig {
            heads: block.heads,
            depth,
            context_dim: config.cross_attention_dim,
            groups: config.norm_num_groups,
            linear_projection: config.use_linear_projection,
        };
        let transformer_of = |block: &BlockConfig| {
            block
                .cross_attention
                .then(|| transformer(block, block.transformer_depth))
        };

        let mut down = Vec::with_capacity(n);
        let mut c_prev = first;
        for (i, block) in config.blocks.iter().enumerate() {
            let vb = vb.pp(format!("down_blocks.{i}"));
            let mut level = Level::new();
            for j in 0..config.layers_per_block {
                let c_in = if j == 0 { c_prev } else { block.channels };
                level.load_layer(&vb, j, c_in, block.channels, resnet, transformer_of(block))?;
            }
            if i + 1 < n {
                let d = vb.pp("downsamplers.0");
                level.resample = Some(Downsample::load(
                    d,
                    block.channels,
                    config.downsample_padding,
                )?);
            }
            down.push(level);
            c_prev = block.channels;
        }

        let mid = vb.pp("mid_block");
        let mid_resnet = ResnetConfig {
            output_scale: config.mid_block_scale_factor,
            ..resnet
        };
        let mid_resnets = [
            Resnet::load(
                mid.pp("resnets.0"),
                last.channels,
                last.channels,
                mid_resnet,
            )?,
            Resnet::load(
                mid.pp("resnets.1"),
                last.channels,
                last.channels,
                mid_resnet,
            )?,
        ];
        let mid_attentions = Transformer2D::load(
            mid.pp("attentions.0"),
            last.channels,
            transformer(&last, last.transformer_depth),
        )?;

        let mut up = Vec::with_capacity(n);
        let mut c_prev = last.channels;
        for i in 0..n {
            let block = &config.blocks[n - 1 - i];
            // The skip connections this level consumes come from the level below it on the way
            // down, except the last, which comes from the level's own input.
            let c_skip_last = config.blocks[(n - 1 - i).saturating_sub(1)].channels;
            let vb = vb.pp(format!("up_blocks.{i}"));
            let mut level = Level::new();
            let layers = config.layers_per_block + 1;
            for j in 0..layers {
                let skip = if j + 1 == layers {
                    c_skip_last
                } else {
                    block.channels
                };
                let c_in = if j == 0 { c_prev } else { block.channels } + skip;
                level.load_layer(&vb, j, c_in, block.channels, resnet, transformer_of(block))?;
            }
            if i + 1 < n {
                level.resample = Some(Upsample::load(vb.pp("upsamplers.0"), block.channels)?);
            }
            up.push(level);
            c_prev = block.channels;
        }

        Ok(Self {
            conv_in: Conv::load(vb.pp("conv_in"), (config.in_channels, first), 3, 1, 1)?,
            time_linear_1: candle_nn::linear(
                first,
                temb_channels,
                vb.pp("time_embedding.linear_1"),
            )?,
            time_linear_2: candle_nn::linear(
                temb_channels,
                temb_channels,
                vb.pp("time_embedding.linear_2"),
            )?,
            down,
            mid_resnets,
            mid_attentions,
            up,
            norm_out: GroupNorm::load(
                vb.pp("conv_norm_out"),
                config.norm_num_groups,
                first,
                config.norm_eps,
            )?,
            conv_out: Conv::load(vb.pp("conv_out"), (first, config.out_channels), 3, 1, 1)?,
            config,
        })
    }

    /// The sinusoidal embedding of timestep `t` (1, channels), in diffusers' layout and f32
    /// arithmetic.
    fn timestep_embedding(&self, t: f64, device: &Device) -> Result<Tensor> {
        let channels = self.config.blocks[0].channels;
        let half = channels / 2;
        let denominator = half as f32 - self.config.freq_shift as f32;
        let (sin, cos): (Vec<f32>, Vec<f32>) = (0..half)
            .map(|j| {
                let a = t as f32 * (-(10000f32.ln()) * j as f32 / denominator).exp();
                (a.sin(), a.cos())
            })
            .unzip();
        let mut emb = if self.config.flip_sin_to_cos {
            [cos, sin].concat()
        } else {
            [sin, cos].concat()
        };
        emb.resize(channels, 0.0);
        Tensor::from_vec(emb, (1, channels), device)
    }

    /// Predicts the noise in `x` (batch, in_channels, h, w) at timestep `t`, conditioned on
    /// `context` (batch, tokens, cross_attention_dim).
    pub fn forward(&self, x: &Tensor, t: f64, context: &Tensor) -> Result<Tensor> {
        in_halves(x, |start, len| {
            self.forward_batch(
                &x.narrow(0, start, len)?,
                t,
                &context.narrow(0, start, len)?,
            )
        })
    }

    fn forward_batch(&self, x: &Tensor, t: f64, context: &Tensor) -> Result<Tensor> {
        let x = if self.config.center_input_sample {
            ((x * 2.0)? - 1.0)?
        } else {
            x.clone()
        };
        let temb = self.timestep_embedding(t, x.device())?;
        let temb = self
            .time_linear_2
            .forward(&candle_nn::ops::silu(&self.time_linear_1.forward(&temb)?)?)?;
        // Every ResNet block takes the embedding through SiLU first: once is enough.
        let temb = candle_nn::ops::silu(&temb)?;

        let mut x = self.conv_in.forward(&x)?;
        let mut skips = vec![x.clone()];
        for level in &self.down {
            for i in 0..level.resnets.len() {
                x = level.resnet_and_attention(i, &x, &temb, context)?;
                skips.push(x.clone());
            }
            if let Some(down) = &level.resample {
                x = down.forward(&x)?;
                skips.push(x.clone());
            }
        }

        x = self.mid_resnets[0].forward(&x, Some(&temb))?;
        x = self.mid_attentions.forward(&x, context)?;
        x = self.mid_resnets[1].forward(&x, Some(&temb))?;

        for level in &self.up {
            for i in 0..level.resnets.len() {
                let Some(skip) = skips.pop() else {
                    candle_core::bail!("unet: more up blocks than skip connections");
                };
                x = Tensor::cat(&[&x, &skip], 1)?;
                x = level.resnet_and_attention(i, &x, &temb, context)?;
            }
            if let Some(up) = &level.resample {
                // Upsample to the size of the skip connection it meets next: twice the size,
                // except where the way down rounded an odd size up.
                let size = match skips.last() {
                    Some(s) => {
                        let (_, _, h, w) = s.dims4()?;
                        Some((h, w))
                    }
                    None => None,
                };
                x = up.forward(&x, size)?;
            }
        }
        let x = self.norm_out.forward(&x, true)?;
        self.conv_out.forward(&x)
    }
}

/// Runs `f(start, len)` over the rows of `x`'s batch: on the CPU, in two halves side by side.
///
/// The operations on one latent are too small to keep two cores busy one at a time (each would
/// wait on the other's wake-up); two independent halves do. Elsewhere the device parallelises.
fn in_halves<F>(x: &Tensor, f: F) -> Result<Tensor>
where
    F: Fn(usize, usize) -> Result<Tensor> + Sync,
{
    let batch = x.dim(0)?;
    if !x.device().is_cpu() || batch < 2 || rayon::current_num_threads() < 2 {
        return f(0, batch);
    }
    let half = batch / 2;
    let (a, b) = rayon::join(|| f(0, half), || f(half, batch - half));
    Tensor::cat(&[a?, b?], 0)
}

/// The VAE decoder's shape, from the VAE's `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Latent channels in.
    pub latent_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Levels, from the finest (the decoder walks them backwards).
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per level of the encoder (the decoder has one more).
    pub layers_per_block: usize,
    /// Normalisation groups.
    pub norm_num_groups: usize,
    /// Whether a 1x1 convolution precedes the decoder.
    pub use_post_quant_conv: bool,
}

/// The VAE decoder: latents to images in [-1, 1].
pub struct VaeDecoder {
    post_quant_conv: Option<Conv>,
    conv_in: Conv,
    mid_resnets: [Resnet; 2],
    mid_attention: VaeAttention,
    up: Vec<Level<Upsample>>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl VaeDecoder {
    /// Loads `post_quant_conv` and `decoder.*` under `vb`.
    pub fn load(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let channels: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let (Some(&deepest), Some(&finest)) = (channels.first(), channels.last()) else {
            candle_core::bail!("vae has no blocks");
        };
        let groups = config.norm_num_groups;
        let resnet = ResnetConfig {
            groups,
            eps: 1e-6,
            temb_channels: None,
            output_scale: 1.0,
        };
        let post_quant_conv = if config.use_post_quant_conv {
            let c = config.latent_channels;
            Some(Conv::load(vb.pp("post_quant_conv"), (c, c), 1, 1, 0)?)
        } else {
            None
        };
        let vb = vb.pp("decoder");
        let mid = vb.pp("mid_block");
        let mut up = Vec::with_capacity(channels.len());
        let mut c_prev = deepest;
        for (i, &c) in channels.iter().enumerate() {
            let level = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..config.layers_per_block + 1)
                .map(|j| {
                    let c_in = if j == 0 { c_prev } else { c };
                    Resnet::load(level.pp(format!("resnets.{j}")), c_in, c, resnet)
                })
                .collect::<Result<_>>()?;
            let resample = if i + 1 < channels.len() {
                Some(Upsample::load(level.pp("upsamplers.0"), c)?)
            } else {
                None
            };
            up.push(Level {
                resnets,
                attentions: Vec::new(),
                resample,
            });
            c_prev = c;
        }
        Ok(Self {
            post_quant_conv,
            conv_in: Conv::load(vb.pp("conv_in"), (config.latent_channels, deepest), 3, 1, 1)?,
            mid_resnets: [
                Resnet::load(mid.pp("resnets.0"), deepest, deepest, resnet)?,
                Resnet::load(mid.pp("resnets.1"), deepest, deepest, resnet)?,
            ],
            mid_attention: VaeAttention::load(mid.pp("attentions.0"), deepest, groups)?,
            up,
            norm_out: GroupNorm::load(vb.pp("conv_norm_out"), groups, finest, 1e-6)?,
            conv_out: Conv::load(vb.pp("conv_out"), (finest, config.out_channels), 3, 1, 1)?,
        })
    }

    /// Decodes latents (batch, latent_channels, h, w), already unscaled, to images.
    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        in_halves(latents, |start, len| {
            self.forward_batch(&latents.narrow(0, start, len)?)
        })
    }

    fn forward_batch(&self, latents: &Tensor) -> Result<Tensor> {
        let x = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents)?,
            None => latents.clone(),
        };
        let mut x = self.conv_in.forward(&x)?;
        x = self.mid_resnets[0].forward(&x, None)?;
        x = self.mid_attention.forward(&x)?;
        x = self.mid_resnets[1].forward(&x, None)?;
        for level in &self.up {
            for resnet in &level.resnets {
                x = resnet.forward(&x, None)?;
            }
            if let Some(up) = &level.resample {
                x = up.forward(&x, None)?;
            }
        }
        let x = self.norm_out.forward(&x, true)?;
        self.conv_out.forward(&x)
    }
}
