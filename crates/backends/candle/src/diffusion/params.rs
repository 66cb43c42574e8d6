//! Image generation parameters: what a request may set, and the model's defaults.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::pipeline::ImageSettings;
use super::scheduler::SchedulerKind;
use crate::CandleError;

/// Parameters a request (or `model.yaml`'s `diffusion:` section) may set; each falls back to
/// the model's default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionParams {
    /// Image height in pixels, a multiple of 8.
    pub height: Option<usize>,
    /// Image width in pixels, a multiple of 8.
    pub width: Option<usize>,
    /// Denoising steps.
    pub num_inference_steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less turns guidance (and the negative prompt) off.
    pub guidance_scale: Option<f64>,
    /// `euler`, `ddim` or `pndm`.
    pub scheduler: Option<String>,
}

/// The names a request may use.
pub const NAMES: &[&str] = &[
    "height",
    "width",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
];

impl DiffusionParams {
    /// Reads the image parameters among a request's parameters; an unknown name is an error
    /// that lists the known ones.
    pub fn from_parameters(parameters: &Map<String, Value>) -> Result<Self, CandleError> {
        crate::request::own_parameters(parameters, NAMES, "image generation")
    }
}

/// A pipeline's defaults for what requests leave out.
#[derive(Debug, Clone)]
pub struct DiffusionDefaults {
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) steps: usize,
    pub(crate) guidance_scale: f64,
    pub(crate) scheduler: SchedulerKind,
    /// Pixels per latent cell: sizes must be multiples of it.
    pub(crate) vae_factor: usize,
}

impl DiffusionDefaults {
    /// The defaults with `overrides` (model.yaml) applied; they must make a valid request.
    pub fn with(mut self, overrides: &DiffusionParams) -> Result<Self, CandleError> {
        let settings = self.resolve(overrides)?;
        self.height = settings.height;
        self.width = settings.width;
        self.steps = settings.steps;
        self.guidance_scale = settings.guidance_scale;
        self.scheduler = settings.scheduler;
        Ok(self)
    }

    /// A request's parameters over these defaults, checked.
    pub fn resolve(&self, p: &DiffusionParams) -> Result<ImageSettings, CandleError> {
        let settings = ImageSettings {
            height: p.height.unwrap_or(self.height),
            width: p.width.unwrap_or(self.width),
            steps: p.num_inference_steps.unwrap_or(self.steps),
            guidance_scale: p.guidance_scale.unwrap_or(self.guidance_scale),
            scheduler: match &p.scheduler {
                Some(name) => name.parse()?,
                None => self.scheduler,
            },
        };
        settings.check()?;
        for (name, v) in [("height", settings.height), ("width", settings.width)] {
            if v % self.vae_factor != 0 {
                return Err(CandleError::Invalid(format!(
                    "{name} must be a multiple of {} for this model, got {v}",
                    self.vae_factor
                )));
            }
        }
        Ok(settings)
    }
}
