//! `cargo run -p example-pipeline`: `POST /v1/models/pipeline/predict` with
//! `{"rows": [[5.1, 3.5, 1.4, 0.2]]}`.

use example_pipeline::{Pipeline, Scaler, Scorer};

fn main() -> std::process::ExitCode {
    nimify::cli::run(|server| server.typed::<Scaler>().typed::<Scorer>().endpoint("pipeline", Pipeline))
}
