//! Converting between ferroserve's wire tensors and plain vectors.

use ferroserve_core::{DataType, Error, NamedTensor, Result, Tensor};

/// The input called `name`, which the runtime already checked is present.
pub(crate) fn input<'a>(inputs: &'a [NamedTensor], name: &str) -> Result<&'a Tensor> {
    inputs
        .iter()
        .find(|i| i.name == name)
        .map(|i| &i.tensor)
        .ok_or_else(|| Error::invalid(format!("input '{name}' is missing")))
}

/// A 2-D INT64 or INT32 tensor as rows of i64.
pub(crate) fn int_rows(t: &Tensor, name: &str) -> Result<Vec<Vec<i64>>> {
    let [rows, cols] = *t.shape() else {
        return Err(Error::invalid(format!(
            "input '{name}' must have 2 dimensions, got shape {:?}",
            t.shape()
        )));
    };
    let values: Vec<i64> = match t.dtype() {
        DataType::Int64 => t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect(),
        DataType::Int32 => t
            .data()
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap_or_default())))
            .collect(),
        other => {
            return Err(Error::invalid(format!(
                "input '{name}' must be INT64 or INT32, got {other}"
            )))
        }
    };
    Ok(if cols == 0 {
        vec![Vec::new(); rows]
    } else {
        values.chunks(cols).map(<[i64]>::to_vec).collect()
    })
}

/// Token ids (non-negative, within u32).
pub(crate) fn token(v: i64, name: &str) -> Result<u32> {
    u32::try_from(v)
        .map_err(|_| Error::invalid(format!("input '{name}' holds {v}, not a token id")))
}

/// Rows of equal length as an INT64 tensor (rows, len).
pub(crate) fn int64(name: &str, rows: &[Vec<i64>]) -> Result<NamedTensor> {
    let width = rows.first().map_or(0, Vec::len);
    let data: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let tensor = Tensor::new(DataType::Int64, vec![rows.len(), width], data.into())
        .map_err(|e| Error::internal(e.to_string()))?;
    Ok(NamedTensor {
        name: name.to_string(),
        tensor,
    })
}

/// An FP32 tensor of `shape`.
pub(crate) fn fp32(name: &str, shape: Vec<usize>, values: &[f32]) -> Result<NamedTensor> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensor = Tensor::new(DataType::Fp32, shape, data.into())
        .map_err(|e| Error::internal(e.to_string()))?;
    Ok(NamedTensor {
        name: name.to_string(),
        tensor,
    })
}
