//! `cargo run -p example-iris`: `POST /v1/models/iris/predict` with
//! `{"measurements": [[5.1, 3.5, 1.4, 0.2]]}`; V2 under `/v2/models/iris`.

fn main() -> std::process::ExitCode {
    nimify::cli::run(|server| server.service(example_iris::Iris::default()))
}
