//! `cargo nimify chart`: writes the Helm chart for the service from the copy of `cargo-nimify/chart`
//! embedded in this binary, filled in from `target/nimify/<package>/image.json` (image by digest,
//! port, model name, digest and size) with memory sized from the model file.

use std::path::{Path, PathBuf};

use clap::Args;
use include_dir::{Dir, include_dir};
use nimify_model::contract::ImageRecord;

use crate::project::{Project, ProjectArgs};
use crate::{CliError, IoContext, Out};

/// The chart, embedded at build time (build.rs reruns when it changes; a test compares).
pub static CHART: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/chart");

/// `chart` arguments.
#[derive(Debug, Clone, Args)]
pub struct ChartArgs {
    /// Which package.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Directory to write the chart to [default: target/nimify/<package>/chart].
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: &ChartArgs, out: Out) -> Result<(), CliError> {
    let project = Project::load(&args.project)?;
    let dir = args.output.clone().unwrap_or_else(|| project.state_dir().join("chart"));
    let written = write(&project, &dir)?;
    out.result(written.dir.display(), || {
        serde_json::json!({"chart": written.dir, "name": written.name, "version": written.version, "image": written.image})
    });
    Ok(())
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The chart directory.
    pub dir: PathBuf,
    /// Chart name.
    pub name: String,
    /// Chart version.
    pub version: String,
    /// The image reference the chart deploys.
    pub image: String,
    /// The image's digest (`sha256:...`).
    pub digest: String,
}

