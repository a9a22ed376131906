//! Entry points for fuzzing (`fuzz/`, through `nimify-tests`) and for replaying the fuzz corpus
//! in `cargo test`; not a public API. Each runs the server's own code on arbitrary bytes, which
//! must end in an answer (`Err` is the message a client would get), never a panic, a hang or an
//! unbounded allocation.

use std::io::Cursor;
use std::path::Path;

use nimify_model::ModelInfo;

use crate::model::TensorSpec;
use crate::tensor::Tensor;

/// A model as the request path sees it, read from its ONNX bytes (no ONNX Runtime).
#[derive(Debug)]
pub struct Declared {
    name: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

/// Reads an ONNX signature from bytes, as the server and the macro read model files.
pub fn signature(onnx: &[u8]) -> Result<ModelInfo, String> {
    nimify_model::read_model_from(Cursor::new(onnx), onnx.len() as u64).map_err(|e| e.to_string())
}

/// The declarations of the model in `onnx`.
pub fn declared(name: &str, onnx: &[u8]) -> Result<Declared, String> {
    let info = signature(onnx)?;
    let (inputs, outputs) = crate::model::specs(Path::new(name), &info).map_err(|e| e.to_string())?;
    Ok(Declared { name: name.to_string(), inputs, outputs })
}

/// Reads a typed route's JSON body into `T` as serde_json reads it, after checking that the fast
/// reader, when it takes the body, reads the same value (compared as `Debug` text, so `-0.0`
/// and `0.0` differ).
pub fn typed_request<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &[u8]) -> Result<T, String> {
    let reference = serde_json::from_slice::<T>(json).map_err(|e| e.to_string());
    if let Some(fast) = crate::v2::fast_json::typed::<T>(json) {
        assert_eq!(
            Ok(format!("{fast:?}")),
            reference.as_ref().map(|v| format!("{v:?}")).map_err(Clone::clone),
            "the fast reader and serde_json disagree on {:?}",
            String::from_utf8_lossy(json)
        );
    }
    reference
}

/// Decodes a V2 request body (JSON, or with `header_len` a JSON header and binary tensors) as
/// the route does, then checks the tensors against the model as the inference path does before
/// queueing. Panics if a decoded tensor breaks the invariant every later step relies on (as many
/// elements as its shape says).
pub fn v2_request(model: &Declared, header_len: Option<&str>, body: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    let body = bytes::Bytes::copy_from_slice(body);
    let decode =
        |fast| crate::v2::codec::decode_with(&model.name, &model.inputs, &model.outputs, header_len, &body, fast);
    let decoded = decode(true);
    let reference = decode(false);
    assert_eq!(
        summary(&decoded),
        summary(&reference),
        "the fast JSON reader and the reference decoder disagree on {:?}",
        String::from_utf8_lossy(&body)
    );
    let decoded = decoded.map_err(|e| e.to_string())?;
    for (name, t) in &decoded.inputs {
        assert_eq!(
            t.data.len(),
            t.shape.iter().product::<usize>(),
            "decoded input {name:?} has shape {:?} but {} elements",
            t.shape,
            t.data.len()
        );
    }
    check(model, decoded.inputs)
}

/// A decoded request as bytes to compare: the error message, or the id, outputs and every input's
/// name, shape, element type and elements bit for bit.
fn summary(decoded: &Result<crate::v2::codec::Decoded, crate::error::ApiError>) -> Result<String, String> {
    let decoded = decoded.as_ref().map_err(ToString::to_string)?;
    let mut out = format!("{:?} {:?}", decoded.id, decoded.outputs);
    for (name, t) in &decoded.inputs {
        let bits = crate::v2::codec::binary_copy(&t.data);
        out += &format!(" {name:?} {:?} {:?} {bits:?}", t.shape, t.data.element_type());
    }
    Ok(out)
}

/// Checks named tensors against the model, as every front end's requests are checked.
pub fn check(model: &Declared, tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, String> {
    crate::inference::checks::check_named(&model.inputs, tensors).map_err(|e| e.to_string())
}
