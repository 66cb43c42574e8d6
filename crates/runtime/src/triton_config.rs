//! Triton's `config.pbtxt`, read for the fields that matter so a Triton model folder serves as
//! it is: the backend, `max_batch_size`, `input`/`output`, `instance_group` (count, kind, GPUs),
//! `dynamic_batching` and `version_policy`. Everything else is logged as ignored; what cannot
//! be honoured without changing the model's meaning (a decoupled model) is an error.

use crate::config::{
    parse_datatype, Device, Devices, DynamicBatching, ModelConfig, TensorDecl, VersionPolicy,
};
use crate::pbtxt::{self, Message};

/// The file's name inside a model folder.
pub const FILE: &str = "config.pbtxt";

/// Fields read below; the others are logged as ignored.
const READ: &[&str] = &[
    "name",
    "backend",
    "platform",
    "max_batch_size",
    "input",
    "output",
    "instance_group",
    "dynamic_batching",
    "version_policy",
    "model_transaction_policy",
];

/// The configuration `text` (a `config.pbtxt`) describes, before the checks every
/// configuration gets.
pub(crate) fn read(text: &str) -> Result<ModelConfig, String> {
    let m = pbtxt::parse(text)?;
    let mut config = ModelConfig::default();
    for name in m.names() {
        if !READ.contains(&name) {
            tracing::info!("{FILE}: '{name}' is not used by ferroserve and is ignored");
        }
    }
    config.backend = match (m.text("backend"), m.text("platform")) {
        (Some("onnxruntime"), _) | (None, Some("onnxruntime_onnx")) => Some("onnx".into()),
        (Some("pytorch"), _) | (None, Some("pytorch_libtorch")) => Some("torchscript".into()),
        (Some(b), _) => Some(b.to_string()),
        (None, Some(p)) => {
            return Err(format!(
                "platform '{p}' is not served by ferroserve (onnxruntime_onnx is; python models say backend: \"python\")"
            ))
        }
        (None, None) => None,
    };
    let max_batch_size = m.int("max_batch_size")?.unwrap_or(0);
    config.max_batch_size =
        Some(usize::try_from(max_batch_size).map_err(|_| "max_batch_size must be 0 or more")?);
    config.inputs = tensors(&m, "input")?;
    config.outputs = tensors(&m, "output")?;
    instances(&m, &mut config)?;
    if let Some(db) = m.messages("dynamic_batching").last() {
        config.dynamic_batching = Some(batching(db)?);
    }
    config.version_policy = match m.messages("version_policy").last() {
        // Triton's default: the newest version only.
        None => VersionPolicy::Latest(1),
        Some(p) => version_policy(p)?,
    };
    if let Some(t) = m.messages("model_transaction_policy").last() {
        if t.text("decoupled") == Some("true") {
            return Err("model_transaction_policy: decoupled models (several responses per request) are not supported".into());
        }
    }
    Ok(config)
}

fn tensors(m: &Message, field: &str) -> Result<Vec<TensorDecl>, String> {
    m.messages(field)
        .map(|t| {
            let name = t
                .text("name")
                .ok_or_else(|| format!("{field}: an entry without a name"))?;
            for extra in t.names() {
                if !["name", "data_type", "dims"].contains(&extra) {
                    tracing::info!("{FILE}: {field} '{name}': '{extra}' is ignored");
                }
            }
            let datatype = t
                .text("data_type")
                .ok_or_else(|| format!("{field} '{name}' has no data_type"))
                .and_then(|d| parse_datatype(d).map_err(|e| format!("{field} '{name}': {e}")))?;
            Ok(TensorDecl {
                name: name.to_string(),
                datatype,
                dims: t
                    .ints("dims")
                    .map_err(|e| format!("{field} '{name}': {e}"))?,
            })
        })
        .collect()
}

