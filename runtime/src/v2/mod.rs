//! The KServe V2 / Open Inference Protocol: message types and the request/response codec.

pub mod body;
pub mod codec;
pub(crate) mod fast_json;
pub mod types;
