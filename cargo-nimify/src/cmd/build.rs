//! `cargo nimify build`: `cargo build --release` of the service crate's binary (the package and
//! binary found by [`crate::project`]), reporting the executable cargo produced.

use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use clap::Args;

use crate::CliError;
use crate::project::{Project, ProjectArgs};

/// `build` arguments.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Which package and binary.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Cargo profile to build with (`dev` reuses the debug build).
    #[arg(long, default_value = "release", value_name = "NAME", env = "NIMIFY_PROFILE")]
    pub profile: String,
    /// Print the executable's path as JSON on stdout.
    #[arg(long, value_enum, default_value_t = crate::Format::Text)]
    pub format: crate::Format,
}

/// Runs the command.
pub fn run(args: &BuildArgs) -> Result<(), CliError> {
    let project = Project::load(&args.project)?;
    let exe = build(&project, &args.profile)?;
    match args.format {
        crate::Format::Json => {
            println!("{}", serde_json::json!({"package": project.package, "bin": project.bin, "executable": exe}))
        }
        crate::Format::Text => println!("{}", exe.display()),
    }
    Ok(())
}

/// Builds the project's binary with `profile` and returns the executable cargo reports.
pub fn build(project: &Project, profile: &str) -> Result<PathBuf, CliError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(&cargo)
        .args([
            "build",
            "--message-format",
            "json-render-diagnostics",
            "--profile",
            profile,
            "--package",
            &project.package,
            "--bin",
            &project.bin,
            "--manifest-path",
        ])
        .arg(&project.manifest_path)
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
        return Err(CliError::msg(format!(
            "`cargo build --profile {profile} --package {} --bin {}` failed ({status}); its errors are above",
            project.package, project.bin
        )));
    }
    exe.ok_or_else(|| CliError::msg(format!("cargo build reported no executable for binary `{}`", project.bin)))
}

/// Where `profile`'s build of the binary lives, without building (for `image --no-build`).
pub fn expected_executable(project: &Project, profile: &str) -> PathBuf {
    let dir = match profile {
        "dev" | "test" => "debug",
        "release" | "bench" => "release",
        other => other,
    };
    project.target_dir.join(dir).join(&project.bin)
}
