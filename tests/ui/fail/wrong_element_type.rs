//! Processing code that fills `x` (f32) with integers from the request does not compile.

use nimify::typed::{Context, Process};

#[nimify::nimify(model = "../../../../tests/models/mlp.onnx")]
pub struct Mlp;

impl Process for Mlp {
    type Request = Vec<i64>;
    type Response = Vec<f32>;

    async fn process(&self, ctx: &Context, request: Vec<i64>) -> Result<Vec<f32>, nimify::ApiError> {
        let row: [i64; 4] = [request[0], request[1], request[2], request[3]];
        let out = ctx.infer::<Self>(MlpInput { x: vec![row] }).await?;
        Ok(out.probs[0].to_vec())
    }
}

fn main() {}
