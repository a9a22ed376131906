//! The service crate `build`, `image`, `chart` and `deploy` work on: which package and binary
//! (cargo_metadata, `--package`, `--bin`), its target directory, and its settings from
//! `[package.metadata.nimify]` layered over `[workspace.metadata.nimify]` (flags override both).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::CliError;

/// Which crate and binary to work on.
#[derive(Debug, Clone, Default, Args)]
pub struct ProjectArgs {
    /// Path to the service's Cargo.toml [default: the one for the current directory].
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// Package of the service [default: the package in the current directory].
    #[arg(long, short = 'p', value_name = "SPEC")]
    pub package: Option<String>,
    /// Binary of the service [default: the package's only binary, or its default-run].
    #[arg(long, value_name = "NAME")]
    pub bin: Option<String>,
    /// No crate: an ONNX model served by the generic server (`cargo nimify serve`), named after
    /// the file, or a model repository directory, named after it; its image, chart and
    /// deployment work as a service crate's do.
    #[arg(long, value_name = "FILE|DIR", conflicts_with_all = ["manifest_path", "package", "bin"])]
    pub model: Option<PathBuf>,
}

/// `[package.metadata.nimify]` (and `[workspace.metadata.nimify]`), kebab-case.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Image name (repository path without the registry) [default: the package name].
    pub image: Option<String>,
    /// Image tag [default: the package version].
    pub tag: Option<String>,
    /// Registry to push to, e.g. `ghcr.io/acme` or `127.0.0.1:5000`.
    pub registry: Option<String>,
    /// Base image (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]` or `docker://REGISTRY/NAME[:TAG|@DIGEST]`)
    /// instead of the host's libraries.
    pub base: Option<String>,
    /// Files or directories (relative to the crate) the service reads at run time via
    /// `nimify::asset!`; packed next to the binary.
    pub assets: Vec<PathBuf>,
    /// Deployment environments (`[package.metadata.nimify.env.<name>]`).
    pub env: BTreeMap<String, Environment>,
}

/// One deployment environment.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Environment {
    /// Kubernetes namespace.
    pub namespace: Option<String>,
    /// Helm release name.
    pub release: Option<String>,
    /// kubectl context.
    pub context: Option<String>,
    /// Extra values file, relative to the crate.
    pub values: Option<PathBuf>,
}

impl Settings {
    /// `self` with every key `over` sets replaced (package over workspace).
    fn layered(mut self, over: Self) -> Self {
        macro_rules! take {
            ($($f:ident),*) => { $(if over.$f.is_some() { self.$f = over.$f; })* };
        }
        take!(image, tag, registry, base);
        if !over.assets.is_empty() {
            self.assets = over.assets;
        }
        self.env.extend(over.env);
        self
    }
}

/// The resolved service crate.
#[derive(Debug, Clone)]
pub struct Project {
    /// Package name.
    pub package: String,
    /// Package version.
    pub version: String,
    /// `repository` from Cargo.toml, if any.
    pub repository: Option<String>,
    /// Package description, if any.
    pub description: Option<String>,
    /// Path to the package's Cargo.toml.
    pub manifest_path: PathBuf,
    /// The binary target's name.
    pub bin: String,
    /// Cargo's target directory.
    pub target_dir: PathBuf,
    /// Layered `[*.metadata.nimify]` settings.
    pub settings: Settings,
    /// Zero-code: the model the generic server serves (`--model`); no crate, nothing to build.
    pub model: Option<PathBuf>,
}

impl Project {
    /// Finds the package and binary with cargo metadata, or stands in for one with `--model`.
    pub fn load(args: &ProjectArgs) -> Result<Self, CliError> {
        if let Some(model) = &args.model {
            return Self::for_model(model);
        }
        let mut cmd = cargo_metadata::MetadataCommand::new();
        // Its complaint is quoted inside ours: plain text, whatever CARGO_TERM_COLOR says.
        cmd.no_deps().env("CARGO_TERM_COLOR", "never");
        if let Some(path) = &args.manifest_path {
            cmd.manifest_path(path);
        }
        let meta = cmd
            .exec()
            .map_err(|e| {
                CliError::with_help(
                    format!("cannot read the cargo workspace: {}", metadata_error(&e)),
                    "run in the service crate's directory or pass --manifest-path; `cargo nimify new NAME --model MODEL.onnx` creates a service crate",
                )
            })?;
        let members: Vec<&cargo_metadata::Package> = meta.workspace_packages();
        let package = match &args.package {
            Some(name) => members.iter().find(|p| p.name.as_str() == name).copied().ok_or_else(|| {
                let names: Vec<&str> = members.iter().map(|p| p.name.as_str()).collect();
                CliError::msg(format!("package `{name}` is not in this workspace (members: {})", names.join(", ")))
            })?,
            None => current_package(&members, args.manifest_path.as_deref())?,
        };
        let bin = pick_bin(package, args.bin.as_deref())?;
        let workspace =
            settings_from(&meta.workspace_metadata, "[workspace.metadata.nimify]", meta.workspace_root.as_std_path())?;
        let own = settings_from(&package.metadata, "[package.metadata.nimify]", package.manifest_path.as_std_path())?;
        Ok(Self {
            package: package.name.to_string(),
            version: package.version.to_string(),
            repository: package.repository.clone(),
            description: package.description.clone(),
            manifest_path: package.manifest_path.clone().into_std_path_buf(),
            bin,
            target_dir: meta.target_directory.clone().into_std_path_buf(),
            settings: workspace.layered(own),
            model: None,
        })
    }

