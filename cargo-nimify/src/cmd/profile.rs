//! `cargo nimify profile --model x.onnx --data sample.npz`: the reference profile drift is
//! measured against (see `nimify_model::profile` for the format). The model runs on the sample,
//! so its outputs are profiled too.
//!
//! The sample is an `.npz` (one array per input, named after it: `np.savez(path, x=x)`), a
//! `.csv` (a model with one 2-D numeric input: one row per line, a header line optional, an
//! empty cell or `nan` missing), or a directory of V2 inference request bodies (`*.json`).

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use nimify::__private::Tensor;
use nimify::drift::build::{ProfileOptions, Sample, build_profile};
use nimify_model::profile::Mode;

use crate::{CliError, Format, Out};

/// `profile` arguments.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The ONNX model file.
    #[arg(long)]
    pub model: PathBuf,
    /// The sample: an `.npz` with one array per input, a `.csv` for one 2-D numeric input, or a
    /// directory of V2 request JSON files.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the profile [default: next to the model, `<stem>.profile.json`].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Buckets per numeric feature (at the sample's quantiles).
    #[arg(long, default_value_t = 10)]
    pub buckets: usize,
    /// Most categories kept per categorical feature; the rest count as "other".
    #[arg(long, default_value_t = 20)]
    pub max_categories: usize,
    /// How a tensor's rows become features, instead of the rule: `TENSOR=columns`,
    /// `TENSOR=summary` or `TENSOR=tokens[:pad=ID][:unk=ID]` (repeatable).
    #[arg(long = "features", value_name = "TENSOR=MODE")]
    pub features: Vec<String>,
}

