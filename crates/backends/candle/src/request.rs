//! Reading a backend's own parameters out of a request's parameters.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::CandleError;

/// Request parameters that belong to the protocol (Triton's), not to a model.
const PROTOCOL_PARAMETERS: &[&str] = &["timeout", "priority", "binary_data_output"];

/// Deserialises the parameters named in `names` (protocol ones are skipped); any other name is
/// an error that lists `names`. `what` names the parameters in messages.
pub(crate) fn own_parameters<T: DeserializeOwned>(
    parameters: &Map<String, Value>,
    names: &[&str],
    what: &str,
) -> Result<T, CandleError> {
    let mut own = Map::new();
    for (k, v) in parameters {
        if PROTOCOL_PARAMETERS.contains(&k.as_str()) {
            continue;
        }
        if !names.contains(&k.as_str()) {
            return Err(CandleError::Invalid(format!(
                "unknown {what} parameter '{k}' (expected one of: {})",
                names.join(", ")
            )));
        }
        own.insert(k.clone(), v.clone());
    }
    serde_json::from_value(Value::Object(own))
        .map_err(|e| CandleError::Invalid(format!("{what} parameters: {e}")))
}
