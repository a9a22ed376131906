//! Reference profiles for drift monitoring: what a model's inputs and outputs looked like on
//! training-like data, written by `cargo nimify profile` and compared online by the server.
//!
//! A profile is JSON with the schema name [`SCHEMA`] (`nimify.profile/v1`):
//!
//! ```json
//! { "schema": "nimify.profile/v1",
//!   "model": { "name": "churn", "sha256": "…" },
//!   "rows": 5000, "epsilon": 0.0001,
//!   "inputs": [ { "name": "x", "datatype": "FP32", "mode": { "kind": "columns" },
//!                 "features": [ { "name": "0", "missing": 0.0, "type": "numeric",
//!                                 "edges": [ … ], "shares": [ … ], "min": -3.1, "max": 2.9 } ] } ],
//!   "outputs": [ … ] }
//! ```
//!
//! Each tensor is cut into rows along dim 0 and each row into features by its [`Mode`]:
//! `columns` (one feature per element of the row: tabular data, labels, scores), `summary`
//! (mean, standard deviation and L2 norm of the row: images, embeddings) or `tokens` (length,
//! padding share, share of unknown tokens among the others, and mean id of a row of token ids).
//! A feature is numeric (bucket
//! edges at reference quantiles, bucket `i` holding values `v` with `edges[i-1] <= v <
//! edges[i]`, as numpy's `searchsorted(edges, v, side="right")`) or categorical (the most
//! frequent categories, then "other"); every feature also has a missing bucket (NaN or
//! infinite, an empty string), whose reference share is `missing`. Shares are of all rows, so a feature's value
//! shares and `missing` sum to 1.
//!
//! Drift is the population stability index of the window's bucket shares `a` against the
//! reference's `e`: `PSI = Σ (a - e) · ln(a / e)`, with every share (both sides) raised to at
//! least `epsilon` first so that an empty bucket counts without dividing by zero ([`psi`]).

use serde::{Deserialize, Serialize};

use crate::{Dim, ElementType, ValueInfo};

/// The schema name this crate reads and writes.
pub const SCHEMA: &str = "nimify.profile/v1";

/// The share an empty bucket counts as, on both sides of [`psi`].
pub const DEFAULT_EPSILON: f64 = 1e-4;

/// Summary features, in this order, of a tensor in [`Mode::Summary`].
pub const SUMMARY_FEATURES: [&str; 3] = ["mean", "std", "l2"];

/// Token features, in this order, of a tensor in [`Mode::Tokens`].
pub const TOKEN_FEATURES: [&str; 4] = ["length", "padding_share", "unknown_share", "mean_id"];

/// Rows with at most this many elements are cut into columns by default.
pub const MAX_COLUMNS: u64 = 64;

/// Most buckets (or columns) a feature (or a tensor) may have.
pub const MAX_BUCKETS: usize = 1000;

/// A model's reference profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The model the profile was made with.
    pub model: ProfiledModel,
    /// Rows in the sample.
    pub rows: u64,
    /// The least share a bucket counts as in [`psi`].
    pub epsilon: f64,
    /// Input tensors profiled.
    pub inputs: Vec<TensorProfile>,
    /// Output tensors profiled.
    pub outputs: Vec<TensorProfile>,
}

/// The model a profile was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfiledModel {
    /// Its name (the file stem).
    pub name: String,
    /// The hex sha256 of its file.
    pub sha256: String,
}

/// One tensor's features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorProfile {
    /// Exact tensor name.
    pub name: String,
    /// KServe datatype (`FP32`, `INT64`, `BYTES`, …).
    pub datatype: String,
    /// How rows become features.
    pub mode: Mode,
    /// The features, in the order the mode makes them.
    pub features: Vec<Feature>,
}

/// How a tensor's rows become features.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mode {
    /// One feature per element of a row (rank 1: the element itself; rank 2: each column).
    Columns,
    /// Mean, standard deviation and L2 norm of each row's elements.
    Summary,
    /// Token ids: each row's length (tokens other than `pad`), padding share, share of `unk`
    /// among the tokens other than padding, and their mean id.
    Tokens {
        /// The padding id, when the model has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pad: Option<i64>,
        /// The unknown-token id, when the model has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unk: Option<i64>,
    },
}

