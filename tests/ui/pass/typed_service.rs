//! A typed service compiles, its fixed dims are in the types, and it registers with a server.

#[nimify::nimify(model = "../../../../tests/models/mlp.onnx")]
pub struct Mlp;

fn main() {
    let input = MlpInput { x: vec![[1.0, 2.0, 3.0, 4.0]] };
    let _: Vec<[f32; 4]> = input.x;
    let _builder = nimify::ServerBuilder::default().typed::<Mlp>();
}
