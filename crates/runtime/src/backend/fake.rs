//! A backend of made-up models, so the runtime's lifecycle, budget, lazy loading, scaling and
//! scheduler are tested without ONNX Runtime or a checkpoint (feature `fake-backend`, and the
//! runtime's own unit tests).
//!
//! A folder holding `fake.json` is a fake model: one input `x` (FP32, `[-1, width]`) and one
//! output `y = 2x`, each batch taking `delay_ms`. `fail` makes loading fail with that message.
//!
//! ```json
//! {"width": 2, "delay_ms": 0, "fail": null}
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferroserve_core::{
    Backend, DataType, Error, NamedTensor, Result, Signature, Tensor, TensorSpec,
};
use ferroserve_tasks::TaskKind;
use serde::Deserialize;

use super::{BackendLoader, Detected, LoadSpec};
use crate::config::ModelConfig;

/// The file that makes a folder a fake model.
pub const FAKE_FILE: &str = "fake.json";

/// What `fake.json` says.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeSpec {
    /// Columns of `x` and `y`. Default: 1.
    pub width: Option<i64>,
    /// Milliseconds each batch takes.
    pub delay_ms: u64,
    /// Loading fails with this message.
    pub fail: Option<String>,
}

/// Loads fake models; counts the replicas it loaded.
#[derive(Debug, Default, Clone)]
pub struct FakeLoader {
    /// Replicas loaded so far, by every model.
    pub loads: Arc<AtomicUsize>,
}

impl BackendLoader for FakeLoader {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn platform(&self) -> &'static str {
        "fake"
    }

    fn triton_backend(&self) -> &'static str {
        "fake"
    }

    fn serves_task(&self, task: Option<TaskKind>) -> bool {
        task.is_none()
    }

    fn detect(&self, folder: &Path, _: &ModelConfig) -> Option<Detected> {
        folder.join(FAKE_FILE).is_file().then(|| Detected {
            model_file: FAKE_FILE.into(),
            task: None,
        })
    }

    fn expected_file(&self, _: &ModelConfig) -> String {
        FAKE_FILE.into()
    }

    fn check(&self, config: &ModelConfig) -> std::result::Result<(), String> {
        match config.task {
            Some(t) => Err(format!(
                "backend fake serves no task, and this model has {}",
                t.as_str()
            )),
            None => Ok(()),
        }
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Box<dyn Backend>> {
        let text = std::fs::read_to_string(spec.file)
            .map_err(|e| Error::invalid(format!("{}: {e}", spec.file.display())))?;
        let fake: FakeSpec = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(format!("{}: {e}", spec.file.display())))?;
        if let Some(m) = fake.fail {
            return Err(Error::invalid(m));
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        let width = fake.width.unwrap_or(1);
        let tensor = |name: &str| TensorSpec {
            name: name.into(),
            datatype: DataType::Fp32,
            shape: vec![-1, width],
        };
        Ok(Box::new(Fake {
            signature: Signature {
                inputs: vec![tensor("x")],
                outputs: vec![tensor("y")],
            },
            delay: Duration::from_millis(fake.delay_ms),
        }))
    }
}

struct Fake {
    signature: Signature,
    delay: Duration,
}

impl Backend for Fake {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn in_process(&self) -> bool {
        true
    }

    fn run(&mut self, inputs: &[NamedTensor], _: &[String]) -> Result<Vec<NamedTensor>> {
        std::thread::sleep(self.delay);
        let x = inputs
            .iter()
            .find(|t| t.name == "x")
            .ok_or_else(|| Error::invalid("input 'x' is missing"))?;
        let values: Vec<f32> = x
            .tensor
            .data()
            .chunks_exact(4)
            .map(|b| 2.0 * f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let y = Tensor::new(DataType::Fp32, x.tensor.shape().to_vec(), bytes.into())
            .map_err(|e| Error::internal(e.to_string()))?;
        Ok(vec![NamedTensor {
            name: "y".into(),
            tensor: y,
        }])
    }
}
