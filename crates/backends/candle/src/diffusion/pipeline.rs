//! A Stable Diffusion pipeline in the diffusers folder layout, and its denoising loop.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use serde_json::Value;

use super::clip::ClipTextEncoder;
use super::params::DiffusionDefaults;
use super::scheduler::{Schedule, SchedulerKind};
use super::unet::{BlockConfig, UNet, UNetConfig, VaeConfig, VaeDecoder};
use crate::{files, CandleError};

/// Largest height or width a request may ask for, in pixels.
pub const MAX_SIDE: usize = 2048;
/// Most inference steps a request may ask for.
pub const MAX_STEPS: usize = 200;
/// Largest classifier-free guidance scale a request may ask for.
pub const MAX_GUIDANCE: f64 = 50.0;

/// What one batch of images is generated with (requests batch together only when these are
/// equal).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSettings {
    /// Output height in pixels (a multiple of 8).
    pub height: usize,
    /// Output width in pixels (a multiple of 8).
    pub width: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale; at most 1 turns guidance off.
    pub guidance_scale: f64,
    /// The scheduler.
    pub scheduler: SchedulerKind,
}

impl ImageSettings {
    /// Checks the bounds, naming the value that is out of them.
    pub fn check(&self) -> Result<(), CandleError> {
        let invalid = |m: String| Err(CandleError::Invalid(m));
        for (name, v) in [("height", self.height), ("width", self.width)] {
            if v == 0 || v % 8 != 0 || v > MAX_SIDE {
                return invalid(format!(
                    "{name} must be a multiple of 8 between 8 and {MAX_SIDE}, got {v}"
                ));
            }
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return invalid(format!(
                "num_inference_steps must be between 1 and {MAX_STEPS}, got {}",
                self.steps
            ));
        }
        if !(self.guidance_scale.is_finite() && (0.0..=MAX_GUIDANCE).contains(&self.guidance_scale))
        {
            return invalid(format!(
                "guidance_scale must be between 0 and {MAX_GUIDANCE}, got {}",
                self.guidance_scale
            ));
        }
        Ok(())
    }
}

