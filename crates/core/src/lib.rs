//! The types every ferroserve layer shares.
//!
//! A request is decoded once by a frontend into an [`InferRequest`] of [`Tensor`]s, checked by the
//! runtime against the model's [`Signature`], and computed by a [`Backend`]. Errors travel back up
//! as [`Error`], whose kind decides the status a client sees.

#![warn(missing_docs)]

mod auth;
mod backend;
mod device;
mod dtype;
mod error;
mod health;
mod home;
mod infer;
pub mod json;
mod model;
mod progress;
mod tally;
mod tensor;
mod text;
mod yaml;

pub use auth::{Token, REMOTE_CHANGES_NEED_TOKEN};
pub use backend::{Backend, RunContext};
pub use device::Device;
pub use dtype::{DataType, UnknownDataType};
pub use error::{Error, ErrorKind, Result};
pub use health::Health;
pub use home::{default_home, HOME_ENV};
pub use infer::{InferRequest, InferResponse, Parameters};
pub use model::{Signature, TensorSpec};
pub use progress::{Partial, Progress, ProgressReader};
pub use tally::Tally;
pub use tensor::{declared, element_count, BytesElements, NamedTensor, Tensor, TensorError};
pub use text::last_lines;
pub use yaml::{check_yaml_depth, MAX_YAML_DEPTH};
