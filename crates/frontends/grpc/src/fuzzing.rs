//! Entry points for `cargo fuzz` (the repository's `fuzz/` folder), built with the `fuzzing`
//! feature only. A panic, a hang or an allocation far beyond the input's size is a bug.

use prost::Message;

/// A `ModelInferRequest` as it arrives on the wire, decoded and converted to the runtime's
/// request.
pub fn infer_request(data: &[u8]) {
    if let Ok(request) = crate::proto::ModelInferRequest::decode(data) {
        let _ = crate::convert::request(request);
    }
}
