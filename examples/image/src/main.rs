//! `cargo run -p example-image`: `POST /v1/models/classifier/predict` with
//! `{"image": "<base64 PNG or JPEG>", "top_k": 3}`.

fn main() -> std::process::ExitCode {
    nimify::cli::run(|server| server.service(example_image::Classifier::default()))
}
