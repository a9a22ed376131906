//! `x` holds f32: strings do not compile.

#[nimify::nimify(model = "../../../../tests/models/mlp.onnx")]
pub struct Mlp;

fn main() {
    let _ = MlpInput { x: vec![["a", "b", "c", "d"]] };
}
