//! Building a reference profile (`cargo nimify profile`): the model runs on the sample, batch by
//! batch, and every profiled tensor's features are bucketed at the sample's quantiles.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nimify_model::profile::{DEFAULT_EPSILON, Feature, Mode, Profile, ProfiledModel, SCHEMA, Stats, TensorProfile};
use nimify_model::{ElementType, ValueInfo};

use super::features::{Value, visit};
use crate::tensor::{Tensor, TensorData};

/// How to cut and bucket the sample.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// Buckets per numeric feature (fewer when values repeat).
    pub buckets: usize,
    /// Most categories kept per categorical feature (the rest are "other"); an integer column
    /// with more distinct values than this is profiled as numbers.
    pub max_categories: usize,
    /// Modes chosen instead of the rule, by tensor name.
    pub modes: Vec<(String, Mode)>,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        Self { buckets: 10, max_categories: 20, modes: Vec::new() }
    }
}

/// The sample a profile is made from.
#[derive(Debug)]
pub enum Sample {
    /// One array per input, rows along dim 0 (`.npz`, `.csv`): run in batches of
    /// [`BATCH_ROWS`] rows (or of the model's fixed dim 0).
    Arrays(Vec<(String, Tensor)>),
    /// V2 inference request bodies (JSON), each run as it is.
    Requests(Vec<(PathBuf, Vec<u8>)>),
}

/// Rows per model run when profiling arrays.
pub const BATCH_ROWS: usize = 256;

