//! The model file does not exist: the error shows the resolved path.

#[nimify::nimify(model = "../../../../tests/models/missing.onnx")]
pub struct Missing;

fn main() {}
