//! The Open Inference Protocol's JSON tensor codec, for every frontend and client: tensor `data` in
//! JSON: decoding (flat or nested arrays straight into tensor bytes) and
//! encoding (tensor bytes straight into a JSON array), without an intermediate `Value` tree.

use std::fmt;

use crate::{DataType, Tensor};
use bytes::{BufMut, Bytes, BytesMut};
use half::{bf16, f16};
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::ser::{Error as _, SerializeSeq};
use serde::{Deserializer, Serialize, Serializer};

/// Decodes a JSON `data` value (a scalar, or arrays nested to any depth) of `expected` elements of
/// `dtype` into tensor bytes.
///
/// Memory stays proportional to the JSON text: the buffer grows with the elements actually
/// present (each takes at least one byte of text) and decoding stops at the first element past
/// `expected`, so a request that declares a huge shape cannot make the server allocate for it.
pub fn decode(raw: &str, dtype: DataType, expected: usize) -> Result<Bytes, String> {
    let capacity = expected
        .min(raw.len())
        .saturating_mul(dtype.size().unwrap_or(4));
    let mut sink = Sink {
        dtype,
        out: BytesMut::with_capacity(capacity),
        count: 0,
        expected,
    };
    let mut de = serde_json::Deserializer::from_str(raw);
    Element(&mut sink)
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| strip_position(e.to_string()))?;
    if sink.count != expected {
        return Err(format!(
            "the shape needs {expected} elements but data holds {}",
            sink.count
        ));
    }
    Ok(sink.out.freeze())
}

/// serde_json reports positions inside the `data` fragment, which mean nothing to a client.
fn strip_position(msg: String) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

struct Sink {
    dtype: DataType,
    out: BytesMut,
    count: usize,
    expected: usize,
}

impl Sink {
    fn admit(&mut self) -> Result<(), String> {
        if self.count == self.expected {
            return Err(format!(
                "data holds more elements than the shape's {}",
                self.expected
            ));
        }
        self.count += 1;
        Ok(())
    }

    fn wrong<E: serde::de::Error>(&self, got: &str) -> E {
        E::custom(format!(
            "element {} is {got}, which is not a valid {} value",
            self.count, self.dtype
        ))
    }

    fn int<E: serde::de::Error>(&mut self, v: i128) -> Result<(), E> {
        let d = self.dtype;
        let fits = |lo: i128, hi: i128| lo <= v && v <= hi;
        let ok = match d {
            DataType::Uint8 => fits(0, u8::MAX.into()),
            DataType::Uint16 => fits(0, u16::MAX.into()),
            DataType::Uint32 => fits(0, u32::MAX.into()),
            DataType::Uint64 => fits(0, u64::MAX.into()),
            DataType::Int8 => fits(i8::MIN.into(), i8::MAX.into()),
            DataType::Int16 => fits(i16::MIN.into(), i16::MAX.into()),
            DataType::Int32 => fits(i32::MIN.into(), i32::MAX.into()),
            DataType::Int64 => fits(i64::MIN.into(), i64::MAX.into()),
            // Integers are fine for float types; they convert below.
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => {
                return self.float(v as f64)
            }
            DataType::Bool | DataType::Bytes => return Err(self.wrong("a number")),
        };
        if !ok {
            return Err(E::custom(format!(
                "element {} is {v}, out of range for {d}",
                self.count
            )));
        }
        self.admit().map_err(E::custom)?;
        // Two's-complement little-endian truncation is exact once the range check passed.
        let le = v.to_le_bytes();
        self.out.put_slice(&le[..d.size().unwrap_or(0)]);
        Ok(())
    }

    fn float<E: serde::de::Error>(&mut self, v: f64) -> Result<(), E> {
        // JSON has no infinities: a finite number that becomes one was out of range, and would
        // come back as `null`.
        let narrowed = match self.dtype {
            DataType::Fp16 => f16::from_f64(v).is_infinite(),
            DataType::Bf16 => bf16::from_f64(v).is_infinite(),
            DataType::Fp32 => (v as f32).is_infinite(),
            _ => false,
        };
        if narrowed && v.is_finite() {
            return Err(E::custom(format!(
                "element {} is {v}, out of range for {}",
                self.count, self.dtype
            )));
        }
        match self.dtype {
            DataType::Fp16 => self.push(E::custom, &f16::from_f64(v).to_le_bytes()),
            DataType::Bf16 => self.push(E::custom, &bf16::from_f64(v).to_le_bytes()),
            DataType::Fp32 => self.push(E::custom, &(v as f32).to_le_bytes()),
            DataType::Fp64 => self.push(E::custom, &v.to_le_bytes()),
            _ => Err(self.wrong(&format!("the non-integer number {v}"))),
        }
    }

    fn push<E>(&mut self, err: fn(String) -> E, bytes: &[u8]) -> Result<(), E> {
        self.admit().map_err(err)?;
        self.out.put_slice(bytes);
        Ok(())
    }
}

/// Deserializes one JSON value, recursing into arrays.
struct Element<'a>(&'a mut Sink);

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} values, flat or in nested arrays", self.0.dtype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Element(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        if self.0.dtype != DataType::Bool {
            return Err(self.0.wrong("a boolean"));
        }
        self.0.push(E::custom, &[u8::from(v)])
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.0.int(v.into())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.0.int(v.into())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.0.float(v)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        if self.0.dtype != DataType::Bytes {
            return Err(self.0.wrong("a string"));
        }
        let len = u32::try_from(v.len()).map_err(|_| E::custom("a BYTES element is over 4 GiB"))?;
        self.0.admit().map_err(E::custom)?;
        self.0.out.put_u32_le(len);
        self.0.out.put_slice(v.as_bytes());
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(self.0.wrong("null"))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(A::Error::custom(format!(
            "element {} is an object, which is not a valid {} value",
            self.0.count, self.0.dtype
        )))
    }
}