    /// A zero-code service: the package is named after the model file (lower case, as image
    /// names must be) and state goes to `./target/nimify/<name>/`. `image` tags it by the
    /// model's digest; `chart` and `deploy` read the model only through `image.json`.
    /// A model repository directory (`REPO/<name>/<version>/model.onnx`) stands in the same way,
    /// named after the directory.
    fn for_model(model: &Path) -> Result<Self, CliError> {
        if !model.is_file() && !model.is_dir() {
            return Err(CliError::msg(format!("model file {} not found", model.display())));
        }
        let stem = if model.is_dir() { model.file_name() } else { model.file_stem() }
            .map(|s| s.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let name: String =
            stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
        let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
        if name.is_empty() {
            return Err(CliError::msg(format!("cannot name a service after {}; rename the file", model.display())));
        }
        let cwd = std::env::current_dir().map_err(CliError::io("read the current directory", "."))?;
        let model = std::fs::canonicalize(model).map_err(CliError::io("find", model))?;
        Ok(Self {
            package: name,
            version: "0.1.0".into(),
            repository: None,
            description: Some(format!("{} served by nimify", model.file_name().unwrap_or_default().to_string_lossy())),
            manifest_path: model.clone(),
            bin: "cargo-nimify".into(),
            target_dir: cwd.join("target"),
            settings: Settings::default(),
            model: Some(model),
        })
    }

    /// The crate's directory.
    pub fn dir(&self) -> &Path {
        self.manifest_path.parent().unwrap_or(Path::new("."))
    }

    /// `target/nimify/<package>/`, where `image` records its result for `chart` and `deploy`.
    pub fn state_dir(&self) -> PathBuf {
        self.target_dir.join("nimify").join(&self.package)
    }
}

/// cargo's own complaint, on one line and without its `error: ` (ours leads the line).
fn metadata_error(e: &cargo_metadata::Error) -> String {
    let text = match e {
        cargo_metadata::Error::CargoMetadata { stderr } => stderr.replace("error: ", ""),
        other => other.to_string(),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The member whose directory holds the current directory (or the given manifest).
fn current_package<'a>(
    members: &[&'a cargo_metadata::Package],
    manifest: Option<&Path>,
) -> Result<&'a cargo_metadata::Package, CliError> {
    let here = match manifest {
        Some(m) => std::fs::canonicalize(m).ok().and_then(|p| p.parent().map(Path::to_path_buf)),
        None => std::env::current_dir().ok().and_then(|d| std::fs::canonicalize(d).ok()),
    };
    let here = here.ok_or_else(|| CliError::msg("cannot tell the current directory"))?;
    members
        .iter()
        .filter_map(|p| {
            let dir = std::fs::canonicalize(p.manifest_path.parent()?.as_std_path()).ok()?;
            here.starts_with(&dir).then_some((dir.components().count(), *p))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            let names: Vec<&str> = members.iter().map(|p| p.name.as_str()).collect();
            CliError::with_help(
                format!("{} is not inside a package of this workspace (members: {})", here.display(), names.join(", ")),
                "run in the service crate's directory, or pass --package or --manifest-path",
            )
        })
}

fn pick_bin(package: &cargo_metadata::Package, wanted: Option<&str>) -> Result<String, CliError> {
    let bins: Vec<&str> = package.targets.iter().filter(|t| t.is_bin()).map(|t| t.name.as_str()).collect();
    match (wanted, bins.as_slice()) {
        (Some(w), _) if bins.contains(&w) => Ok(w.to_string()),
        (Some(w), _) => {
            Err(CliError::msg(format!("package `{}` has no binary `{w}` (binaries: {})", package.name, list(&bins))))
        }
        (None, []) => Err(CliError::with_help(
            format!("package `{}` has no binary target", package.name),
            "a nimify service needs a `src/main.rs` calling `nimify::cli::run`; `cargo nimify init --model MODEL.onnx` adds one",
        )),
        (None, [one]) => Ok((*one).to_string()),
        (None, _) => package.default_run.clone().ok_or_else(|| {
            CliError::with_help(
                format!("package `{}` has several binaries ({})", package.name, list(&bins)),
                "pick one with --bin, or set `default-run` in its Cargo.toml",
            )
        }),
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

fn settings_from(metadata: &serde_json::Value, table: &str, file: &Path) -> Result<Settings, CliError> {
    match metadata.get("nimify") {
        None | Some(serde_json::Value::Null) => Ok(Settings::default()),
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| CliError::msg(format!("{table} in {}: {e}", file.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_settings_override_workspace_ones() {
        let ws: Settings =
            serde_json::from_value(serde_json::json!({"registry": "ghcr.io/acme", "tag": "ws", "assets": ["a"]}))
                .expect("workspace");
        let pkg: Settings =
            serde_json::from_value(serde_json::json!({"tag": "pkg", "env": {"dev": {"namespace": "dev"}}}))
                .expect("package");
        let got = ws.layered(pkg);
        assert_eq!(got.registry.as_deref(), Some("ghcr.io/acme"));
        assert_eq!(got.tag.as_deref(), Some("pkg"));
        assert_eq!(got.assets, vec![PathBuf::from("a")]);
        assert_eq!(got.env["dev"].namespace.as_deref(), Some("dev"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = settings_from(
            &serde_json::json!({"nimify": {"imag": "x"}}),
            "[package.metadata.nimify]",
            Path::new("Cargo.toml"),
        )
        .expect_err("typo");
        assert!(err.to_string().contains("unknown field `imag`"), "{err}");
        let err = settings_from(
            &serde_json::json!({"nimify": {"env": {"dev": {"namespce": "x"}}}}),
            "[package.metadata.nimify]",
            Path::new("Cargo.toml"),
        )
        .expect_err("typo");
        assert!(err.to_string().contains("namespce"), "{err}");
    }
}
