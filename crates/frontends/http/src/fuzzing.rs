//! Entry points for `cargo fuzz` (the repository's `fuzz/` folder), built with the `fuzzing`
//! feature only. Each takes arbitrary bytes; a panic, a hang or an allocation far beyond the
//! input's size is a bug.

use bytes::Bytes;
use ferroserve_core::DataType;
use futures_util::FutureExt;

/// The V2 request decoder (JSON, or JSON followed by binary tensors): the first two bytes give
/// the `Inference-Header-Content-Length` (`0xffff`: none), the rest is the body.
pub fn v2_request(data: &[u8]) {
    let Some((len, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = u16::from_le_bytes(*len);
    let header_len = (len != u16::MAX).then_some(len as usize);
    let _ = crate::v2::request::decode(Bytes::copy_from_slice(body), header_len);
}

/// A tensor's JSON `data`: the first byte picks the data type, the second the element count,
/// the rest is the JSON text.
pub fn v2_data(data: &[u8]) {
    let [kind, count, json @ ..] = data else {
        return;
    };
    let dtype = DataType::ALL[*kind as usize % DataType::ALL.len()];
    if let Ok(text) = std::str::from_utf8(json) {
        let _ = ferroserve_core::json::decode(text, dtype, *count as usize);
    }
}

/// TorchServe's multipart bodies: the first line is the boundary, the rest the body.
pub fn multipart(data: &[u8]) {
    let Some(split) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let Ok(boundary) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let body = Bytes::copy_from_slice(&data[split + 1..]);
    // The body is one chunk already in memory: parsing never waits.
    let parsed = crate::body::parts(body, boundary.to_string()).now_or_never();
    assert!(parsed.is_some(), "parsing a body held in memory waited");
}
