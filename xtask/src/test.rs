//! `cargo xtask test`: installs what the tests need, then runs every test.
//!
//! 1. a Python virtualenv in `.venv` from `tests/python/requirements.lock` (tritonclient,
//!    onnxruntime, skl2onnx, openapi-spec-validator, pytest and every package they pull in, each
//!    pinned with its hashes, so a new release of a transitive dependency cannot change a run);
//!    and `.venv-pa` from `tests/python/perf-analyzer.lock` with Triton's perf_analyzer
//!    (`tritonclient==2.41.0` and its CUDA runtime library);
//!    and the Debian packages the image tests run for real (podman, runc, skopeo,
//!    docker-registry, htpasswd, openssl) plus perf_analyzer's `libb64-0d`, installed with
//!    apt-get when missing; podman reads `tests/containers.conf` (runc, explicit ulimits);
//!    and Node.js with `tests/npm`'s locked packages, which check the chart's custom resources
//!    against their CRD schemas;
//! 2. the house rules: `cargo fmt --check`, clippy with every warning an error (on Linux, and
//!    for `cargo-nimify` on Windows and macOS: `cargo xtask cross-check`), `cargo doc` with
//!    every warning an error, and the public API listings (`cargo xtask public-api`);
//! 3. one build of the tests and binaries, then the pinned ONNX Runtime library in the run's own
//!    cache, `target/nimify-cache` unless `NIMIFY_CACHE_DIR` names one (`cargo nimify ort install`);
//! 4. `cargo test --workspace` (Rust unit, snapshot, CLI and in-process server tests);
//! 5. `pytest tests/python` in parallel (pytest-xdist) against real `cargo nimify serve`
//!    processes, images run by podman and pushed to a loopback registry.
//!
//! `cargo xtask models` regenerates the committed test models with the same virtualenv;
//! `cargo xtask lock` recompiles the two lock files from their `.in` files (with `uv`, installed
//! into `.venv-lock`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

/// A virtualenv at `venv` holding exactly what the lock file names: made anew with the system
/// Python when missing or when the lock changed since it was made (pip never removes what an
/// older lock installed), `--require-hashes` refusing any file whose hash is not in the lock and
/// `--no-deps` any package the lock forgot.
fn locked_venv(sh: &Shell, venv: &Path, lock: &str) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    let lock = crate::root().join("tests/python").join(lock);
    let wanted = sh.read_file(&lock)?;
    let stamp = venv.join("nimify.lock");
    if python.is_file() && sh.read_file(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        eprintln!("{} changed: making {} anew", lock.display(), venv.display());
        sh.remove_path(venv)?;
    }
    if !python.is_file() {
        let system = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let code = "import sys; print('%d.%d' % sys.version_info[:2])";
        let version = cmd!(sh, "{system} -c {code}").read().with_context(|| {
            format!("running {system} (is Python 3.11 installed? set PYTHON to choose the interpreter)")
        })?;
        if version.trim() != LOCKED_PYTHON {
            anyhow::bail!(
                "{system} is Python {}, but tests/python/*.lock are resolved for Python {LOCKED_PYTHON}; set PYTHON=python{LOCKED_PYTHON} (or run `cargo xtask lock` for another version)",
                version.trim()
            );
        }
        cmd!(sh, "{system} -m venv {venv}")
            .run()
            .context("creating a virtualenv (is the Python venv module installed?)")?;
    }
    cmd!(
        sh,
        "{python} -m pip install -q --disable-pip-version-check --no-cache-dir --require-hashes --no-deps -r {lock}"
    )
    .run()
    .with_context(|| format!("installing {}", lock.display()))?;
    sh.write_file(&stamp, wanted)?;
    Ok(python)
}

/// The Python version the lock files are resolved for.
const LOCKED_PYTHON: &str = "3.11";

/// `.venv` with the Python test tools; returns its interpreter.
pub fn venv_python(sh: &Shell) -> Result<PathBuf> {
    locked_venv(sh, &crate::root().join(".venv"), "requirements.lock")
}

/// The lock files and the top-level pins they are compiled from.
const LOCKS: &[(&str, &str)] = &[("requirements.in", "requirements.lock"), ("perf-analyzer.in", "perf-analyzer.lock")];

/// `uv` version used to compile the lock files.
const UV: &str = "uv==0.13.9";

