//! A complex64 tensor cannot be typed: the error names the tensor.

#[nimify::nimify(model = "../../../../tests/models/complex.onnx")]
pub struct Complex;

fn main() {}