/// Serializes a tensor's elements as a flat JSON array, reading its bytes directly.
pub struct Encode<'a>(pub &'a Tensor);

impl Serialize for Encode<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let mut seq = s.serialize_seq(Some(t.element_count()))?;
        macro_rules! each {
            ($n:literal, |$b:ident| $conv:expr) => {
                for c in t.data().chunks_exact($n) {
                    let $b: [u8; $n] = c.try_into().map_err(S::Error::custom)?;
                    seq.serialize_element(&$conv)?;
                }
            };
        }
        match t.dtype() {
            DataType::Bool => each!(1, |b| b[0] != 0),
            DataType::Uint8 => each!(1, |b| b[0]),
            DataType::Int8 => each!(1, |b| i8::from_le_bytes(b)),
            DataType::Uint16 => each!(2, |b| u16::from_le_bytes(b)),
            DataType::Int16 => each!(2, |b| i16::from_le_bytes(b)),
            DataType::Fp16 => each!(2, |b| f16::from_le_bytes(b).to_f32()),
            DataType::Bf16 => each!(2, |b| bf16::from_le_bytes(b).to_f32()),
            DataType::Uint32 => each!(4, |b| u32::from_le_bytes(b)),
            DataType::Int32 => each!(4, |b| i32::from_le_bytes(b)),
            DataType::Fp32 => each!(4, |b| f32::from_le_bytes(b)),
            DataType::Uint64 => each!(8, |b| u64::from_le_bytes(b)),
            DataType::Int64 => each!(8, |b| i64::from_le_bytes(b)),
            DataType::Fp64 => each!(8, |b| f64::from_le_bytes(b)),
            DataType::Bytes => {
                for e in t.bytes_elements() {
                    let s = std::str::from_utf8(e).map_err(|_| {
                        S::Error::custom(
                            "a BYTES output is not UTF-8 and cannot be sent as JSON; request it with \"binary_data\": true",
                        )
                    })?;
                    seq.serialize_element(s)?;
                }
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_decode_alike() {
        let flat = decode("[1, 2, 3, 4]", DataType::Int32, 4).unwrap();
        let nested = decode("[[1, 2], [3, 4]]", DataType::Int32, 4).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(&flat[..4], &1i32.to_le_bytes());
    }

    #[test]
    fn every_type_round_trips() {
        let cases = [
            (DataType::Bool, "[true,false]"),
            (DataType::Uint8, "[0,255]"),
            (DataType::Uint16, "[0,65535]"),
            (DataType::Uint32, "[0,4294967295]"),
            (DataType::Uint64, "[0,18446744073709551615]"),
            (DataType::Int8, "[-128,127]"),
            (DataType::Int16, "[-32768,32767]"),
            (DataType::Int32, "[-2147483648,2147483647]"),
            (
                DataType::Int64,
                "[-9223372036854775808,9223372036854775807]",
            ),
            (DataType::Fp16, "[1.5,-2.0]"),
            (DataType::Bf16, "[1.5,-2.0]"),
            (DataType::Fp32, "[1.5,-2.25]"),
            (DataType::Fp64, "[1.5,-2.25]"),
            (DataType::Bytes, "[\"a\",\"\"]"),
        ];
        for (dtype, json) in cases {
            let bytes = decode(json, dtype, 2).unwrap();
            let t = Tensor::new(dtype, vec![2], bytes).unwrap();
            let back = serde_json::to_string(&Encode(&t)).unwrap();
            assert_eq!(back, json, "{dtype}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let e = |raw: &str, t: DataType, n: usize| decode(raw, t, n).unwrap_err();
        assert!(e("[1, 2]", DataType::Int32, 3).contains("needs 3 elements but data holds 2"));
        assert!(e("[1, 2, 3]", DataType::Int32, 2).contains("more elements"));
        assert!(e("[300]", DataType::Uint8, 1).contains("out of range for UINT8"));
        assert!(e("[-1]", DataType::Uint32, 1).contains("out of range"));
        assert!(e("[1e39]", DataType::Fp32, 1).contains("out of range for FP32"));
        assert!(e("[-1e39]", DataType::Fp32, 1).contains("out of range for FP32"));
        assert!(e("[70000]", DataType::Fp16, 1).contains("out of range for FP16"));
        assert!(decode("[3.4e38, 1e-50]", DataType::Fp32, 2).is_ok());
        assert!(e("[1.5]", DataType::Int64, 1).contains("not a valid INT64"));
        assert!(e("[\"x\"]", DataType::Fp32, 1).contains("a string"));
        assert!(e("[1]", DataType::Bytes, 1).contains("not a valid BYTES"));
        assert!(e("[null]", DataType::Fp32, 1).contains("null"));
        assert!(e("[{}]", DataType::Fp32, 1).contains("object"));
        assert!(e("[1, 2", DataType::Int32, 2).contains("EOF"));
    }

    #[test]
    fn scalar_data_is_one_element() {
        assert_eq!(decode("7", DataType::Int64, 1).unwrap().len(), 8);
    }

    #[test]
    fn non_utf8_bytes_output_asks_for_binary() {
        let t = Tensor::from_bytes_elements(vec![1], [[0xffu8]]).unwrap();
        let e = serde_json::to_string(&Encode(&t)).unwrap_err().to_string();
        assert!(e.contains("binary_data"), "{e}");
    }
}
