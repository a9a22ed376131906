//! `cargo nimify new <name> --model x.onnx` and `cargo nimify init`: a service crate that builds
//! and serves with `cargo run`. Templates are embedded, so this works outside this repository.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde_json::json;

use crate::{CliError, IoContext, Out, term};

/// Scaffold templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// The model's typed endpoint, nothing else to write.
    Plain,
    /// Your own request/response types and processing around the model.
    Custom,
}

/// `new` / `init` arguments.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The ONNX model to serve (copied into the crate's `models/`); asked for on a terminal.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// What the generated `main.rs` does.
    #[arg(long, value_enum)]
    pub template: Option<Template>,
    /// Never prompt; fail on missing answers instead.
    #[arg(long)]
    pub no_interactive: bool,
    /// Depend on nimify by this path instead of the published crate.
    #[arg(long)]
    pub nimify_path: Option<PathBuf>,
    /// Initialise a git repository (`new` outside a repository only, as `cargo new`), or none.
    #[arg(long, value_enum, default_value_t = Vcs::Git)]
    pub vcs: Vcs,
}

/// Version control for a new crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Vcs {
    /// `git init` and a `.gitignore`.
    Git,
    /// Neither.
    None,
}

/// `new` arguments.
#[derive(Debug, Args)]
pub struct NewCommand {
    /// Directory (and package name) to create.
    pub name: String,
    /// Model and template.
    #[command(flatten)]
    pub args: NewArgs,
}

fn file(template: Template, name: &str) -> &'static str {
    match (template, name) {
        (Template::Plain, "Cargo.toml") => include_str!("../../templates/plain/Cargo.toml.tmpl"),
        (Template::Plain, "build.rs") => include_str!("../../templates/plain/build.rs.tmpl"),
        (Template::Plain, _) => include_str!("../../templates/plain/src/main.rs.tmpl"),
        (Template::Custom, "Cargo.toml") => include_str!("../../templates/custom/Cargo.toml.tmpl"),
        (Template::Custom, "build.rs") => include_str!("../../templates/custom/build.rs.tmpl"),
        (Template::Custom, _) => include_str!("../../templates/custom/src/main.rs.tmpl"),
    }
}

/// The runtime crate this binary was built from, when it is still there (a workspace checkout).
fn workspace_runtime() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime");
    dir.join("Cargo.toml").is_file().then(|| dir.canonicalize().unwrap_or(dir))
}

fn ask(question: &str) -> Result<String, CliError> {
    eprint!("{question}: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| CliError::msg(format!("cannot read the answer: {e}")))?;
    Ok(line.trim().to_string())
}

struct Answers {
    model: PathBuf,
    template: Template,
    nimify_dep: String,
    /// Why that dependency: said after the crate is written.
    dep_reason: String,
    vcs: Vcs,
}

fn answers(args: &NewArgs) -> Result<Answers, CliError> {
    let interactive = !args.no_interactive && std::io::stdin().is_terminal();
    let model = match (&args.model, interactive) {
        (Some(m), _) => m.clone(),
        (None, true) => PathBuf::from(ask("Path to the ONNX model")?),
        (None, false) => {
            return Err(CliError::with_help(
                "missing --model (no terminal to ask on)",
                "pass --model <path to the .onnx file>",
            ));
        }
    };
    nimify_model::read_model(&model).map_err(|source| CliError::Model { path: model.to_path_buf(), source })?;
    let template = match (args.template, interactive) {
        (Some(t), _) => t,
        (None, true) => match ask("Template: plain (typed endpoint) or custom (your own processing) [plain]")?.as_str()
        {
            "" | "plain" => Template::Plain,
            "custom" => Template::Custom,
            other => return Err(CliError::msg(format!("unknown template {other:?}; use plain or custom"))),
        },
        (None, false) => Template::Plain,
    };
    let (nimify_dep, dep_reason) = match (&args.nimify_path, workspace_runtime()) {
        (Some(p), _) => (path_dep(p), format!("nimify from {} (--nimify-path)", p.display())),
        (None, Some(p)) => (
            path_dep(&p),
            format!(
                "nimify from {}: this cargo-nimify was built from that checkout (pass --nimify-path to choose another)",
                p.display()
            ),
        ),
        (None, None) => (
            format!("nimify = \"{}\"", env!("CARGO_PKG_VERSION")),
            format!("nimify {} from crates.io, the version of this cargo-nimify", env!("CARGO_PKG_VERSION")),
        ),
    };
    Ok(Answers { model, template, nimify_dep, dep_reason, vcs: args.vcs })
}

fn path_dep(p: &Path) -> String {
    format!("nimify = {{ path = {:?} }}", p.display().to_string())
}

fn camel(stem: &str) -> String {
    let s: String = stem
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) { format!("Model{s}") } else { s }
}

fn render(text: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(text.to_string(), |t, (k, v)| t.replace(&format!("{{{{{k}}}}}"), v))
}