/// Writes the filled-in chart to `dir` (replacing a chart already there).
pub fn write(project: &Project, dir: &Path) -> Result<Written, CliError> {
    let record_path = project.state_dir().join("image.json");
    if !record_path.is_file() {
        return Err(CliError::with_help(
            format!("no image recorded for {} ({} is missing)", project.package, record_path.display()),
            "run `cargo nimify image` first; the chart deploys that image by digest",
        ));
    }
    let record = ImageRecord::read(&record_path)?;
    if !record.pushed() {
        crate::term::warn(format!(
            "the recorded image ({}) was not pushed to a registry; push it (`cargo nimify image --output docker://...`) before deploying",
            record.reference
        ));
    }
    let names: Vec<&str> = record.models.iter().map(|m| m.name.as_str()).collect();
    let model_bytes: u64 = record.models.iter().map(|m| m.size).sum();
    let (request, limit) = memory_for(model_bytes);
    let name = chart_name(&project.package);
    let mut values = file_text("values.yaml")?;
    for (path, value) in [
        ("image.repository", quote(&record.repository)),
        ("image.digest", quote(&record.digest)),
        ("image.tag", quote(&record.tag)),
        ("model.name", quote(&names.join(","))),
        ("model.sha256", quote(&record.model_digests().to_string())),
        ("model.sizeBytes", model_bytes.to_string()),
        ("containerPort", record.port.to_string()),
        ("grpc.containerPort", record.grpc_port.unwrap_or(nimify::DEFAULT_GRPC_PORT).to_string()),
        ("resources.requests.memory", request),
        ("resources.limits.memory", limit),
    ] {
        values = set_value(&values, path, &value)?;
    }
    let mut chart_yaml = file_text("Chart.yaml")?;
    chart_yaml = set_value(&chart_yaml, "name", &name)?;
    chart_yaml = set_value(&chart_yaml, "version", &project.version)?;
    chart_yaml = set_value(
        &chart_yaml,
        "appVersion",
        &quote(if record.tag.is_empty() { &project.version } else { &record.tag }),
    )?;
    if let Some(d) = &project.description {
        chart_yaml = set_value(&chart_yaml, "description", &quote(d))?;
    }
    let temp = dir.with_file_name(format!(
        ".{}.tmp-{}",
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&temp);
    let result = (|| {
        extract(&CHART, &temp)?;
        std::fs::write(temp.join("values.yaml"), &values).at("write", &temp)?;
        std::fs::write(temp.join("Chart.yaml"), &chart_yaml).at("write", &temp)?;
        if dir.exists() {
            if !dir.join("Chart.yaml").is_file()
                && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false)
            {
                return Err(CliError::msg(format!(
                    "{} exists and is not a chart; pick another --output or remove it",
                    dir.display()
                )));
            }
            std::fs::remove_dir_all(dir).at("replace", dir)?;
        }
        std::fs::rename(&temp, dir).at("write", dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result?;
    Ok(Written {
        dir: dir.to_path_buf(),
        name,
        version: project.version.clone(),
        image: record.pull_reference(),
        digest: record.digest.clone(),
    })
}

fn file_text(name: &str) -> Result<String, CliError> {
    CHART
        .get_file(name)
        .and_then(|f| f.contents_utf8())
        .map(String::from)
        .ok_or_else(|| CliError::msg(format!("the embedded chart has no {name}")))
}

fn extract(dir: &Dir<'_>, to: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(to).at("write", to)?;
    for file in dir.files() {
        let path = to.join(file.path().file_name().unwrap_or_default());
        std::fs::write(&path, file.contents()).at("write", &path)?;
    }
    for sub in dir.dirs() {
        extract(sub, &to.join(sub.path().file_name().unwrap_or_default()))?;
    }
    Ok(())
}

/// A Helm chart name: lower-case letters, digits and dashes.
fn chart_name(package: &str) -> String {
    package.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Memory (request, limit) for a model of `bytes`: ONNX Runtime holds the weights once or twice
/// while optimising, plus the server's own ~200 MiB; the limit leaves room for batches.
pub fn memory_for(bytes: u64) -> (String, String) {
    let mib = bytes.div_ceil(1024 * 1024);
    let request = (200 + 2 * mib).max(256);
    (format!("{request}Mi"), format!("{}Mi", request * 2))
}

/// Replaces the scalar at `path` (dot-separated keys) in a YAML document written in block style,
/// keeping every comment and the rest of the text as it is.
pub fn set_value(text: &str, path: &str, value: &str) -> Result<String, CliError> {
    let keys: Vec<&str> = path.split('.').collect();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut out = Vec::new();
    let mut done = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let is_key = !trimmed.starts_with('#') && !trimmed.starts_with('-') && trimmed.contains(':');
        if !is_key || done {
            out.push(line.to_string());
            continue;
        }
        let key = trimmed.split(':').next().unwrap_or("").trim().to_string();
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.clone()));
        let here: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        if here == keys {
            out.push(format!("{}{key}: {value}", " ".repeat(indent)));
            done = true;
        } else {
            out.push(line.to_string());
        }
    }
    if !done {
        return Err(CliError::msg(format!("the embedded chart has no `{path}` to fill in")));
    }
    Ok(out.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nested_scalars_and_keeps_comments() {
        let text = "# top\nimage:\n  # -- repo\n  repository: \"\"\n  tag: \"\"\nresources:\n  requests:\n    memory: 1Mi\n  limits:\n    memory: 2Mi\n";
        let got = set_value(text, "resources.limits.memory", "9Mi").expect("set");
        let got = set_value(&got, "image.tag", "\"v1\"").expect("set");
        assert_eq!(
            got,
            "# top\nimage:\n  # -- repo\n  repository: \"\"\n  tag: \"v1\"\nresources:\n  requests:\n    memory: 1Mi\n  limits:\n    memory: 9Mi\n"
        );
        assert!(set_value(text, "image.digest", "x").is_err());
    }

    #[test]
    fn memory_grows_with_the_model() {
        assert_eq!(memory_for(4096), ("256Mi".into(), "512Mi".into()));
        assert_eq!(memory_for(1 << 30), ("2248Mi".into(), "4496Mi".into()));
    }

    #[test]
    fn the_embedded_chart_is_charts_nimify() {
        fn compare(dir: &Dir<'_>, disk: &Path, seen: &mut usize) {
            for file in dir.files() {
                let on_disk = disk.join(file.path().file_name().unwrap_or_default());
                let want = std::fs::read(&on_disk).unwrap_or_else(|e| panic!("{}: {e}", on_disk.display()));
                assert!(
                    want == file.contents(),
                    "{} differs from the embedded chart: rebuild cargo-nimify",
                    on_disk.display()
                );
                *seen += 1;
            }
            for sub in dir.dirs() {
                compare(sub, &disk.join(sub.path().file_name().unwrap_or_default()), seen);
            }
        }
        fn count(disk: &Path) -> usize {
            std::fs::read_dir(disk)
                .expect("chart dir")
                .filter_map(Result::ok)
                .map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 })
                .sum()
        }
        let disk = Path::new(env!("CARGO_MANIFEST_DIR")).join("chart");
        let mut seen = 0;
        compare(&CHART, &disk, &mut seen);
        assert_eq!(seen, count(&disk), "cargo-nimify/chart has files the embedded chart lacks: rebuild cargo-nimify");
    }
}
