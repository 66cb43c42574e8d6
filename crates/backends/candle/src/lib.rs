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

/// Sets candle's CPU threading for a server, where the environment does not already.
///
/// - `RAYON_NUM_THREADS` (the compute pool) to the cores this process may use: candle reads it
///   on every matrix product and, without it, counts physical cores by parsing `/proc/cpuinfo`
///   each time (7% of a Stable Diffusion step on a small model).
/// - `CANDLE_NUM_THREADS` (candle's separate pool for large element-wise operations) to 1, which
///   turns that pool off: its workers spin between operations and take a core from the compute
///   pool (20 tiny-sd steps on 2 cores: 0.66–0.82 s with it, 0.50 s without).
///
/// "Cores" is [`std::thread::available_parallelism`]: logical CPUs, within the process's CPU
/// affinity and cgroup quota (candle's own default counts physical cores, which in a container
/// may exceed the quota). Child processes inherit both variables.
///
/// Both are environment variables because that is how candle reads them, so call this first
/// thing in `main`, before any thread starts.
pub fn configure_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", cores.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

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
            CandleError::Invalid(m) => ferroserve_core::Error::invalid(m),
            other => ferroserve_core::Error::internal(other.to_string()),
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
