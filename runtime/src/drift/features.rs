//! Rows of a tensor cut into features by a profile's [`Mode`], and values put into the buckets
//! of a profiled [`Feature`]: the same code for `cargo nimify profile` and for the server, so a
//! profile and the windows compared with it agree on what a feature is.

use std::collections::HashMap;

use half::{bf16, f16};
use nimify_model::profile::{Feature, Mode, Stats};

use crate::tensor::{Tensor, TensorData, for_each_numeric};

/// One feature value of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    /// A number (NaN: missing).
    Num(f64),
    /// An integer or boolean (0 / 1), kept exact for categories.
    Int(i64),
    /// A string (empty: missing).
    Str(&'a [u8]),
}

/// Element types read as numbers (and integers, where they are).
pub(crate) trait Element: Copy {
    fn number(self) -> f64;
    fn integer(self) -> Option<i64>;
}

macro_rules! integer_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            #[allow(clippy::cast_precision_loss, clippy::cast_lossless)]
            fn number(self) -> f64 { self as f64 }
            #[allow(clippy::cast_possible_wrap)]
            fn integer(self) -> Option<i64> { Some(self as i64) }
        }
    )*};
}
integer_element!(u8, u16, u32, i8, i16, i32, i64);

impl Element for u64 {
    #[allow(clippy::cast_precision_loss)]
    fn number(self) -> f64 {
        self as f64
    }
    /// Above `i64::MAX` a value is only a number.
    fn integer(self) -> Option<i64> {
        i64::try_from(self).ok()
    }
}

impl Element for bool {
    fn number(self) -> f64 {
        f64::from(u8::from(self))
    }
    fn integer(self) -> Option<i64> {
        Some(i64::from(self))
    }
}

macro_rules! float_element {
    ($($t:ty => $conv:expr),*) => {$(
        impl Element for $t {
            fn number(self) -> f64 { $conv(self) }
            fn integer(self) -> Option<i64> { None }
        }
    )*};
}
float_element!(f32 => f64::from, f64 => std::convert::identity, f16 => f64::from, bf16 => f64::from);

/// Rows (dim 0; a scalar is one row) and elements per row of `tensor` (no rows: no width, for
/// a shape such as `[0, 2^62, 2^62]` holds no element to count).
pub(crate) fn rows(tensor: &Tensor) -> (usize, usize) {
    match tensor.shape.split_first() {
        None => (1, 1),
        Some((0, _)) => (0, 0),
        Some((&n, rest)) => (n, crate::tensor::element_count(rest).unwrap_or(0)),
    }
}

/// Calls `f(row, feature, value)` for every feature of every row of `tensor`, rows in order and
/// features in the order `mode` makes them; returns the number of rows.
pub(crate) fn visit<'a>(tensor: &'a Tensor, mode: &Mode, mut f: impl FnMut(usize, usize, Value<'a>)) -> usize {
    let (n, width) = rows(tensor);
    if n == 0 {
        return 0;
    }
    if width == 0 && !matches!(mode, Mode::Columns) {
        // Empty rows: every summary is missing.
        let features = mode.feature_names(None).map_or(0, |v| v.len());
        for row in 0..n {
            for feature in 0..features {
                f(row, feature, Value::Num(f64::NAN));
            }
        }
        return n;
    }
    match (&tensor.data, mode) {
        (TensorData::Bytes(strings), _) => {
            // Strings are only ever columns (the profile check refuses the other modes).
            for (i, s) in strings.iter().enumerate() {
                f(i / width.max(1), i % width.max(1), Value::Str(s));
            }
        }
        (data, Mode::Columns) => for_each_numeric!(data, v => columns(v, width, &mut f), _b => {}),
        (data, Mode::Summary) => for_each_numeric!(data, v => summary(v, width, &mut f), _b => {}),
        (data, Mode::Tokens { pad, unk }) => {
            for_each_numeric!(data, v => tokens(v, width, *pad, *unk, &mut f), _b => {})
        }
    }
    n
}