impl Mode {
    /// `columns`, `summary` or `tokens`.
    pub fn kind(&self) -> &'static str {
        match self {
            Mode::Columns => "columns",
            Mode::Summary => "summary",
            Mode::Tokens { .. } => "tokens",
        }
    }

    /// The mode chosen by rule for a tensor: rows of at most [`MAX_COLUMNS`] fixed elements
    /// (rank 0 or 1, or rank 2 with a fixed last dim) are columns; other integer tensors of rank
    /// 2 are token ids; other numeric tensors are summarised. `None`: strings and booleans in
    /// rows that are not columns, which nothing summarises.
    pub fn by_rule(elem: ElementType, dims: Option<&[Dim]>) -> Option<Mode> {
        let mode = match dims {
            Some([] | [_]) => Mode::Columns,
            Some([_, Dim::Fixed(n)]) if *n <= MAX_COLUMNS => Mode::Columns,
            Some([_, _]) if is_integer(elem) => Mode::Tokens { pad: Some(0), unk: None },
            _ => Mode::Summary,
        };
        mode.fits(elem, dims).ok().map(|_| mode)
    }

    /// Whether a tensor of `elem` with `dims` can be cut this way; for columns, how many.
    pub fn fits(&self, elem: ElementType, dims: Option<&[Dim]>) -> Result<Option<u64>, String> {
        match self {
            Mode::Columns => match dims {
                Some([] | [_]) => Ok(Some(1)),
                Some([_, Dim::Fixed(n)]) if *n > 0 && *n <= MAX_BUCKETS as u64 => Ok(Some(*n)),
                _ => Err(format!(
                    "`columns` needs rank 0, 1, or 2 with a fixed last dim (1 to {MAX_BUCKETS}), and the model declares {}",
                    shape_text(dims)
                )),
            },
            Mode::Summary if matches!(elem, ElementType::String | ElementType::Bool) => {
                Err(format!("`summary` needs numbers, and the tensor holds {}", elem.kserve_name().unwrap_or("BYTES")))
            }
            Mode::Tokens { .. } if !is_integer(elem) => Err(format!(
                "`tokens` needs integer token ids, and the tensor holds {}",
                elem.kserve_name().unwrap_or("BYTES")
            )),
            Mode::Summary | Mode::Tokens { .. } => Ok(None),
        }
    }

    /// The feature names this mode makes for rows of `columns` elements (`None`: not known).
    pub fn feature_names(&self, columns: Option<u64>) -> Option<Vec<String>> {
        match self {
            Mode::Columns => columns.map(|n| (0..n).map(|i| i.to_string()).collect()),
            Mode::Summary => Some(SUMMARY_FEATURES.iter().map(ToString::to_string).collect()),
            Mode::Tokens { .. } => Some(TOKEN_FEATURES.iter().map(ToString::to_string).collect()),
        }
    }

    /// Parses `columns`, `summary` or `tokens[:pad=N][:unk=N]` (`cargo nimify profile --features`).
    pub fn parse(text: &str) -> Result<Mode, String> {
        let mut parts = text.split(':');
        match parts.next().unwrap_or_default() {
            "columns" | "summary" if text.contains(':') => Err(format!("{text:?}: only `tokens` takes options")),
            "columns" => Ok(Mode::Columns),
            "summary" => Ok(Mode::Summary),
            "tokens" => {
                let (mut pad, mut unk) = (None, None);
                for part in parts {
                    let (key, value) = part.split_once('=').unwrap_or((part, ""));
                    let id = value.parse::<i64>().map_err(|_| format!("{part:?}: expected `pad=ID` or `unk=ID`"))?;
                    match key {
                        "pad" => pad = Some(id),
                        "unk" => unk = Some(id),
                        _ => return Err(format!("{part:?}: expected `pad=ID` or `unk=ID`")),
                    }
                }
                Ok(Mode::Tokens { pad, unk })
            }
            other => {
                Err(format!("unknown feature mode {other:?}; expected columns, summary or tokens[:pad=ID][:unk=ID]"))
            }
        }
    }
}