/// The UNet's `config.json`, in diffusers' names.
#[derive(Debug, Deserialize)]
struct UNetFile {
    #[serde(default = "four")]
    in_channels: usize,
    #[serde(default = "four")]
    out_channels: usize,
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default = "yes")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    #[serde(default)]
    mid_block_type: Option<String>,
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    #[serde(default = "one")]
    downsample_padding: usize,
    #[serde(default = "one_f")]
    mid_block_scale_factor: f64,
    norm_num_groups: usize,
    norm_eps: f64,
    cross_attention_dim: usize,
    /// diffusers reads this as the number of heads when `num_attention_heads` is unset.
    attention_head_dim: Value,
    #[serde(default)]
    num_attention_heads: Option<Value>,
    #[serde(default)]
    transformer_layers_per_block: Option<Value>,
    #[serde(default)]
    use_linear_projection: bool,
    /// Latent side the UNet was trained at; default image size is this times the VAE factor.
    #[serde(default = "sixty_four")]
    sample_size: usize,
    /// Everything else: names, versions, and the settings of [`DEFAULT_ONLY`].
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// Settings of diffusers' UNet this one implements only with the values listed (absent means
/// the first): a checkpoint with another value is refused rather than computed wrongly.
fn default_only() -> [(&'static str, Vec<Value>); 21] {
    let null = || vec![Value::Null];
    let no = || vec![Value::Bool(false), Value::Null];
    [
        ("act_fn", vec!["silu".into()]),
        ("time_embedding_type", vec!["positional".into()]),
        ("time_embedding_act_fn", null()),
        ("time_embedding_dim", null()),
        ("timestep_post_act", null()),
        ("time_cond_proj_dim", null()),
        ("class_embed_type", null()),
        ("num_class_embeds", null()),
        ("projection_class_embeddings_input_dim", null()),
        ("addition_embed_type", null()),
        ("encoder_hid_dim", null()),
        ("attention_type", vec!["default".into()]),
        ("cross_attention_norm", null()),
        ("reverse_transformer_layers_per_block", null()),
        ("only_cross_attention", no()),
        ("dual_cross_attention", no()),
        ("resnet_time_scale_shift", vec!["default".into()]),
        ("resnet_skip_time_act", no()),
        ("resnet_out_scale_factor", vec![1.0.into()]),
        ("conv_in_kernel", vec![3.into()]),
        ("conv_out_kernel", vec![3.into()]),
    ]
}

/// JSON equality where 1 and 1.0 are the same number.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn four() -> usize {
    4
}
fn sixty_four() -> usize {
    64
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

/// One value per block, from a number or a list.
fn per_block(v: &Value, blocks: usize, name: &str) -> Result<Vec<usize>, CandleError> {
    let bad = || CandleError::Invalid(format!("unet {name} must be a number or {blocks} numbers"));
    match v {
        Value::Number(n) => Ok(vec![n.as_u64().ok_or_else(bad)? as usize; blocks]),
        Value::Array(a) if a.len() == blocks => a
            .iter()
            .map(|x| x.as_u64().map(|n| n as usize).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

impl UNetFile {
    fn config(&self) -> Result<UNetConfig, CandleError> {
        let unsupported = |what: &str| Err(CandleError::Unsupported(format!("unet {what}")));
        for (name, allowed) in default_only() {
            if let Some(v) = self.other.get(name) {
                if !allowed.iter().any(|a| same(a, v)) {
                    return unsupported(&format!("{name} {v}"));
                }
            }
        }
        if self
            .mid_block_type
            .as_deref()
            .is_some_and(|t| t != "UNetMidBlock2DCrossAttn")
        {
            return unsupported("mid_block_type other than UNetMidBlock2DCrossAttn");
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(CandleError::Invalid(
                "unet block_out_channels, down_block_types and up_block_types must have the same length".into(),
            ));
        }
        let heads = match &self.num_attention_heads {
            Some(v) if !v.is_null() => per_block(v, n, "num_attention_heads")?,
            _ => per_block(&self.attention_head_dim, n, "attention_head_dim")?,
        };
        let depth = match &self.transformer_layers_per_block {
            Some(v) if !v.is_null() => per_block(v, n, "transformer_layers_per_block")?,
            _ => vec![1; n],
        };
        let mut blocks = Vec::with_capacity(n);
        for i in 0..n {
            let cross = match self.down_block_types[i].as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return unsupported(&format!("down block '{other}'")),
            };
            // candle mirrors the down blocks for the way up.
            let up = &self.up_block_types[n - 1 - i];
            let expected = if cross {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            };
            if up != expected {
                return unsupported(&format!(
                    "up block '{up}' facing down block '{}'",
                    self.down_block_types[i]
                ));
            }
            if heads[i] == 0 || !self.block_out_channels[i].is_multiple_of(heads[i]) {
                return Err(CandleError::Invalid(format!(
                    "unet block {i}: {} channels do not split into {} attention heads",
                    self.block_out_channels[i], heads[i]
                )));
            }
            blocks.push(BlockConfig {
                channels: self.block_out_channels[i],
                cross_attention: cross,
                transformer_depth: depth[i],
                heads: heads[i],
            });
        }
        Ok(UNetConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            center_input_sample: self.center_input_sample,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            blocks,
            layers_per_block: self.layers_per_block,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            use_linear_projection: self.use_linear_projection,
        })
    }
}

/// The VAE's `config.json` (the decoder's part: the encoder is not loaded).
#[derive(Debug, Deserialize)]
struct VaeFile {
    #[serde(default = "three")]
    out_channels: usize,
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    #[serde(default = "four")]
    latent_channels: usize,
    #[serde(default = "thirty_two")]
    norm_num_groups: usize,
    #[serde(default = "yes")]
    use_post_quant_conv: bool,
    #[serde(default = "sd_scaling")]
    scaling_factor: f64,
    #[serde(default)]
    shift_factor: Option<f64>,
}

fn three() -> usize {
    3
}
fn thirty_two() -> usize {
    32
}
fn sd_scaling() -> f64 {
    0.18215
}

/// A loaded Stable Diffusion pipeline.
pub struct StableDiffusion {
    text_encoder: ClipTextEncoder,
    unet: UNet,
    latent_channels: usize,
    vae: VaeDecoder,
    vae_scale: f64,
    vae_shift: f64,
    schedule: Schedule,
    defaults: DiffusionDefaults,
    device: Device,
}

/// A generation's inputs: prompt and negative prompt token ids (batch, len), initial noise
/// latents (batch, channels, height / 8, width / 8).
pub struct DiffusionInputs<'a> {
    /// The prompts' token ids, u32.
    pub prompt_ids: &'a Tensor,
    /// The negative prompts' token ids (the empty prompt's for none), u32.
    pub negative_ids: &'a Tensor,
    /// Standard normal noise to start from.
    pub latents: &'a Tensor,
}

impl StableDiffusion {
    /// Loads `text_encoder/`, `unet/`, `vae/` and `scheduler/` from a diffusers pipeline folder.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, CandleError> {
        let text_encoder = ClipTextEncoder::load(&dir.join("text_encoder"), device)?;
        let (unet, unet_file) = load_unet(&dir.join("unet"), device)?;
        if unet_file.cross_attention_dim != text_encoder.config().hidden_size {
            return Err(CandleError::Invalid(format!(
                "unet cross_attention_dim {} differs from the text encoder's hidden_size {}",
                unet_file.cross_attention_dim,
                text_encoder.config().hidden_size
            )));
        }
        let (vae, v) = load_vae(&dir.join("vae"), device)?;
        if v.latent_channels != unet_file.in_channels {
            return Err(CandleError::Invalid(format!(
                "vae latent_channels {} differs from the unet's in_channels {}",
                v.latent_channels, unet_file.in_channels
            )));
        }
        let schedule = Schedule::load(&dir.join("scheduler"))?;
        // Each VAE block but the last halves the image.
        let vae_factor = 1 << v.block_out_channels.len().saturating_sub(1);
        let side = unet_file.sample_size * vae_factor;
        let defaults = DiffusionDefaults {
            height: side,
            width: side,
            // diffusers' defaults.
            steps: 50,
            guidance_scale: 7.5,
            scheduler: schedule.default_kind(),
            vae_factor,
        };
        Ok(Self {
            defaults,
            text_encoder,
            unet,
            latent_channels: v.latent_channels,
            vae,
            vae_scale: v.scaling_factor,
            vae_shift: v.shift_factor.unwrap_or(0.0),
            schedule,
            device: device.clone(),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The pipeline's defaults (size from the UNet's sample size, diffusers' 50 steps and
    /// guidance 7.5, the scheduler it was saved with).
    pub fn defaults(&self) -> &DiffusionDefaults {
        &self.defaults
    }

    /// Standard normal starting latents for `settings`, one image per seed: the same seed and
    /// size give the same image.
    pub fn noise(&self, seeds: &[u64], settings: &ImageSettings) -> Result<Tensor, CandleError> {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let f = self.defaults.vae_factor;
        let (h, w) = (settings.height / f, settings.width / f);
        let per = self.latent_channels * h * w;
        let mut values = Vec::with_capacity(seeds.len() * per);
        for &seed in seeds {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            values.extend(
                rand_distr::StandardNormal
                    .sample_iter(&mut rng)
                    .take(per)
                    .map(|v: f32| v),
            );
        }
        Ok(Tensor::from_vec(
            values,
            (seeds.len(), self.latent_channels, h, w),
            &self.device,
        )?)
    }

    /// Tokens in the text encoder's vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.text_encoder.config().vocab_size
    }

    /// Longest prompt in tokens, start and end included.
    pub fn max_tokens(&self) -> usize {
        self.text_encoder.config().max_position_embeddings
    }

    /// Generates a batch of images, (batch, height, width, 3) with values in [0, 1].
    ///
    /// `keep(i, done, of)` is asked after each step (`done` of `of` UNet steps) for each image
    /// still generating; images it refuses leave the batch, and come back as `None`.
    pub fn generate(
        &self,
        inputs: &DiffusionInputs<'_>,
        settings: &ImageSettings,
        keep: &dyn Fn(usize, usize, usize) -> bool,
    ) -> Result<Vec<Option<Tensor>>, CandleError> {
        settings.check()?;
        let n = inputs.prompt_ids.dim(0)?;
        let guided = settings.guidance_scale > 1.0;
        let mut context = self.text_encoder.forward(inputs.prompt_ids)?;
        if guided {
            let negative = self.text_encoder.forward(inputs.negative_ids)?;
            context = Tensor::cat(&[&negative, &context], 0)?;
        }
        let mut scheduler = self
            .schedule
            .scheduler(settings.scheduler, settings.steps)?;
        let mut latents = (inputs.latents * scheduler.init_noise_sigma())?;
        let mut live: Vec<usize> = (0..n).collect();
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if guided {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(&input, i)?;
            let noise = self.unet.forward(&input, t, &context)?;
            let noise = if guided {
                let rows = live.len();
                let uncond = noise.narrow(0, 0, rows)?;
                let cond = noise.narrow(0, rows, rows)?;
                (&uncond + ((cond - &uncond)? * settings.guidance_scale)?)?
            } else {
                noise
            };
            latents = scheduler.step(&noise, i, &latents)?;
            let kept: Vec<u32> = (0..live.len() as u32)
                .filter(|&r| keep(live[r as usize], i + 1, timesteps.len()))
                .collect();
            if kept.is_empty() {
                tracing::info!(
                    step = i + 1,
                    steps = timesteps.len(),
                    stopped = live.len(),
                    "image generation stopped early: nobody waits for it"
                );
                return Ok(vec![None; n]);
            }
            if kept.len() < live.len() {
                tracing::info!(
                    step = i + 1,
                    steps = timesteps.len(),
                    stopped = live.len() - kept.len(),
                    "image generation stopped early: nobody waits for it"
                );
                let rows = Tensor::new(kept.as_slice(), &self.device)?;
                latents = latents.index_select(&rows, 0)?;
                scheduler.select(&rows)?;
                context = if guided {
                    let offset = live.len() as u32;
                    let both: Vec<u32> = kept
                        .iter()
                        .copied()
                        .chain(kept.iter().map(|r| r + offset))
                        .collect();
                    context.index_select(&Tensor::new(both.as_slice(), &self.device)?, 0)?
                } else {
                    context.index_select(&rows, 0)?
                };
                live = kept.iter().map(|&r| live[r as usize]).collect();
            }
        }
        let latents = ((latents / self.vae_scale)? + self.vae_shift)?;
        let images = self.vae.forward(&latents)?;
        let images = ((images / 2.0)? + 0.5)?
            .clamp(0f32, 1f32)?
            .permute((0, 2, 3, 1))?;
        let mut out = vec![None; n];
        for (r, &i) in live.iter().enumerate() {
            out[i] = Some(images.get(r)?);
        }
        Ok(out)
    }
}

/// The UNet of `dir` (a pipeline's `unet/`), and its configuration file.
fn load_unet(dir: &Path, device: &Device) -> Result<(UNet, UNetFile), CandleError> {
    let file: UNetFile = files::json(&dir.join("config.json"))?;
    let config = file
        .config()
        .map_err(|e| CandleError::file(&dir.join("config.json"), e))?;
    Ok((UNet::load(weights(dir, device)?, config)?, file))
}

/// The VAE decoder of `dir` (a pipeline's `vae/`), and its configuration file.
fn load_vae(dir: &Path, device: &Device) -> Result<(VaeDecoder, VaeFile), CandleError> {
    let v: VaeFile = files::json(&dir.join("config.json"))?;
    let decoder = VaeDecoder::load(
        weights(dir, device)?,
        &VaeConfig {
            latent_channels: v.latent_channels,
            out_channels: v.out_channels,
            block_out_channels: v.block_out_channels.clone(),
            layers_per_block: v.layers_per_block,
            norm_num_groups: v.norm_num_groups,
            use_post_quant_conv: v.use_post_quant_conv,
        },
    )?;
    Ok((decoder, v))
}

fn weights(dir: &Path, device: &Device) -> Result<VarBuilder<'static>, CandleError> {
    files::var_builder(dir, "diffusion_pytorch_model", device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::largest_difference;

    fn tiny_unet() -> serde_json::Map<String, Value> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../tests/fixtures/models/tiny-sd/unet/config.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn parse(json: serde_json::Map<String, Value>) -> Result<UNetConfig, CandleError> {
        serde_json::from_value::<UNetFile>(Value::Object(json))
            .unwrap()
            .config()
    }

    fn parts(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../tests/fixtures/diffusion-parts")
            .join(name)
    }

    fn npy(name: &str) -> Tensor {
        let bytes = std::fs::read(parts(name)).unwrap();
        let arr = npyz::NpyFile::new(&bytes[..]).unwrap();
        let shape: Vec<usize> = arr.shape().iter().map(|&d| d as usize).collect();
        Tensor::from_vec(arr.into_vec::<f32>().unwrap(), shape, &Device::Cpu).unwrap()
    }

    /// `scripts/make_diffusion_fixture.py`: a random UNet shaped like SD 2.x (heads per level,
    /// linear projections, three levels of two ResNets, a plain last level whose transformer
    /// depth the middle block takes) and a VAE with the old attention names, on 5x7 latents (odd
    /// sizes, so the way up must meet the way down's rounding).
    #[test]
    fn sd2_shaped_unet_and_old_vae_match_diffusers_on_odd_latents() {
        let (unet, file) = load_unet(&parts("unet"), &Device::Cpu).unwrap();
        let config = file.config().unwrap();
        assert!(config.use_linear_projection);
        assert_eq!(
            config.blocks.iter().map(|b| b.heads).collect::<Vec<_>>(),
            [2, 4, 4]
        );
        let latents = npy("latents.npy");
        let case: Value =
            serde_json::from_str(&std::fs::read_to_string(parts("case.json")).unwrap()).unwrap();
        let t = case["timestep"].as_f64().unwrap();
        let noise = unet.forward(&latents, t, &npy("context.npy")).unwrap();
        let worst = largest_difference(&noise, &npy("unet_out.npy"));
        assert!(worst < 1e-4, "unet: largest difference {worst}");

        let (vae, _) = load_vae(&parts("vae"), &Device::Cpu).unwrap();
        let image = vae.forward(&latents).unwrap();
        let worst = largest_difference(&image, &npy("vae_out.npy"));
        assert!(worst < 1e-4, "vae: largest difference {worst}");
    }

    #[test]
    fn unet_settings_without_an_implementation_are_refused_by_name() {
        let config = parse(tiny_unet()).unwrap();
        assert_eq!(config.blocks.len(), 2);
        assert!(config.blocks[1].cross_attention && !config.blocks[0].cross_attention);
        for (name, value) in [
            ("act_fn", Value::from("gelu")),
            ("num_class_embeds", Value::from(10)),
            ("resnet_time_scale_shift", Value::from("scale_shift")),
            ("only_cross_attention", Value::from(true)),
            ("resnet_out_scale_factor", Value::from(2)),
        ] {
            let mut json = tiny_unet();
            json.insert(name.into(), value);
            let err = parse(json).expect_err(name).to_string();
            assert!(err.contains(name), "{err}");
        }
        // The same numbers written differently are accepted.
        let mut json = tiny_unet();
        json.insert("resnet_out_scale_factor".into(), Value::from(1));
        json.insert("dual_cross_attention".into(), Value::Null);
        parse(json).unwrap();
    }
}
