//! `cargo nimify inspect REPO`: what a model repository would serve, read the way the server
//! reads it (the same layout rules, configuration files and version policies): per model its
//! configuration, every version directory with whether it is served and its signature, the
//! entries skipped, and the problems that would stop it loading. Exit status 1 when any model
//! has a problem.

use std::fmt::Write as _;
use std::path::Path;

use nimify::repository::layout::{self, ModelDir};
use serde::Serialize;

use crate::{CliError, Format, Out};

#[derive(Serialize)]
struct RepositoryReport {
    repository: String,
    models: Vec<ModelReport>,
}

#[derive(Serialize)]
struct ModelReport {
    name: String,
    config: Option<String>,
    version_policy: Option<layout::VersionPolicy>,
    versions: Vec<VersionReport>,
    skipped: Vec<Skipped>,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct VersionReport {
    version: u64,
    path: String,
    state: &'static str,
    signature: Option<String>,
}

#[derive(Serialize)]
struct Skipped {
    entry: String,
    reason: String,
}

/// Runs the command on the repository at `root`.
pub fn run(root: &Path, out: Out) -> Result<(), CliError> {
    let names = layout::model_names(root).map_err(|e| CliError::msg(e.to_string()))?;
    let config = nimify::Config::default();
    let models: Vec<ModelReport> = names
        .iter()
        .map(|name| match layout::read_model_dir(root, name, &config) {
            Ok(dir) => model_report(&dir),
            Err(e) => ModelReport {
                name: name.clone(),
                config: None,
                version_policy: None,
                versions: Vec::new(),
                skipped: Vec::new(),
                problems: vec![e.to_string()],
            },
        })
        .collect();
    let report = RepositoryReport { repository: root.display().to_string(), models };
    match out.format {
        Format::Json => {
            let json = serde_json::to_string_pretty(&report).map_err(|e| CliError::msg(e.to_string()))?;
            println!("{json}");
        }
        Format::Text => print!("{}", text(&report)),
    }
    let failing: Vec<&str> = report.models.iter().filter(|m| !m.problems.is_empty()).map(|m| m.name.as_str()).collect();
    if report.models.is_empty() {
        return Err(CliError::with_help(
            format!("model repository {} has no model directories", root.display()),
            "lay it out as REPO/<name>/<version>/model.onnx, e.g. REPO/mlp/1/model.onnx",
        ));
    }
    if !failing.is_empty() {
        return Err(CliError::msg(format!("models that would not load: {}", failing.join(", "))));
    }
    Ok(())
}

fn model_report(dir: &ModelDir) -> ModelReport {
    let states = layout::describe(dir);
    let mut problems = Vec::new();
    let versions: Vec<VersionReport> = dir
        .versions
        .iter()
        .map(|v| {
            let state = states.get(&v.version).copied().unwrap_or("?");
            let signature = match (state, nimify_model::read_model(&v.model)) {
                ("served", Ok(info)) => Some(signature(&info)),
                ("served", Err(e)) => {
                    problems.push(format!("version {}: {}: {e}", v.version, v.model.display()));
                    None
                }
                _ => None,
            };
            if state == "missing model file" {
                problems.push(format!("version {}: {} is missing", v.version, v.model.display()));
            }
            VersionReport { version: v.version, path: v.model.display().to_string(), state, signature }
        })
        .collect();
    if dir.selected().is_empty() {
        problems.push(format!(
            "no version to serve (version policy {}); add a version directory such as {}/1/{}",
            dir.settings.policy,
            dir.dir.display(),
            dir.settings.filename
        ));
    }
    ModelReport {
        name: dir.name.clone(),
        config: dir.config_file.as_ref().map(|p| p.display().to_string()),
        version_policy: Some(dir.settings.policy.clone()),
        versions,
        skipped: dir
            .skipped
            .iter()
            .map(|(entry, reason)| Skipped { entry: entry.clone(), reason: reason.clone() })
            .collect(),
        problems,
    }
}

/// `inputs (x: FP32 [-1, 4]) -> outputs (y: INT64 [-1])`.
fn signature(info: &nimify_model::ModelInfo) -> String {
    let side = |values: &[nimify_model::ValueInfo]| {
        values
            .iter()
            .map(|v| {
                let row = super::inspect::row("", v);
                format!("{}: {} {}", row[1], row[2], row[3])
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("inputs ({}) -> outputs ({})", side(&info.inputs), side(&info.outputs))
}

fn text(report: &RepositoryReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "repository {}", report.repository);
    for m in &report.models {
        // A model whose directory could not be read has neither: its problem says why.
        let about = match (&m.config, &m.version_policy) {
            (_, None) => String::new(),
            (config, Some(p)) => {
                let config = config.as_deref().map_or("no configuration file".to_string(), |c| {
                    Path::new(c).file_name().map_or_else(|| c.to_string(), |f| f.to_string_lossy().into_owned())
                });
                format!(" ({config}, version policy {p})")
            }
        };
        let _ = writeln!(out, "\nmodel {}{about}", m.name);
        for v in &m.versions {
            let _ = writeln!(out, "  version {:<4} {}", v.version, v.state);
            if let Some(s) = &v.signature {
                let _ = writeln!(out, "               {s}");
            }
        }
        for s in &m.skipped {
            let _ = writeln!(out, "  skipped {}: {}", s.entry, s.reason);
        }
        for p in &m.problems {
            let _ = writeln!(out, "  problem: {p}");
        }
    }
    out
}
