//! `cargo xtask <task>`: the project's automation, one file per task.

mod bench;
mod bench_image;
mod codegen;
mod coverage;
mod cross_check;
mod fuzz;
mod ort_listings;
mod public_api;
mod soak;
mod test;
mod tidy;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  codegen         regenerate nimify-model/src/onnx.rs (from nimify-model/proto/onnx.proto, our schema of
                  what is read) and runtime/src/grpc/ (from runtime/proto/inference.proto)
  codegen --check fail when a committed generated file is stale
  cross-check     clippy of cargo-nimify for Windows x86_64 and macOS arm64 (Rust only: C is stubbed)
  ort-listings    list the onnxruntime wheels `cargo nimify ort install` pins (names, sizes, sha256) into
                  cargo-nimify/src/ort/listings/, which the pins' unit test reads
  models          regenerate the committed test and example models (needs the Python tools)
  lock            recompile tests/python/*.lock (hash-pinned Python environments) from their .in files
  test            install what the tests need (ONNX Runtime, Python tools) and run every test
  public-api [--bless]
                  compare each library's public API (from rustdoc JSON) with its public-api.txt
  coverage        line coverage of the Rust code over the Rust and Python tests (cargo-llvm-cov); HTML in target/coverage/llvm-cov/html
  fuzz [--minutes N] [--target NAME]
                  fuzz the decoders (cargo-fuzz, nightly) and minimize tests/fuzz-corpus
  soak [--minutes N]
                  the release server at twice its capacity, open loop, in-flight cap on: RSS, errors, p99
  bench [NAME]    signature: read a generated 1 GiB model; serve [--seconds N]: the service under wrk vs in-process ONNX Runtime";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["codegen"] => codegen::run(false),
        ["codegen", "--check"] => codegen::run(true),
        ["models"] => test::models(),
        ["ort-listings"] => ort_listings::run(),
        ["cross-check"] => cross_check::run(),
        ["lock"] => test::lock(),
        ["test", rest @ ..] => test::run(rest),
        ["public-api", rest @ ..] => public_api::run(rest),
        ["coverage", rest @ ..] => coverage::run(rest),
        ["fuzz", rest @ ..] => fuzz::run(rest),
        ["soak", rest @ ..] => soak::run(rest),
        ["bench", rest @ ..] => bench::run(rest),
        _ => bail!("{USAGE}"),
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(std::path::Path::to_path_buf).unwrap_or_default()
}

/// The workspace's target directory: `CARGO_TARGET_DIR` (a relative one taken from the root, where
/// every cargo command here runs, whatever directory xtask was started in), or `target`.
fn target_dir() -> std::path::PathBuf {
    let root = root();
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |t| root.join(t))
}
