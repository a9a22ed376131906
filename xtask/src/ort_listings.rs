//! `cargo xtask ort-listings`: downloads, with pip, the onnxruntime wheel of every platform
//! `cargo nimify ort install` pins, and writes what each holds to
//! `cargo-nimify/src/ort/listings/<os>-<arch>.txt`: the wheel's name, size and sha256, then every
//! shared library under `onnxruntime/capi/` with its size and sha256.
//!
//! The pins in `cargo-nimify/src/ort/pins.rs` are checked against these listings by a unit test,
//! so a pin typed by hand and the wheel PyPI serves cannot drift apart unnoticed. The listing is
//! made by Python's `zipfile` and `hashlib`, not by the Rust code under test.

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

/// (OCI platform, pip platform tag) of every pinned wheel.
const PLATFORMS: &[(&str, &str)] = &[
    ("linux/amd64", "manylinux_2_28_x86_64"),
    ("linux/arm64", "manylinux_2_28_aarch64"),
    ("darwin/arm64", "macosx_14_0_arm64"),
    ("windows/amd64", "win_amd64"),
];

/// Lists one wheel: argv[1] the wheel, argv[2] the OCI platform, argv[3] the output file.
const LIST: &str = r##"
import hashlib, os, sys, zipfile
wheel, platform, out = sys.argv[1:4]
def sha(data): return hashlib.sha256(data).hexdigest()
data = open(wheel, "rb").read()
lines = [
    f"# onnxruntime for {platform}: written by `cargo xtask ort-listings` from the wheel pip downloaded; do not edit",
    f"wheel {os.path.basename(wheel)}",
    f"size {len(data)}",
    f"sha256 {sha(data)}",
]
with zipfile.ZipFile(wheel) as z:
    for info in sorted(z.infolist(), key=lambda i: i.filename):
        name = info.filename
        base = name.rsplit("/", 1)[-1]
        if not name.startswith("onnxruntime/capi/") or "/" in name[len("onnxruntime/capi/"):]:
            continue
        if base.endswith((".dylib", ".dll")) or ".so" in base:
            lines.append(f"file {name} {info.file_size} {sha(z.read(name))}")
open(out, "w").write("\n".join(lines) + "\n")
"##;

/// The ONNX Runtime version the runtime pins, read from its source.
fn ort_version() -> Result<String> {
    let source = std::fs::read_to_string(crate::root().join("runtime/src/ortlib.rs"))?;
    source
        .lines()
        .find_map(|l| l.strip_prefix("pub const ORT_VERSION: &str = \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .map(str::to_owned)
        .context("no `pub const ORT_VERSION` in runtime/src/ortlib.rs")
}

pub fn run() -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::root());
    let python = crate::test::venv_python(&sh)?;
    let version = ort_version()?;
    let download = crate::root().join("target/ort-wheels");
    let listings = crate::root().join("cargo-nimify/src/ort/listings");
    let package = format!("onnxruntime=={version}");
    for (platform, tag) in PLATFORMS {
        let dest = download.join(tag);
        sh.remove_path(&dest)?;
        cmd!(sh, "{python} -m pip download -q --no-deps --no-cache-dir --only-binary :all: --platform {tag} --python-version 3.11 {package} -d {dest}")
            .run()
            .with_context(|| format!("downloading {package} for {platform}"))?;
        let wheel = sh
            .read_dir(&dest)?
            .into_iter()
            .next()
            .with_context(|| format!("pip left nothing in {}", dest.display()))?;
        let out = listings.join(format!("{}.txt", platform.replace('/', "-")));
        cmd!(sh, "{python} -c {LIST} {wheel} {platform} {out}").quiet().run()?;
        eprintln!("listed {}", out.display());
    }
    Ok(())
}
