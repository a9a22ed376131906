//! `cargo nimify deploy --env <name>` and `cargo nimify rollback --env <name>`: Helm for one
//! environment of `[package.metadata.nimify.env.<name>]` (namespace, release, kube context,
//! extra values file), layered over the chart's `values-<name>.yaml`. Deploy writes the chart
//! (`cargo nimify chart`), then runs `helm upgrade --install --wait` with Helm's own rollback on
//! failure (`--rollback-on-failure` on Helm 4, `--atomic` on Helm 3, asked from `helm version`).
//! `--dry-run` prints the exact commands instead; `--render DIR` runs `helm template` into plain
//! manifests for `kubectl apply` or GitOps.

use std::path::{Path, PathBuf};

use clap::Args;
use xshell::{Shell, cmd};

use crate::project::{Project, ProjectArgs};
use crate::{CliError, Out, term};

/// `deploy` arguments.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// Which package.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Environment from [package.metadata.nimify.env.<name>].
    #[arg(long, value_name = "NAME")]
    pub env: String,
    /// Print the helm commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Write plain manifests (`helm template`) to DIR instead of installing.
    #[arg(long, value_name = "DIR")]
    pub render: Option<PathBuf>,
    /// How long helm waits for the rollout.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub timeout: String,
    /// Helm major version to write flags for [default: asked from `helm version`].
    #[arg(long, value_name = "3|4", value_parser = clap::value_parser!(u8).range(3..=4))]
    pub helm_version: Option<u8>,
    /// Start (or re-weight) a canary of the built image beside the deployed one, with this
    /// percent of the traffic (the chart's HTTPRoute); finish with `promote` or `abort`.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100), conflicts_with = "render")]
    pub canary: Option<u8>,
    /// With --canary: the digest the stable pods keep [default: read with `helm get values`].
    #[arg(long, value_name = "DIGEST", requires = "canary")]
    pub stable_digest: Option<String>,
}

/// `rollback` arguments.
#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// Which package.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Environment from [package.metadata.nimify.env.<name>].
    #[arg(long, value_name = "NAME")]
    pub env: String,
    /// Revision to return to [default: the previous one].
    #[arg(long, value_name = "N")]
    pub revision: Option<u32>,
    /// Print the helm command instead of running it.
    #[arg(long)]
    pub dry_run: bool,
    /// How long helm waits for the rollback.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub timeout: String,
}

/// One environment, resolved.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) namespace: String,
    pub(super) release: String,
    pub(super) context: Option<String>,
    pub(super) values: Option<PathBuf>,
}

pub(super) fn target(project: &Project, env: &str) -> Result<Target, CliError> {
    // A zero-code service (`--model`) has no Cargo.toml to declare environments in: each one is
    // its namespace, the release is the model's name.
    let zero_code = crate::project::Environment::default();
    let declared = project.settings.env.get(env);
    let settings = declared.or(project.model.as_ref().map(|_| &zero_code)).ok_or_else(|| {
        let known: Vec<&str> = project.settings.env.keys().map(String::as_str).collect();
        CliError::with_help(
            format!(
                "unknown environment `{env}` for {} (defined: {})",
                project.package,
                if known.is_empty() { "none".to_string() } else { known.join(", ") },
            ),
            format!(
                "add [package.metadata.nimify.env.{env}] with namespace, release, context or values to {}",
                project.manifest_path.display()
            ),
        )
    })?;
    let values = match &settings.values {
        Some(v) => {
            let path = project.dir().join(v);
            if !path.is_file() {
                return Err(CliError::msg(format!("values file {} of environment `{env}` not found", path.display())));
            }
            Some(path)
        }
        None => None,
    };
    Ok(Target {
        namespace: settings.namespace.clone().unwrap_or_else(|| env.to_string()),
        release: settings.release.clone().unwrap_or_else(|| project.package.clone()),
        context: settings.context.clone(),
        values,
    })
}

/// The helm binary: `NIMIFY_HELM`, else `helm` on PATH.
pub(super) fn helm_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NIMIFY_HELM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    crate::find_on_path("helm")
}

pub(super) fn missing_helm() -> CliError {
    CliError::with_help(
        "helm not found on PATH (or NIMIFY_HELM)",
        "install Helm 3.8+ or 4 from https://helm.sh/docs/intro/install/, or use --dry-run to see the commands",
    )
}

/// The major version of `helm`.
pub(super) fn helm_major(sh: &Shell, helm: &Path) -> Result<u8, CliError> {
    let template = "{{.Version}}";
    let version = cmd!(sh, "{helm} version --template {template}")
        .quiet()
        .read()
        .map_err(|e| CliError::msg(format!("`helm version` failed: {e}")))?;
    match version.trim().trim_start_matches('v').split('.').next() {
        Some("3") => Ok(3),
        Some("4") => Ok(4),
        _ => Err(CliError::msg(format!("helm reports version {version:?}; nimify needs Helm 3 or 4"))),
    }
}

/// Shell-quotes one argument for printing.
fn shell_word(arg: &str) -> String {
    if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c)) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// A command line as a shell would take it.
pub(super) fn shell_line(argv: &[String]) -> String {
    argv.iter().map(|a| shell_word(a)).collect::<Vec<_>>().join(" ")
}

