//! Canary rollouts through the chart's `canary` block and its Gateway API `HTTPRoute`:
//!
//! - `cargo nimify deploy --env E --canary N` runs the built image (`cargo nimify image`) as a
//!   second Deployment beside the deployed one, with N percent of the traffic; run it again to
//!   change the weight;
//! - `cargo nimify promote --env E` moves the stable pods to the canary's image, then removes
//!   the canary;
//! - `cargo nimify abort --env E` sends every request back to the stable pods, then removes the
//!   canary.
//!
//! Each step is a `helm upgrade --wait` of the release with the environment's values and the
//! digests set explicitly, read from the release (`helm get values`) unless given, so the stable
//! pods never change image by accident. Promote and abort move the traffic first (weight 0) and
//! remove the canary in a second upgrade, so no request is routed to pods being deleted.
//! `--dry-run` prints every command, with the values it would read shown as placeholders.

use clap::Args;
use xshell::Shell;

use super::deploy::{Target, common, helm_binary, helm_major, missing_helm, print_commands, run_helm, values_files};
use crate::project::{Project, ProjectArgs};
use crate::{CliError, Out, term};

/// `promote` and `abort` arguments.
#[derive(Debug, Clone, Args)]
pub struct FinishArgs {
    /// Which package.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Environment from [package.metadata.nimify.env.<name>].
    #[arg(long, value_name = "NAME")]
    pub env: String,
    /// Print the helm commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// How long helm waits for each step's rollout.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub timeout: String,
    /// Helm major version to write flags for [default: asked from `helm version`].
    #[arg(long, value_name = "3|4", value_parser = clap::value_parser!(u8).range(3..=4))]
    pub helm_version: Option<u8>,
    /// The digest the stable pods run now [default: read with `helm get values`].
    #[arg(long, value_name = "DIGEST")]
    pub stable_digest: Option<String>,
    /// The digest the canary runs [default: read with `helm get values`].
    #[arg(long, value_name = "DIGEST")]
    pub canary_digest: Option<String>,
}

/// Placeholders `--dry-run` shows for values read from the release.
const STABLE_NOW: &str = "<image.digest deployed now>";
const CANARY_NOW: &str = "<canary.image.digest deployed now>";

/// The release's images, as `helm get values --all` reports them.
struct Deployed {
    stable: String,
    canary: Option<String>,
}

/// One `helm upgrade` of the release with the environment's values and `sets`.
struct Step<'a> {
    t: &'a Target,
    chart: &'a std::path::Path,
    values: &'a [String],
    major: u8,
    timeout: &'a str,
}

impl Step<'_> {
    fn upgrade(&self, sets: &[(&str, &str)]) -> Vec<String> {
        let mut argv =
            vec!["helm".to_string(), "upgrade".into(), self.t.release.clone(), self.chart.display().to_string()];
        argv.extend(common(self.t));
        argv.extend(self.values.iter().cloned());
        for (key, value) in sets {
            argv.extend(["--set".to_string(), format!("{key}={value}")]);
        }
        argv.extend(["--wait".to_string(), "--timeout".into(), self.timeout.to_string()]);
        argv.push(if self.major >= 4 { "--rollback-on-failure".into() } else { "--atomic".into() });
        argv
    }
}

fn get_values(t: &Target) -> Vec<String> {
    let mut argv = vec!["helm".to_string(), "get".into(), "values".into(), t.release.clone()];
    argv.extend(common(t));
    argv.extend(["--all".to_string(), "--output".into(), "json".into()]);
    argv
}