/// Whether `elem` is an integer type (token ids, categories).
pub fn is_integer(elem: ElementType) -> bool {
    use ElementType::*;
    matches!(elem, Uint8 | Uint16 | Uint32 | Uint64 | Int8 | Int16 | Int32 | Int64)
}

/// One feature of a tensor (unknown keys are ignored here: serde cannot refuse them beside the
/// flattened [`Stats`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    /// Column index, or the summary or token feature's name.
    pub name: String,
    /// Share of reference rows where the value was missing (NaN or infinite, an empty string).
    pub missing: f64,
    /// The buckets.
    #[serde(flatten)]
    pub stats: Stats,
}

/// A feature's buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Stats {
    /// Numbers: `edges.len() + 1` buckets.
    Numeric {
        /// Increasing bucket edges.
        edges: Vec<f64>,
        /// Reference share of each bucket.
        shares: Vec<f64>,
        /// Smallest value seen (none when every value was missing).
        min: Option<f64>,
        /// Largest value seen.
        max: Option<f64>,
    },
    /// Categories (integers and booleans as decimal text, `0` / `1` for booleans): one bucket
    /// each, then "other".
    Categorical {
        /// The most frequent categories.
        categories: Vec<String>,
        /// Reference share of each category, then of all others.
        shares: Vec<f64>,
    },
}

impl Stats {
    /// `numeric` or `categorical`.
    pub fn kind(&self) -> &'static str {
        match self {
            Stats::Numeric { .. } => "numeric",
            Stats::Categorical { .. } => "categorical",
        }
    }

    /// Reference shares of every bucket: the value buckets, then missing.
    pub fn all_shares(&self, missing: f64) -> Vec<f64> {
        let shares = match self {
            Stats::Numeric { shares, .. } | Stats::Categorical { shares, .. } => shares,
        };
        shares.iter().copied().chain([missing]).collect()
    }

    /// A readable name for bucket `i` (as [`Stats::all_shares`] orders them).
    pub fn bucket_label(&self, i: usize) -> String {
        match self {
            Stats::Numeric { edges, .. } => match i {
                _ if i > edges.len() => "missing".into(),
                0 if edges.is_empty() => "all".into(),
                0 => format!("< {}", edges[0]),
                _ if i == edges.len() => format!(">= {}", edges[i - 1]),
                _ => format!("[{}, {})", edges[i - 1], edges[i]),
            },
            Stats::Categorical { categories, .. } => match categories.get(i) {
                Some(c) => c.clone(),
                None if i == categories.len() => "other".into(),
                None => "missing".into(),
            },
        }
    }
}

/// Population stability index of `actual` shares against `expected` ones, each share raised to
/// at least `epsilon` first: `Σ (a - e) · ln(a / e)`.
pub fn psi(expected: &[f64], actual: &[f64], epsilon: f64) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(epsilon), a.max(epsilon));
            (a - e) * (a / e).ln()
        })
        .sum()
}