/// `cargo xtask lock`: resolves each `.in` file for CPython 3.11 on x86_64 manylinux 2.28 (what
/// the test machines run) into its `.lock`, every package pinned with the hashes of all its files.
pub fn lock() -> Result<()> {
    let sh = Shell::new()?;
    let root = crate::root();
    sh.change_dir(root.join("tests/python"));
    let venv = root.join(".venv-lock");
    if !venv.join("bin/uv").is_file() {
        let system = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        cmd!(sh, "{system} -m venv {venv}").run()?;
        let pip = venv.join("bin/pip");
        cmd!(sh, "{pip} install -q --disable-pip-version-check {UV}").run().context("installing uv")?;
    }
    let uv = venv.join("bin/uv");
    for (input, lock) in LOCKS {
        let resolved = cmd!(sh, "{uv} pip compile {input} --generate-hashes --python-version {LOCKED_PYTHON} --python-platform x86_64-manylinux_2_28 --no-header --quiet")
            .read()
            .with_context(|| format!("resolving tests/python/{input}"))?;
        let header = format!("# Generated by `cargo xtask lock` ({UV}) from {input}: do not edit.\n");
        sh.write_file(lock, header + &resolved + "\n")?;
        eprintln!("wrote tests/python/{lock}");
    }
    Ok(())
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
    ("zsh", "checking the zsh completion script"),
    ("fish", "running the fish completion script"),
    ("qemu-user", "running the other platform's image (tests/python/test_multiarch.py)"),
];

/// The other image platform, which `image --platform` cross-compiles for: its Rust target, and
/// the Debian packages of its cross linker and libraries.
pub fn other_platform() -> (&'static str, &'static str, &'static [&'static str]) {
    if std::env::consts::ARCH == "aarch64" {
        (
            "linux/amd64",
            "x86_64-unknown-linux-gnu",
            &["gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross", "libstdc++6-amd64-cross"],
        )
    } else {
        (
            "linux/arm64",
            "aarch64-unknown-linux-gnu",
            &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "libstdc++6-arm64-cross"],
        )
    }
}

/// Debian's Node.js, for `tests/npm` (the chart's custom resources against their CRD schemas):
/// installed only when no `node` is on PATH, since one from NodeSource or nvm serves as well
/// (and Debian's `npm` conflicts with NodeSource's `nodejs`).
const NODE_PACKAGES: &[&str] = &["nodejs", "npm"];

/// Installs the missing [`SYSTEM_PACKAGES`] (and [`NODE_PACKAGES`]) in one apt-get run.
fn system_packages(sh: &Shell) -> Result<()> {
    let cross = other_platform().2.iter().map(|p| (*p, "cross-compiling the multi-platform image"));
    let no_node = cmd!(sh, "node --version").quiet().ignore_stdout().ignore_stderr().run().is_err();
    let node = NODE_PACKAGES.iter().filter(|_| no_node).map(|p| (*p, "checking the chart's custom resources"));
    let wanted: Vec<(&str, &str)> = SYSTEM_PACKAGES.iter().copied().chain(cross).chain(node).collect();
    let missing: Vec<&str> = wanted
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| cmd!(sh, "dpkg -s {p}").quiet().ignore_stdout().ignore_stderr().run().is_err())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let why: Vec<String> =
        wanted.iter().filter(|(p, _)| missing.contains(p)).map(|(p, w)| format!("{p} ({w})")).collect();
    eprintln!("installing {}", why.join(", "));
    cmd!(sh, "apt-get update -qq").run().context("apt-get update")?;
    let list = missing.join(" ");
    cmd!(sh, "apt-get install -y -qq {missing...}")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .with_context(|| format!("installing {list}"))?;
    Ok(())
}

/// `tests/npm`'s locked packages (`@kubernetes-models/*`: the CRD schemas `tests/npm/validate.mjs`
/// checks the chart's custom resources against), with `npm ci` when `node_modules` is missing or
/// older than the lock.
fn npm_packages(sh: &Shell, root: &Path) -> Result<()> {
    let dir = root.join("tests/npm");
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = matches!(
        (modified(dir.join("package-lock.json")), modified(dir.join("node_modules"))),
        (Some(lock), Some(installed)) if installed >= lock
    );
    if !fresh {
        cmd!(sh, "npm ci --prefix {dir} --no-audit --no-fund --loglevel=error")
            .run()
            .context("installing tests/npm from its package-lock.json")?;
    }
    Ok(())
}

/// Triton's perf_analyzer: the binary ships in the tritonclient 2.41.0 wheel and needs libb64 and
/// libcudart (even for HTTP).
pub fn perf_analyzer(sh: &Shell) -> Result<PathBuf> {
    let venv = crate::root().join(".venv-pa");
    locked_venv(sh, &venv, "perf-analyzer.lock").context("installing perf_analyzer")?;
    Ok(venv.join("bin/perf_analyzer"))
}

/// About what a run from a clean clone writes: the target directories, both virtualenvs and the
/// apt packages (measured at 75515dc with the dev profile's reduced debug info; see README).
const DISK_NEEDED_GB: u64 = 16;
/// The same on CI, which builds without incremental caches and removes each target directory
/// once no later step reads it (peak 7.9 GB above the apt packages' 1.4 GB, measured at f38741e).
const DISK_NEEDED_CI_GB: u64 = 10;