/// Reads the release's images.
fn deployed(helm: &std::path::Path, t: &Target) -> Result<Deployed, CliError> {
    let argv = get_values(t);
    term::status("Reading", format!("the images of release {} in {}", t.release, t.namespace));
    let output = std::process::Command::new(helm)
        .args(&argv[1..])
        .output()
        .map_err(|e| CliError::msg(format!("cannot run {}: {e}", helm.display())))?;
    if !output.status.success() {
        return Err(CliError::with_help(
            format!(
                "cannot read release {} in namespace {}: {}",
                t.release,
                t.namespace,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            "deploy the service first (`cargo nimify deploy --env <name>`), or pass the digests (--stable-digest, --canary-digest)",
        ));
    }
    parse_deployed(&output.stdout)
}

fn parse_deployed(json: &[u8]) -> Result<Deployed, CliError> {
    let values: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| CliError::msg(format!("`helm get values` did not print JSON: {e}")))?;
    let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let stable = text(&values["image"]["digest"]).ok_or_else(|| {
        CliError::msg("the release deploys its image by tag, not digest (image.digest is empty); canaries need digests: redeploy with `cargo nimify deploy`")
    })?;
    let canary = (values["canary"]["enabled"] == serde_json::Value::Bool(true))
        .then(|| text(&values["canary"]["image"]["digest"]))
        .flatten();
    Ok(Deployed { stable, canary })
}

/// Shared set-up of every canary command: the helm binary and its major version.
fn helm_setup(dry_run: bool, helm_version: Option<u8>) -> Result<(Option<std::path::PathBuf>, u8), CliError> {
    let helm = helm_binary();
    let major = match (helm_version, &helm) {
        (Some(v), _) => v,
        (None, Some(h)) => helm_major(&Shell::new().map_err(|e| CliError::msg(e.to_string()))?, h)?,
        (None, None) if dry_run => {
            term::note("helm not found; showing Helm 4 flags (pass --helm-version 3 for Helm 3)");
            4
        }
        (None, None) => return Err(missing_helm()),
    };
    Ok((helm, major))
}

/// The release's images: the ones given, else read (placeholders in a dry run).
fn images(
    helm: Option<&std::path::Path>,
    t: &Target,
    dry_run: bool,
    stable: Option<&String>,
    canary: Option<&String>,
    need_canary: bool,
) -> Result<(Deployed, Option<Vec<String>>), CliError> {
    if let Some(s) = stable
        && (canary.is_some() || !need_canary)
    {
        return Ok((Deployed { stable: s.clone(), canary: canary.cloned() }, None));
    }
    if dry_run {
        let d = Deployed {
            stable: stable.cloned().unwrap_or_else(|| STABLE_NOW.into()),
            canary: Some(canary.cloned().unwrap_or_else(|| CANARY_NOW.into())),
        };
        return Ok((d, Some(get_values(t))));
    }
    let mut d = deployed(helm.ok_or_else(missing_helm)?, t)?;
    if let Some(s) = stable {
        d.stable.clone_from(s);
    }
    if canary.is_some() {
        d.canary = canary.cloned();
    }
    Ok((d, None))
}

fn run_or_print(
    helm: Option<&std::path::Path>,
    out: Out,
    read: Option<Vec<String>>,
    steps: &[Vec<String>],
    dry_run: bool,
) -> Result<(), CliError> {
    if dry_run {
        let all: Vec<&[String]> = read.iter().chain(steps).map(Vec::as_slice).collect();
        print_commands(out, &all);
        return Ok(());
    }
    let helm = helm.ok_or_else(missing_helm)?;
    for step in steps {
        run_helm(helm, &step[1..])?;
    }
    Ok(())
}

