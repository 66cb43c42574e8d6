//! One copy of a model's weights for all its CPU replicas.
//!
//! Each ONNX Runtime session keeps its own weights, and for some models that copy is much larger
//! than the file: a quantised model whose int8 weights are cast to floats in the graph has them
//! folded into float constants when the session starts, four times the file's size, in every
//! replica. So, for a model configured with more than one replica (or autoscaling above one;
//! [`crate::SessionOptions::share_weights`]), the first replica of its file has ONNX Runtime write the model after its
//! portable (basic) optimisations, constant folding included, to a temporary file; its large
//! initializers are read once into ONNX Runtime values that every replica's session is given
//! instead of its own ([`ort::session::builder::SessionBuilder::with_initializer`]), and the
//! kernels' pre-packed layouts of them go into one container the sessions share. The group
//! goes with its last replica, and a changed file (a hot reload) starts a new group, so an old
//! version's weights do not outlive it.
//!
//! Anything the group cannot handle (a model with external data, an initializer of a type the
//! protocol has no name for) keeps ONNX Runtime's own copy for that initializer, or the whole
//! model loads as before; sharing is never a reason for a model not to load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use ferroserve_core::DataType;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;
use ort::value::{DynValue, PrimitiveTensorElementType, Tensor};

use crate::OnnxRuntime;

/// Initializers smaller than this stay in each session: sharing them saves less than the
/// bookkeeping costs.
const SHARE_FROM_BYTES: usize = 64 * 1024;

/// The groups of the model files with a live replica.
#[derive(Default)]
pub(crate) struct SharedModels {
    slots: Mutex<HashMap<Key, Arc<Mutex<Slot>>>>,
}

/// One file's group, or why it could not be made.
#[derive(Default)]
struct Slot {
    group: Weak<SharedModel>,
    /// Preparing it failed (and was logged): its replicas load the file as it is.
    failed: bool,
}

/// One file's contents: the same path with another length or modification time is another file.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Key {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

/// What the CPU replicas of one model file share.
pub(crate) struct SharedModel {
    /// Where ONNX Runtime wrote the model after its basic optimisations. On Linux the file is
    /// unlinked as soon as it is open (below), so that no end of the process, a crash or a
    /// SIGKILL included, leaves it in the temporary folder; elsewhere it is removed with the
    /// group.
    written: PathBuf,
    /// That file, open: on Linux the only thing that keeps it.
    _open: Option<std::fs::File>,
    /// The path the replicas' sessions load it from (`/proc/self/fd/N` on Linux).
    optimized: PathBuf,
    /// Its large initializers, by name.
    initializers: Vec<(String, Arc<DynValue>)>,
    /// The kernels' pre-packed layouts of them.
    prepacked: PrepackedWeights,
}

impl SharedModel {
    /// The file the replicas' sessions load.
    pub(crate) fn model_file(&self) -> &Path {
        &self.optimized
    }

    /// The initializers each session is given, by name.
    pub(crate) fn initializers(&self) -> &[(String, Arc<DynValue>)] {
        &self.initializers
    }

    /// The container of pre-packed weights each session is given.
    pub(crate) fn prepacked(&self) -> &PrepackedWeights {
        &self.prepacked
    }
}

impl Drop for SharedModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.written);
    }
}

impl SharedModels {
    /// The group of `path`, prepared by this call if no replica of it is live. `None` when it
    /// cannot be prepared (the reason is logged): the replica then loads the file as it is.
    pub(crate) fn group(&self, runtime: &OnnxRuntime, path: &Path) -> Option<Arc<SharedModel>> {
        let meta = std::fs::metadata(path).ok()?;
        let key = Key {
            path: path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
            len: meta.len(),
            modified: meta.modified().ok(),
        };
        // The slot is held while the first replica prepares the group, so that replicas
        // loading at once wait for it rather than each prepare their own; other files' replicas
        // go on.
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1
                    || s.lock()
                        .map(|s| s.failed || s.group.strong_count() > 0)
                        .unwrap_or(false)
            });
            slots.entry(key).or_default().clone()
        };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.failed {
            return None;
        }
        if let Some(live) = slot.group.upgrade() {
            return Some(live);
        }
        match prepare(runtime, path) {
            Ok(group) => {
                let group = Arc::new(group);
                slot.group = Arc::downgrade(&group);
                Some(group)
            }
            Err(reason) => {
                tracing::warn!(
                    model = %path.display(),
                    "each replica keeps its own weights: {reason}"
                );
                slot.failed = true;
                None
            }
        }
    }
}

