//! `cargo xtask public-api [--bless]`: the public API of each library crate, listed from
//! rustdoc's JSON output by the `public-api` library (what `cargo public-api` prints), compared
//! with the committed `<crate>/public-api.txt`. A difference fails with the diff; `--bless`
//! writes the new listing, to commit when the change is on purpose.
//!
//! rustdoc's JSON output is unstable. It is made by the toolchain `rust-toolchain.toml` pins,
//! with `RUSTC_BOOTSTRAP` naming only our crates ([`BOOTSTRAP`]: every dependency and build
//! script still sees a stable compiler), so the format cannot drift under the `public-api`
//! version in xtask's lock file (a floating nightly would).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// `RUSTC_BOOTSTRAP` for the rustdoc runs: unstable options for these crates only.
pub const BOOTSTRAP: &str = "nimify,nimify_model,nimify_macros,nimify_tests,cargo_nimify,xtask,example_iris,example_image,example_text,example_pipeline,example_recurrent";

/// The library crates whose API is kept: (package, directory).
const CRATES: &[(&str, &str)] =
    &[("nimify", "runtime"), ("nimify-model", "nimify-model"), ("nimify-macros", "nimify-macros")];

/// The listing of `package`'s public API, one item per line, sorted.
fn listing(sh: &Shell, package: &str) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = check_target_dir();
    cmd!(sh, "{cargo} rustdoc -q -p {package} --lib -- -Z unstable-options --output-format json")
        .env("RUSTC_BOOTSTRAP", BOOTSTRAP)
        .env("CARGO_TARGET_DIR", &target)
        .run()
        .with_context(|| format!("rustdoc JSON for {package}"))?;
    let json = target.join("doc").join(format!("{}.json", package.replace('-', "_")));
    let api = public_api::Builder::from_rustdoc_json(&json)
        .omit_blanket_impls(true)
        .omit_auto_trait_impls(false)
        .omit_auto_derived_impls(true)
        .build()
        .with_context(|| format!("reading {}", json.display()))?;
    Ok(api.items().map(|item| format!("{item}\n")).collect())
}

/// Where the checking builds go: `cargo xtask test`'s clippy and `cargo doc` and this listing,
/// all with the same [`BOOTSTRAP`], so the dependencies' metadata is built once for the three. A
/// directory of its own: RUSTC_BOOTSTRAP is part of every artifact's fingerprint, so sharing
/// target/debug would rebuild the dependencies here and again in the next plain build.
pub fn check_target_dir() -> PathBuf {
    crate::target_dir().join("check")
}

/// Lines only in `old` (`-`) and only in `new` (`+`).
fn diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let gone = a.iter().filter(|l| !b.contains(l)).map(|l| format!("-{l}"));
    let added = b.iter().filter(|l| !a.contains(l)).map(|l| format!("+{l}"));
    gone.chain(added).collect::<Vec<_>>().join("\n")
}

pub fn run(args: &[&str]) -> Result<()> {
    let bless = match args {
        [] => false,
        ["--bless"] => true,
        _ => bail!("usage: cargo xtask public-api [--bless]"),
    };
    let sh = Shell::new()?;
    sh.change_dir(crate::root());
    let mut changed = Vec::new();
    for (package, dir) in CRATES {
        let now = listing(&sh, package)?;
        let file: PathBuf = Path::new(dir).join("public-api.txt");
        let kept = sh.read_file(&file).unwrap_or_default();
        if now == kept {
            continue;
        }
        if bless {
            sh.write_file(&file, &now)?;
            eprintln!("wrote {}", file.display());
        } else {
            changed.push(format!("{} ({package}):\n{}", file.display(), diff(&kept, &now)));
        }
    }
    if !changed.is_empty() {
        bail!(
            "the public API changed:\n{}\nif that is on purpose, run `cargo xtask public-api --bless` and commit the listing",
            changed.join("\n")
        );
    }
    Ok(())
}
