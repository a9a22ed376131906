//! `cargo xtask bench image [--profile P]`: each example's image next to the sum of its parts.
//!
//! Builds every example with `cargo nimify build` (release by default), then times
//! `cargo nimify image --no-build` into `target/bench-images/` and prints, from the
//! `image.json` it records: the binary, ONNX Runtime, the host libraries and the model(s)
//! (uncompressed, as they sit in the image), their sum, and the image's compressed size.

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

const EXAMPLES: &[&str] = &["iris", "pipeline", "recurrent", "image", "text"];

pub fn run(sh: &Shell, cargo: &str, args: &[&str]) -> Result<()> {
    let profile = match args {
        [] => "release",
        ["--profile", p] => p,
        other => bail!("unexpected arguments {other:?}; usage: cargo xtask bench image [--profile NAME]"),
    };
    let root = crate::root();
    cmd!(sh, "{cargo} build -q -p cargo-nimify").run()?;
    let nimify = root.join("target/debug/cargo-nimify");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("profile {profile}; sizes in MiB (parts uncompressed, as in the image)");
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11} {:>9}",
        "example", "binary", "ort", "libs", "model", "parts", "image(gz)", "image s"
    );
    for name in EXAMPLES {
        let dir = root.join("examples").join(name);
        let _in_crate = sh.push_dir(&dir);
        let built = cmd!(sh, "{nimify} nimify build --profile {profile} --format json")
            .quiet()
            .ignore_stderr()
            .read()
            .with_context(|| format!("building example {name}"))?;
        let built: serde_json::Value = serde_json::from_str(&built)?;
        let binary = std::fs::metadata(built["executable"].as_str().unwrap_or_default())?.len();
        let out = format!("oci:{}:bench", root.join("target/bench-images").join(name).display());
        let start = std::time::Instant::now();
        cmd!(sh, "{nimify} nimify image --no-build --profile {profile} --output {out} --format json")
            .quiet()
            .ignore_stderr()
            .ignore_stdout()
            .run()?;
        let took = start.elapsed().as_secs_f64();
        let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            root.join(format!("target/nimify/example-{name}/image.json")),
        )?)?;
        let layer = |role: &str| {
            record["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["role"] == role)
                .and_then(|l| l["uncompressed_size"].as_u64())
                .unwrap_or(0)
        };
        let ort = layer("onnxruntime");
        let libs = layer("libraries");
        let model: u64 = record["models"].as_array().into_iter().flatten().filter_map(|m| m["size"].as_u64()).sum();
        let parts = binary + ort + libs + model;
        let image = record["size"].as_u64().unwrap_or(0);
        println!(
            "{name:<10} {:>8.1} {:>8.1} {:>8.1} {:>8.2} {:>9.1} {:>11.1} {:>8.1}s",
            mib(binary),
            mib(ort),
            mib(libs),
            mib(model),
            mib(parts),
            mib(image),
            took
        );
    }
    println!("(ort and libs are their layers' tar sizes, a few KiB over the files; `image s` is the image step alone)");
    Ok(())
}