/// Warns (without stopping: the estimate may be off) when the file system of the checkout has less
/// room than a run needs, so that a later "No space left on device" has its explanation up front.
fn warn_if_disk_short(sh: &Shell, root: &Path) {
    let Ok(out) = cmd!(sh, "df -Pk {root}").quiet().read() else { return };
    let Some(free_kb) =
        out.lines().nth(1).and_then(|l| l.split_whitespace().nth(3)).and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let free_gb = free_kb / (1024 * 1024);
    let needed = if on_ci() { DISK_NEEDED_CI_GB } else { DISK_NEEDED_GB };
    if free_gb < needed {
        eprintln!(
            "warning: {free_gb} GB free on the file system of {}; a full test run writes about {needed} GB (build, virtualenvs, packages)",
            root.display()
        );
    }
}

/// Removes what earlier `cargo publish --dry-run` runs left extracted in cargo's registry
/// sources: the packaged crates go to a local overlay registry named by its path
/// (`$CARGO_HOME/registry/src/-<hash>/`), and cargo does not extract a crate again once its
/// directory exists there; so a second run from a checkout at the same path would build the
/// first run's sources of our crates (seen as "no field `platforms`" after a change to them).
fn forget_packaged_sources() {
    const OURS: &[&str] = &["nimify", "nimify-model", "nimify-macros", "cargo-nimify"];
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry/src")) else { return };
    let Ok(registries) = std::fs::read_dir(&src) else { return };
    for registry in registries.flatten().filter(|r| r.file_name().to_string_lossy().starts_with('-')) {
        let Ok(crates) = std::fs::read_dir(registry.path()) else { continue };
        for krate in crates.flatten() {
            let name = krate.file_name().to_string_lossy().into_owned();
            if OURS.iter().any(|ours| name.rsplit_once('-').is_some_and(|(n, _)| n == *ours)) {
                let _ = std::fs::remove_dir_all(krate.path());
            }
        }
    }
}

/// Whether this is a CI run (`CI` set and not `false` or `0`, as CI services set it). A CI run
/// starts from a clean clone and ends with it, so it removes each target directory as soon as no
/// later step reads it (see [`DISK_NEEDED_GB`]); a developer's run keeps them for the next one.
fn on_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// On CI, removes `dir`, which no later step reads, and says how much that gave back.
fn drop_on_ci(sh: &Shell, dir: &Path) {
    if !on_ci() || !dir.exists() {
        return;
    }
    let size = cmd!(sh, "du -sh {dir}").quiet().read().ok();
    let size = size.as_deref().and_then(|s| s.split_whitespace().next()).unwrap_or("?");
    match std::fs::remove_dir_all(dir) {
        Ok(()) => eprintln!("removed {} ({size}): no later step reads it", dir.display()),
        Err(e) => eprintln!("warning: could not remove {}: {e}", dir.display()),
    }
}