/// Runs the model at `path` on the sample and profiles its inputs and tensor outputs.
pub fn build_profile(path: &Path, sample: Sample, options: &ProfileOptions) -> Result<Profile, String> {
    if !(2..=100).contains(&options.buckets) {
        return Err(format!("--buckets {} must be between 2 and 100", options.buckets));
    }
    if !(1..nimify_model::profile::MAX_BUCKETS).contains(&options.max_categories) {
        return Err(format!(
            "--max-categories {} must be between 1 and {}",
            options.max_categories,
            nimify_model::profile::MAX_BUCKETS - 1
        ));
    }
    let info = nimify_model::read_model(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let batches = batches(path, &info, sample)?;
    let sha256 = nimify_model::file_sha256(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for (name, mode) in &options.modes {
        let Some(v) = info.inputs.iter().chain(&info.outputs).find(|v| &v.name == name) else {
            let names: Vec<String> = info.inputs.iter().chain(&info.outputs).map(|v| format!("{:?}", v.name)).collect();
            return Err(format!(
                "--features names {name:?}, which the model does not have (it has {})",
                names.join(", ")
            ));
        };
        match v.ty.as_tensor() {
            Some((Some(elem), dims)) => {
                mode.fits(elem, dims).map_err(|e| format!("--features {name}={}: {e}", mode.kind()))?;
            }
            _ => return Err(format!("--features names {name:?}, a {}: only tensors are profiled", v.ty.onnx_type())),
        }
    }
    // Tensors that cannot be profiled (maps, sequences, strings in rows too wide for columns)
    // are left out; `cargo nimify profile` lists what it profiled.
    let mode_of = |v: &ValueInfo| -> Option<Mode> {
        let (elem, dims) = v.ty.as_tensor()?;
        let elem = elem?;
        elem.kserve_name()?;
        match options.modes.iter().find(|(n, _)| n == &v.name) {
            Some((_, m)) => Some(m.clone()),
            None => Mode::by_rule(elem, dims),
        }
    };
    let mut inputs: Vec<Collector> = info.inputs.iter().filter_map(|v| Some(Collector::new(v, mode_of(v)?))).collect();
    let mut outputs: Vec<Collector> =
        info.outputs.iter().filter_map(|v| Some(Collector::new(v, mode_of(v)?))).collect();
    let env = crate::ortlib::environment().map_err(|e| e.to_string())?;
    let config = crate::config::SessionConfig::default();
    let mut session = crate::model::open_session(env, path, &config)
        .map_err(|e| format!("{}: ONNX Runtime cannot load it: {e}", path.display()))?;
    let names: Vec<String> = info.inputs.iter().map(|v| v.name.clone()).collect();
    for (i, mut batch) in batches.into_iter().enumerate() {
        let mut ordered = Vec::with_capacity(names.len());
        for name in &names {
            let at = batch.iter().position(|(n, _)| n == name).ok_or_else(|| {
                format!("sample batch {} has no input {name:?}; give every input the model takes", i + 1)
            })?;
            ordered.push(batch.swap_remove(at).1);
        }
        for c in &mut inputs {
            let at = names.iter().position(|n| n == &c.name).unwrap_or_default();
            check_elem(c, &ordered[at], i)?;
            c.add(&ordered[at]);
        }
        let produced = crate::batcher::run_session(&mut session, &names, ordered, None, None)
            .map_err(|e| format!("the model failed on sample batch {}: {e}", i + 1))?;
        for c in &mut outputs {
            if let Some((_, t)) = produced.iter().find(|(n, _)| n == &c.name) {
                c.add(t);
            }
        }
    }
    let rows = inputs.first().map_or(0, |c| c.rows as u64);
    if rows == 0 {
        return Err("the sample has no rows".into());
    }
    let model =
        ProfiledModel { name: path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), sha256 };
    // An output the model did not produce (none of its rows) has nothing to compare with.
    let finish = |all: Vec<Collector>| -> Result<Vec<TensorProfile>, String> {
        all.into_iter().filter(|c| c.rows > 0).map(|c| c.finish(options)).collect()
    };
    let profile = Profile {
        schema: SCHEMA.into(),
        model,
        rows,
        epsilon: DEFAULT_EPSILON,
        inputs: finish(inputs)?,
        outputs: finish(outputs)?,
    };
    // What the server will check at start, checked before anything is written.
    profile
        .check_against(&info.inputs, &info.outputs)
        .map_err(|problems| format!("the sample does not make a usable profile: {}", problems.join("; ")))?;
    Ok(profile)
}

fn check_elem(c: &Collector, t: &Tensor, batch: usize) -> Result<(), String> {
    let got = t.data.element_type();
    if got != c.elem {
        return Err(format!(
            "sample batch {}: input {:?} holds {} values but the model takes {}",
            batch + 1,
            c.name,
            got.kserve_name().unwrap_or("BYTES"),
            c.elem.kserve_name().unwrap_or("BYTES")
        ));
    }
    Ok(())
}

/// The sample cut into model runs, each holding every input.
fn batches(path: &Path, info: &nimify_model::ModelInfo, sample: Sample) -> Result<Vec<Vec<(String, Tensor)>>, String> {
    let (inputs, outputs) = crate::model::specs(path, info).map_err(|e| e.to_string())?;
    match sample {
        Sample::Requests(files) => files
            .into_iter()
            .map(|(file, body)| {
                crate::v2::codec::decode_for("profile", &inputs, &outputs, None, &body.into())
                    .map(|d| d.inputs)
                    .map_err(|e| format!("{}: {e}", file.display()))
            })
            .collect(),
        Sample::Arrays(arrays) => {
            for spec in &inputs {
                if !arrays.iter().any(|(n, _)| n == &spec.name) {
                    let given: Vec<String> = arrays.iter().map(|(n, _)| format!("{n:?}")).collect();
                    return Err(format!(
                        "the sample has no array for input {:?} (it has {}); name each array after the input it feeds",
                        spec.name,
                        given.join(", ")
                    ));
                }
            }
            if let Some((extra, _)) = arrays.iter().find(|(n, _)| !inputs.iter().any(|s| &s.name == n)) {
                let names: Vec<String> = inputs.iter().map(|s| format!("{:?}", s.name)).collect();
                return Err(format!(
                    "the sample has an array {extra:?}, which is not an input of the model ({})",
                    names.join(", ")
                ));
            }
            let arrays = arrays
                .into_iter()
                .map(|(n, t)| {
                    let spec = inputs.iter().find(|s| s.name == n).map(|s| s.elem);
                    match spec {
                        Some(elem) => cast(t, elem).map(|t| (n.clone(), t)).map_err(|e| format!("array {n:?}: {e}")),
                        None => Ok((n, t)),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let rows: Vec<usize> = arrays.iter().map(|(_, t)| t.shape.first().copied().unwrap_or(1)).collect();
            if rows.windows(2).any(|w| w[0] != w[1]) {
                let each: Vec<String> = arrays.iter().zip(&rows).map(|((n, _), r)| format!("{n:?}: {r}")).collect();
                return Err(format!("the sample's arrays have different row counts ({})", each.join(", ")));
            }
            let total = rows.first().copied().unwrap_or(0);
            let fixed = inputs.iter().find_map(|s| match s.shape.as_deref() {
                Some([nimify_model::Dim::Fixed(n), ..]) => usize::try_from(*n).ok(),
                _ => None,
            });
            let step = fixed.unwrap_or(BATCH_ROWS).max(1);
            if fixed.is_some() && total % step != 0 {
                return Err(format!("the model takes batches of exactly {step} rows, and the sample has {total}"));
            }
            Ok((0..total)
                .step_by(step)
                .map(|start| {
                    let end = (start + step).min(total);
                    arrays.iter().map(|(n, t)| (n.clone(), slice_rows(t, start, end))).collect()
                })
                .collect())
        }
    }
}

/// `t` with `elem` elements: floats become the model's float type (a sample saved as float64
/// for a float32 model); integers, and floats that are all whole numbers (a CSV), its integer
/// type when they fit. Anything else must already match.
#[allow(clippy::cast_possible_truncation)]
fn cast(t: Tensor, elem: ElementType) -> Result<Tensor, String> {
    use half::{bf16, f16};
    let have = t.data.element_type();
    if have == elem {
        return Ok(t);
    }
    let refuse = |why: &str| {
        format!(
            "the sample holds {} values and the model takes {}{why}; save the array with the model's type",
            have.kserve_name().unwrap_or("BYTES"),
            elem.kserve_name().unwrap_or("BYTES")
        )
    };
    let floats = || -> Result<Vec<f64>, String> {
        match &t.data {
            TensorData::F16(v) => Ok(v.iter().map(|x| f64::from(*x)).collect()),
            TensorData::Bf16(v) => Ok(v.iter().map(|x| f64::from(*x)).collect()),
            TensorData::F32(v) => Ok(v.iter().map(|x| f64::from(*x)).collect()),
            TensorData::F64(v) => Ok(v.clone()),
            _ => Err(refuse("")),
        }
    };
    let ints = || -> Result<Vec<i64>, String> {
        let from_floats = |v: Vec<f64>| {
            v.into_iter()
                .map(|x| {
                    // Whole numbers within i64 (2^63 is the first float past it).
                    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
                    if x.fract() == 0.0 && (-LIMIT..LIMIT).contains(&x) {
                        Ok(x as i64)
                    } else {
                        Err(refuse(&format!(" (it has {x}, not a whole number)")))
                    }
                })
                .collect()
        };
        match &t.data {
            TensorData::F16(_) | TensorData::Bf16(_) | TensorData::F32(_) | TensorData::F64(_) => {
                from_floats(floats()?)
            }
            data => crate::tensor::for_each_numeric!(data, v => {
                if nimify_model::profile::is_integer(have) {
                    v.iter()
                        .map(|x| super::features::Element::integer(*x).ok_or_else(|| refuse(" (a value does not fit)")))
                        .collect()
                } else {
                    Err(refuse(""))
                }
            }, _b => Err(refuse(""))),
        }
    };
    macro_rules! narrow {
        ($variant:ident, $t:ty) => {
            TensorData::$variant(
                ints()?
                    .into_iter()
                    .map(|x| <$t>::try_from(x).map_err(|_| refuse(&format!(" ({x} does not fit)"))))
                    .collect::<Result<_, _>>()?,
            )
        };
    }
    use ElementType as E;
    let data = match elem {
        E::Float => TensorData::F32(floats()?.into_iter().map(|x| x as f32).collect()),
        E::Double => TensorData::F64(floats()?),
        E::Float16 => TensorData::F16(floats()?.into_iter().map(f16::from_f64).collect()),
        E::Bfloat16 => TensorData::Bf16(floats()?.into_iter().map(bf16::from_f64).collect()),
        E::Int64 => TensorData::I64(ints()?),
        E::Int32 => narrow!(I32, i32),
        E::Int16 => narrow!(I16, i16),
        E::Int8 => narrow!(I8, i8),
        E::Uint64 => narrow!(U64, u64),
        E::Uint32 => narrow!(U32, u32),
        E::Uint16 => narrow!(U16, u16),
        E::Uint8 => narrow!(U8, u8),
        _ => return Err(refuse("")),
    };
    Ok(Tensor { shape: t.shape, data })
}

/// Rows `start..end` (dim 0) of `t`.
fn slice_rows(t: &Tensor, start: usize, end: usize) -> Tensor {
    let (_, width) = super::features::rows(t);
    let (a, b) = (start * width, end * width);
    macro_rules! slice {
        ($($variant:ident),*) => {
            match &t.data {
                $(TensorData::$variant(v) => TensorData::$variant(v[a..b].to_vec()),)*
            }
        };
    }
    let data = slice!(Bool, U8, U16, U32, U64, I8, I16, I32, I64, F16, Bf16, F32, F64, Bytes);
    let mut shape = t.shape.clone();
    if let Some(first) = shape.first_mut() {
        *first = end - start;
    }
    Tensor { shape, data }
}

/// A value kept for profiling.
#[derive(Debug, Clone, PartialEq)]
enum Owned {
    Num(f64),
    Int(i64),
    Str(Vec<u8>),
}

/// One tensor's feature values over the whole sample.
struct Collector {
    name: String,
    elem: ElementType,
    mode: Mode,
    rows: usize,
    features: Vec<Vec<Owned>>,
}

impl Collector {
    fn new(v: &ValueInfo, mode: Mode) -> Self {
        let elem = v.ty.as_tensor().and_then(|(e, _)| e).unwrap_or(ElementType::String);
        Self { name: v.name.clone(), elem, mode, rows: 0, features: Vec::new() }
    }

    /// Adds a batch's rows.
    fn add(&mut self, t: &Tensor) {
        let features = &mut self.features;
        let n = visit(t, &self.mode, |_, feature, value| {
            if features.len() <= feature {
                features.resize_with(feature + 1, Vec::new);
            }
            features[feature].push(match value {
                Value::Num(x) => Owned::Num(x),
                Value::Int(i) => Owned::Int(i),
                Value::Str(s) => Owned::Str(s.to_vec()),
            });
        });
        self.rows += n;
    }

    fn finish(self, options: &ProfileOptions) -> Result<TensorProfile, String> {
        let names = match self.mode.feature_names(None) {
            Some(names) => names,
            None => (0..self.features.len()).map(|i| i.to_string()).collect(),
        };
        if self.features.len() != names.len() && !self.features.is_empty() {
            return Err(format!("{:?}: rows of different widths in the sample", self.name));
        }
        let rows = self.rows;
        let features = self
            .features
            .into_iter()
            .zip(names)
            .map(|(values, name)| {
                if values.len() != rows {
                    return Err(format!("{:?}: rows of different widths in the sample", self.name));
                }
                Ok(profile_feature(name, values, options))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(TensorProfile {
            name: self.name,
            datatype: self.elem.kserve_name().unwrap_or("BYTES").into(),
            mode: self.mode,
            features,
        })
    }
}

#[allow(clippy::cast_precision_loss)]
fn profile_feature(name: String, values: Vec<Owned>, options: &ProfileOptions) -> Feature {
    let total = values.len() as f64;
    let is_missing = |v: &Owned| match v {
        Owned::Num(x) => !x.is_finite(),
        Owned::Str(s) => s.is_empty(),
        Owned::Int(_) => false,
    };
    let missing = values.iter().filter(|v| is_missing(v)).count();
    let present: Vec<Owned> = values.into_iter().filter(|v| !is_missing(v)).collect();
    let categorical = match present.first() {
        Some(Owned::Str(_)) => true,
        Some(Owned::Int(_)) => {
            present.iter().map(key).collect::<std::collections::HashSet<_>>().len() <= options.max_categories
        }
        _ => false,
    };
    let stats = if categorical {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for v in &present {
            *counts.entry(key(v)).or_default() += 1;
        }
        let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let kept: Vec<(String, usize)> = ranked.iter().take(options.max_categories).cloned().collect();
        let other: usize = ranked.iter().skip(options.max_categories).map(|(_, n)| n).sum();
        Stats::Categorical {
            categories: kept.iter().map(|(c, _)| c.clone()).collect(),
            shares: kept.iter().map(|(_, n)| *n as f64 / total).chain([other as f64 / total]).collect(),
        }
    } else {
        let mut xs: Vec<f64> = present
            .iter()
            .map(|v| match v {
                Owned::Num(x) => *x,
                Owned::Int(i) => *i as f64,
                Owned::Str(_) => f64::NAN,
            })
            .collect();
        xs.sort_by(f64::total_cmp);
        // The reference's min opens the first bucket and a bucket starts just above its max, so
        // values beyond anything seen have buckets of their own (reference share 0): a feature
        // that was constant still drifts when it moves.
        let mut edges: Vec<f64> = Vec::new();
        if let (Some(&min), Some(&max)) = (xs.first(), xs.last()) {
            let inner = (1..options.buckets).map(|k| quantile(&xs, k as f64 / options.buckets as f64));
            for q in std::iter::once(min).chain(inner).chain([max.next_up()]) {
                if q.is_finite() && edges.last().is_none_or(|last| q > *last) {
                    edges.push(q);
                }
            }
        }
        let mut counts = vec![0usize; edges.len() + 1];
        for x in &xs {
            counts[edges.partition_point(|e| e <= x)] += 1;
        }
        Stats::Numeric {
            shares: counts.iter().map(|&n| n as f64 / total).collect(),
            edges,
            min: xs.first().copied(),
            max: xs.last().copied(),
        }
    };
    Feature { name, missing: missing as f64 / total, stats }
}

/// The category a value stands for: integers in decimal, strings as (lossy) UTF-8.
fn key(v: &Owned) -> String {
    match v {
        Owned::Int(i) => i.to_string(),
        Owned::Str(s) => String::from_utf8_lossy(s).into_owned(),
        Owned::Num(x) => x.to_string(),
    }
}

/// The `q` quantile of sorted values, interpolated linearly (numpy's default).
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_buckets_hold_equal_shares() {
        let values: Vec<Owned> = (0..100).map(|i| Owned::Num(f64::from(i))).chain([Owned::Num(f64::NAN)]).collect();
        let f = profile_feature("0".into(), values, &ProfileOptions::default());
        let Stats::Numeric { edges, shares, min, max } = &f.stats else { panic!("{f:?}") };
        assert_eq!(edges.len(), 11);
        assert_eq!((min, max), (&Some(0.0), &Some(99.0)));
        assert_eq!((edges[0], edges[10]), (0.0, 99.0f64.next_up()));
        assert_eq!((shares[0], shares[11]), (0.0, 0.0));
        assert!(shares[1..11].iter().all(|s| (s - 10.0 / 101.0).abs() < 1e-9), "{shares:?}");
        assert!((f.missing - 1.0 / 101.0).abs() < 1e-12);
    }

    #[test]
    fn few_integers_are_categories_and_many_are_numbers() {
        let few: Vec<Owned> = (0..50).map(|i| Owned::Int(i % 3)).collect();
        let f = profile_feature("0".into(), few, &ProfileOptions::default());
        assert!(matches!(&f.stats, Stats::Categorical { categories, .. } if categories.len() == 3));
        let many: Vec<Owned> = (0..50).map(Owned::Int).collect();
        let f = profile_feature("0".into(), many, &ProfileOptions::default());
        assert!(matches!(f.stats, Stats::Numeric { .. }));
    }

    #[test]
    fn a_constant_feature_has_one_edge() {
        let f = profile_feature("0".into(), vec![Owned::Num(2.0); 10], &ProfileOptions::default());
        let Stats::Numeric { edges, shares, .. } = &f.stats else { panic!() };
        assert_eq!(edges, &[2.0, 2.0f64.next_up()]);
        assert_eq!(shares, &[0.0, 1.0, 0.0]);
    }
}