/// `--dry-run`: the commands, one shell line each, or `{"commands": [[argv...], ...]}`.
pub(super) fn print_commands(out: Out, commands: &[&[String]]) {
    let text: Vec<String> = commands.iter().map(|argv| shell_line(argv)).collect();
    out.result(text.join("\n"), || serde_json::json!({ "commands": commands }));
}

/// Runs helm with its output on stderr: stdout holds only our result (`--format json`).
pub(super) fn run_helm(helm: &Path, argv: &[String]) -> Result<(), CliError> {
    term::status("Running", format!("helm {}", shell_line(argv)));
    let what = argv.first().map(String::as_str).unwrap_or("helm");
    let status = std::process::Command::new(helm)
        .args(argv)
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| CliError::msg(format!("cannot run {}: {e}", helm.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::msg(format!("helm {what} failed ({status}); its output is above")))
    }
}

pub(super) fn common(t: &Target) -> Vec<String> {
    let mut args = vec!["--namespace".to_string(), t.namespace.clone()];
    if let Some(c) = &t.context {
        args.extend(["--kube-context".to_string(), c.clone()]);
    }
    args
}

/// The `--values` files of an environment: the chart's `values-<env>.yaml`, then the
/// environment's own.
pub(super) fn values_files(chart: &Path, env: &str, t: &Target) -> Vec<String> {
    let mut values = Vec::new();
    let env_values = chart.join(format!("values-{env}.yaml"));
    if env_values.is_file() {
        values.extend(["--values".to_string(), env_values.display().to_string()]);
    }
    if let Some(v) = &t.values {
        values.extend(["--values".to_string(), v.display().to_string()]);
    }
    values
}

/// Runs `deploy`.
pub fn deploy(args: &DeployArgs, out: Out) -> Result<(), CliError> {
    let project = Project::load(&args.project)?;
    let t = target(&project, &args.env)?;
    let chart = super::chart::write(&project, &project.state_dir().join("chart"))?;
    if let Some(weight) = args.canary {
        return super::canary::start(args, &t, &chart, weight, out);
    }
    let values = values_files(&chart.dir, &args.env, &t);
    let sh = Shell::new().map_err(|e| CliError::msg(e.to_string()))?;
    let helm = helm_binary();
    if let Some(dir) = &args.render {
        let mut argv = vec![
            "helm".to_string(),
            "template".into(),
            t.release.clone(),
            chart.dir.display().to_string(),
            "--namespace".into(),
            t.namespace.clone(),
        ];
        argv.extend(values);
        argv.extend(["--output-dir".to_string(), dir.display().to_string()]);
        if args.dry_run {
            print_commands(out, &[&argv]);
            return Ok(());
        }
        run_helm(&helm.ok_or_else(missing_helm)?, &argv[1..])?;
        out.result(
            dir.display(),
            || serde_json::json!({"rendered": dir, "release": t.release, "namespace": t.namespace}),
        );
        return Ok(());
    }
    let major = match (args.helm_version, &helm) {
        (Some(v), _) => v,
        (None, Some(h)) => helm_major(&sh, h)?,
        (None, None) if args.dry_run => {
            term::note("helm not found; showing Helm 4 flags (pass --helm-version 3 for Helm 3)");
            4
        }
        (None, None) => return Err(missing_helm()),
    };
    let mut argv = vec![
        "helm".to_string(),
        "upgrade".into(),
        "--install".into(),
        t.release.clone(),
        chart.dir.display().to_string(),
    ];
    argv.extend(common(&t));
    argv.push("--create-namespace".into());
    argv.extend(values);
    argv.extend(["--wait".to_string(), "--timeout".into(), args.timeout.clone()]);
    argv.push(if major >= 4 { "--rollback-on-failure".into() } else { "--atomic".into() });
    let mut test = vec!["helm".to_string(), "test".into(), t.release.clone()];
    test.extend(common(&t));
    if args.dry_run {
        print_commands(out, &[&argv, &test]);
        return Ok(());
    }
    let helm = helm.ok_or_else(missing_helm)?;
    run_helm(&helm, &argv[1..])?;
    run_helm(&helm, &test[1..])?;
    term::status(
        "Deployed",
        format!("{} ({}) to {} as release {}", project.package, chart.image, t.namespace, t.release),
    );
    out.json_only(|| serde_json::json!({"release": t.release, "namespace": t.namespace, "image": chart.image}));
    Ok(())
}

/// Runs `rollback`.
pub fn rollback(args: &RollbackArgs, out: Out) -> Result<(), CliError> {
    let project = Project::load(&args.project)?;
    let t = target(&project, &args.env)?;
    let mut argv = vec!["helm".to_string(), "rollback".into(), t.release.clone()];
    argv.extend(args.revision.map(|r| r.to_string()));
    argv.extend(common(&t));
    argv.extend(["--wait".to_string(), "--timeout".into(), args.timeout.clone()]);
    if args.dry_run {
        print_commands(out, &[&argv]);
        return Ok(());
    }
    run_helm(&helm_binary().ok_or_else(missing_helm)?, &argv[1..])?;
    out.json_only(|| serde_json::json!({"release": t.release, "namespace": t.namespace, "revision": args.revision}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("--namespace"), "--namespace");
        assert_eq!(shell_word("/a/b c"), "'/a/b c'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