/// `deploy --canary N`: the built image as the canary, with `weight` percent of the traffic.
pub(super) fn start(
    args: &super::deploy::DeployArgs,
    t: &Target,
    chart: &super::chart::Written,
    weight: u8,
    out: Out,
) -> Result<(), CliError> {
    let (helm, major) = helm_setup(args.dry_run, args.helm_version)?;
    let (now, read) = images(helm.as_deref(), t, args.dry_run, args.stable_digest.as_ref(), None, false)?;
    if now.stable == chart.digest {
        return Err(CliError::with_help(
            format!(
                "the built image {} is the one the stable pods run; a canary of it would change nothing",
                chart.image
            ),
            "build the new version with `cargo nimify image` first, then `cargo nimify deploy --env <name> --canary <percent>`",
        ));
    }
    let values = values_files(&chart.dir, &args.env, t);
    let step = Step { t, chart: &chart.dir, values: &values, major, timeout: &args.timeout };
    let weight = weight.to_string();
    let upgrade = step.upgrade(&[
        ("image.digest", &now.stable),
        ("canary.enabled", "true"),
        ("canary.image.digest", &chart.digest),
        ("canary.weight", &weight),
    ]);
    run_or_print(helm.as_deref(), out, read, &[upgrade], args.dry_run)?;
    if !args.dry_run {
        term::status(
            "Canary",
            format!(
                "{} takes {weight}% of the traffic of release {} in {}; `cargo nimify promote --env {}` or `abort` to finish",
                chart.image, t.release, t.namespace, args.env
            ),
        );
        out.json_only(|| serde_json::json!({"release": t.release, "namespace": t.namespace, "canary": chart.digest, "stable": now.stable, "weight": args.canary}));
    }
    Ok(())
}

/// Which way a canary ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The canary's image becomes the stable one.
    Promote,
    /// The stable image stays.
    Abort,
}

/// Runs `promote` or `abort`.
pub fn finish(args: &FinishArgs, how: Finish, out: Out) -> Result<(), CliError> {
    let project = Project::load(&args.project)?;
    let t = super::deploy::target(&project, &args.env)?;
    let chart = super::chart::write(&project, &project.state_dir().join("chart"))?;
    let (helm, major) = helm_setup(args.dry_run, args.helm_version)?;
    let (now, read) =
        images(helm.as_deref(), &t, args.dry_run, args.stable_digest.as_ref(), args.canary_digest.as_ref(), true)?;
    let Some(canary) = now.canary.clone() else {
        return Err(CliError::with_help(
            format!("no canary is running in release {} of namespace {}", t.release, t.namespace),
            format!("start one with `cargo nimify deploy --env {} --canary <percent>`", args.env),
        ));
    };
    let values = values_files(&chart.dir, &args.env, &t);
    let step = Step { t: &t, chart: &chart.dir, values: &values, major, timeout: &args.timeout };
    let kept = match how {
        Finish::Promote => canary.as_str(),
        Finish::Abort => now.stable.as_str(),
    };
    // First every request to the stable pods (rolled to the canary's image when promoting),
    // the canary still running; then the canary goes.
    let drain = step.upgrade(&[
        ("image.digest", kept),
        ("canary.enabled", "true"),
        ("canary.image.digest", &canary),
        ("canary.weight", "0"),
    ]);
    let remove = step.upgrade(&[("image.digest", kept), ("canary.enabled", "false")]);
    run_or_print(helm.as_deref(), out, read, &[drain, remove], args.dry_run)?;
    if !args.dry_run {
        let verb = if how == Finish::Promote { "Promoted" } else { "Aborted" };
        term::status(verb, format!("release {} in {} runs {kept}; the canary is removed", t.release, t.namespace));
        out.json_only(|| serde_json::json!({"release": t.release, "namespace": t.namespace, "image": kept}));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployed_images_come_from_the_release_values() {
        let d = parse_deployed(
            br#"{"image":{"digest":"sha256:aa"},"canary":{"enabled":true,"image":{"digest":"sha256:bb"}}}"#,
        )
        .expect("parse");
        assert_eq!((d.stable.as_str(), d.canary.as_deref()), ("sha256:aa", Some("sha256:bb")));
        let d = parse_deployed(
            br#"{"image":{"digest":"sha256:aa"},"canary":{"enabled":false,"image":{"digest":"sha256:bb"}}}"#,
        )
        .expect("parse");
        assert_eq!(d.canary, None);
        assert!(parse_deployed(br#"{"image":{"digest":""}}"#).is_err());
        assert!(parse_deployed(b"not json").is_err());
    }
}