/// Runs the command.
pub fn run(args: &ProfileArgs, out: Out) -> Result<(), CliError> {
    let modes = args
        .features
        .iter()
        .map(|spec| {
            let (tensor, mode) = spec.split_once('=').ok_or_else(|| {
                CliError::msg(format!("--features {spec:?}: expected TENSOR=MODE, e.g. pixels=summary"))
            })?;
            Mode::parse(mode)
                .map(|m| (tensor.to_string(), m))
                .map_err(|e| CliError::msg(format!("--features {spec:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let info =
        nimify_model::read_model(&args.model).map_err(|source| CliError::Model { path: args.model.clone(), source })?;
    let sample = read_sample(&args.data, &info)?;
    let options = ProfileOptions { buckets: args.buckets, max_categories: args.max_categories, modes };
    let profile = build_profile(&args.model, sample, &options).map_err(CliError::msg)?;
    let path = args.out.clone().unwrap_or_else(|| default_out(&args.model));
    // Through a temporary file renamed into place: a full disk leaves an earlier profile whole.
    crate::image::output::write_atomic(&path, profile.to_json().as_bytes())?;
    match out.format {
        Format::Json => {
            let doc = serde_json::json!({ "path": path, "rows": profile.rows, "inputs": summary(&profile.inputs), "outputs": summary(&profile.outputs) });
            println!("{doc}");
        }
        Format::Text => {
            eprintln!("profiled {} rows of {}", profile.rows, args.model.display());
            for (io, tensors, all) in
                [("input", &profile.inputs, &info.inputs), ("output", &profile.outputs, &info.outputs)]
            {
                for v in all {
                    match tensors.iter().find(|t| t.name == v.name) {
                        Some(t) => {
                            eprintln!("  {io} {:?}: {} feature(s), {}", t.name, t.features.len(), mode_name(&t.mode))
                        }
                        None => eprintln!("  {io} {:?}: not profiled ({})", v.name, v.ty.onnx_type()),
                    }
                }
            }
            println!("{}", path.display());
        }
    }
    Ok(())
}

fn summary(tensors: &[nimify_model::profile::TensorProfile]) -> serde_json::Value {
    tensors
        .iter()
        .map(|t| serde_json::json!({ "name": t.name, "mode": t.mode, "features": t.features.len() }))
        .collect()
}

fn mode_name(mode: &Mode) -> String {
    match mode {
        Mode::Columns => "columns".into(),
        Mode::Summary => "summary (mean, std, l2)".into(),
        Mode::Tokens { pad, unk } => format!("tokens (pad {pad:?}, unk {unk:?})"),
    }
}

/// `<dir>/<stem>.profile.json` beside the model.
fn default_out(model: &Path) -> PathBuf {
    let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    model.with_file_name(format!("{stem}.profile.json"))
}

fn read_sample(data: &Path, info: &nimify_model::ModelInfo) -> Result<Sample, CliError> {
    if data.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(data)
            .map_err(CliError::io("read", data))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(CliError::msg(format!("{} holds no *.json request files", data.display())));
        }
        let bodies = files
            .into_iter()
            .map(|f| std::fs::read(&f).map(|b| (f.clone(), b)).map_err(CliError::io("read", &f)))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Sample::Requests(bodies));
    }
    match data.extension().and_then(|e| e.to_str()) {
        Some("npz") => read_npz(data).map(Sample::Arrays),
        Some("csv") => read_csv(data, info).map(Sample::Arrays),
        _ => Err(CliError::msg(format!(
            "{}: the sample is an .npz (one array per input), a .csv (one 2-D numeric input) or a directory of V2 request JSON files",
            data.display()
        ))),
    }
}

fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>, CliError> {
    let file = std::fs::File::open(path).map_err(CliError::io("open", path))?;
    let bad = |e: String| CliError::msg(format!("{}: {e}", path.display()));
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not an .npz (zip) file: {e}")))?;
    let mut arrays = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().trim_end_matches(".npy").to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(|e| bad(format!("array {name:?}: {e}")))?;
        let tensor = npy::parse(&bytes).map_err(|e| bad(format!("array {name:?}: {e}")))?;
        arrays.push((name, tensor));
    }
    if arrays.is_empty() {
        return Err(bad("the archive holds no arrays".into()));
    }
    Ok(arrays)
}

fn read_csv(path: &Path, info: &nimify_model::ModelInfo) -> Result<Vec<(String, Tensor)>, CliError> {
    let [input] = info.inputs.as_slice() else {
        return Err(CliError::msg(format!(
            "a .csv sample feeds a model with one input, and this one has {}: use an .npz with one array per input",
            info.inputs.len()
        )));
    };
    let text = std::fs::read_to_string(path).map_err(CliError::io("read", path))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let parse = |cell: &str| -> Option<f64> {
        match cell.trim() {
            "" => Some(f64::NAN),
            c if c.eq_ignore_ascii_case("nan") => Some(f64::NAN),
            c => c.parse().ok(),
        }
    };
    let mut values = Vec::new();
    let mut width = None;
    let mut rows = 0usize;
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<Option<f64>> = line.split(',').map(parse).collect();
        let header = std::mem::replace(&mut first, false);
        if cells.iter().any(Option::is_none) {
            if header {
                continue; // column names
            }
            return Err(CliError::msg(format!("{} line {}: a cell is not a number: {line:?}", path.display(), i + 1)));
        }
        match width {
            Some(w) if w != cells.len() => {
                return Err(CliError::msg(format!(
                    "{} line {}: {} cells, where earlier lines have {w}",
                    path.display(),
                    i + 1,
                    cells.len()
                )));
            }
            _ => width = Some(cells.len()),
        }
        values.extend(cells.into_iter().flatten());
        rows += 1;
    }
    let width = width.ok_or_else(|| CliError::msg(format!("{} has no data rows", path.display())))?;
    let rank1 = matches!(input.ty.as_tensor(), Some((_, Some([_]))));
    let shape = if rank1 && width == 1 { vec![rows] } else { vec![rows, width] };
    let tensor = Tensor::new(shape, nimify::__private::TensorData::F64(values)).map_err(CliError::msg)?;
    Ok(vec![(input.name.clone(), tensor)])
}

/// The `.npy` format: a magic string, a version, a Python-literal header (`descr`,
/// `fortran_order`, `shape`), then the elements in C order.
mod npy {
    use nimify::__private::half::{bf16, f16};
    use nimify::__private::{Tensor, TensorData};

