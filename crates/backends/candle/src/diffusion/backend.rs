//! The [`Backend`] of a Stable Diffusion pipeline.

use std::path::Path;

use candle_core::{Device, Tensor};
use ferroserve_core::{
    Backend, DataType, Error, NamedTensor, Partial, Result, RunContext, Signature, TensorSpec,
};

use super::params::{DiffusionDefaults, DiffusionParams};
use super::pipeline::{DiffusionInputs, StableDiffusion};
use crate::tensors::{fp32, input, int_rows, token};
use crate::CandleError;

/// Input: the prompts' token ids, (batch, tokens), padded to the text encoder's length.
pub const INPUT_IDS: &str = "input_ids";
/// Input: the negative prompts' token ids (the empty prompt's for none), same shape.
pub const NEGATIVE_IDS: &str = "negative_ids";
/// Input: one seed per image, (batch, 1); the same seed gives the same image.
pub const SEED: &str = "seed";
/// Output: images, (batch, height, width, 3), RGB values in [0, 1].
pub const IMAGE: &str = "image";

/// A replica of a Stable Diffusion pipeline. The request's parameters (see
/// [`DiffusionParams`]) set size, steps, guidance and scheduler; a batch's images share them.
pub struct DiffusionBackend {
    pipeline: StableDiffusion,
    defaults: DiffusionDefaults,
    signature: Signature,
    /// On the CPU, the replica's own compute threads: its generations' parallel work (UNet
    /// halves, convolution tiles, candle's matrix products) queues there, not in the process's
    /// shared pool, where a long generation's work would make every other candle model's
    /// operations wait behind it.
    pool: Option<rayon::ThreadPool>,
}

impl DiffusionBackend {
    /// Loads the diffusers pipeline folder `dir` on `device`; `overrides` (from model.yaml)
    /// replace the pipeline's defaults. On the CPU the replica computes on `threads` threads of
    /// its own.
    pub fn load(
        dir: &Path,
        device: &Device,
        overrides: &DiffusionParams,
        threads: usize,
    ) -> Result<Self, CandleError> {
        let pool = if device.is_cpu() {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads.max(1))
                .thread_name(|i| format!("diffusion-{i}"))
                .build()
                .map_err(|e| CandleError::Invalid(format!("cannot start compute threads: {e}")))?;
            Some(pool)
        } else {
            None
        };
        let pipeline = StableDiffusion::load(dir, device)?;
        let defaults = pipeline.defaults().clone().with(overrides)?;
        let spec = |name: &str, datatype, shape: Vec<i64>| TensorSpec {
            name: name.to_string(),
            datatype,
            shape,
        };
        let tokens = pipeline.max_tokens() as i64;
        let signature = Signature {
            inputs: vec![
                spec(INPUT_IDS, DataType::Int64, vec![-1, tokens]),
                spec(NEGATIVE_IDS, DataType::Int64, vec![-1, tokens]),
                spec(SEED, DataType::Int64, vec![-1, 1]),
            ],
            outputs: vec![spec(IMAGE, DataType::Fp32, vec![-1, -1, -1, 3])],
        };
        Ok(Self {
            pipeline,
            defaults,
            signature,
            pool,
        })
    }

    fn ids(&self, inputs: &[NamedTensor], name: &str) -> Result<Tensor> {
        let rows = int_rows(input(inputs, name)?, name)?;
        let width = rows.first().map_or(0, Vec::len);
        let ids = rows
            .iter()
            .flatten()
            .map(|&v| token(v, name))
            .collect::<Result<Vec<u32>>>()?;
        let vocab = self.pipeline.vocab_size();
        if let Some(t) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(format!(
                "input '{name}' holds token {t}, outside the vocabulary ({vocab} tokens)"
            )));
        }
        Tensor::from_vec(ids, (rows.len(), width), self.pipeline.device())
            .map_err(|e| CandleError::from(e).into())
    }
}

impl Backend for DiffusionBackend {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[NamedTensor], outputs: &[String]) -> Result<Vec<NamedTensor>> {
        self.run_with(inputs, outputs, &RunContext::detached())
    }

    fn run_with(
        &mut self,
        inputs: &[NamedTensor],
        _outputs: &[String],
        context: &RunContext<'_>,
    ) -> Result<Vec<NamedTensor>> {
        let params = DiffusionParams::from_parameters(context.parameters())?;
        let settings = self.defaults.resolve(&params)?;
        let prompt_ids = self.ids(inputs, INPUT_IDS)?;
        let negative_ids = self.ids(inputs, NEGATIVE_IDS)?;
        let seeds: Vec<u64> = int_rows(input(inputs, SEED)?, SEED)?
            .iter()
            .map(|r| r.first().copied().unwrap_or(0) as u64)
            .collect();
        let latents = self.pipeline.noise(&seeds, &settings)?;
        let batch = DiffusionInputs {
            prompt_ids: &prompt_ids,
            negative_ids: &negative_ids,
            latents: &latents,
        };
        let keep = |row: usize, done: usize, of: usize| {
            context.report(row, Partial::Steps { done, of });
            !context.is_cancelled(row)
        };
        let generate = || self.pipeline.generate(&batch, &settings, &keep);
        let images = match &self.pool {
            Some(pool) => pool.install(generate),
            None => generate(),
        }?;
        let (h, w) = (settings.height, settings.width);
        let per = h * w * 3;
        let mut values = Vec::with_capacity(images.len() * per);
        for image in &images {
            match image {
                Some(t) => values.extend(
                    t.flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(CandleError::from)?,
                ),
                // Nobody waits for it: zeros keep the batch's shape.
                None => values.extend(std::iter::repeat_n(0.0, per)),
            }
        }
        Ok(vec![fp32(IMAGE, vec![images.len(), h, w, 3], &values)?])
    }
}