fn prepare(runtime: &OnnxRuntime, path: &Path) -> Result<SharedModel, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let written = std::env::temp_dir().join(format!(
        "ferroserve-{}-{}.onnx",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // Made first so that its Drop removes the file whatever goes wrong below.
    let mut group = SharedModel {
        optimized: written.clone(),
        written,
        _open: None,
        initializers: Vec::new(),
        prepacked: PrepackedWeights::new(),
    };
    let session = Session::builder(runtime.environment())
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::Level1)
        .map_err(|e| e.to_string())?
        .with_intra_threads(1)
        .map_err(|e| e.to_string())?
        .with_optimized_model_path(&group.written)
        .map_err(|e| e.to_string())?
        .commit_from_file(path)
        .map_err(|e| e.to_string())?;
    drop(session);
    trim_c_heap();

    // Mapped rather than read, so that the file's bytes leave the process with the mapping
    // instead of staying in the allocator's free lists.
    let file = std::fs::File::open(&group.written)
        .map_err(|e| format!("cannot open the optimised model: {e}"))?;
    // SAFETY: the file is this group's own, in the temporary folder, and nothing writes it
    // while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| format!("cannot map the optimised model: {e}"))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        group.optimized = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        std::fs::remove_file(&group.written)
            .map_err(|e| format!("cannot unlink the optimised model: {e}"))?;
    }
    group._open = Some(file);
    let bytes = Bytes::from_owner(map);
    let model = <proto::Model as prost::Message>::decode(bytes)
        .map_err(|e| format!("cannot parse the optimised model: {e}"))?;
    for tensor in model.graph.map(|g| g.initializer).unwrap_or_default() {
        if tensor.data_location == proto::EXTERNAL {
            return Err(format!(
                "initializer '{}' is stored outside the model file",
                tensor.name
            ));
        }
        if tensor.raw_data.len() < SHARE_FROM_BYTES {
            continue;
        }
        let Some(dtype) = proto::data_type(tensor.data_type) else {
            continue;
        };
        let shape = tensor
            .dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("initializer '{}' has a negative dimension", tensor.name))?;
        let value = user_owned(dtype, shape, &tensor.raw_data)
            .map_err(|e| format!("initializer '{}': {e}", tensor.name))?;
        if let Some(value) = value {
            group.initializers.push((tensor.name, Arc::new(value)));
        }
    }
    Ok(group)
}

/// A value over memory of its own (ONNX Runtime takes initializers only in memory that the
/// caller owns and keeps), holding `raw`'s elements; `None` for the types kept in each session.
fn user_owned(dtype: DataType, shape: Vec<usize>, raw: &[u8]) -> Result<Option<DynValue>, String> {
    fn make<T>(shape: Vec<usize>, raw: &[u8]) -> Result<Option<DynValue>, String>
    where
        T: PrimitiveTensorElementType + bytemuck::Pod + std::fmt::Debug,
    {
        let count = ferroserve_core::element_count(&shape).map_err(|e| e.to_string())?;
        if count.checked_mul(size_of::<T>()) != Some(raw.len()) {
            return Err(format!(
                "{} bytes do not make a {shape:?} tensor of {}-byte elements",
                raw.len(),
                size_of::<T>()
            ));
        }
        // Copied into a Vec of the element type, so that the data is aligned for it.
        let data: Vec<T> = bytemuck::pod_collect_to_vec(raw);
        let tensor = Tensor::from_array((shape, data)).map_err(|e| e.to_string())?;
        Ok(Some(tensor.into_dyn()))
    }
    match dtype {
        DataType::Fp32 => make::<f32>(shape, raw),
        DataType::Fp64 => make::<f64>(shape, raw),
        DataType::Fp16 => make::<half::f16>(shape, raw),
        DataType::Bf16 => make::<half::bf16>(shape, raw),
        DataType::Int8 => make::<i8>(shape, raw),
        DataType::Uint8 => make::<u8>(shape, raw),
        DataType::Int16 => make::<i16>(shape, raw),
        DataType::Uint16 => make::<u16>(shape, raw),
        DataType::Int32 => make::<i32>(shape, raw),
        DataType::Uint32 => make::<u32>(shape, raw),
        DataType::Int64 => make::<i64>(shape, raw),
        DataType::Uint64 => make::<u64>(shape, raw),
        DataType::Bool | DataType::Bytes => Ok(None),
    }
}

/// Gives the C allocator's free memory back to the system. ONNX Runtime reads the whole model
/// file while a session starts, and frees what the session does not keep into glibc's heap,
/// which keeps it for reuse: without this, each replica leaves most of a model's worth of free
/// memory behind, and sharing weights would save little.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn trim_c_heap() {
    // SAFETY: malloc_trim only returns free memory of glibc's heap to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn trim_c_heap() {}

/// The parts of ONNX's `ModelProto` that hold the initializers (field numbers from onnx.proto);
/// prost skips every other field.
mod proto {
    use bytes::Bytes;
    use ferroserve_core::DataType;

    /// `TensorProto.DataLocation.EXTERNAL`.
    pub const EXTERNAL: i32 = 1;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Model {
        #[prost(message, optional, tag = "7")]
        pub graph: Option<Graph>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Graph {
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "bytes", tag = "9")]
        pub raw_data: Bytes,
        #[prost(int32, tag = "14")]
        pub data_location: i32,
    }

    /// `TensorProto.DataType` as a protocol data type; `None` for those it has no name for
    /// (strings, complex numbers, 8-bit floats), which stay in each session.
    pub fn data_type(t: i32) -> Option<DataType> {
        Some(match t {
            1 => DataType::Fp32,
            2 => DataType::Uint8,
            3 => DataType::Int8,
            4 => DataType::Uint16,
            5 => DataType::Int16,
            6 => DataType::Int32,
            7 => DataType::Int64,
            9 => DataType::Bool,
            10 => DataType::Fp16,
            11 => DataType::Fp64,
            12 => DataType::Uint32,
            13 => DataType::Uint64,
            16 => DataType::Bf16,
            _ => return None,
        })
    }
}
