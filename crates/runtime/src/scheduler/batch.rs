//! Combining requests into one batch along dimension 0, and splitting the outputs back.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferroserve_core::{DataType, Error, InferRequest, NamedTensor, Result, Signature, Tensor};

/// What requests must share to run in one batch: input names, types and non-batch dimensions
/// (only the rank for padded inputs), requested outputs, and parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchKey {
    inputs: Vec<(String, DataType, Vec<usize>)>,
    outputs: Vec<String>,
    parameters: String,
}

impl BatchKey {
    /// The key of `request`; `pad` names the inputs whose non-batch dimensions may differ.
    pub fn of(request: &InferRequest, pad: &BTreeMap<String, f64>) -> Self {
        let mut inputs: Vec<_> = request
            .inputs
            .iter()
            .map(|i| {
                let shape = i.tensor.shape();
                let inner = if pad.contains_key(&i.name) {
                    vec![0; shape.len().saturating_sub(1)]
                } else {
                    shape.get(1..).unwrap_or_default().to_vec()
                };
                (i.name.clone(), i.tensor.dtype(), inner)
            })
            .collect();
        inputs.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            inputs,
            outputs: request.outputs.clone(),
            parameters: serde_json::Value::Object(request.parameters.clone()).to_string(),
        }
    }
}

/// Rows (first dimension) of a request, which all its inputs must agree on.
pub fn rows(request: &InferRequest) -> Result<usize> {
    let mut rows = None;
    for input in &request.inputs {
        let Some(&r) = input.tensor.shape().first() else {
            return Err(Error::invalid(format!(
                "input '{}' is a scalar, but this model batches along the first dimension",
                input.name
            )));
        };
        match rows {
            None => rows = Some(r),
            Some(prev) if prev != r => {
                return Err(Error::invalid(format!(
                    "inputs disagree on the batch size (first dimension): {prev} and {r} for '{}'",
                    input.name
                )))
            }
            Some(_) => {}
        }
    }
    Ok(rows.unwrap_or(0))
}

/// Elements per row of the request's padded inputs (the widest), which is what every row of a
/// batch is padded to: its token count for token inputs. 0 when nothing is padded.
pub fn padded_width(request: &InferRequest, pad: &BTreeMap<String, f64>) -> usize {
    request
        .inputs
        .iter()
        .filter(|i| pad.contains_key(&i.name))
        .map(|i| {
            i.tensor
                .shape()
                .get(1..)
                .unwrap_or_default()
                .iter()
                .product()
        })
        .max()
        .unwrap_or(0)
}

/// How one request sits in a merged batch, for splitting the outputs.
#[derive(Debug, Clone)]
pub struct Part {
    /// Rows this request contributed.
    pub rows: usize,
    /// For each padded (input dimension index, padded length): this request's own length.
    pub own_lengths: Vec<(usize, usize, usize)>,
}

