//! Stable Diffusion text-to-image: the CLIP text encoder, candle-transformers' UNet and VAE, the
//! Euler / DDIM / PNDM schedulers and the denoising loop.

mod backend;
mod clip;
mod params;
mod pipeline;
mod scheduler;

pub use backend::{DiffusionBackend, IMAGE, INPUT_IDS, NEGATIVE_IDS, SEED};
pub use clip::{ClipConfig, ClipTextEncoder};
pub use params::{DiffusionDefaults, DiffusionParams, NAMES};
pub use pipeline::{
    DiffusionInputs, ImageSettings, StableDiffusion, MAX_GUIDANCE, MAX_SIDE, MAX_STEPS,
};
pub use scheduler::{Schedule, Scheduler, SchedulerKind};