impl Profile {
    /// Parses a profile, naming the field at fault.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let profile: Profile = serde_path_to_error::deserialize(de).map_err(|e| {
            if matches!(e.inner().classify(), serde_json::error::Category::Syntax | serde_json::error::Category::Eof) {
                return format!("not a JSON profile ({})", e.inner());
            }
            match e.path().to_string() {
                p if p == "." => e.inner().to_string(),
                p => format!("{p}: {}", e.inner()),
            }
        })?;
        if profile.schema != SCHEMA {
            return Err(format!("schema {:?} is not one this version reads ({SCHEMA})", profile.schema));
        }
        Ok(profile)
    }

    /// The profile as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks the profile against a model's signature: every profiled tensor is one of the
    /// model's, with its datatype and, per mode, the feature count its shape makes; and every
    /// feature's buckets are well formed. Returns every problem found.
    pub fn check_against(&self, inputs: &[ValueInfo], outputs: &[ValueInfo]) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !(self.epsilon > 0.0 && self.epsilon < 0.5) {
            problems.push(format!("epsilon {} is not between 0 and 0.5", self.epsilon));
        }
        if self.inputs.is_empty() && self.outputs.is_empty() {
            problems.push("it profiles no tensor".into());
        }
        let mut unknown = false;
        for (what, tensors, values) in [("input", &self.inputs, inputs), ("output", &self.outputs, outputs)] {
            for (i, t) in tensors.iter().enumerate() {
                if tensors[..i].iter().any(|o| o.name == t.name) {
                    problems.push(format!("{what} {:?} is profiled twice", t.name));
                }
                match values.iter().find(|v| v.name == t.name) {
                    None => {
                        let names: Vec<String> = values.iter().map(|v| format!("{:?}", v.name)).collect();
                        problems.push(format!(
                            "the model has no {what} {:?} (its {what}s: {})",
                            t.name,
                            names.join(", ")
                        ));
                        unknown = true;
                    }
                    Some(v) => problems.extend(t.check(what, v)),
                }
            }
        }
        if unknown {
            problems.push("was the profile made for another model?".into());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

impl TensorProfile {
    fn check(&self, what: &str, value: &ValueInfo) -> Vec<String> {
        let mut problems = Vec::new();
        let at = format!("{what} {:?}", self.name);
        let Some((Some(elem), dims)) = value.ty.as_tensor() else {
            return vec![format!("{at} is a {} in the model, not a tensor that can be profiled", value.ty.onnx_type())];
        };
        let Some(datatype) = elem.kserve_name() else {
            return vec![format!("{at} holds {}, which cannot be profiled", elem.onnx_name())];
        };
        if self.datatype != datatype {
            problems.push(format!("{at} is {} in the profile but {datatype} in the model", self.datatype));
        }
        let names: Vec<&str> = self.features.iter().map(|f| f.name.as_str()).collect();
        match self.mode.fits(elem, dims) {
            Err(e) => problems.push(format!("{at}: {e}")),
            Ok(Some(n)) if n != self.features.len() as u64 => problems.push(format!(
                "{at} has {} feature(s) in the profile but {n} column(s) in the model (shape {})",
                self.features.len(),
                shape_text(dims)
            )),
            Ok(_) => match self.mode.feature_names(Some(self.features.len() as u64)) {
                Some(expected) if expected != names => {
                    problems.push(format!("{at}: `{}` has the features {expected:?}, not {names:?}", self.mode.kind()));
                }
                _ => {}
            },
        }
        let floats =
            matches!(elem, ElementType::Float | ElementType::Double | ElementType::Float16 | ElementType::Bfloat16);
        for f in &self.features {
            let wrong_kind = match (&f.stats, self.mode == Mode::Columns) {
                (Stats::Numeric { .. }, true) => elem == ElementType::String,
                (Stats::Categorical { .. }, true) => floats,
                (Stats::Categorical { .. }, false) => true,
                (Stats::Numeric { .. }, false) => false,
            };
            if wrong_kind {
                problems.push(format!("{at} feature {:?}: {datatype} values cannot be {}", f.name, f.stats.kind()));
            } else if let Err(e) = f.check() {
                problems.push(format!("{at} feature {:?}: {e}", f.name));
            }
        }
        problems
    }
}

/// Dims as `[batch, 6]`, or `unknown rank`.
fn shape_text(dims: Option<&[Dim]>) -> String {
    match dims {
        None => "unknown rank".into(),
        Some(dims) => {
            let each: Vec<String> = dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => n.to_string(),
                    Dim::Symbolic(s) => s.clone(),
                    Dim::Unknown => "?".into(),
                })
                .collect();
            format!("[{}]", each.join(", "))
        }
    }
}

