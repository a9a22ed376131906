//! `cargo xtask fuzz [--minutes N] [--target NAME]`: coverage-guided fuzzing of the decoders
//! with cargo-fuzz (libFuzzer, nightly), then the corpus minimized back into
//! `tests/fuzz-corpus/<target>/`, which `cargo test` replays on stable.
//!
//! Installs what it needs (the nightly toolchain, cargo-fuzz) when missing. Each target gets
//! its share of the minutes on every core but one; a crash stops the run, its input is copied
//! into the corpus (so it becomes a regression test) and the task fails.

use std::path::Path;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

const TARGETS: [&str; 4] = ["v2_json", "v2_binary", "typed_json", "onnx_signature"];

pub fn run(args: &[&str]) -> Result<()> {
    let (mut minutes, mut only) = (4.0_f64, None);
    let mut rest = args;
    while let [flag, value, tail @ ..] = rest {
        match *flag {
            "--minutes" => minutes = value.parse().context("--minutes takes a number")?,
            "--target" => only = Some(*value),
            other => bail!("unknown option {other:?}; cargo xtask fuzz [--minutes N] [--target {}]", TARGETS.join("|")),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        bail!("cargo xtask fuzz [--minutes N] [--target NAME]");
    }
    let targets: Vec<&str> = TARGETS.iter().copied().filter(|t| only.is_none_or(|o| o == *t)).collect();
    if targets.is_empty() {
        bail!("unknown target {:?}; targets: {}", only.unwrap_or(""), TARGETS.join(", "));
    }
    let sh = Shell::new()?;
    let root = crate::root();
    sh.change_dir(root.join("fuzz"));
    if cmd!(sh, "rustup run nightly rustc --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
        cmd!(sh, "rustup toolchain install nightly --profile minimal")
            .run()
            .context("installing the nightly toolchain")?;
    }
    if cmd!(sh, "cargo fuzz --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
        cmd!(sh, "cargo install cargo-fuzz --locked").run().context("installing cargo-fuzz")?;
    }
    cmd!(sh, "cargo +nightly fuzz build -O").run()?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)).to_string();
    let seconds = ((minutes * 60.0) / targets.len() as f64).max(10.0).round() as u64;
    let mut report = Vec::new();
    for target in &targets {
        let corpus = root.join("tests/fuzz-corpus").join(target);
        let work = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&work)?;
        let (corpus_s, work_s) = (corpus.display().to_string(), work.display().to_string());
        let time = format!("-max_total_time={seconds}");
        let workers = format!("-fork={jobs}");
        eprintln!("fuzz {target}: {seconds} s on {jobs} worker(s)");
        let out = cmd!(sh, "cargo +nightly fuzz run -O {target} {work_s} {corpus_s} -- {time} {workers} -rss_limit_mb=2048 -max_len=65536 -ignore_crashes=0")
            .ignore_status()
            .output()?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        let crashed = !out.status.success();
        let summary = stats(&log);
        if crashed {
            copy_crashes(&root.join("fuzz/artifacts").join(target), &corpus)?;
            eprintln!(
                "{}",
                log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            bail!(
                "fuzz {target} crashed ({summary}); the input is now in {corpus_s} (a regression test): fix it and run again"
            );
        }
        // Minimize what the run found together with the committed corpus, back into the corpus.
        let merged = root.join("fuzz/corpus").join(format!("{target}.min"));
        let _ = std::fs::remove_dir_all(&merged);
        std::fs::create_dir_all(&merged)?;
        let merged_s = merged.display().to_string();
        cmd!(sh, "cargo +nightly fuzz run -O {target} {merged_s} {corpus_s} {work_s} -- -merge=1")
            .quiet()
            .ignore_stderr()
            .run()?;
        let _ = std::fs::remove_dir_all(&corpus);
        std::fs::rename(&merged, &corpus)?;
        let kept = std::fs::read_dir(&corpus)?.count();
        report.push(format!("{target}: {summary}, crashes: none, corpus minimized to {kept} inputs"));
    }
    eprintln!("\nfuzzing done ({minutes} min over {} target(s)):", targets.len());
    for line in report {
        eprintln!("  {line}");
    }
    Ok(())
}

/// libFuzzer's last figures: runs, coverage (edges) and features.
fn stats(log: &str) -> String {
    let runs = log
        .lines()
        .rev()
        .find_map(|l| l.split("Done ").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string));
    let runs = runs.or_else(|| {
        log.lines().rev().find_map(|l| {
            l.split('#').nth(1).and_then(|r| r.split_whitespace().next()).map(|r| r.trim_end_matches(':').to_string())
        })
    });
    let field = |name: &str| {
        log.lines().rev().find_map(|l| {
            l.split(&format!("{name}: ")).nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string)
        })
    };
    format!(
        "{} runs, cov {}, ft {}",
        runs.unwrap_or_else(|| "?".into()),
        field("cov").unwrap_or_else(|| "?".into()),
        field("ft").unwrap_or_else(|| "?".into())
    )
}

fn copy_crashes(artifacts: &Path, corpus: &Path) -> Result<()> {
    for entry in std::fs::read_dir(artifacts).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("crash-") || name.starts_with("oom-") || name.starts_with("timeout-") {
            std::fs::copy(entry.path(), corpus.join(&name))?;
        }
    }
    Ok(())
}
