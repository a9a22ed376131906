//! `cargo xtask coverage`: line coverage of the workspace's Rust code over the Rust tests and the
//! Python end-to-end tests, with cargo-llvm-cov's `show-env` flow: every workspace crate is built
//! with `-C instrument-coverage` (into `target/coverage`, so the normal build stays as it is),
//! each process (a test binary, a `cargo nimify serve` pytest started, an example service) writes
//! its profile, and `cargo llvm-cov report` merges them into an HTML report under
//! `target/coverage/llvm-cov/html` and a per-crate table on stdout.
//!
//! Installs cargo-llvm-cov and the llvm-tools component when missing. Test failures are reported
//! but do not stop the report (a run under instrumentation is slower; the suite's verdict comes
//! from `cargo xtask test`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// cargo-llvm-cov version installed when missing.
const LLVM_COV: &str = "0.9.1";

/// The crates the target is for, by directory.
const CRATES: &[(&str, &str)] = &[
    ("nimify-model", "nimify-model/src/"),
    ("nimify-macros", "nimify-macros/src/"),
    ("nimify (runtime)", "runtime/src/"),
    ("cargo-nimify", "cargo-nimify/src/"),
    ("nimify-tests", "tests/src/"),
    ("examples", "examples/"),
    ("xtask", "xtask/src/"),
];

pub fn run(args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask coverage");
    }
    let sh = Shell::new()?;
    let root = crate::root();
    sh.change_dir(&root);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if cmd!(sh, "{cargo} llvm-cov --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
        cmd!(sh, "{cargo} install cargo-llvm-cov --version {LLVM_COV} --locked").run()?;
    }
    cmd!(sh, "rustup component add llvm-tools-preview").run().context("installing llvm-tools")?;
    let python = crate::test::venv_python(&sh)?;
    let pa = crate::test::perf_analyzer(&sh)?;

    let target = root.join("target/coverage");
    sh.set_var("CARGO_TARGET_DIR", &target);
    let env = cmd!(sh, "{cargo} llvm-cov show-env").read().context("cargo llvm-cov show-env")?;
    for (key, value) in env.lines().filter_map(|l| l.split_once('=')) {
        sh.set_var(key.trim(), value.trim().trim_matches('\'').trim_matches('"'));
    }
    cmd!(sh, "{cargo} llvm-cov clean --workspace").run()?;
    let mut failed = Vec::new();
    if cmd!(sh, "{cargo} test --workspace").run().is_err() {
        failed.push("cargo test");
    }
    cmd!(sh, "{cargo} build --workspace --bins").run()?;
    let nimify = target.join("debug/cargo-nimify");
    cmd!(sh, "{nimify} nimify ort install").env("NIMIFY_PYTHON", &python).run()?;
    let pytest = cmd!(sh, "{python} -m pytest -q -p no:cacheprovider -n 3 tests/python")
        .env("NIMIFY_BIN", &nimify)
        .env("PERF_ANALYZER", &pa)
        .env("CONTAINERS_CONF", root.join("tests/containers.conf"));
    if pytest.run().is_err() {
        failed.push("pytest");
    }
    // A process killed mid-write (a test's SIGKILL, a full disk) leaves a corrupt profile: skip
    // it with a warning instead of losing the whole report.
    sh.set_var("LLVM_PROFDATA_FLAGS", "--failure-mode=warn");
    let html = target.join("llvm-cov");
    cmd!(sh, "{cargo} llvm-cov report --html --output-dir {html}").run()?;
    let summary = cmd!(sh, "{cargo} llvm-cov report --json --summary-only").read()?;
    println!("{}", table(&summary, &root)?);
    println!("HTML report: {}", html.join("html/index.html").display());
    if !failed.is_empty() {
        eprintln!(
            "note: {} failed under instrumentation; the figures above still count what ran",
            failed.join(" and ")
        );
    }
    Ok(())
}

/// Lines covered per crate, from `llvm-cov export --summary-only` JSON.
fn table(summary: &str, root: &Path) -> Result<String> {
    let json: serde_json::Value = serde_json::from_str(summary).context("llvm-cov summary")?;
    let mut per: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let prefix = format!("{}/", root.display());
    for file in json["data"][0]["files"].as_array().into_iter().flatten() {
        let name = file["filename"].as_str().unwrap_or_default();
        let relative = name.strip_prefix(&prefix).unwrap_or(name);
        let Some((krate, _)) = CRATES.iter().find(|(_, dir)| relative.starts_with(dir)) else { continue };
        let lines = &file["summary"]["lines"];
        let entry = per.entry(krate).or_default();
        entry.0 += lines["covered"].as_u64().unwrap_or(0);
        entry.1 += lines["count"].as_u64().unwrap_or(0);
    }
    let mut out = format!("{:<18} {:>8} {:>8} {:>7}\n", "crate", "lines", "covered", "%");
    for (krate, _) in CRATES {
        if let Some((covered, count)) = per.get(krate) {
            let pct = if *count == 0 { 100.0 } else { *covered as f64 * 100.0 / *count as f64 };
            out += &format!("{krate:<18} {count:>8} {covered:>8} {pct:>6.1}%\n");
        }
    }
    Ok(out)
}