/// Writes the crate into `dir` (package `name`); existing files are left alone unless `replace`.
fn scaffold(dir: &Path, name: &str, a: &Answers, replace_main: bool, out: Out) -> Result<(), CliError> {
    let io = |what: &Path, e: std::io::Error| CliError::io("write", what)(e);
    let model_file = a
        .model
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| CliError::msg("--model has no file name"))?;
    let stem = a.model.file_stem().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let model_path = format!("models/{model_file}");
    let struct_name = camel(&stem);
    let vars = [
        ("name", name),
        ("nimify_dep", a.nimify_dep.as_str()),
        ("model_path", model_path.as_str()),
        ("model_file", model_file.as_str()),
        ("model_name", stem.as_str()),
        ("struct_name", struct_name.as_str()),
    ];
    std::fs::create_dir_all(dir.join("src")).map_err(|e| io(dir, e))?;
    std::fs::create_dir_all(dir.join("models")).map_err(|e| io(dir, e))?;
    std::fs::copy(&a.model, dir.join(&model_path)).map_err(|e| io(&dir.join(&model_path), e))?;
    for (target, key) in [("Cargo.toml", "Cargo.toml"), ("build.rs", "build.rs"), ("src/main.rs", "main.rs")] {
        let path = dir.join(target);
        if path.exists() && !(replace_main && target == "src/main.rs") {
            continue;
        }
        std::fs::write(&path, render(file(a.template, key), &vars)).map_err(|e| io(&path, e))?;
    }
    let git = a.vcs == Vcs::Git && git_init(dir)?;
    if a.vcs == Vcs::Git {
        ignore_target(dir)?;
    }
    let template = format!("{:?}", a.template).to_lowercase();
    term::status("Created", format!("nimify service `{name}` serving {model_file} ({template} template)"));
    term::note(format!("the crate depends on {}", a.dep_reason));
    term::note(format!("next: cd {} && cargo run   (then POST /v1/models/{stem}/predict)", dir.display()));
    out.result(dir.display(), || {
        json!({"dir": dir, "package": name, "model": model_path, "template": template, "dependency": a.nimify_dep, "git": git})
    });
    Ok(())
}

/// `git init` unless `dir` is already inside a work tree (as `cargo new`); whether it ran.
/// Without git on PATH it says so and goes on: the crate is complete without a repository.
fn git_init(dir: &Path) -> Result<bool, CliError> {
    let inside = std::process::Command::new("git")
        .args(["rev-parse", "--is-inside-work-tree"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match inside {
        Err(_) => {
            term::warn("git not found on PATH; no repository initialised (pass --vcs none to skip this)");
            Ok(false)
        }
        Ok(s) if s.success() => Ok(false),
        Ok(_) => {
            let done = std::process::Command::new("git")
                .args(["init", "--quiet"])
                .current_dir(dir)
                .status()
                .map_err(|e| CliError::msg(format!("cannot run git init in {}: {e}", dir.display())))?;
            if !done.success() {
                return Err(CliError::msg(format!("`git init` in {} failed ({done})", dir.display())));
            }
            Ok(true)
        }
    }
}

/// `/target` in the crate's `.gitignore`, added to one that is there already.
fn ignore_target(dir: &Path) -> Result<(), CliError> {
    let path = dir.join(".gitignore");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(CliError::io("read", &path)(e)),
    };
    if text.lines().any(|l| matches!(l.trim(), "/target" | "target" | "target/" | "/target/")) {
        return Ok(());
    }
    let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
    std::fs::write(&path, format!("{text}{sep}/target\n")).at("write", &path)
}

/// `cargo nimify new`.
pub fn new(cmd: &NewCommand, out: Out) -> Result<(), CliError> {
    let dir = PathBuf::from(&cmd.name);
    if dir.exists() {
        return Err(CliError::msg(format!(
            "{} already exists; pick another name or use `cargo nimify init` inside it",
            dir.display()
        )));
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| cmd.name.clone());
    scaffold(&dir, &name, &answers(&cmd.args)?, false, out)
}

/// `cargo nimify init`: the current directory, which may already be a crate from `cargo init`.
pub fn init(args: &NewArgs, out: Out) -> Result<(), CliError> {
    let dir = std::env::current_dir().at("read the current directory", ".")?;
    let a = answers(args)?;
    let manifest = dir.join("Cargo.toml");
    let main = dir.join("src/main.rs");
    let default_main = std::fs::read_to_string(&main)
        .is_ok_and(|m| m.trim() == "fn main() {\n    println!(\"Hello, world!\");\n}".trim());
    if main.exists() && !default_main {
        return Err(CliError::msg(format!(
            "{} has your code; move it aside or add `#[nimify::nimify(model = ...)]` by hand",
            main.display()
        )));
    }
    if dir.join("build.rs").exists() {
        return Err(CliError::msg(
            "build.rs exists; add `println!(\"cargo:rerun-if-changed=models/<model>.onnx\");` to it by hand",
        ));
    }
    if manifest.exists() {
        let text = std::fs::read_to_string(&manifest).at("read", &manifest)?;
        if !text.contains("\nnimify") {
            let mut deps = a.nimify_dep.clone();
            if a.template == Template::Custom {
                deps.push_str("\nserde = { version = \"1\", features = [\"derive\"] }\nutoipa = \"5\"");
            }
            let text = if text.contains("[dependencies]") {
                text.replacen("[dependencies]", &format!("[dependencies]\n{deps}"), 1)
            } else {
                format!("{text}\n[dependencies]\n{deps}\n")
            };
            std::fs::write(&manifest, text).at("write", &manifest)?;
        }
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "service".into());
    scaffold(&dir, &name, &a, default_main, out)
}
