//! `cargo xtask cross-check`: clippy (a `cargo check` with every warning an error) of `cargo-nimify` (and so of the `nimify` runtime)
//! for the non-Linux platforms `cargo nimify ort install` pins: Windows x86_64 and macOS arm64.
//! Only Rust is checked: no SDK for those targets exists here, so the C sources of dependencies
//! (ring, zstd) go to `xtask/no-c-compiler.sh`, which writes empty objects.
//!
//! It shares the clippy/rustdoc target directory and environment, so the host's proc macros and
//! build scripts are compiled once for all of them.

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

/// Foreign targets checked (Windows through the GNU toolchain's target: the same `cfg(windows)`
/// code as MSVC, and the cc crate does not need `cl.exe` for it).
pub const TARGETS: &[&str] = &["x86_64-pc-windows-gnu", "aarch64-apple-darwin"];

/// `rustup target add` of those of `targets` not installed yet.
pub fn add_targets(sh: &Shell, targets: &[&str]) -> Result<()> {
    let installed = cmd!(sh, "rustup target list --installed").read().context("rustup lists targets")?;
    let missing: Vec<&str> = targets.iter().copied().filter(|t| !installed.lines().any(|l| l == *t)).collect();
    if !missing.is_empty() {
        cmd!(sh, "rustup target add {missing...}").run().context("installing the targets' standard libraries")?;
    }
    Ok(())
}

pub fn run() -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::root());
    add_targets(&sh, TARGETS)?;
    let stub = crate::root().join("xtask/no-c-compiler.sh");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut check = cmd!(sh, "{cargo} clippy -p cargo-nimify")
        .env("RUSTC_BOOTSTRAP", crate::public_api::BOOTSTRAP)
        .env("CARGO_TARGET_DIR", crate::public_api::check_target_dir());
    for target in TARGETS {
        let var = target.replace('-', "_");
        check = check.arg("--target").arg(target).env(format!("CC_{var}"), &stub).env(format!("AR_{var}"), "ar");
    }
    check.args(["--", "-D", "warnings"]).run().context("cargo-nimify does not compile for every pinned platform")?;
    Ok(())
}