/// Merges the inputs of `requests` (which share a [`BatchKey`]) into one batch, padding the
/// inputs named in `pad` to the longest member.
pub fn merge(
    requests: &[&InferRequest],
    pad: &BTreeMap<String, f64>,
) -> Result<(Vec<NamedTensor>, Vec<Part>)> {
    let first = requests[0];
    let mut parts: Vec<Part> = requests
        .iter()
        .map(|r| {
            Ok(Part {
                rows: rows(r)?,
                own_lengths: Vec::new(),
            })
        })
        .collect::<Result<_>>()?;
    let total: usize = parts.iter().map(|p| p.rows).sum();
    let mut merged = Vec::with_capacity(first.inputs.len());
    for input in &first.inputs {
        let tensors: Vec<&Tensor> = requests
            .iter()
            .map(|r| {
                r.inputs
                    .iter()
                    .find(|i| i.name == input.name)
                    .map(|i| &i.tensor)
                    .ok_or_else(|| {
                        Error::internal(format!("batch member lacks input '{}'", input.name))
                    })
            })
            .collect::<Result<_>>()?;
        let dtype = input.tensor.dtype();
        let rank = input.tensor.shape().len();
        let mut shape = vec![total];
        for d in 1..rank {
            shape.push(tensors.iter().map(|t| t.shape()[d]).max().unwrap_or(0));
        }
        let padded = tensors.iter().any(|t| t.shape()[1..] != shape[1..]);
        let data = if !padded {
            concat(&tensors)
        } else {
            let value = pad.get(&input.name).copied().ok_or_else(|| {
                Error::internal(format!(
                    "input '{}' needs padding but has no pad value",
                    input.name
                ))
            })?;
            let elem = dtype.size().ok_or_else(|| {
                Error::invalid(format!("BYTES input '{}' cannot be padded", input.name))
            })?;
            let mut out = pad_value(dtype, value).repeat(
                ferroserve_core::element_count(&shape)
                    .map_err(|e| Error::invalid(e.to_string()))?,
            );
            let padded_dims: Vec<usize> = (1..rank)
                .filter(|&d| tensors.iter().any(|t| t.shape()[d] != shape[d]))
                .collect();
            let mut row = 0;
            for (t, part) in tensors.iter().zip(parts.iter_mut()) {
                copy_block(
                    t.data(),
                    t.shape(),
                    0,
                    &mut out,
                    &shape,
                    row,
                    t.shape(),
                    elem,
                );
                row += t.shape()[0];
                part.own_lengths
                    .extend(padded_dims.iter().map(|&d| (d, shape[d], t.shape()[d])));
            }
            Bytes::from(out)
        };
        let tensor = Tensor::new(dtype, shape, data).map_err(|e| Error::internal(e.to_string()))?;
        merged.push(NamedTensor {
            name: input.name.clone(),
            tensor,
        });
    }
    for part in &mut parts {
        part.own_lengths.sort_unstable();
        part.own_lengths.dedup();
    }
    Ok((merged, parts))
}

/// Splits a batch's outputs back into one output list per request.
///
/// Output dimensions that the model declares dynamic and that came out as long as a padded
/// input dimension at the same index (a `[batch, tokens, hidden]` output of `[batch, tokens]`
/// inputs) are cut back to each request's own length, so a request gets the answer it would
/// have got alone.
pub fn split(
    outputs: Vec<NamedTensor>,
    parts: &[Part],
    signature: &Signature,
) -> Result<Vec<Vec<NamedTensor>>> {
    let total: usize = parts.iter().map(|p| p.rows).sum();
    let mut per_request: Vec<Vec<NamedTensor>> = parts.iter().map(|_| Vec::new()).collect();
    for output in outputs {
        let shape = output.tensor.shape().to_vec();
        if shape.first() != Some(&total) {
            return Err(Error::internal(format!(
                "output '{}' has shape {shape:?} for a batch of {total} rows; the model does not batch along its first dimension (set max_batch_size: 0)",
                output.name
            )));
        }
        let declared = signature.output(&output.name).map(|s| s.shape.clone());
        let dynamic = |d: usize| declared.as_ref().is_none_or(|s| s.get(d) == Some(&-1));
        let mut row = 0;
        for (part, out) in parts.iter().zip(per_request.iter_mut()) {
            let mut block = shape.clone();
            block[0] = part.rows;
            for &(d, padded, own) in &part.own_lengths {
                if d < block.len() && block[d] == padded && dynamic(d) {
                    block[d] = own;
                }
            }
            let tensor = slice(&output.tensor, row, &block)?;
            row += part.rows;
            out.push(NamedTensor {
                name: output.name.clone(),
                tensor,
            });
        }
    }
    Ok(per_request)
}

/// The block of shape `block` starting at row `row` of `t`.
fn slice(t: &Tensor, row: usize, block: &[usize]) -> Result<Tensor> {
    let internal = |e: ferroserve_core::TensorError| Error::internal(e.to_string());
    let Some(elem) = t.dtype().size() else {
        // BYTES: only whole rows are split off; the elements are variable length.
        let per_row: usize = t.shape()[1..].iter().product();
        let elems = t
            .bytes_elements()
            .skip(row * per_row)
            .take(block[0] * per_row);
        return Tensor::from_bytes_elements(block.to_vec(), elems).map_err(internal);
    };
    if block[1..] == t.shape()[1..] {
        let per_row = t.shape()[1..].iter().product::<usize>() * elem;
        let data = t.data().slice(row * per_row..(row + block[0]) * per_row);
        return Tensor::new(t.dtype(), block.to_vec(), data).map_err(internal);
    }
    let count = ferroserve_core::element_count(block).map_err(internal)?;
    let mut out = vec![0u8; count * elem];
    copy_block(t.data(), t.shape(), row, &mut out, block, 0, block, elem);
    Tensor::new(t.dtype(), block.to_vec(), out.into()).map_err(internal)
}

