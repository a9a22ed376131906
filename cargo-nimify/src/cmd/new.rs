//! `cargo nimify new <name> --model x.onnx` and `cargo nimify init`: a service crate that builds
//! and serves with `cargo run`. Templates are embedded, so this works outside this repository.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use crate::{CliError, IoContext};

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
    let nimify_dep = match args.nimify_path.clone().or_else(workspace_runtime) {
        Some(p) => format!("nimify = {{ path = {:?} }}", p.display().to_string()),
        None => format!("nimify = \"{}\"", env!("CARGO_PKG_VERSION")),
    };
    Ok(Answers { model, template, nimify_dep })
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
fn scaffold(dir: &Path, name: &str, a: &Answers, replace_main: bool) -> Result<(), CliError> {
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
    crate::term::status("Created", format!("nimify service `{name}` serving {model_file} ({:?} template)", a.template));
    eprintln!("        Next: cd {} && cargo run   (then POST /v1/models/{stem}/predict)", dir.display());
    Ok(())
}

/// `cargo nimify new`.
pub fn new(cmd: &NewCommand) -> Result<(), CliError> {
    let dir = PathBuf::from(&cmd.name);
    if dir.exists() {
        return Err(CliError::msg(format!(
            "{} already exists; pick another name or use `cargo nimify init` inside it",
            dir.display()
        )));
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| cmd.name.clone());
    scaffold(&dir, &name, &answers(&cmd.args)?, false)
}

/// `cargo nimify init`: the current directory, which may already be a crate from `cargo init`.
pub fn init(args: &NewArgs) -> Result<(), CliError> {
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
    scaffold(&dir, &name, &a, default_main)
}
