//! ferroserve's native backend on [candle](https://github.com/huggingface/candle): generative
//! models loaded from Hugging Face checkpoint folders as they are (safetensors, `config.json`,
//! the diffusers layout), with the same [`Backend`](ferroserve_core::Backend) contract and
//! scheduler as ONNX models.
//!
//! - [`Seq2SeqBackend`]: T5-family text-to-text generation, greedy and beam search
//!   ([`generation`]), batched across requests with padding masks.
//! - [`DiffusionBackend`]: Stable Diffusion 1.x/2.x text-to-image ([`diffusion`]).
//!
//! CPU by default; the `cuda` feature adds NVIDIA GPUs (its build needs the CUDA toolkit).

#![warn(missing_docs)]

pub mod diffusion;
mod files;
pub mod generation;
mod request;
pub mod seq2seq;
pub mod t5;
mod tensors;

use std::path::Path;

pub use diffusion::DiffusionBackend;
pub use seq2seq::Seq2SeqBackend;

/// Errors while loading or running a candle model.
#[derive(Debug, thiserror::Error)]
pub enum CandleError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The checkpoint uses something this backend does not implement.
    #[error("unsupported checkpoint: {0}")]
    Unsupported(String),
    /// A value is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// candle failed while computing.
    #[error("candle: {0}")]
    Compute(#[from] candle_core::Error),
}

impl CandleError {
    pub(crate) fn file(path: &Path, e: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

impl From<CandleError> for ferroserve_core::Error {
    fn from(e: CandleError) -> Self {
        match e {
            CandleError::Invalid(m) => ferroserve_core::Error::InvalidArgument(m),
            other => ferroserve_core::Error::Internal(other.to_string()),
        }
    }
}

/// The device a replica runs on: the CPU, or GPU `n` when built with the `cuda` feature.
pub fn device(gpu: Option<usize>) -> Result<candle_core::Device, CandleError> {
    match gpu {
        None => Ok(candle_core::Device::Cpu),
        #[cfg(feature = "cuda")]
        Some(n) => Ok(candle_core::Device::new_cuda(n)?),
        #[cfg(not(feature = "cuda"))]
        Some(n) => Err(CandleError::Unsupported(format!(
            "GPU {n} was asked for, but this ferroserve was built without the `cuda` feature"
        ))),
    }
}