fn concat(tensors: &[&Tensor]) -> Bytes {
    if let [one] = tensors {
        return one.data().clone();
    }
    let mut out = Vec::with_capacity(tensors.iter().map(|t| t.data().len()).sum());
    for t in tensors {
        out.extend_from_slice(t.data());
    }
    out.into()
}

/// `value` as one little-endian element of `dtype`.
fn pad_value(dtype: DataType, value: f64) -> Vec<u8> {
    match dtype {
        DataType::Bool => vec![u8::from(value != 0.0)],
        DataType::Uint8 => (value as u8).to_le_bytes().to_vec(),
        DataType::Uint16 => (value as u16).to_le_bytes().to_vec(),
        DataType::Uint32 => (value as u32).to_le_bytes().to_vec(),
        DataType::Uint64 => (value as u64).to_le_bytes().to_vec(),
        DataType::Int8 => (value as i8).to_le_bytes().to_vec(),
        DataType::Int16 => (value as i16).to_le_bytes().to_vec(),
        DataType::Int32 => (value as i32).to_le_bytes().to_vec(),
        DataType::Int64 => (value as i64).to_le_bytes().to_vec(),
        DataType::Fp16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
        DataType::Bf16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
        DataType::Fp32 => (value as f32).to_le_bytes().to_vec(),
        DataType::Fp64 => value.to_le_bytes().to_vec(),
        DataType::Bytes => Vec::new(),
    }
}

