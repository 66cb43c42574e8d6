//! One ONNX Runtime session: a replica of an ONNX model.

use std::path::Path;
use std::sync::Arc;

use ferroserve_core::{
    Backend, DataType, Device, Error, NamedTensor, Result, Signature, Tensor, TensorSpec,
};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{OutputSelector, RunOptions, Session, SessionOutputs};
use ort::value::{DynTensor, DynTensorValueType, DynValue, TensorElementType, ValueType};

use crate::shared::SharedModel;
use crate::OnnxRuntime;

/// Per-session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Where the session computes. CUDA needs an ONNX Runtime build with the CUDA execution
    /// provider (the `onnxruntime-gpu` wheel's library, with its provider libraries beside it);
    /// if it cannot be used, loading fails rather than falling back to the CPU.
    pub device: Device,
    /// Threads ONNX Runtime uses inside one operator; `None` lets ONNX Runtime pick (one per core).
    pub intra_op_threads: Option<usize>,
    /// Threads for running independent operators in parallel; `None` runs them sequentially.
    pub inter_op_threads: Option<usize>,
    /// Share the weights with the other CPU sessions of the same file (see `shared.rs`): worth
    /// it from the second replica on; for a single one it only adds the preparation.
    pub share_weights: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            intra_op_threads: None,
            inter_op_threads: None,
            share_weights: false,
        }
    }
}

/// Why an ONNX model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// ONNX Runtime rejected the file or the options.
    #[error("ONNX Runtime could not load {path}: {reason}")]
    Session {
        /// The model file.
        path: String,
        /// ONNX Runtime's message.
        reason: String,
    },
    /// The model uses an input or output that the protocol cannot carry.
    #[error("{0}")]
    Unsupported(String),
}

/// An ONNX model loaded into one ONNX Runtime session.
pub struct OnnxBackend {
    session: Session,
    signature: Signature,
    /// The weights this replica shares with the model's other CPU replicas, kept while it
    /// lives (see `shared.rs`).
    _shared: Option<Arc<SharedModel>>,
}

impl OnnxBackend {
    /// Loads `model_path` with full graph optimisation and reads its signature from the graph.
    pub fn load(
        runtime: &OnnxRuntime,
        model_path: &Path,
        options: SessionOptions,
    ) -> std::result::Result<Self, LoadError> {
        let fail = |reason: String| LoadError::Session {
            path: model_path.display().to_string(),
            reason,
        };
        let shared = match options.device {
            Device::Cpu if options.share_weights => {
                runtime.shared_models().group(runtime, model_path)
            }
            _ => None,
        };
        let mut builder = Session::builder(runtime.environment())
            .map_err(|e| fail(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| fail(e.to_string()))?;
        if let Some(group) = &shared {
            builder = builder
                .with_prepacked_weights(group.prepacked())
                .map_err(|e| fail(e.to_string()))?;
            for (name, value) in group.initializers() {
                builder = builder
                    .with_initializer(name, value.clone())
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        if let Device::Cuda(id) = options.device {
            builder = with_cuda(builder, id).map_err(fail)?;
        }
        if let Some(n) = options.intra_op_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| fail(e.to_string()))?;
        }
        if let Some(n) = options.inter_op_threads {
            builder = builder
                .with_parallel_execution(true)
                .map_err(|e| fail(e.to_string()))?
                .with_inter_threads(n)
                .map_err(|e| fail(e.to_string()))?;
        }
        let file = shared.as_ref().map_or(model_path, |g| g.model_file());
        let session = builder
            .commit_from_file(file)
            .map_err(|e| fail(e.to_string()))?;
        crate::shared::trim_c_heap();
        let signature = Signature {
            inputs: session
                .inputs()
                .iter()
                .map(|o| spec(o.name(), o.dtype(), "input"))
                .collect::<std::result::Result<_, _>>()?,
            outputs: session
                .outputs()
                .iter()
                .map(|o| spec(o.name(), o.dtype(), "output"))
                .collect::<std::result::Result<_, _>>()?,
        };
        Ok(Self {
            session,
            signature,
            _shared: shared,
        })
    }
}

impl Backend for OnnxBackend {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// ONNX Runtime's `Run` may be called from any thread, and computes here.
    fn in_process(&self) -> bool {
        true
    }

    /// Only when the model could be grouped: one that could not (external data, no writable
    /// temporary folder) loads with its own weights.
    fn shares_weights(&self) -> bool {
        self._shared.is_some()
    }

    fn run(&mut self, inputs: &[NamedTensor], outputs: &[String]) -> Result<Vec<NamedTensor>> {
        let mut values: Vec<(&str, DynValue)> = Vec::with_capacity(inputs.len());
        for input in inputs {
            values.push((input.name.as_str(), to_ort(&self.session, &input.tensor)?));
        }
        let wanted: Vec<String> = if outputs.is_empty() {
            self.signature
                .outputs
                .iter()
                .map(|o| o.name.clone())
                .collect()
        } else {
            outputs.to_vec()
        };
        let run_failed = |e: ort::Error| Error::internal(format!("ONNX Runtime failed: {e}"));
        // Ask ONNX Runtime for the requested outputs only, so it can skip the rest.
        let options = if outputs.is_empty() {
            None
        } else {
            let selector = wanted.iter().fold(OutputSelector::no_default(), |s, name| {
                s.with(name.as_str())
            });
            Some(
                RunOptions::new()
                    .map_err(run_failed)?
                    .with_outputs(selector),
            )
        };
        let mut results: SessionOutputs<'_> = match &options {
            None => self.session.run(values),
            Some(options) => self.session.run_with_options(values, options),
        }
        .map_err(run_failed)?;
        wanted
            .into_iter()
            .map(|name| {
                let value = results.remove(name.as_str()).ok_or_else(|| {
                    Error::internal(format!("ONNX Runtime returned no output '{name}'"))
                })?;
                let tensor = from_ort(value)
                    .map_err(|e| Error::internal(format!("output '{name}': {e}")))?;
                Ok(NamedTensor { name, tensor })
            })
            .collect()
    }
}