/// `instance_group`: the replicas are the groups' counts together; GPU groups place them on
/// their `gpus` (round-robin over the visible GPUs when none are listed).
fn instances(m: &Message, config: &mut ModelConfig) -> Result<(), String> {
    let mut replicas = 0usize;
    let mut gpus: Vec<Device> = Vec::new();
    let mut any_gpu = false;
    for g in m.messages("instance_group") {
        let count = g.int("count")?.unwrap_or(1);
        let count = usize::try_from(count).map_err(|_| "instance_group count must be 1 or more")?;
        replicas += count;
        match g.text("kind").unwrap_or("KIND_AUTO") {
            "KIND_GPU" => {
                any_gpu = true;
                for id in g.ints("gpus")? {
                    let id =
                        u32::try_from(id).map_err(|_| "instance_group gpus are GPU numbers")?;
                    gpus.push(Device::Cuda(id));
                }
            }
            "KIND_CPU" | "KIND_AUTO" => {}
            other => {
                return Err(format!(
                    "instance_group kind {other} is not served (KIND_CPU, KIND_GPU, KIND_AUTO are)"
                ))
            }
        }
    }
    if replicas > 0 {
        config.replicas = replicas;
    }
    if any_gpu {
        config.devices = if gpus.is_empty() {
            Devices::RoundRobin
        } else {
            Devices::List(gpus)
        };
    }
    Ok(())
}

fn batching(db: &Message) -> Result<DynamicBatching, String> {
    let mut out = DynamicBatching::default();
    for name in db.names() {
        if ![
            "preferred_batch_size",
            "max_queue_delay_microseconds",
            "preserve_ordering",
            "default_queue_policy",
        ]
        .contains(&name)
        {
            tracing::info!("{FILE}: dynamic_batching '{name}' is ignored");
        }
    }
    out.preferred_batch_size = db
        .ints("preferred_batch_size")?
        .into_iter()
        .map(|n| {
            usize::try_from(n).map_err(|_| "preferred_batch_size must be positive".to_string())
        })
        .collect::<Result<_, _>>()?;
    out.max_queue_delay_us = db
        .int("max_queue_delay_microseconds")?
        .map_or(Ok(0), u64::try_from)
        .map_err(|_| "max_queue_delay_microseconds must be 0 or more")?;
    out.preserve_ordering = db.text("preserve_ordering") == Some("true");
    if let Some(q) = db.messages("default_queue_policy").last() {
        if let Some(n) = q.int("max_queue_size")?.filter(|&n| n > 0) {
            out.max_queue_size = Some(n as usize);
        }
        if let Some(us) = q.int("default_timeout_microseconds")?.filter(|&n| n > 0) {
            out.default_timeout_ms = Some((us as u64).div_ceil(1000));
        }
    }
    Ok(out)
}

fn version_policy(p: &Message) -> Result<VersionPolicy, String> {
    if let Some(latest) = p.messages("latest").last() {
        let n = latest.int("num_versions")?.unwrap_or(1);
        return match usize::try_from(n) {
            Ok(n) if n > 0 => Ok(VersionPolicy::Latest(n)),
            _ => Err("version_policy latest num_versions must be at least 1".into()),
        };
    }
    if let Some(specific) = p.messages("specific").last() {
        let versions = specific
            .ints("versions")?
            .into_iter()
            .map(|v| u64::try_from(v).map_err(|_| "version numbers are 0 or more".to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(VersionPolicy::Specific(versions));
    }
    Ok(VersionPolicy::All)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroserve_core::DataType;

    #[test]
    fn reads_a_python_backend_config() {
        let c = read(
            r#"name: "add_sub"
backend: "python"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] }]
instance_group [{ count: 2 kind: KIND_CPU }]
dynamic_batching { max_queue_delay_microseconds: 500 }
"#,
        )
        .unwrap();
        assert_eq!(c.backend.as_deref(), Some("python"));
        assert_eq!(c.max_batch_size, Some(8));
        assert_eq!(c.replicas, 2);
        assert_eq!(c.inputs[0].datatype, DataType::Int32);
        assert_eq!(c.outputs[0].datatype, DataType::Bytes);
        assert_eq!(c.outputs[0].dims, [-1]);
        assert_eq!(c.dynamic_batching.unwrap().max_queue_delay_us, 500);
        assert_eq!(c.version_policy, VersionPolicy::Latest(1));
        let e = read("model_transaction_policy { decoupled: true }").unwrap_err();
        assert!(e.contains("decoupled"), "{e}");
        let e = read("input [{ name: \"x\" data_type: TYPE_COMPLEX dims: [1] }]").unwrap_err();
        assert!(e.contains("TYPE_COMPLEX"), "{e}");
    }
}
