//! `cargo xtask test`: installs what the tests need, then runs every test.
//!
//! 1. a Python virtualenv in `.venv` with `tests/python/requirements.txt` (tritonclient,
//!    onnxruntime, skl2onnx, openapi-spec-validator, pytest);
//!    and `.venv-pa` with Triton's perf_analyzer (`tritonclient==2.41.0` and its CUDA runtime
//!    library);
//!    and the Debian packages the image tests run for real (podman, runc, skopeo,
//!    docker-registry, htpasswd, openssl) plus perf_analyzer's `libb64-0d`, installed with
//!    apt-get when missing; podman reads `tests/containers.conf` (runc, explicit ulimits);
//! 2. the pinned ONNX Runtime library in the per-user cache (`cargo nimify ort install`);
//! 3. `cargo test --workspace` (Rust unit, snapshot, CLI and in-process server tests);
//! 4. `pytest tests/python` against real `cargo nimify serve` processes, images run by podman
//!    and pushed to a loopback registry.
//!
//! `cargo xtask models` regenerates the committed test models with the same virtualenv.

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

pub fn venv_python(sh: &Shell) -> Result<std::path::PathBuf> {
    let root = crate::root();
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.is_file() {
        let system = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        cmd!(sh, "{system} -m venv {venv}").run().context("creating .venv (is Python 3 with the venv module installed?)")?;
    }
    let requirements = root.join("tests/python/requirements.txt");
    cmd!(sh, "{python} -m pip install -q --disable-pip-version-check -r {requirements}").run().context("installing the Python test tools")?;
    Ok(python)
}

/// Debian packages the tests use, with what for.
const SYSTEM_PACKAGES: &[(&str, &str)] = &[
    ("libb64-0d", "perf_analyzer"),
    ("podman", "running the images"),
    ("runc", "podman's runtime (crun fails on cgroup v1)"),
    ("skopeo", "inspecting the images"),
    ("docker-registry", "a loopback registry to push to"),
    ("apache2-utils", "htpasswd for the registry's basic auth"),
    ("openssl", "the registry's self-signed certificate"),
];

/// Installs the missing [`SYSTEM_PACKAGES`] in one apt-get run.
fn system_packages(sh: &Shell) -> Result<()> {
    let missing: Vec<&str> = SYSTEM_PACKAGES.iter().map(|(p, _)| *p).filter(|p| cmd!(sh, "dpkg -s {p}").quiet().ignore_stdout().ignore_stderr().run().is_err()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let why: Vec<String> = SYSTEM_PACKAGES.iter().filter(|(p, _)| missing.contains(p)).map(|(p, w)| format!("{p} ({w})")).collect();
    eprintln!("installing {}", why.join(", "));
    cmd!(sh, "apt-get update -qq").run().context("apt-get update")?;
    let list = missing.join(" ");
    cmd!(sh, "apt-get install -y -qq {missing...}").env("DEBIAN_FRONTEND", "noninteractive").run().with_context(|| format!("installing {list}"))?;
    Ok(())
}

/// Triton's perf_analyzer: the binary ships in the tritonclient 2.41.0 wheel and needs libb64 and
/// libcudart (even for HTTP).
fn perf_analyzer(sh: &Shell) -> Result<std::path::PathBuf> {
    let root = crate::root();
    let venv = root.join(".venv-pa");
    let bin = venv.join("bin/perf_analyzer");
    if !bin.is_file() {
        let system = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        cmd!(sh, "{system} -m venv {venv}").run()?;
        let pip = venv.join("bin/pip");
        cmd!(sh, "{pip} install -q --disable-pip-version-check tritonclient[http]==2.41.0 nvidia-cuda-runtime-cu12==12.9.79").run().context("installing perf_analyzer")?;
    }
    Ok(bin)
}

pub fn run(rest: &[&str]) -> Result<()> {
    let sh = Shell::new()?;
    let root = crate::root();
    sh.change_dir(&root);
    system_packages(&sh)?;
    let python = venv_python(&sh)?;
    let pa = perf_analyzer(&sh)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // One build for everything: `cargo test --workspace` also builds target/debug/cargo-nimify,
    // which the ONNX Runtime install and the Python tests use (a separate `cargo build -p` would
    // resolve features differently and compile the dependencies twice).
    cmd!(sh, "{cargo} test --workspace --no-run {rest...}").run()?;
    // The example services' binaries, for their end-to-end tests.
    cmd!(sh, "{cargo} build --workspace --bins").run()?;
    let nimify = root.join("target/debug/cargo-nimify");
    cmd!(sh, "{nimify} nimify ort install").env("NIMIFY_PYTHON", &python).run().context("installing ONNX Runtime")?;
    cmd!(sh, "{cargo} test --workspace {rest...}").run()?;
    cmd!(sh, "{python} -m pytest -q -p no:cacheprovider tests/python").env("NIMIFY_BIN", &nimify)
        .env("PERF_ANALYZER", &pa)
        .env("CONTAINERS_CONF", root.join("tests/containers.conf"))
        .run()?;
    Ok(())
}

pub fn models() -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::root());
    let python = venv_python(&sh)?;
    cmd!(sh, "{python} tests/models/make_models.py").run()?;
    cmd!(sh, "{python} examples/make_models.py").run()?;
    Ok(())
}
