//! The one tensor type that crosses every layer.

use bytes::{BufMut, Bytes, BytesMut};

use crate::DataType;

/// Why bytes and a shape do not make a tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The product of the dimensions does not fit in memory's address space.
    #[error("shape {0:?} has more elements than can be addressed")]
    ShapeOverflow(Vec<usize>),
    /// A fixed-size type whose byte length is not `elements * size`.
    #[error("{dtype} tensor of shape {shape:?} needs {expected} bytes, got {actual}")]
    ByteLength {
        /// The element type.
        dtype: DataType,
        /// The declared shape.
        shape: Vec<usize>,
        /// `elements * size_of(dtype)`.
        expected: usize,
        /// What was supplied.
        actual: usize,
    },
    /// A `BYTES` buffer whose length prefixes do not add up.
    #[error("malformed BYTES data: {0}")]
    MalformedBytes(String),
}

/// Number of elements in `shape`, or an error if the product overflows `usize`.
pub fn element_count(shape: &[usize]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TensorError::ShapeOverflow(shape.to_vec()))
}

/// A tensor header as a client declares it on the wire (a data type name and signed
/// dimensions), checked: the type exists, no dimension is negative, and the element count fits
/// in memory. Returns the type, the shape and the element count, before any data is read.
pub fn declared(datatype: &str, shape: &[i64]) -> Result<(DataType, Vec<usize>, usize), String> {
    let dtype: DataType = datatype.parse().map_err(|e| format!("{e}"))?;
    let dims = shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| format!("shape {shape:?} has a negative dimension"))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let count = element_count(&dims).map_err(|e| e.to_string())?;
    Ok((dtype, dims, count))
}

/// A dense, row-major tensor: an element type, a shape and contiguous little-endian bytes.
///
/// The bytes are reference-counted ([`Bytes`]), so slicing a request body into tensors and
/// handing them from frontend to runtime to backend copies nothing. A `Tensor` is always
/// consistent: the constructors check that the bytes hold exactly the elements the shape
/// declares.
///
/// ```
/// use ferroserve_core::{DataType, Tensor};
///
/// let t = Tensor::from_bytes_elements(vec![2], ["hello".as_bytes(), b"world"]).unwrap();
/// assert_eq!(t.dtype(), DataType::Bytes);
/// let words: Vec<&[u8]> = t.bytes_elements().collect();
/// assert_eq!(words, [b"hello".as_slice(), b"world"]);
///
/// let f = Tensor::new(DataType::Fp32, vec![2], 1.5f32.to_le_bytes().repeat(2).into()).unwrap();
/// assert_eq!(f.element_count(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    dtype: DataType,
    shape: Vec<usize>,
    data: Bytes,
}

impl Tensor {
    /// Builds a tensor, checking that `data` holds exactly the elements `shape` declares.
    pub fn new(dtype: DataType, shape: Vec<usize>, data: Bytes) -> Result<Self, TensorError> {
        let count = element_count(&shape)?;
        match dtype.size() {
            Some(size) => {
                let expected = count
                    .checked_mul(size)
                    .ok_or_else(|| TensorError::ShapeOverflow(shape.clone()))?;
                if data.len() != expected {
                    return Err(TensorError::ByteLength {
                        dtype,
                        shape,
                        expected,
                        actual: data.len(),
                    });
                }
            }
            None => {
                let found = count_bytes_elements(&data)?;
                if found != count {
                    return Err(TensorError::MalformedBytes(format!(
                        "shape {shape:?} needs {count} elements, the data holds {found}"
                    )));
                }
            }
        }
        Ok(Self { dtype, shape, data })
    }

    /// Builds a `BYTES` tensor from its elements.
    pub fn from_bytes_elements<I, E>(shape: Vec<usize>, elements: I) -> Result<Self, TensorError>
    where
        I: IntoIterator<Item = E>,
        E: AsRef<[u8]>,
    {
        let mut buf = BytesMut::new();
        for e in elements {
            let e = e.as_ref();
            let len = u32::try_from(e.len()).map_err(|_| {
                TensorError::MalformedBytes("an element is longer than 4 GiB".into())
            })?;
            buf.put_u32_le(len);
            buf.put_slice(e);
        }
        Self::new(DataType::Bytes, shape, buf.freeze())
    }

    /// The element type.
    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements (the product of the dimensions).
    pub fn element_count(&self) -> usize {
        // Checked at construction.
        self.shape.iter().product()
    }

    /// The raw little-endian bytes (for `BYTES`: length-prefixed elements).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Iterates over the elements of a `BYTES` tensor; yields nothing for other types.
    pub fn bytes_elements(&self) -> BytesElements<'_> {
        BytesElements {
            rest: if self.dtype == DataType::Bytes {
                &self.data
            } else {
                &[]
            },
        }
    }
}

/// Iterator over the elements of a `BYTES` tensor, from [`Tensor::bytes_elements`].
pub struct BytesElements<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for BytesElements<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // The buffer was validated when the tensor was built, so a short read cannot happen;
        // stopping is still the safe answer if it did.
        let (len, rest) = split_len(self.rest)?;
        let elem = rest.get(..len)?;
        self.rest = &rest[len..];
        Some(elem)
    }
}

fn split_len(buf: &[u8]) -> Option<(usize, &[u8])> {
    let (prefix, rest) = buf.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*prefix) as usize, rest))
}

/// Counts the length-prefixed elements in `buf`, failing if a prefix points past the end.
fn count_bytes_elements(mut buf: &[u8]) -> Result<usize, TensorError> {
    let mut count = 0;
    while !buf.is_empty() {
        let (len, rest) = split_len(buf).ok_or_else(|| {
            TensorError::MalformedBytes(format!(
                "element {count} has a truncated 4-byte length prefix"
            ))
        })?;
        if rest.len() < len {
            return Err(TensorError::MalformedBytes(format!(
                "element {count} declares {len} bytes but only {} remain",
                rest.len()
            )));
        }
        buf = &rest[len..];
        count += 1;
    }
    Ok(count)
}

/// A tensor with the name of the model input or output it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Input or output name as the model declares it.
    pub name: String,
    /// The tensor.
    pub tensor: Tensor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_size_length_is_checked() {
        let err = Tensor::new(DataType::Int32, vec![2, 2], Bytes::from(vec![0u8; 12])).unwrap_err();
        assert!(matches!(
            err,
            TensorError::ByteLength {
                expected: 16,
                actual: 12,
                ..
            }
        ));
    }

    #[test]
    fn overflowing_shape_is_an_error() {
        let err = Tensor::new(DataType::Fp32, vec![usize::MAX, 2], Bytes::new()).unwrap_err();
        assert!(matches!(err, TensorError::ShapeOverflow(_)));
    }

    #[test]
    fn bytes_prefix_past_end_is_malformed() {
        let mut buf = 10u32.to_le_bytes().to_vec();
        buf.extend_from_slice(b"abc");
        let err = Tensor::new(DataType::Bytes, vec![1], buf.into()).unwrap_err();
        assert!(matches!(err, TensorError::MalformedBytes(_)));
    }

    #[test]
    fn bytes_count_must_match_shape() {
        let t = Tensor::from_bytes_elements(vec![3], ["a", "b"]);
        assert!(t.is_err());
        let t = Tensor::from_bytes_elements(vec![1, 2], ["", "xyz"]).unwrap();
        assert_eq!(
            t.bytes_elements().collect::<Vec<_>>(),
            [b"".as_slice(), b"xyz"]
        );
    }
}
