//! `cargo nimify inspect x.onnx`: the model's signature as a table, or JSON with `--format json`.
//! Reads only the signature (never the weights) plus one streaming pass for the sha256.
//! `cargo nimify inspect REPO` lists what a model repository would serve.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use nimify_model::{Dim, ModelInfo, ValueInfo, ValueType};
use serde::Serialize;

use crate::{CliError, Format, IoContext, Out};

/// `inspect` arguments.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The ONNX model file, or a model repository directory.
    pub model: PathBuf,
}

#[derive(Serialize)]
struct Report<'a> {
    path: String,
    sha256: String,
    #[serde(flatten)]
    info: &'a ModelInfo,
}

/// Runs the command.
pub fn run(args: &InspectArgs, out: Out) -> Result<(), CliError> {
    if args.model.is_dir() {
        return super::inspect_repository::run(&args.model, out);
    }
    let info = nimify_model::read_model(&args.model)
        .map_err(|source| CliError::Model { path: args.model.to_path_buf(), source })?;
    let sha256 = nimify_model::file_sha256(&args.model).at("hash", &args.model)?;
    let path = args.model.display().to_string();
    match out.format {
        Format::Json => {
            let report = Report { path, sha256, info: &info };
            let json = serde_json::to_string_pretty(&report).map_err(|e| CliError::msg(e.to_string()))?;
            println!("{json}");
        }
        Format::Text => print!("{}", table(&path, &sha256, &info)),
    }
    Ok(())
}

/// The human-readable report.
pub fn table(path: &str, sha256: &str, info: &ModelInfo) -> String {
    let mut out = String::new();
    let opsets = info
        .opsets
        .iter()
        .map(|o| format!("{} {}", if o.domain.is_empty() { "ai.onnx" } else { &o.domain }, o.version))
        .collect::<Vec<_>>()
        .join(", ");
    let producer = format!("{} {}", info.producer_name, info.producer_version);
    let rows = [
        ("model", path.to_string()),
        ("size", human_size(info.file_size)),
        ("sha256", sha256.to_string()),
        ("ir version", info.ir_version.to_string()),
        ("opsets", opsets),
        ("producer", producer.trim().to_string()),
        ("graph", info.graph_name.clone()),
        ("initializers", info.initializer_count.to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<13}{v}");
    }
    if !info.doc_string.is_empty() {
        let _ = writeln!(out, "{:<13}{}", "description", info.doc_string);
    }
    let mut table = vec![["".to_string(), "name".into(), "type".into(), "shape".into()]];
    table.extend(info.inputs.iter().map(|v| row("input", v)));
    table.extend(info.outputs.iter().map(|v| row("output", v)));
    let widths: Vec<usize> = (0..4).map(|c| table.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    out.push('\n');
    for r in &table {
        let line = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect::<Vec<_>>().join("  ");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if !info.metadata.is_empty() {
        let _ = writeln!(out, "\nmetadata");
        for (k, v) in &info.metadata {
            let _ = writeln!(out, "  {k} = {v:?}");
        }
    }
    if !info.external_data.is_empty() {
        let _ = writeln!(out, "\nexternal data");
        for e in &info.external_data {
            let _ =
                writeln!(out, "  {} -> {} (offset {}, length {})", e.tensor, e.location, opt(e.offset), opt(e.length));
        }
    }
    out
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub(crate) fn row(kind: &str, v: &ValueInfo) -> [String; 4] {
    let ty = match &v.ty {
        ValueType::Tensor { elem: Some(e), .. } => {
            e.kserve_name().map_or_else(|| v.ty.onnx_type(), |k| format!("{k} ({})", e.onnx_name()))
        }
        other => other.onnx_type(),
    };
    let shape = match &v.ty {
        ValueType::Tensor { shape, .. } | ValueType::SparseTensor { shape, .. } => match shape {
            Some(dims) => format!("[{}]", dims.iter().map(dim).collect::<Vec<_>>().join(", ")),
            None => "unknown rank".into(),
        },
        _ => "-".into(),
    };
    [kind.into(), quote_if_odd(&v.name), ty, shape]
}

fn dim(d: &Dim) -> String {
    match d {
        Dim::Fixed(n) => n.to_string(),
        Dim::Symbolic(s) => quote_if_odd(s),
        Dim::Unknown => "?".into(),
    }
}

/// Names made only of identifier characters print bare; anything else is quoted so that spaces,
/// quotes and a dim literally named `?` stay unambiguous.
fn quote_if_odd(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit} ({bytes} bytes)")
}
