//! Hugging Face checkpoint folders of generative models on candle: T5-family summarization
//! (`config.json` + safetensors) and Stable Diffusion text-to-image (a diffusers pipeline,
//! `model_index.json`).

use std::path::Path;

use ferroserve_backend_candle::diffusion::DiffusionParams;
use ferroserve_backend_candle::generation::GenerationParams;
use ferroserve_backend_candle::{DiffusionBackend, Seq2SeqBackend};
use ferroserve_core::{Backend, Device, Error, Result};
use ferroserve_tasks::TaskKind;
use serde::de::DeserializeOwned;

use super::{BackendLoader, Detected, LoadSpec};
use crate::config::ModelConfig;

/// The marker file of a diffusers pipeline.
const PIPELINE_FILE: &str = "model_index.json";
/// The marker file of a transformers checkpoint.
const CHECKPOINT_FILE: &str = "config.json";

pub(super) struct CandleLoader;

impl CandleLoader {
    /// The marker file a task's checkpoint has.
    fn marker(task: Option<TaskKind>) -> &'static str {
        match task {
            Some(TaskKind::TextToImage) => PIPELINE_FILE,
            _ => CHECKPOINT_FILE,
        }
    }
}

/// Whether `folder` holds a transformers checkpoint: its `config.json` beside safetensors
/// weights.
fn is_checkpoint(folder: &Path) -> bool {
    folder.join(CHECKPOINT_FILE).is_file()
        && std::fs::read_dir(folder).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.ends_with(".safetensors"))
            })
        })
}

/// Whether the checkpoint's `config.json` names a T5 architecture.
fn is_t5(folder: &Path) -> bool {
    std::fs::read_to_string(folder.join(CHECKPOINT_FILE))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .is_some_and(|c| {
            c["architectures"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n == "T5ForConditionalGeneration"))
        })
}

/// Reads one of model.yaml's candle sections, naming the key of a mistake as every YAML file
/// ferroserve reads does.
fn section<T: DeserializeOwned + Default>(
    name: &str,
    value: Option<&serde_yaml_ng::Value>,
) -> std::result::Result<T, String> {
    let Some(value) = value else {
        return Ok(T::default());
    };
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner.is_empty() || inner == "." {
            name.to_string()
        } else {
            format!("{name}.{inner}")
        };
        crate::config::describe(&path, e.inner())
    })
}

impl BackendLoader for CandleLoader {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn platform(&self) -> &'static str {
        "candle"
    }

    fn triton_backend(&self) -> &'static str {
        "candle"
    }

    fn serves_task(&self, task: Option<TaskKind>) -> bool {
        // A folder without a task is recognised by what it holds (see `detect`).
        matches!(
            task,
            None | Some(TaskKind::Summarization | TaskKind::TextToImage)
        )
    }

    fn detect(&self, folder: &Path, config: &ModelConfig) -> Option<Detected> {
        if let Some(file) = &config.model_file {
            let task = match file.as_str() {
                PIPELINE_FILE => Some(TaskKind::TextToImage),
                CHECKPOINT_FILE if is_t5(folder) => Some(TaskKind::Summarization),
                _ => None,
            };
            return (folder.join(file).is_file() && (config.task.is_some() || task.is_some()))
                .then(|| Detected {
                    model_file: file.clone(),
                    task,
                });
        }
        let found = |task| {
            Some(Detected {
                model_file: Self::marker(Some(task)).to_string(),
                task: Some(task),
            })
        };
        match config.task {
            Some(TaskKind::TextToImage) if folder.join(PIPELINE_FILE).is_file() => {
                found(TaskKind::TextToImage)
            }
            Some(TaskKind::Summarization) if is_checkpoint(folder) => {
                found(TaskKind::Summarization)
            }
            None if folder.join(PIPELINE_FILE).is_file() => found(TaskKind::TextToImage),
            None if is_checkpoint(folder) && is_t5(folder) => found(TaskKind::Summarization),
            _ => None,
        }
    }

    fn expected_file(&self, config: &ModelConfig) -> String {
        match &config.model_file {
            Some(f) => f.clone(),
            None if config.task == Some(TaskKind::TextToImage) => {
                "model_index.json (a diffusers pipeline)".into()
            }
            None => "config.json with safetensors weights (a Hugging Face checkpoint)".into(),
        }
    }

    fn check(&self, config: &ModelConfig) -> std::result::Result<(), String> {
        match config.task {
            Some(TaskKind::Summarization | TaskKind::TextToImage) => {}
            other => {
                return Err(format!(
                    "backend candle serves task summarization or text-to-image, not {}",
                    other.map_or("none", TaskKind::as_str)
                ))
            }
        }
        section::<GenerationParams>("generation", config.generation.as_ref())?;
        section::<DiffusionParams>("diffusion", config.diffusion.as_ref())?;
        Ok(())
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Box<dyn Backend>> {
        let dir = spec.file.parent().unwrap_or(Path::new("."));
        let gpu = match spec.device {
            Device::Cpu => None,
            Device::Cuda(n) => Some(n as usize),
        };
        let device = ferroserve_backend_candle::device(gpu)
            .map_err(|e| Error::unavailable(e.to_string()))?;
        let config = spec.config;
        let invalid = |e: ferroserve_backend_candle::CandleError| Error::invalid(e.to_string());
        match config.task {
            Some(TaskKind::Summarization) => {
                let params: GenerationParams =
                    section("generation", config.generation.as_ref()).map_err(Error::invalid)?;
                Ok(Box::new(
                    Seq2SeqBackend::load(dir, &device, &params, None).map_err(invalid)?,
                ))
            }
            Some(TaskKind::TextToImage) => {
                let params: DiffusionParams =
                    section("diffusion", config.diffusion.as_ref()).map_err(Error::invalid)?;
                Ok(Box::new(
                    DiffusionBackend::load(dir, &device, &params, spec.threads).map_err(invalid)?,
                ))
            }
            other => Err(Error::invalid(format!(
                "backend candle serves task summarization or text-to-image, not {}",
                other.map_or("none", TaskKind::as_str)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(yaml: &str) -> std::result::Result<GenerationParams, String> {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        section("generation", Some(&value))
    }

    /// model.yaml's `generation:` takes transformers' names, with the backend's checks.
    #[test]
    fn generation_section_takes_transformers_parameters() {
        let p = generation(
            "{do_sample: true, temperature: 0.7, top_k: 20, seed: 3, num_return_sequences: 1}",
        )
        .unwrap();
        assert_eq!(
            (p.do_sample, p.temperature, p.top_k, p.seed),
            (Some(true), Some(0.7), Some(20), Some(3))
        );
        let e = generation("{num_beam_groups: 2}").unwrap_err();
        assert!(
            e.contains("'num_beam_groups' is a transformers generate parameter that ferroserve does not support"),
            "{e}"
        );
        let e = generation("{temprature: 0.7}").unwrap_err();
        assert!(
            e.contains("'temprature'") && e.contains("temperature"),
            "{e}"
        );
        let e = generation("{top_k: many}").unwrap_err();
        assert!(e.contains("top_k"), "{e}");
    }
}
