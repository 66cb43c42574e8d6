//! The tensors a TorchServe handler model exchanges with frontends. A handler does its own
//! processing of HTTP bodies, so a request is the body and a description of it, and the answer
//! what the handler returned with the status, content type and headers it set. The HTTP
//! frontend builds them for `/predictions/{model}`; the `torchserve` backend declares them.

/// A handler model's input holding the request's bytes.
pub const BODY_INPUT: &str = "body";
/// A handler model's input describing the request (JSON: its headers, and its parameters as
/// slices of `body`).
pub const META_INPUT: &str = "meta";
/// A handler model's output: what the handler returned for the request.
pub const HANDLER_OUTPUT: &str = "output";
/// A handler model's output: the answer's content type.
pub const CONTENT_TYPE_OUTPUT: &str = "content_type";
/// A handler model's output: the HTTP status the handler set (`context.set_response_status`).
pub const STATUS_OUTPUT: &str = "status";
/// A handler model's output: the response headers the handler set (a JSON object).
pub const HEADERS_OUTPUT: &str = "headers";