/// Registers the CUDA execution provider for GPU `id`, failing (never falling back to the CPU)
/// when it cannot be used.
#[cfg(feature = "cuda")]
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
    id: u32,
) -> std::result::Result<ort::session::builder::SessionBuilder, String> {
    let id = i32::try_from(id).map_err(|_| format!("there is no CUDA device {id}"))?;
    let cuda = ort::ep::CUDA::default()
        .with_device_id(id)
        .build()
        .error_on_failure();
    builder.with_execution_providers([cuda]).map_err(|e| {
        format!(
            "the CUDA execution provider for cuda:{id} cannot be used: {e} (it needs libonnxruntime.so from the onnxruntime-gpu wheel, its provider libraries beside it, and CUDA and cuDNN installed)"
        )
    })
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    _: ort::session::builder::SessionBuilder,
    id: u32,
) -> std::result::Result<ort::session::builder::SessionBuilder, String> {
    Err(format!(
        "cuda:{id} was asked for, but this ferroserve was built without CUDA support (build with `cargo build --release --features cuda`)"
    ))
}

fn spec(name: &str, ty: &ValueType, what: &str) -> std::result::Result<TensorSpec, LoadError> {
    let ValueType::Tensor { ty, shape, .. } = ty else {
        return Err(LoadError::Unsupported(format!(
            "{what} '{name}' is a {ty:?}, not a tensor; only tensor inputs and outputs can be served"
        )));
    };
    let datatype = data_type(*ty).ok_or_else(|| {
        LoadError::Unsupported(format!(
            "{what} '{name}' has element type {ty:?}, which the Open Inference Protocol cannot carry"
        ))
    })?;
    Ok(TensorSpec {
        name: name.to_string(),
        datatype,
        // ONNX Runtime reports symbolic and unknown dimensions as -1 already.
        shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
    })
}

fn data_type(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn element_type(t: DataType) -> TensorElementType {
    match t {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Uint16 => TensorElementType::Uint16,
        DataType::Uint32 => TensorElementType::Uint32,
        DataType::Uint64 => TensorElementType::Uint64,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp16 => TensorElementType::Float16,
        DataType::Bf16 => TensorElementType::Bfloat16,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

/// Copies a tensor into an ONNX Runtime value: one copy, into memory ONNX Runtime allocated and
/// aligned, for every fixed-size type alike.
fn to_ort(session: &Session, tensor: &Tensor) -> Result<DynValue> {
    let shape: Vec<i64> = tensor.shape().iter().map(|&d| d as i64).collect();
    let alloc_failed = |e: ort::Error| Error::internal(format!("ONNX Runtime allocation: {e}"));
    if tensor.dtype() == DataType::Bytes {
        let strings = tensor
            .bytes_elements()
            .enumerate()
            .map(|(i, b)| {
                std::str::from_utf8(b).map(str::to_owned).map_err(|_| {
                    Error::invalid(format!(
                        "BYTES element {i} is not valid UTF-8, which ONNX string tensors require"
                    ))
                })
            })
            .collect::<Result<Vec<String>>>()?;
        let value = ort::value::Tensor::from_string_array((shape, strings.as_slice()))
            .map_err(alloc_failed)?;
        return Ok(value.into_dyn());
    }
    let mut value = DynTensor::new(session.allocator(), element_type(tensor.dtype()), shape)
        .map_err(alloc_failed)?;
    let src = tensor.data();
    if !src.is_empty() {
        let dst = value.data_ptr_mut().cast::<u8>();
        // SAFETY: ONNX Runtime allocated `dst` for this shape and element type, which is exactly
        // `src.len()` bytes: `Tensor` guarantees `data.len() == elements * size`, and the element
        // sizes of `DataType` and `TensorElementType` agree. The regions cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    }
    Ok(value.into_dyn())
}

/// Copies an ONNX Runtime output into a [`Tensor`].
fn from_ort(value: DynValue) -> std::result::Result<Tensor, String> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype().clone() else {
        return Err(format!("is a {:?}, not a tensor", value.dtype()));
    };
    let dtype = data_type(ty).ok_or_else(|| format!("has unsupported element type {ty:?}"))?;
    let dims = shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("has negative dimension {d}")))
        .collect::<std::result::Result<Vec<usize>, _>>()?;
    if dtype == DataType::Bytes {
        let (_, strings) = value.try_extract_strings().map_err(|e| e.to_string())?;
        return Tensor::from_bytes_elements(dims, strings).map_err(|e| e.to_string());
    }
    let value = value
        .downcast::<DynTensorValueType>()
        .map_err(|e| e.to_string())?;
    let count = ferroserve_core::element_count(&dims).map_err(|e| e.to_string())?;
    let len = count * dtype.size().unwrap_or(0);
    let data = if len == 0 {
        Vec::new()
    } else {
        let src = value.data_ptr().cast::<u8>();
        // SAFETY: a CPU tensor of `count` elements of `dtype` holds `len` contiguous bytes at
        // its data pointer, which stays valid while `value` lives (until the end of this scope).
        unsafe { std::slice::from_raw_parts(src, len) }.to_vec()
    };
    Tensor::new(dtype, dims, data.into()).map_err(|e| e.to_string())
}