    pub fn parse(bytes: &[u8]) -> Result<Tensor, String> {
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err("not a .npy array".into());
        }
        let (len, start) = match bytes[6] {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
            v => return Err(format!(".npy version {v} is not one this reads (1 to 3)")),
        };
        let header = bytes
            .get(start..start + len)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or("the .npy header is cut short")?;
        let descr = field(header, "descr").ok_or("the .npy header has no descr")?;
        let descr = descr.trim().trim_matches('\'');
        if field(header, "fortran_order").is_some_and(|f| f.trim() == "True") {
            return Err("the array is in Fortran order; save np.ascontiguousarray(a)".into());
        }
        let shape = field(header, "shape").ok_or("the .npy header has no shape")?;
        let shape: Vec<usize> = shape
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad shape entry {s:?}")))
            .collect::<Result<_, _>>()?;
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("the shape overflows")?;
        let body = &bytes[start + len..];
        let data = elements(descr, count, body)?;
        Tensor::new(shape, data)
    }

    /// The value text of `'key': value` in the header dict (up to the next key or the end).
    fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?;
        let end = if rest.trim_start().starts_with('(') {
            rest.find(')').map_or(rest.len(), |i| i + 1)
        } else {
            rest.find(',').unwrap_or(rest.len())
        };
        Some(&rest[..end])
    }

    fn elements(descr: &str, count: usize, body: &[u8]) -> Result<TensorData, String> {
        let (order, kind) = descr.split_at(1.min(descr.len()));
        if order == ">" {
            return Err(format!("big-endian arrays ({descr}) are not read; save a.astype(a.dtype.newbyteorder('<'))"));
        }
        let kind = if matches!(order, "<" | "|" | "=") { kind } else { descr };
        let (code, size) = kind.split_at(1.min(kind.len()));
        if code == "O" {
            return Err("object arrays (pickled Python objects) are not read; save strings as a fixed-width array: a.astype(str)".into());
        }
        let size: usize = size.parse().map_err(|_| format!("unknown dtype {descr:?}"))?;
        let need = count.checked_mul(size).ok_or("the array is too large")?;
        if body.len() < need {
            return Err(format!("the array is cut short: {} bytes of {need}", body.len()));
        }
        let raw = &body[..need];
        macro_rules! numbers {
            ($t:ty, $variant:ident) => {
                TensorData::$variant(
                    raw.chunks_exact(size).map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
                )
            };
        }
        Ok(match (code, size) {
            ("f", 2) => TensorData::F16(raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect()),
            ("f", 4) => numbers!(f32, F32),
            ("f", 8) => numbers!(f64, F64),
            // ml_dtypes' bfloat16 is saved as 2-byte void.
            ("V", 2) => TensorData::Bf16(raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]])).collect()),
            ("i", 1) => numbers!(i8, I8),
            ("i", 2) => numbers!(i16, I16),
            ("i", 4) => numbers!(i32, I32),
            ("i", 8) => numbers!(i64, I64),
            ("u", 1) => TensorData::U8(raw.to_vec()),
            ("u", 2) => numbers!(u16, U16),
            ("u", 4) => numbers!(u32, U32),
            ("u", 8) => numbers!(u64, U64),
            ("b", 1) => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
            ("S", _) => TensorData::Bytes(
                raw.chunks_exact(size.max(1)).map(|c| c.iter().copied().take_while(|&b| b != 0).collect()).collect(),
            ),
            ("U", _) => {
                // UTF-32 little-endian, `size` characters each, NUL-padded.
                let width = size.checked_mul(4).ok_or("the array is too large")?;
                let need = count.checked_mul(width).ok_or("the array is too large")?;
                let raw = body
                    .get(..need)
                    .ok_or_else(|| format!("the array is cut short: {} bytes of {need}", body.len()))?;
                TensorData::Bytes(
                    raw.chunks_exact(width.max(4))
                        .map(|c| {
                            c.chunks_exact(4)
                                .map(|u| u32::from_le_bytes([u[0], u[1], u[2], u[3]]))
                                .take_while(|&u| u != 0)
                                .filter_map(char::from_u32)
                                .collect::<String>()
                                .into_bytes()
                        })
                        .collect(),
                )
            }
            _ => return Err(format!("dtype {descr:?} is not one nimify reads")),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn npy(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
            let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
            let mut out = b"\x93NUMPY\x01\x00".to_vec();
            out.extend(u16::try_from(header.len()).expect("valid").to_le_bytes());
            out.extend(header.as_bytes());
            out.extend(body);
            out
        }

        #[test]
        fn reads_numbers_strings_and_refuses_the_rest() {
            let body: Vec<u8> = [1.5f32, 2.5, 3.5, 4.5].iter().flat_map(|x| x.to_le_bytes()).collect();
            let t = parse(&npy("<f4", "(2, 2)", &body)).expect("valid");
            assert_eq!((t.shape.clone(), t.data), (vec![2, 2], TensorData::F32(vec![1.5, 2.5, 3.5, 4.5])));
            let s: Vec<u8> = ["ab", "c"]
                .iter()
                .flat_map(|w| {
                    let mut v: Vec<u8> = w.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
                    v.resize(8, 0);
                    v
                })
                .collect();
            let t = parse(&npy("<U2", "(2,)", &s)).expect("valid");
            assert_eq!(t.data, TensorData::Bytes(vec![b"ab".to_vec(), b"c".to_vec()]));
            assert!(parse(&npy("<f4", "(3,)", &body[..8])).expect_err("must fail").contains("cut short"));
            assert!(parse(&npy(">f4", "(1,)", &body[..4])).expect_err("must fail").contains("big-endian"));
            assert!(parse(&npy("|O", "(1,)", &body[..8])).expect_err("must fail").contains("object arrays"));
            assert!(parse(b"PK\x03\x04").expect_err("must fail").contains("not a .npy"));
        }
    }
}
