//! Checks a request against a model's signature before any backend sees it.

use std::collections::HashSet;

#[cfg(test)]
use ferroserve_core::ErrorKind;
use ferroserve_core::{DataType, Error, InferRequest, Result, Signature};

/// What one request may ask of the server, checked before any work is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Elements in all of a request's input tensors together. Default: 64 Mi (67,108,864).
    pub max_elements: usize,
    /// Elements of BYTES inputs in a request: each costs far more than its bytes on the wire
    /// (an empty string is 3 bytes of JSON but a whole string to the model). Default: 1 Mi
    /// (1,048,576).
    pub max_bytes_elements: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_elements: 64 << 20,
            max_bytes_elements: 1 << 20,
        }
    }
}

/// Refuses a request whose element counts pass `limits` ([`ErrorKind::TooLarge`](ferroserve_core::ErrorKind::TooLarge), HTTP 413).
pub fn cost(request: &InferRequest, limits: &RequestLimits) -> Result<()> {
    let mut all = 0usize;
    let mut strings = 0usize;
    for input in &request.inputs {
        let n = input.tensor.element_count();
        all = all.saturating_add(n);
        if input.tensor.dtype() == DataType::Bytes {
            strings = strings.saturating_add(n);
        }
    }
    if strings > limits.max_bytes_elements {
        return Err(Error::too_large(format!(
            "the request has {strings} BYTES elements; the server accepts at most {} per request (--max-bytes-elements)",
            limits.max_bytes_elements
        )));
    }
    if all > limits.max_elements {
        return Err(Error::too_large(format!(
            "the request has {all} tensor elements; the server accepts at most {} per request (--max-request-elements)",
            limits.max_elements
        )));
    }
    Ok(())
}

/// Checks names, data types, shapes and requested outputs. The error names the first problem.
pub fn check(model: &str, signature: &Signature, request: &InferRequest) -> Result<()> {
    let names = |specs: &[ferroserve_core::TensorSpec]| {
        specs
            .iter()
            .map(|s| format!("'{}'", s.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut seen = HashSet::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let Some(spec) = signature.input(&input.name) else {
            return Err(Error::invalid(format!(
                "model '{model}' has no input '{}' (its inputs are {})",
                input.name,
                names(&signature.inputs)
            )));
        };
        if !seen.insert(input.name.as_str()) {
            return Err(Error::invalid(format!(
                "input '{}' is given twice",
                input.name
            )));
        }
        if input.tensor.dtype() != spec.datatype {
            return Err(Error::invalid(format!(
                "input '{}' has datatype {} but model '{model}' expects {}",
                input.name,
                input.tensor.dtype(),
                spec.datatype
            )));
        }
        spec.check_shape(input.tensor.shape())
            .map_err(Error::invalid)?;
    }
    let missing: Vec<String> = signature
        .inputs
        .iter()
        .filter(|s| !seen.contains(s.name.as_str()))
        .map(|s| format!("'{}'", s.name))
        .collect();
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "missing input {} (model '{model}' needs {})",
            missing.join(", "),
            names(&signature.inputs)
        )));
    }
    let mut seen = HashSet::with_capacity(request.outputs.len());
    for output in &request.outputs {
        if signature.output(output).is_none() {
            return Err(Error::invalid(format!(
                "model '{model}' has no output '{output}' (its outputs are {})",
                names(&signature.outputs)
            )));
        }
        if !seen.insert(output.as_str()) {
            return Err(Error::invalid(format!(
                "output '{output}' is requested twice"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroserve_core::{DataType, NamedTensor, Tensor, TensorSpec};

    fn sig() -> Signature {
        let spec = |n: &str| TensorSpec {
            name: n.into(),
            datatype: DataType::Int32,
            shape: vec![-1, 2],
        };
        Signature {
            inputs: vec![spec("A"), spec("B")],
            outputs: vec![spec("C")],
        }
    }

    fn input(name: &str, dtype: DataType, shape: Vec<usize>) -> NamedTensor {
        let n: usize = shape.iter().product();
        let bytes = vec![0u8; n * dtype.size().unwrap()];
        NamedTensor {
            name: name.into(),
            tensor: Tensor::new(dtype, shape, bytes.into()).unwrap(),
        }
    }

    fn req(inputs: Vec<NamedTensor>, outputs: &[&str]) -> InferRequest {
        InferRequest {
            inputs,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn element_counts_are_bounded() {
        let limits = RequestLimits {
            max_elements: 10,
            max_bytes_elements: 3,
        };
        let strings = |n: usize| NamedTensor {
            name: "S".into(),
            tensor: Tensor::from_bytes_elements(vec![n], std::iter::repeat_n(&b""[..], n)).unwrap(),
        };
        cost(
            &req(vec![strings(3), input("A", DataType::Int32, vec![7])], &[]),
            &limits,
        )
        .unwrap();
        let e = cost(&req(vec![strings(4)], &[]), &limits).unwrap_err();
        assert!(
            e.kind() == ErrorKind::TooLarge && e.message().contains("4 BYTES elements"),
            "{e}"
        );
        let e = cost(
            &req(vec![strings(3), input("A", DataType::Int32, vec![8])], &[]),
            &limits,
        )
        .unwrap_err();
        assert!(
            e.kind() == ErrorKind::TooLarge && e.message().contains("11 tensor elements"),
            "{e}"
        );
    }

    #[test]
    fn accepts_a_good_request() {
        let r = req(
            vec![
                input("A", DataType::Int32, vec![3, 2]),
                input("B", DataType::Int32, vec![3, 2]),
            ],
            &["C"],
        );
        check("m", &sig(), &r).unwrap();
    }

    #[test]
    fn names_each_problem() {
        let a = || input("A", DataType::Int32, vec![1, 2]);
        let cases = [
            (
                req(vec![a(), input("Z", DataType::Int32, vec![1, 2])], &[]),
                "no input 'Z'",
            ),
            (req(vec![a()], &[]), "missing input 'B'"),
            (req(vec![a(), a()], &[]), "given twice"),
            (
                req(vec![a(), input("B", DataType::Fp32, vec![1, 2])], &[]),
                "expects INT32",
            ),
            (
                req(vec![a(), input("B", DataType::Int32, vec![2])], &[]),
                "rank",
            ),
            (
                req(vec![a(), input("B", DataType::Int32, vec![1, 3])], &[]),
                "dimension 1",
            ),
            (
                req(vec![a(), input("B", DataType::Int32, vec![1, 2])], &["D"]),
                "no output 'D'",
            ),
        ];
        for (r, needle) in cases {
            let e = check("m", &sig(), &r).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should contain {needle}");
        }
    }
}
