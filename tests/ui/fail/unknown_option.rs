//! An option the macro does not know.

#[nimify::nimify(model = "../../../../tests/models/mlp.onnx", batch = 8)]
pub struct Mlp;

fn main() {}
