//! `cargo run -p example-recurrent`: `POST /v1/models/gru/predict` with
//! `{"x": [[[0.1, 0.2, 0.3]]], "h0": [[[0, 0, 0, 0, 0, 0, 0, 0]]]}`.

fn main() -> std::process::ExitCode {
    nimify::cli::run(|server| server.typed::<example_recurrent::Gru>())
}
