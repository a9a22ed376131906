//! A text file is not a model.

#[nimify::nimify(model = "../../../../tests/models/not_onnx.onnx")]
pub struct NotOnnx;

fn main() {}
