//! With `dims("y" = ["batch", 3])` the output rows are `[f32; 3]`: code expecting the declared
//! `[f32; 1]` does not compile.

use nimify::typed::{Context, Process};

#[nimify::nimify(model = "../../../../tests/models/lying_shape.onnx", dims("y" = ["batch", 3]))]
pub struct Lying;

impl Process for Lying {
    type Request = Vec<f32>;
    type Response = Vec<f32>;

    async fn process(&self, ctx: &Context, request: Vec<f32>) -> Result<Vec<f32>, nimify::ApiError> {
        let out = ctx.infer::<Self>(LyingInput { x: vec![[request[0], request[1], request[2], request[3]]] }).await?;
        let row: [f32; 1] = out.y[0];
        Ok(row.to_vec())
    }
}

fn main() {}