/// Copies a block of shape `block` from `src` (shape `src_shape`, starting at row `src_row`)
/// into `dst` (shape `dst_shape`, starting at row `dst_row`). `block` fits inside both shapes.
#[allow(clippy::too_many_arguments)]
fn copy_block(
    src: &[u8],
    src_shape: &[usize],
    src_row: usize,
    dst: &mut [u8],
    dst_shape: &[usize],
    dst_row: usize,
    block: &[usize],
    elem: usize,
) {
    let rank = block.len();
    if block.contains(&0) {
        return;
    }
    // Row-major strides in elements.
    let strides = |shape: &[usize]| {
        let mut s = vec![1; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            s[d] = s[d + 1] * shape[d + 1];
        }
        s
    };
    let (ss, ds) = (strides(src_shape), strides(dst_shape));
    if rank == 1 {
        let (s, d) = (src_row * elem, dst_row * elem);
        dst[d..d + block[0] * elem].copy_from_slice(&src[s..s + block[0] * elem]);
        return;
    }
    let run = block[rank - 1] * elem;
    let mut index = vec![0usize; rank - 1];
    loop {
        let s = ((src_row + index[0]) * ss[0]
            + (1..rank - 1).map(|d| index[d] * ss[d]).sum::<usize>())
            * elem;
        let d = ((dst_row + index[0]) * ds[0]
            + (1..rank - 1).map(|d| index[d] * ds[d]).sum::<usize>())
            * elem;
        dst[d..d + run].copy_from_slice(&src[s..s + run]);
        // Advance the multi-index over the block's leading dimensions.
        let mut k = rank - 1;
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            index[k] += 1;
            if index[k] < block[k] {
                break;
            }
            index[k] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroserve_core::TensorSpec;

    fn ids(rows: &[&[i64]]) -> InferRequest {
        let len = rows[0].len();
        let data: Vec<u8> = rows
            .iter()
            .flat_map(|r| r.iter().flat_map(|x| x.to_le_bytes()))
            .collect();
        InferRequest {
            inputs: vec![NamedTensor {
                name: "ids".into(),
                tensor: Tensor::new(DataType::Int64, vec![rows.len(), len], data.into()).unwrap(),
            }],
            ..Default::default()
        }
    }

    fn i64s(t: &Tensor) -> Vec<i64> {
        t.data()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn pads_to_the_longest_and_cuts_back() {
        let pad = BTreeMap::from([("ids".to_string(), 0.0)]);
        let a = ids(&[&[1, 2, 3]]);
        let b = ids(&[&[4]]);
        let c = ids(&[&[5, 6], &[7, 8]]);
        assert_eq!(BatchKey::of(&a, &pad), BatchKey::of(&b, &pad));
        let (merged, parts) = merge(&[&a, &b, &c], &pad).unwrap();
        assert_eq!(merged[0].tensor.shape(), [4, 3]);
        assert_eq!(
            i64s(&merged[0].tensor),
            [1, 2, 3, 4, 0, 0, 5, 6, 0, 7, 8, 0]
        );

        // An output [rows, tokens, 2] as a model would produce it: each token's id twice.
        let out: Vec<i64> = i64s(&merged[0].tensor)
            .iter()
            .flat_map(|&x| [x, x])
            .collect();
        let out = Tensor::new(
            DataType::Int64,
            vec![4, 3, 2],
            out.iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>()
                .into(),
        )
        .unwrap();
        let sig = Signature {
            inputs: vec![],
            outputs: vec![TensorSpec {
                name: "h".into(),
                datatype: DataType::Int64,
                shape: vec![-1, -1, 2],
            }],
        };
        let split = split(
            vec![NamedTensor {
                name: "h".into(),
                tensor: out,
            }],
            &parts,
            &sig,
        )
        .unwrap();
        assert_eq!(split[0][0].tensor.shape(), [1, 3, 2]);
        assert_eq!(i64s(&split[0][0].tensor), [1, 1, 2, 2, 3, 3]);
        assert_eq!(split[1][0].tensor.shape(), [1, 1, 2]);
        assert_eq!(i64s(&split[1][0].tensor), [4, 4]);
        assert_eq!(split[2][0].tensor.shape(), [2, 2, 2]);
        assert_eq!(i64s(&split[2][0].tensor), [5, 5, 6, 6, 7, 7, 8, 8]);
    }

    #[test]
    fn equal_shapes_concatenate_and_split_by_rows() {
        let pad = BTreeMap::new();
        let a = ids(&[&[1, 2]]);
        let b = ids(&[&[3, 4], &[5, 6]]);
        let (merged, parts) = merge(&[&a, &b], &pad).unwrap();
        assert_eq!(i64s(&merged[0].tensor), [1, 2, 3, 4, 5, 6]);
        let sig = Signature::default();
        let out = split(merged, &parts, &sig).unwrap();
        assert_eq!(i64s(&out[1][0].tensor), [3, 4, 5, 6]);
        assert_eq!(out[1][0].tensor.shape(), [2, 2]);
    }

    #[test]
    fn keys_differ_on_shape_outputs_and_parameters() {
        let none = BTreeMap::new();
        let a = ids(&[&[1, 2]]);
        let b = ids(&[&[1, 2, 3]]);
        assert_ne!(BatchKey::of(&a, &none), BatchKey::of(&b, &none));
        let mut c = ids(&[&[1, 2]]);
        c.parameters.insert("x".into(), 1.into());
        assert_ne!(BatchKey::of(&a, &none), BatchKey::of(&c, &none));
        let mut d = ids(&[&[1, 2]]);
        d.outputs = vec!["h".into()];
        assert_ne!(BatchKey::of(&a, &none), BatchKey::of(&d, &none));
    }

    #[test]
    fn bytes_outputs_split_by_rows() {
        let t = Tensor::from_bytes_elements(vec![3, 1], ["a", "bb", "ccc"]).unwrap();
        let parts = [
            Part {
                rows: 1,
                own_lengths: vec![],
            },
            Part {
                rows: 2,
                own_lengths: vec![],
            },
        ];
        let out = split(
            vec![NamedTensor {
                name: "s".into(),
                tensor: t,
            }],
            &parts,
            &Signature::default(),
        )
        .unwrap();
        assert_eq!(
            out[1][0].tensor.bytes_elements().collect::<Vec<_>>(),
            [b"bb".as_slice(), b"ccc"]
        );
    }

    #[test]
    fn output_without_batch_dimension_is_an_error() {
        let t = Tensor::new(DataType::Uint8, vec![5], vec![0; 5].into()).unwrap();
        let parts = [Part {
            rows: 2,
            own_lengths: vec![],
        }];
        let e = split(
            vec![NamedTensor {
                name: "o".into(),
                tensor: t,
            }],
            &parts,
            &Signature::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not batch"));
    }
}