pub fn run(rest: &[&str]) -> Result<()> {
    let sh = Shell::new()?;
    let root = crate::root();
    sh.change_dir(&root);
    let started = Instant::now();
    warn_if_disk_short(&sh, &root);
    // The run's own nimify cache (ONNX Runtime, the optimized models every test server saves),
    // unless the caller chose one: nothing read from or left in the user's, so a run neither
    // depends on an earlier one nor leaves an entry per test model behind to pile up run after run.
    if std::env::var_os("NIMIFY_CACHE_DIR").is_none_or(|v| v.is_empty()) {
        sh.set_var("NIMIFY_CACHE_DIR", crate::target_dir().join("nimify-cache"));
    }
    let mut times = Vec::new();
    let mut lap = |what: &str, since: &mut Instant| {
        times.push(format!("{what:<34} {:>6.0} s", since.elapsed().as_secs_f64()));
        *since = Instant::now();
    };
    let mut t = Instant::now();
    system_packages(&sh)?;
    npm_packages(&sh, &root)?;
    let python = venv_python(&sh)?;
    let pa = perf_analyzer(&sh)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The house rules first: formatting, then every clippy warning as an error.
    if cmd!(sh, "{cargo} fmt --version").quiet().ignore_stdout().ignore_stderr().run().is_err()
        || cmd!(sh, "{cargo} clippy --version").quiet().ignore_stdout().ignore_stderr().run().is_err()
    {
        cmd!(sh, "rustup component add rustfmt clippy").run().context("installing rustfmt and clippy")?;
    }
    lap("setup (apt, Python and npm packages)", &mut t);
    cmd!(sh, "{cargo} fmt --all --check").run().context("formatting differs: run `cargo fmt --all`")?;
    // clippy, rustdoc and the API listing share one target directory and environment (see
    // `public_api::check_target_dir`): the dependencies are checked once for all three.
    let check_target = crate::public_api::check_target_dir();
    let bootstrap = crate::public_api::BOOTSTRAP;
    cmd!(sh, "{cargo} clippy --workspace --all-targets -- -D warnings")
        .env("RUSTC_BOOTSTRAP", bootstrap)
        .env("CARGO_TARGET_DIR", &check_target)
        .run()
        .context("clippy warnings are errors")?;
    // The same for the other platforms ONNX Runtime is pinned for (Windows, macOS).
    crate::cross_check::run()?;
    lap("fmt + clippy (Linux, Windows, macOS)", &mut t);
    // Every public item documented, every intra-doc link resolving; then the public API as listed
    // from rustdoc JSON must match the committed listings (see public_api.rs).
    cmd!(sh, "{cargo} doc --workspace --no-deps --lib")
        .env("RUSTDOCFLAGS", "-D warnings")
        .env("RUSTC_BOOTSTRAP", bootstrap)
        .env("CARGO_TARGET_DIR", &check_target)
        .run()
        .context("rustdoc warnings are errors")?;
    crate::public_api::run(&[])?;
    drop_on_ci(&sh, &check_target);
    lap("doc + public API", &mut t);
    // One build for everything: `cargo test --workspace` also builds target/debug/cargo-nimify,
    // which the ONNX Runtime install and the Python tests use (a separate `cargo build -p` would
    // resolve features differently and compile the dependencies twice).
    cmd!(sh, "{cargo} test --workspace --no-run {rest...}").run()?;
    // The example services' binaries, for their end-to-end tests.
    cmd!(sh, "{cargo} build --workspace --bins").run()?;
    lap("build (tests and binaries)", &mut t);
    let nimify = crate::target_dir().join("debug/cargo-nimify");
    cmd!(sh, "{nimify} nimify ort install").run().context("installing ONNX Runtime")?;
    cmd!(sh, "{cargo} test --workspace {rest...}").run()?;
    // trybuild's own workspace (tests/tests/ui.rs), with its own build of every dependency.
    drop_on_ci(&sh, &crate::target_dir().join("tests"));
    lap("cargo test", &mut t);
    // The other platform's build of example-iris and its ONNX Runtime, for the multi-platform
    // image test: built here, with the very command `image --platform` runs, so that test finds
    // it fresh (the cross build is most of that test's time, and would stall its worker).
    let (other, triple, _) = other_platform();
    crate::cross_check::add_targets(&sh, &[triple])?;
    cmd!(sh, "{nimify} nimify ort install --platform {other}")
        .run()
        .with_context(|| format!("installing ONNX Runtime for {other}"))?;
    cmd!(sh, "{nimify} nimify build -p example-iris --profile dev --target {triple}")
        .run()
        .with_context(|| format!("cross-compiling example-iris for {other}"))?;
    lap("cross build (example-iris)", &mut t);
    // The four published crates package and build from their packaged sources alone (a file
    // outside a crate's directory, a sibling not yet on crates.io, would fail here). Packaged
    // crates form their own workspaces, so nothing of the build above is reused, and their
    // build goes to its own target directory: in the shared one it would replace
    // target/debug/cargo-nimify with a binary built outside this checkout. No debug info keeps
    // the throw-away build small; it is removed afterwards.
    let publish_target = crate::target_dir().join("publish-check");
    forget_packaged_sources();
    cmd!(sh, "{cargo} publish --workspace --dry-run --allow-dirty --quiet")
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .env("CARGO_TARGET_DIR", &publish_target)
        .run()
        .context("`cargo publish --workspace --dry-run` failed")?;
    let _ = std::fs::remove_dir_all(&publish_target);
    lap("cargo publish --dry-run", &mut t);
    // In parallel: the tests that build images or share the examples' files form one unit of
    // work (tests/python/conftest.py), every other test goes to whichever worker is free.
    // One worker per core (at least two, so the examples' group runs beside everything else):
    // more would only add contention to the tests that measure time.
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let jobs = std::env::var("NIMIFY_TEST_JOBS").unwrap_or_else(|_| cores.clamp(2, 4).to_string());
    // A passing test's temporary directory goes when it ends, and the whole run's when every test
    // passed; pytest keeps those of one earlier run (not three), for a look at what failed.
    cmd!(sh, "{python} -m pytest -q -p no:cacheprovider -o tmp_path_retention_policy=failed -o tmp_path_retention_count=1 -n {jobs} tests/python")
        .env("NIMIFY_BIN", &nimify)
        .env("PERF_ANALYZER", &pa)
        .env("CONTAINERS_CONF", root.join("tests/containers.conf"))
        .run()?;
    lap("pytest", &mut t);
    eprintln!("\ntime by step (total {:.0} s):", started.elapsed().as_secs_f64());
    for line in &times {
        eprintln!("  {line}");
    }
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
