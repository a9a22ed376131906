//! `cargo run -p example-text`: `POST /v1/models/sentiment/predict` with
//! `{"texts": ["the service answered quickly"]}`.

fn main() -> std::process::ExitCode {
    match example_text::Sentiment::new() {
        Ok(model) => nimify::cli::run(|server| server.service(model)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
