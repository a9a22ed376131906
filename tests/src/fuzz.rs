//! What the fuzz targets in `fuzz/` run, and what `tests/fuzz_corpus.rs` replays on the committed
//! corpus: each takes arbitrary bytes and must return (an answer or a refusal), never panic.
//!
//! The first byte of V2 and typed inputs picks the model or type, so one target covers several
//! signatures: every element type (`dtypes`), several inputs with a scalar and named dims
//! (`multi_io`), BYTES (`strings`), bf16 and a plain batch model (`mlp`).

use nimify::__fuzz::{Declared, check, declared, signature, typed_request, v2_request};
use nimify::__private::IntoTensors;

/// The models V2 requests are decoded for, with their ONNX bytes.
const MODELS: [(&str, &[u8]); 6] = [
    ("dtypes", include_bytes!("../models/dtypes.onnx")),
    ("multi_io", include_bytes!("../models/multi_io.onnx")),
    ("strings", include_bytes!("../models/strings.onnx")),
    ("mlp", include_bytes!("../models/mlp.onnx")),
    ("bf16", include_bytes!("../models/bf16.onnx")),
    ("wide", include_bytes!("../models/wide.onnx")),
];

fn model(pick: u8) -> Declared {
    let (name, onnx) = MODELS[usize::from(pick) % MODELS.len()];
    declared(name, onnx).unwrap_or_else(|e| panic!("committed model {name} must read: {e}"))
}

/// `[model][JSON body]`: the V2 JSON decoder.
pub fn v2_json(data: &[u8]) {
    if let Some((&pick, body)) = data.split_first() {
        let _ = v2_request(&model(pick), None, body);
    }
}

/// `[model][header length, 2 bytes LE][JSON header + binary tensors]`: the binary extension.
pub fn v2_binary(data: &[u8]) {
    if let [pick, lo, hi, body @ ..] = data {
        let header_len = u16::from_le_bytes([*lo, *hi]).to_string();
        let _ = v2_request(&model(*pick), Some(&header_len), body);
    }
}

/// `[type][JSON]`: the typed request types the macro generates, decoded (by the fast reader and
/// serde_json, which must agree), turned into tensors and checked against their model, as the
/// typed route does.
pub fn typed_json(data: &[u8]) {
    let Some((&pick, json)) = data.split_first() else { return };
    fn run<T: serde::de::DeserializeOwned + IntoTensors + std::fmt::Debug>(json: &[u8], onnx: (&str, &[u8])) {
        let Ok(value) = typed_request::<T>(json) else { return };
        let Ok(tensors) = value.into_tensors() else { return };
        let model = declared(onnx.0, onnx.1).unwrap_or_else(|e| panic!("committed model {} must read: {e}", onnx.0));
        let _ = check(&model, tensors);
    }
    match pick % 7 {
        0 => run::<crate::MlpInput>(json, MODELS[3]),
        1 => run::<crate::MultiIoInput>(json, MODELS[1]),
        2 => run::<crate::DtypesInput>(json, MODELS[0]),
        3 => run::<crate::WideInput>(json, MODELS[5]),
        4 => run::<crate::OddNamesInput>(json, ("odd_names", include_bytes!("../models/odd_names.onnx"))),
        5 => run::<crate::IrisInput>(json, ("zipmap", include_bytes!("../models/zipmap.onnx"))),
        _ => run::<crate::LyingInput>(json, ("lying_shape", include_bytes!("../models/lying_shape.onnx"))),
    }
}

/// Any bytes as an ONNX file: the signature reader the server and the macro share.
pub fn onnx_signature(data: &[u8]) {
    let _ = signature(data);
}

/// A fuzz target: arbitrary bytes in, nothing out (a panic is a finding).
pub type Target = fn(&[u8]);

/// The targets by name, for the corpus replay.
pub const TARGETS: [(&str, Target); 4] =
    [("v2_json", v2_json), ("v2_binary", v2_binary), ("typed_json", typed_json), ("onnx_signature", onnx_signature)];
