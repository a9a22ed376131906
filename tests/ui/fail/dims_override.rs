//! Dims overrides checked at compile time: a tensor the model lacks, a non-tensor output, a dim
//! that is neither a size nor a name, the same tensor twice.

#[nimify::nimify(model = "../../../../tests/models/mlp.onnx", dims("z" = ["batch", 3]))]
pub struct Unknown;

#[nimify::nimify(model = "../../../../tests/models/zipmap.onnx", dims("output_probability" = ["batch"]))]
pub struct NotATensor;

#[nimify::nimify(model = "../../../../tests/models/mlp.onnx", dims("x" = ["batch", 4.5]))]
pub struct BadDim;

#[nimify::nimify(model = "../../../../tests/models/mlp.onnx", dims("x" = ["batch", 4], "x" = [1, 4]))]
pub struct Twice;

fn main() {}
