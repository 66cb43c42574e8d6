//! Stable Diffusion text-to-image: the CLIP text encoder, the UNet and the VAE decoder (our own,
//! on CPU kernels made for them), the Euler / DDIM / PNDM schedulers and the denoising loop.

mod backend;
mod clip;
mod kernels;
mod layers;
mod params;
mod pipeline;
mod scheduler;
mod unet;

pub use backend::{DiffusionBackend, IMAGE, INPUT_IDS, NEGATIVE_IDS, SEED};
pub use clip::{ClipConfig, ClipTextEncoder};
pub use params::{DiffusionDefaults, DiffusionParams, NAMES};
pub use pipeline::{
    DiffusionInputs, ImageSettings, StableDiffusion, MAX_GUIDANCE, MAX_SIDE, MAX_STEPS,
};
pub use scheduler::{Schedule, Scheduler, SchedulerKind};

/// The largest absolute difference between two tensors of one shape.
#[cfg(test)]
fn largest_difference(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap()
}