impl Feature {
    fn check(&self) -> Result<(), String> {
        let (buckets, shares) = match &self.stats {
            Stats::Numeric { edges, shares, .. } => {
                if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("edges must be finite and increasing".into());
                }
                (edges.len() + 1, shares)
            }
            Stats::Categorical { categories, shares } => {
                // Integers are looked up by value: "1" and "01" would be one category twice.
                let mut seen = std::collections::HashSet::new();
                if let Some(c) =
                    categories.iter().find(|c| !seen.insert(c.parse::<i64>().map_or((*c).clone(), |n| n.to_string())))
                {
                    return Err(format!("category {c:?} is listed twice"));
                }
                (categories.len() + 1, shares)
            }
        };
        if buckets > MAX_BUCKETS {
            return Err(format!("{buckets} buckets; at most {MAX_BUCKETS}"));
        }
        if shares.len() != buckets {
            return Err(format!("{} share(s) for {buckets} bucket(s)", shares.len()));
        }
        let total: f64 = shares.iter().sum::<f64>() + self.missing;
        if shares.iter().chain([&self.missing]).any(|s| !(0.0..=1.0).contains(s)) || (total - 1.0).abs() > 1e-6 {
            return Err(format!("shares and the missing share must lie in [0, 1] and sum to 1 (they sum to {total})"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_floors_both_sides_at_epsilon() {
        assert_eq!(psi(&[0.5, 0.5], &[0.5, 0.5], 1e-4), 0.0);
        let got = psi(&[1.0, 0.0], &[0.5, 0.5], 1e-4);
        let want = (0.5f64 - 1.0) * (0.5f64).ln() + (0.5 - 1e-4) * (0.5f64 / 1e-4).ln();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn modes_parse_and_refuse() {
        assert_eq!(Mode::parse("tokens:pad=0:unk=1"), Ok(Mode::Tokens { pad: Some(0), unk: Some(1) }));
        assert_eq!(Mode::parse("summary"), Ok(Mode::Summary));
        assert!(Mode::parse("summary:pad=1").is_err());
        assert!(Mode::parse("tokens:pad=x").is_err());
        assert!(Mode::parse("pixels").expect_err("must fail").contains("unknown feature mode"));
    }

    #[test]
    fn rules_pick_columns_tokens_and_summary() {
        let b = || Dim::Symbolic("batch".into());
        assert_eq!(Mode::by_rule(ElementType::Float, Some(&[b(), Dim::Fixed(6)])), Some(Mode::Columns));
        assert_eq!(Mode::by_rule(ElementType::Int64, Some(&[b()])), Some(Mode::Columns));
        assert_eq!(Mode::by_rule(ElementType::Float, Some(&[])), Some(Mode::Columns));
        assert_eq!(Mode::by_rule(ElementType::Float, Some(&[b(), Dim::Fixed(768)])), Some(Mode::Summary));
        assert_eq!(
            Mode::by_rule(ElementType::Int64, Some(&[b(), Dim::Symbolic("seq".into())])),
            Some(Mode::Tokens { pad: Some(0), unk: None })
        );
        assert_eq!(Mode::by_rule(ElementType::Float, Some(&[b(), Dim::Fixed(3), Dim::Fixed(32)])), Some(Mode::Summary));
        // Strings in rows wider than columns: nothing to summarise them with.
        assert_eq!(Mode::by_rule(ElementType::String, Some(&[b(), Dim::Symbolic("n".into())])), None);
        assert!(Mode::Tokens { pad: None, unk: None }.fits(ElementType::Float, None).is_err());
    }

    #[test]
    fn bucket_labels_read_like_intervals() {
        let s = Stats::Numeric { edges: vec![1.0, 2.0], shares: vec![0.3, 0.3, 0.4], min: Some(0.0), max: Some(3.0) };
        let labels: Vec<String> = (0..4).map(|i| s.bucket_label(i)).collect();
        assert_eq!(labels, ["< 1", "[1, 2)", ">= 2", "missing"]);
        let c = Stats::Categorical { categories: vec!["a".into()], shares: vec![0.9, 0.1] };
        assert_eq!((0..3).map(|i| c.bucket_label(i)).collect::<Vec<_>>(), ["a", "other", "missing"]);
    }
}
