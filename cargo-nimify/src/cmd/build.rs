//! `cargo nimify build`: `cargo build --release` of the service crate's binary (the package and
//! binary found by [`crate::project`]), reporting the executable cargo produced. The usual cargo
//! flags (`--features`, `--target`, `--locked`, ...) pass through; `--target` of the other image
//! platform (`aarch64-unknown-linux-gnu` on x86_64) uses Debian's cross linker unless
//! `CARGO_TARGET_<TRIPLE>_LINKER` names one.

use std::ffi::OsString;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use clap::Args;
use serde_json::json;

use crate::image::platform::Platform;
use crate::project::{Project, ProjectArgs};
use crate::term::{self, Verbosity};
use crate::{CliError, Out};

/// `build` arguments.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Which package and binary.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// How cargo builds it.
    #[command(flatten)]
    pub cargo: CargoArgs,
}

/// The cargo flags `build` and `image` pass through to `cargo build`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cargo options")]
pub struct CargoArgs {
    /// Cargo profile to build with (`dev` reuses the debug build).
    #[arg(long, default_value = "release", value_name = "NAME", env = "NIMIFY_PROFILE")]
    pub profile: String,
    /// Space or comma separated list of features to activate.
    #[arg(long, short = 'F', value_name = "FEATURES")]
    pub features: Vec<String>,
    /// Activate all available features.
    #[arg(long)]
    pub all_features: bool,
    /// Do not activate the `default` feature.
    #[arg(long)]
    pub no_default_features: bool,
    /// Build for this target triple [default: the host's].
    #[arg(long, value_name = "TRIPLE")]
    pub target: Option<String>,
    /// Assert that `Cargo.lock` will remain unchanged.
    #[arg(long)]
    pub locked: bool,
    /// Run without accessing the network.
    #[arg(long)]
    pub offline: bool,
    /// Both --locked and --offline.
    #[arg(long)]
    pub frozen: bool,
}

impl CargoArgs {
    /// The flags for `cargo build`, in cargo's spelling.
    pub fn to_cargo(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = vec!["--profile".into(), self.profile.clone().into()];
        for f in &self.features {
            out.extend(["--features".into(), f.into()]);
        }
        let flags = [
            (self.all_features, "--all-features"),
            (self.no_default_features, "--no-default-features"),
            (self.locked, "--locked"),
            (self.offline, "--offline"),
            (self.frozen, "--frozen"),
        ];
        out.extend(flags.into_iter().filter(|(on, _)| *on).map(|(_, flag)| flag.into()));
        if let Some(t) = &self.target {
            out.extend(["--target".into(), t.into()]);
        }
        out
    }
}

/// Runs the command.
pub fn run(args: &BuildArgs, out: Out) -> Result<(), CliError> {
    if let Some(model) = &args.project.model {
        return Err(CliError::with_help(
            format!("nothing to build for --model {}: the generic server serves it as it is", model.display()),
            "`cargo nimify serve MODEL` runs it here, `cargo nimify image --model MODEL` packs it",
        ));
    }
    let project = Project::load(&args.project)?;
    // A cross build for the other image platform gets Debian's cross linker when none is set.
    let env = match args.cargo.target.as_deref().and_then(|t| Platform::parse(t).ok()) {
        Some(p) if !p.is_host() && p.triple == args.cargo.target.as_deref().unwrap_or_default() => {
            p.check_build(project.dir())?
        }
        _ => Vec::new(),
    };
    let exe = build_with(&project, &args.cargo, &env)?;
    out.result(exe.display(), || json!({"package": project.package, "bin": project.bin, "executable": exe}));
    Ok(())
}

/// Builds the project's binary and returns the executable cargo reports.
pub fn build(project: &Project, flags: &CargoArgs) -> Result<PathBuf, CliError> {
    build_with(project, flags, &[])
}

/// [`build`], with `env` set for cargo (a cross linker).
pub fn build_with(project: &Project, flags: &CargoArgs, env: &[(String, String)]) -> Result<PathBuf, CliError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut argv: Vec<OsString> = vec!["build".into(), "--message-format".into(), "json-render-diagnostics".into()];
    argv.extend(flags.to_cargo());
    argv.extend(["--package".into(), project.package.clone().into(), "--bin".into(), project.bin.clone().into()]);
    argv.extend(["--manifest-path".into(), project.manifest_path.clone().into()]);
    match term::verbosity() {
        Verbosity::Quiet => argv.push("--quiet".into()),
        Verbosity::Verbose => argv.push("--verbose".into()),
        Verbosity::Normal => {}
    }
    let color = if anstream::ColorChoice::global() == anstream::ColorChoice::Never { "never" } else { "auto" };
    let shown = argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
    let env_shown: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    term::verbose("Running", format!("`{env_shown}cargo {shown}`"));
    let mut child = Command::new(&cargo)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(&argv)
        .args(["--color", color])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| CliError::msg(format!("cannot run cargo: {e}")))?;
    let mut exe = None;
    if let Some(stdout) = child.stdout.take() {
        for message in cargo_metadata::Message::parse_stream(BufReader::new(stdout)).flatten() {
            if let cargo_metadata::Message::CompilerArtifact(a) = message
                && a.target.is_bin()
                && a.target.name.as_str() == project.bin
            {
                exe = a.executable.map(|p| p.into_std_path_buf());
            }
        }
    }
    let status = child.wait().map_err(|e| CliError::msg(format!("cargo build: {e}")))?;
    if !status.success() {
        return Err(CliError::msg(format!("`cargo {shown}` failed ({status}); its errors are above")));
    }
    exe.ok_or_else(|| CliError::msg(format!("cargo build reported no executable for binary `{}`", project.bin)))
}

/// Where `profile`'s build of the binary lives, without building (for `image --no-build`).
pub fn expected_executable(project: &Project, flags: &CargoArgs) -> PathBuf {
    let dir = match flags.profile.as_str() {
        "dev" | "test" => "debug",
        "release" | "bench" => "release",
        other => other,
    };
    let base = match &flags.target {
        Some(t) => project.target_dir.join(t),
        None => project.target_dir.clone(),
    };
    base.join(dir).join(&project.bin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Probe {
        #[command(flatten)]
        cargo: CargoArgs,
    }

    /// `cargo build` flags for `nimify build` flags.
    fn passed(flags: &[&str]) -> Vec<String> {
        let parsed = Probe::parse_from([&["probe"][..], flags].concat());
        parsed.cargo.to_cargo().iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn cargo_flags_pass_through_in_cargo_spelling() {
        let target = ["--target", "x86_64-unknown-linux-gnu"];
        let flags = [
            &["--profile", "dev", "-F", "a,b", "--features", "c"][..],
            &["--no-default-features", "--locked", "--offline"],
            &target,
        ]
        .concat();
        let expected = [
            &["--profile", "dev", "--features", "a,b", "--features", "c"][..],
            &["--no-default-features", "--locked", "--offline"],
            &target,
        ]
        .concat();
        assert_eq!(passed(&flags), expected);
        assert_eq!(passed(&["--all-features", "--frozen"]), ["--profile", "release", "--all-features", "--frozen"]);
    }
}
