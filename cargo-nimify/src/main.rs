//! `cargo nimify`: thin entry point; the commands live in the library's `cmd` modules.

fn main() -> std::process::ExitCode {
    cargo_nimify::main()
}
