//! Tensors on the wire: a header naming the type and shape, and a buffer (see `PROTOCOL.md`).

use ferroserve_core::{DataType, NamedTensor, Tensor};
use serde_json::{json, Value};

use crate::frame::{Outbox, Reply};

/// The header of `t`, its bytes put in `outbox`.
pub(crate) fn put(outbox: &mut Outbox<'_>, t: &NamedTensor) -> std::io::Result<Value> {
    Ok(json!({
        "name": t.name,
        "datatype": t.tensor.dtype().as_str(),
        "shape": t.tensor.shape(),
        "data": outbox.put(t.tensor.data())?,
    }))
}

/// The tensor a header in `reply` describes, checked (type, shape and bytes agree).
pub(crate) fn take(reply: &Reply<'_>, v: &Value) -> Result<NamedTensor, String> {
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a tensor without a name: {v}"))?;
    let dtype: DataType = v
        .get("datatype")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("output '{name}': {e}"))?;
    let shape = shape(v).ok_or_else(|| format!("output '{name}' has no shape of whole numbers"))?;
    let data = reply.bytes(v.get("data").unwrap_or(&Value::Null))?;
    // Copied out: the shared memory is written again by the next request.
    let tensor = Tensor::new(dtype, shape, bytes::Bytes::copy_from_slice(data))
        .map_err(|e| format!("output '{name}': {e}"))?;
    Ok(NamedTensor {
        name: name.to_string(),
        tensor,
    })
}

/// The `shape` of a tensor or array header in a worker's reply, if it is a list of whole numbers.
pub fn shape(v: &Value) -> Option<Vec<usize>> {
    v.get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect()
}
