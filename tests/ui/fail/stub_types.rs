//! A model that cannot be read is one error: the `MissingInput` / `MissingOutput` types and the
//! traits the service code uses still exist, so naming them adds no second error.

use nimify::ApiError;
use nimify::typed::{Context, Process};

#[nimify::nimify(model = "../../../../tests/models/missing.onnx")]
pub struct Missing;

impl Process for Missing {
    type Request = MissingInput;
    type Response = MissingOutput;
    async fn process(&self, ctx: &Context, request: MissingInput) -> Result<MissingOutput, ApiError> {
        ctx.infer::<Missing>(request).await
    }
}

fn main() -> std::process::ExitCode {
    nimify::cli::run(|server| server.service(Missing))
}
