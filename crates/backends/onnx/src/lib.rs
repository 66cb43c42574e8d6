//! ONNX Runtime backend for ferroserve.
//!
//! ONNX Runtime is loaded at run time from a shared library (ort's `load-dynamic`), so the binary
//! carries no native code of its own and any onnxruntime 1.20+ build works, including the one in
//! the `onnxruntime` wheel on PyPI. [`library_path`] says where it is looked for.
//!
//! ```no_run
//! use ferroserve_backend_onnx::{library_path, OnnxBackend, OnnxRuntime, SessionOptions};
//! use ferroserve_core::Backend;
//!
//! let runtime = OnnxRuntime::load(&library_path(None))?;
//! let model = OnnxBackend::load(&runtime, "models/simple/1/model.onnx".as_ref(), SessionOptions::default())?;
//! println!("{:?}", model.signature());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod library;
mod session;
mod shared;

pub use library::{
    default_home, library_path, LibraryError, OnnxRuntime, HOME_ENV, LIBRARY_FILE, ORT_DYLIB_ENV,
};
pub use session::{LoadError, OnnxBackend, SessionOptions};