fn columns<'a, T: Element>(values: &[T], width: usize, f: &mut impl FnMut(usize, usize, Value<'a>)) {
    for (row, chunk) in values.chunks(width.max(1)).enumerate() {
        for (column, &x) in chunk.iter().enumerate() {
            f(row, column, x.integer().map_or(Value::Num(x.number()), Value::Int));
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn summary<'a, T: Element>(values: &[T], width: usize, f: &mut impl FnMut(usize, usize, Value<'a>)) {
    for (row, chunk) in values.chunks(width).enumerate() {
        let (mut sum, mut squares) = (0.0f64, 0.0f64);
        for &x in chunk {
            let x = x.number();
            sum += x;
            squares += x * x;
        }
        let n = chunk.len() as f64;
        let mean = sum / n;
        // Population variance from the two sums; clamped at 0 against rounding.
        let std = (squares / n - mean * mean).max(0.0).sqrt();
        let l2 = squares.sqrt();
        let missing = !sum.is_finite() || !squares.is_finite();
        for (i, v) in [mean, std, l2].into_iter().enumerate() {
            f(row, i, Value::Num(if missing { f64::NAN } else { v }));
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn tokens<'a, T: Element>(
    values: &[T],
    width: usize,
    pad: Option<i64>,
    unk: Option<i64>,
    f: &mut impl FnMut(usize, usize, Value<'a>),
) {
    for (row, chunk) in values.chunks(width).enumerate() {
        let (mut pads, mut unknown, mut sum) = (0usize, 0usize, 0.0f64);
        for &x in chunk {
            let id = x.integer();
            if id.is_some() && id == pad {
                pads += 1;
                continue;
            }
            if id.is_some() && id == unk {
                unknown += 1;
            }
            sum += x.number();
        }
        let n = chunk.len() as f64;
        let length = chunk.len() - pads;
        // Shares of the tokens other than padding: a longer or shorter text is not "more unknown".
        let (unknown, mean) =
            if length == 0 { (f64::NAN, f64::NAN) } else { (unknown as f64 / length as f64, sum / length as f64) };
        for (i, v) in [length as f64, pads as f64 / n, unknown, mean].into_iter().enumerate() {
            f(row, i, Value::Num(v));
        }
    }
}

/// What became of one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// In a bucket, within the reference's range.
    Usual,
    /// Outside the reference's min/max (numbers only).
    OutOfRange,
    /// NaN, infinite or an empty string: in the missing bucket.
    Missing,
}

/// Puts values into one profiled feature's buckets: the value buckets, then missing.
#[derive(Debug)]
pub(crate) enum Buckets {
    Numeric { edges: Vec<f64>, min: f64, max: f64 },
    Categorical { ints: HashMap<i64, usize>, strings: HashMap<Vec<u8>, usize>, other: usize },
}

impl Buckets {
    pub(crate) fn new(feature: &Feature) -> Self {
        match &feature.stats {
            Stats::Numeric { edges, min, max, .. } => Buckets::Numeric {
                edges: edges.clone(),
                min: min.unwrap_or(f64::INFINITY),
                max: max.unwrap_or(f64::NEG_INFINITY),
            },
            Stats::Categorical { categories, .. } => {
                let mut ints = HashMap::new();
                let mut strings = HashMap::new();
                for (i, c) in categories.iter().enumerate() {
                    if let Ok(n) = c.parse::<i64>() {
                        ints.entry(n).or_insert(i);
                    }
                    strings.entry(c.as_bytes().to_vec()).or_insert(i);
                }
                Buckets::Categorical { ints, strings, other: categories.len() }
            }
        }
    }

    /// Value buckets plus the missing one.
    pub(crate) fn count(&self) -> usize {
        match self {
            Buckets::Numeric { edges, .. } => edges.len() + 2,
            Buckets::Categorical { other, .. } => other + 2,
        }
    }

    /// The bucket `value` falls in.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    pub(crate) fn place(&self, value: Value<'_>) -> (usize, Seen) {
        let missing = self.count() - 1;
        match self {
            Buckets::Numeric { edges, min, max } => {
                let x = match value {
                    Value::Num(x) => x,
                    Value::Int(i) => i as f64,
                    Value::Str(_) => f64::NAN,
                };
                if !x.is_finite() {
                    return (missing, Seen::Missing);
                }
                let seen = if x < *min || x > *max { Seen::OutOfRange } else { Seen::Usual };
                (edges.partition_point(|e| *e <= x), seen)
            }
            Buckets::Categorical { ints, strings, other } => {
                let found = match value {
                    Value::Int(i) => ints.get(&i),
                    Value::Str([]) => return (missing, Seen::Missing),
                    Value::Str(s) => strings.get(s),
                    Value::Num(x) if !x.is_finite() => return (missing, Seen::Missing),
                    Value::Num(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => ints.get(&(x as i64)),
                    Value::Num(_) => None,
                };
                (found.copied().unwrap_or(*other), Seen::Usual)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(t: &Tensor, mode: &Mode) -> Vec<(usize, usize, String)> {
        let mut out = Vec::new();
        visit(t, mode, |r, c, v| out.push((r, c, format!("{v:?}"))));
        out
    }

    #[test]
    fn columns_cut_rows_by_the_last_dim() {
        let t = Tensor::new(vec![2, 2], TensorData::F32(vec![1.0, 2.0, 3.0, f32::NAN])).expect("valid");
        let got = collect(&t, &Mode::Columns);
        assert_eq!(got[2], (1, 0, "Num(3.0)".into()));
        assert_eq!(got[3], (1, 1, "Num(NaN)".into()));
        let ints = Tensor::new(vec![3], TensorData::I64(vec![4, 5, 6])).expect("valid");
        assert_eq!(collect(&ints, &Mode::Columns)[2], (2, 0, "Int(6)".into()));
    }

    #[test]
    fn summaries_and_tokens() {
        let t = Tensor::new(vec![1, 4], TensorData::U8(vec![1, 1, 3, 3])).expect("valid");
        let mut got = Vec::new();
        visit(&t, &Mode::Summary, |_, _, v| got.push(v));
        assert_eq!(got, [Value::Num(2.0), Value::Num(1.0), Value::Num(20f64.sqrt())]);
        let ids = Tensor::new(vec![1, 5], TensorData::I64(vec![7, 1, 9, 0, 0])).expect("valid");
        let mut got = Vec::new();
        visit(&ids, &Mode::Tokens { pad: Some(0), unk: Some(1) }, |_, _, v| got.push(v));
        assert_eq!(got, [Value::Num(3.0), Value::Num(0.4), Value::Num(1.0 / 3.0), Value::Num(17.0 / 3.0)]);
        // No rows, whatever the other dims claim: nothing to visit, no overflow.
        let none = Tensor { shape: vec![0, 1 << 62, 1 << 62], data: TensorData::F32(Vec::new()) };
        assert_eq!(visit(&none, &Mode::Summary, |_, _, _| panic!("no rows")), 0);
    }

    #[test]
    fn buckets_follow_searchsorted_right() {
        let f = Feature {
            name: "0".into(),
            missing: 0.0,
            stats: Stats::Numeric {
                edges: vec![1.0, 2.0],
                shares: vec![0.2, 0.3, 0.5],
                min: Some(0.5),
                max: Some(3.0),
            },
        };
        let b = Buckets::new(&f);
        assert_eq!(b.place(Value::Num(1.0)), (1, Seen::Usual));
        assert_eq!(b.place(Value::Num(0.9)), (0, Seen::Usual));
        assert_eq!(b.place(Value::Num(9.0)), (2, Seen::OutOfRange));
        assert_eq!(b.place(Value::Num(f64::NAN)), (3, Seen::Missing));
        assert_eq!(b.place(Value::Num(f64::INFINITY)), (3, Seen::Missing));
        let c = Feature {
            name: "0".into(),
            missing: 0.0,
            stats: Stats::Categorical { categories: vec!["3".into(), "a".into()], shares: vec![0.5, 0.5, 0.0] },
        };
        let b = Buckets::new(&c);
        assert_eq!(b.place(Value::Int(3)).0, 0);
        assert_eq!(b.place(Value::Str(b"a")).0, 1);
        assert_eq!(b.place(Value::Int(4)).0, 2);
        assert_eq!(b.place(Value::Str(b"")), (3, Seen::Missing));
    }
}
