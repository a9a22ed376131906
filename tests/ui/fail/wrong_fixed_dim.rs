//! `x` is `[batch, 4]`: three values per row does not compile.

#[nimify::nimify(model = "../../../../tests/models/mlp.onnx")]
pub struct Mlp;

fn main() {
    let _ = MlpInput { x: vec![[1.0, 2.0, 3.0]] };
}
