//! Processing code that builds `x` (`[batch, 4]`) with three values per row does not compile.

use nimify::typed::{Context, Process};

#[nimify::nimify(model = "../../../../tests/models/mlp.onnx")]
pub struct Mlp;

impl Process for Mlp {
    type Request = Vec<f32>;
    type Response = Vec<f32>;

    async fn process(&self, ctx: &Context, request: Vec<f32>) -> Result<Vec<f32>, nimify::ApiError> {
        let out = ctx.infer::<Self>(MlpInput { x: vec![[request[0], request[1], request[2]]] }).await?;
        Ok(out.probs[0].to_vec())
    }
}

fn main() {}
