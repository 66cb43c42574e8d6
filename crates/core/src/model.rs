//! What a model looks like from outside: its inputs and outputs.

use serde::Serialize;

use crate::DataType;

/// One input or output of a model, as read from the model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TensorSpec {
    /// Name the model gives the tensor.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Dimensions; `-1` marks a dynamic dimension that accepts any size.
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Checks `shape` against this spec: the same rank, and every fixed dimension equal.
    ///
    /// On mismatch the error says which dimension and what was expected.
    pub fn check_shape(&self, shape: &[usize]) -> Result<(), String> {
        if shape.len() != self.shape.len() {
            return Err(format!(
                "input '{}' has rank {} (shape {:?}) but the model expects rank {} (shape {:?})",
                self.name,
                shape.len(),
                shape,
                self.shape.len(),
                self.shape
            ));
        }
        for (i, (&got, &want)) in shape.iter().zip(&self.shape).enumerate() {
            if want >= 0 && got as u64 != want as u64 {
                return Err(format!(
                    "input '{}' dimension {i} is {got} but the model expects {want} (model shape {:?}, got {:?})",
                    self.name, self.shape, shape
                ));
            }
        }
        Ok(())
    }
}

/// The inputs and outputs of a loaded model.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Signature {
    /// Inputs, in the model's order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the model's order.
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    /// The input called `name`, if the model has one.
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }

    /// The output called `name`, if the model has one.
    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_dims_accept_anything_fixed_dims_do_not() {
        let spec = TensorSpec {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 16],
        };
        assert!(spec.check_shape(&[0, 16]).is_ok());
        assert!(spec.check_shape(&[7, 16]).is_ok());
        assert!(spec
            .check_shape(&[7, 15])
            .unwrap_err()
            .contains("dimension 1"));
        assert!(spec.check_shape(&[16]).unwrap_err().contains("rank"));
    }
}
