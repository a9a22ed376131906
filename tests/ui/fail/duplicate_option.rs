//! The same option twice.

#[nimify::nimify(model = "../../../../tests/models/mlp.onnx", name = "a", name = "b")]
pub struct Mlp;

fn main() {}
