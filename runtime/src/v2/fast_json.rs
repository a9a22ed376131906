//! The fast reader of V2 JSON requests: one pass over the body that parses each input's `data`
//! straight into a buffer of the input's element type (no `serde_json::Value` per element, no
//! second walk to flatten or check nesting), with the fields around it (`id`, `parameters`,
//! `shape`, `outputs`, keys it does not know) read by serde_json from their own spans, so they
//! mean exactly what the derived types say.
//!
//! It only ever answers "these are the request and its tensors" or "not mine": anything it does
//! not take (a malformed body, an element that does not fit its type, data nested unlike its
//! shape, escaped keys, a scalar `data`, BF16) goes to the reference decoder, which gives the
//! answer and the error message. So it must never take a body the reference refuses, nor read an
//! element differently: `fuzz_door::v2_json_agrees` checks both on every fuzz input and the
//! tests' edge cases.
//!
//! Numbers follow serde_json's reading exactly (with `float_roundtrip`): integers for integer
//! types must be written as integers that fit (`-0`, `1.0` and `1e2` are not), floats are the
//! correctly rounded double (exact fast path for up to 15 or so significant digits and small
//! exponents, the standard library's Eisel–Lemire parser otherwise) then narrowed as the
//! reference narrows them; a number too large for a double is not JSON serde_json reads.

use half::f16;
use nimify_model::ElementType;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::codec::NON_FINITE;
use super::types::{InferRequest, RequestInput};
use crate::inference::wire;
use crate::tensor::TensorData;

/// Deepest `data` nesting taken here (deeper goes to the reference decoder).
const MAX_RANK: usize = 32;

/// The request and, per input, its JSON elements already read (`data` is then left `None`).
pub(crate) type Read = (InferRequest, Vec<Option<TensorData>>);

mod typed;

pub(crate) use typed::read as typed;

/// Reads a whole V2 JSON request, or `None` for the reference decoder to answer.
pub(crate) fn request(json: &[u8]) -> Option<Read> {
    let mut r = Reader { b: json, i: 0 };
    let (mut id, mut parameters, mut inputs, mut outputs) = (None, None, None, None);
    r.object(|r, key| match key {
        b"id" => once(&mut id, r.field()?),
        b"parameters" => once(&mut parameters, r.field()?),
        b"inputs" => once(&mut inputs, r.inputs()?),
        b"outputs" => once(&mut outputs, r.field()?),
        _ => r.field::<IgnoredAny>().map(drop),
    })?;
    r.ws();
    if r.i != json.len() {
        return None;
    }
    let (inputs, elements) = inputs?.into_iter().unzip();
    Some((
        InferRequest { id: id.flatten(), parameters: parameters.flatten(), inputs, outputs: outputs.flatten() },
        elements,
    ))
}

/// Sets a field seen for the first time (serde refuses a duplicate field).
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// After an item of a list closed by `close`: `true` when another item follows.
    fn more(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => self.i += 1,
            c if c == close => {
                self.i += 1;
                return Some(false);
            }
            _ => return None,
        }
        Some(true)
    }

    /// The members of an object, each key (unescaped keys only) handed to `member`, which
    /// reads its value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.eat(b'"')?;
            let start = self.i;
            self.string_end()?;
            let key = &self.b[start..self.i - 1];
            if key.contains(&b'\\') || std::str::from_utf8(key).is_err() {
                return None;
            }
            self.eat(b':')?;
            member(self, key)?;
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    /// Moves past a string whose opening quote is already read (escapes are checked later by
    /// whoever reads the string).
    fn string_end(&mut self) -> Option<()> {
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => self.i += 2,
                c if c < 0x20 => return None,
                _ => self.i += 1,
            }
        }
    }

    /// The bytes of the next value, found by strings and brackets alone: whoever uses them has
    /// serde_json read them, which refuses whatever is not one JSON value.
    fn span(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let start = self.i;
        let mut depth = 0usize;
        // The body's end ends a value too (a typed body that is one scalar).
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'"' => {
                    self.i += 1;
                    self.string_end()?;
                }
                b'[' | b'{' => {
                    depth += 1;
                    self.i += 1;
                }
                b']' | b'}' if depth == 0 => break,
                b']' | b'}' => {
                    depth -= 1;
                    self.i += 1;
                }
                b',' if depth == 0 => break,
                _ => self.i += 1,
            }
        }
        Some(&self.b[start..self.i])
    }

    /// A string: read here when it has no escapes (names and datatypes as clients send them),
    /// by serde_json otherwise.
    fn text(&mut self) -> Option<String> {
        self.ws();
        let rest = &self.b[self.i..];
        if rest.first() == Some(&b'"')
            && let Some(len) = rest[1..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            && rest[1 + len] == b'"'
        {
            let text = std::str::from_utf8(&rest[1..1 + len]).ok()?.to_owned();
            self.i += len + 2;
            return Some(text);
        }
        self.field()
    }

    /// A `shape`: an array of integers that fit `i64`, as serde_json reads a `Vec<i64>`.
    fn dims(&mut self) -> Option<Vec<i64>> {
        let mut dims = Vec::new();
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(dims);
        }
        loop {
            self.ws();
            dims.push(self.number()?.int()?);
            if !self.more(b']')? {
                return Some(dims);
            }
        }
    }

    /// The next value, read by serde_json as `T`.
    fn field<T: DeserializeOwned>(&mut self) -> Option<T> {
        serde_json::from_slice(self.span()?).ok()
    }

    /// `inputs`: each input's fields, its data read into elements.
    fn inputs(&mut self) -> Option<Vec<(RequestInput, Option<TensorData>)>> {
        let mut inputs = Vec::new();
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(inputs);
        }
        loop {
            inputs.push(self.input()?);
            if !self.more(b']')? {
                return Some(inputs);
            }
        }
    }

    fn input(&mut self) -> Option<(RequestInput, Option<TensorData>)> {
        let (mut name, mut shape, mut datatype, mut parameters) = (None, None, None, None);
        // `data` is read in place when the fields it needs came first (as every client sends
        // them), otherwise kept as a span and read at the end.
        let mut data: Option<Data<'a>> = None;
        self.object(|r, key| match key {
            b"name" => once(&mut name, r.text()?),
            b"shape" => once(&mut shape, r.dims()?),
            b"datatype" => once(&mut datatype, r.text()?),
            b"parameters" => once(&mut parameters, r.field()?),
            b"data" => {
                let read = match (&name, &shape, &datatype) {
                    _ if r.peek()? == b'n' => r.field::<()>().map(|()| Data::Null)?,
                    (Some(n), Some(s), Some(d)) => Data::Read(r.data(n, s, d)?),
                    _ => Data::Later(r.span()?),
                };
                once(&mut data, read)
            }
            _ => r.field::<IgnoredAny>().map(drop),
        })?;
        let (name, shape, datatype) = (name?, shape?, datatype?);
        let elements = match data {
            None | Some(Data::Null) => None,
            Some(Data::Read(elements)) => Some(elements),
            Some(Data::Later(span)) => {
                let mut r = Reader { b: span, i: 0 };
                let elements = r.data(&name, &shape, &datatype)?;
                r.ws();
                if r.i != span.len() {
                    return None;
                }
                Some(elements)
            }
        };
        Some((RequestInput { name, shape, datatype, parameters: parameters.flatten(), data: None }, elements))
    }

    /// An input's `data` array as elements of its datatype, nested exactly as its shape or flat.
    fn data(&mut self, name: &str, shape: &[i64], datatype: &str) -> Option<TensorData> {
        let elem = wire::datatype(name, datatype).ok()?;
        let (shape, count) = wire::shape(name, shape).ok()?;
        if shape.len() > MAX_RANK {
            return None;
        }
        // Each element takes at least two bytes ("0,"): a shape cannot reserve more than that.
        let room = count.min((self.b.len() - self.i) / 2 + 1);
        macro_rules! read {
            ($sink:expr, $variant:ident) => {{
                let mut sink = $sink;
                self.elements(&shape, &mut sink)?;
                TensorData::$variant(sink.out)
            }};
        }
        Some(match elem {
            ElementType::Float => read!(Floats::<f32>::new(room), F32),
            ElementType::Double => read!(Floats::<f64>::new(room), F64),
            ElementType::Float16 => read!(Floats::<f16>::new(room), F16),
            ElementType::Int8 => read!(Ints::<i8>::new(room), I8),
            ElementType::Int16 => read!(Ints::<i16>::new(room), I16),
            ElementType::Int32 => read!(Ints::<i32>::new(room), I32),
            ElementType::Int64 => read!(Ints::<i64>::new(room), I64),
            ElementType::Uint8 => read!(Ints::<u8>::new(room), U8),
            ElementType::Uint16 => read!(Ints::<u16>::new(room), U16),
            ElementType::Uint32 => read!(Ints::<u32>::new(room), U32),
            ElementType::Uint64 => read!(Ints::<u64>::new(room), U64),
            ElementType::Bool => read!(Bools { out: Vec::with_capacity(room) }, Bool),
            ElementType::String => read!(Strings { out: Vec::with_capacity(room.min(4096)) }, Bytes),
            _ => return None,
        })
    }

    /// A `data` array: nested when its first item is an array (then exactly as `shape`), flat
    /// otherwise (every item a scalar), as the reference decoder reads it.
    fn elements(&mut self, shape: &[usize], sink: &mut impl Sink) -> Option<()> {
        self.ws();
        let open = self.i;
        self.eat(b'[')?;
        if self.peek()? == b'[' {
            self.i = open;
            return self.nested(shape, sink);
        }
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            sink.scalar(self)?;
            // A comma right after the element is the common case.
            if self.b.get(self.i) == Some(&b',') {
                self.i += 1;
            } else if !self.more(b']')? {
                return Some(());
            }
        }
    }

    fn nested(&mut self, shape: &[usize], sink: &mut impl Sink) -> Option<()> {
        let (&n, inner) = shape.split_first()?;
        self.eat(b'[')?;
        for k in 0..n {
            if k > 0 {
                if self.b.get(self.i) == Some(&b',') {
                    self.i += 1;
                } else {
                    self.eat(b',')?;
                }
            }
            if inner.is_empty() {
                self.ws();
                sink.scalar(self)?;
            } else {
                self.nested(inner, sink)?;
            }
        }
        self.eat(b']')
    }

    /// The common float spelling, `-?digits(.digits)?` with 19 digits at most and no exponent,
    /// read in one tight pass and converted by Clinger's fast path (exact digits over an exact
    /// power of ten: one rounding); `None`, the cursor unmoved, for every other spelling, which
    /// [`Self::number`] reads.
    #[inline(always)]
    fn plain_decimal(&mut self) -> Option<f64> {
        let (negative, m, fraction) = self.plain(false)?;
        let x = m as f64 / POW10[fraction];
        // The sign as a bit, not a branch: signs come in no order a predictor could learn.
        Some(f64::from_bits(x.to_bits() | (u64::from(negative) << 63)))
    }

    /// The common spelling with a fraction (integers are the caller's to read as integers) as
    /// its sign, digits as one integer below 2^53, and digits after the point; the cursor moves
    /// past it only when it is one.
    #[inline(always)]
    fn plain(&mut self, fraction_only: bool) -> Option<(bool, u64, usize)> {
        let b = self.b;
        let mut i = self.i;
        let negative = b.get(i) == Some(&b'-');
        i += usize::from(negative);
        // At most 19 digits are kept below; wrapping ops only make longer runs wrong, and those
        // are refused by count.
        let mut m = 0u64;
        let mut run = |i: &mut usize| {
            let first = *i;
            while let Some(&c) = b.get(*i) {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                m = m.wrapping_mul(10).wrapping_add(u64::from(d));
                *i += 1;
            }
            *i - first
        };
        let whole = run(&mut i);
        // No digits, or a leading zero: the grammar check is [`Self::number`]'s.
        if whole == 0 || (whole > 1 && b[i - whole] == b'0') {
            return None;
        }
        let mut fraction = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            fraction = run(&mut i);
            if fraction == 0 {
                return None;
            }
        } else if fraction_only {
            return None;
        }
        if whole + fraction > 19 || m >= 1 << 53 || matches!(b.get(i), Some(b'e' | b'E')) {
            return None;
        }
        self.i = i;
        Some((negative, m, fraction))
    }

    /// A JSON number at the cursor, checked against the grammar.
    fn number(&mut self) -> Option<Number<'a>> {
        let start = self.i;
        let negative = self.b.get(self.i) == Some(&b'-');
        if negative {
            self.i += 1;
        }
        // Every digit as one integer (exact up to 19 of them), and the power of ten it is
        // scaled by.
        let mut mantissa = Some(0u64);
        let mut digits = |r: &mut Self| {
            let first = r.i;
            while let Some(&c @ b'0'..=b'9') = r.b.get(r.i) {
                mantissa = mantissa.and_then(|m| m.checked_mul(10)?.checked_add(u64::from(c - b'0')));
                r.i += 1;
            }
            r.i - first
        };
        match *self.b.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => _ = digits(self),
            _ => return None,
        }
        let mut scale = 0i64;
        let mut is_integer = true;
        if self.b.get(self.i) == Some(&b'.') {
            is_integer = false;
            self.i += 1;
            match digits(self) {
                0 => return None,
                n => scale -= n as i64,
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            is_integer = false;
            self.i += 1;
            let sign = match self.b.get(self.i) {
                Some(b'-') => -1,
                Some(b'+') => 1,
                _ => 0,
            };
            if sign != 0 {
                self.i += 1;
            }
            let first = self.i;
            let mut e = 0i64;
            while let Some(&c @ b'0'..=b'9') = self.b.get(self.i) {
                e = (e * 10 + i64::from(c - b'0')).min(1 << 40);
                self.i += 1;
            }
            if self.i == first {
                return None;
            }
            scale += if sign < 0 { -e } else { e };
        }
        Some(Number { text: &self.b[start..self.i], negative, integer: is_integer, mantissa, scale })
    }
}

/// A `data` value whose reading waits for the input's datatype and shape.
enum Data<'a> {
    Null,
    Read(TensorData),
    Later(&'a [u8]),
}

/// One number as written: its text, sign, whether it is an integer (no fraction, no exponent),
/// its digits as one integer when they fit 64 bits, and their power of ten.
struct Number<'a> {
    text: &'a [u8],
    negative: bool,
    integer: bool,
    mantissa: Option<u64>,
    scale: i64,
}

/// A number's text as the correctly rounded `f32`, widened; `None` beyond an `f32`'s range.
fn f32_of(text: &[u8]) -> Option<f64> {
    let x = std::str::from_utf8(text).ok()?.parse::<f32>().ok()?;
    x.is_finite().then_some(f64::from(x))
}

/// Powers of ten an f32 holds exactly.
const POW10_F32: [f32; 11] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];

/// Powers of ten a double holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

impl Number<'_> {
    /// The correctly rounded double; `None` beyond a double's range (not JSON serde_json reads).
    fn f64(&self) -> Option<f64> {
        let x = match self.mantissa {
            // Both exact, so one rounding (Clinger's fast path).
            Some(m) if m < 1 << 53 && self.scale.abs() <= 22 => {
                let (m, p) = (m as f64, POW10[self.scale.unsigned_abs() as usize]);
                let x = if self.scale >= 0 { m * p } else { m / p };
                if self.negative { -x } else { x }
            }
            _ => std::str::from_utf8(self.text).ok()?.parse::<f64>().ok()?,
        };
        x.is_finite().then_some(x)
    }

    /// The correctly rounded `f32`, widened (serde_json's reading of a number for an `f32`,
    /// with `float_roundtrip`); `None` beyond an `f32`'s range.
    fn f32(&self) -> Option<f64> {
        let x = match self.mantissa {
            // Both exact in an f32, so one rounding.
            Some(m) if m < 1 << 24 && self.scale.abs() <= 10 => {
                let (m, p) = (m as f32, POW10_F32[self.scale.unsigned_abs() as usize]);
                let x = if self.scale >= 0 { m * p } else { m / p };
                if self.negative { -x } else { x }
            }
            _ => return f32_of(self.text),
        };
        x.is_finite().then_some(f64::from(x))
    }

    /// The integer written, as serde_json reads integers: non-negative ones up to `u64::MAX`,
    /// negative ones down to `i64::MIN` (`-0` is a float there).
    fn int<T: TryFrom<u64> + TryFrom<i64>>(&self) -> Option<T> {
        let magnitude = self.mantissa.filter(|_| self.integer)?;
        if self.negative {
            if magnitude == 0 {
                return None;
            }
            T::try_from(0i64.checked_sub_unsigned(magnitude)?).ok()
        } else {
            T::try_from(magnitude).ok()
        }
    }
}

/// Where one element type's values go, and which JSON values it takes.
trait Sink {
    /// Reads the scalar at the cursor.
    fn scalar(&mut self, r: &mut Reader<'_>) -> Option<()>;
}

/// A float element type, narrowed from a double as the reference decoder narrows it.
trait Float: Copy {
    fn narrow(x: f64) -> Self;
    fn finite(self) -> bool;
}

impl Float for f64 {
    fn narrow(x: f64) -> Self {
        x
    }
    fn finite(self) -> bool {
        self.is_finite()
    }
}

impl Float for f32 {
    fn narrow(x: f64) -> Self {
        x as f32
    }
    fn finite(self) -> bool {
        self.is_finite()
    }
}

impl Float for f16 {
    fn narrow(x: f64) -> Self {
        f16::from_f64(x)
    }
    fn finite(self) -> bool {
        self.is_finite()
    }
}

/// Float elements: numbers, or the names JSON outputs use for non-finite values; a number that
/// becomes infinite once narrowed does not fit.
struct Floats<T> {
    out: Vec<T>,
}

impl<T> Floats<T> {
    fn new(room: usize) -> Self {
        Self { out: Vec::with_capacity(room) }
    }
}

impl<T: Float> Sink for Floats<T> {
    /// Inlined into the element loop for the common spelling; the rest is out of line.
    #[inline(always)]
    fn scalar(&mut self, r: &mut Reader<'_>) -> Option<()> {
        match r.plain_decimal() {
            Some(x) => {
                let x = T::narrow(x);
                x.finite().then(|| self.out.push(x))
            }
            None => self.other(r),
        }
    }
}

impl<T: Float> Floats<T> {
    /// A float spelt otherwise than [`Reader::plain_decimal`] reads: a named non-finite value,
    /// or any other JSON number.
    #[cold]
    #[inline(never)]
    fn other(&mut self, r: &mut Reader<'_>) -> Option<()> {
        if r.b.get(r.i) == Some(&b'"') {
            let rest = &r.b[r.i + 1..];
            let (name, x) = NON_FINITE
                .into_iter()
                .find(|(name, _)| rest.starts_with(name.as_bytes()) && rest.get(name.len()) == Some(&b'"'))?;
            r.i += name.len() + 2;
            self.out.push(T::narrow(x));
            return Some(());
        }
        let x = T::narrow(r.number()?.f64()?);
        x.finite().then(|| self.out.push(x))
    }
}

struct Ints<T> {
    out: Vec<T>,
}

impl<T> Ints<T> {
    fn new(room: usize) -> Self {
        Self { out: Vec::with_capacity(room) }
    }
}

impl<T: TryFrom<u64> + TryFrom<i64>> Sink for Ints<T> {
    fn scalar(&mut self, r: &mut Reader<'_>) -> Option<()> {
        let n = r.number()?.int()?;
        self.out.push(n);
        Some(())
    }
}

struct Bools {
    out: Vec<bool>,
}

impl Sink for Bools {
    fn scalar(&mut self, r: &mut Reader<'_>) -> Option<()> {
        let (word, value) = match r.b.get(r.i)? {
            b't' => (&b"true"[..], true),
            b'f' => (&b"false"[..], false),
            _ => return None,
        };
        r.b[r.i..].starts_with(word).then(|| {
            r.i += word.len();
            self.out.push(value);
        })
    }
}

/// BYTES elements: strings, unescaped by serde_json when they have escapes.
struct Strings {
    out: Vec<Vec<u8>>,
}

impl Sink for Strings {
    fn scalar(&mut self, r: &mut Reader<'_>) -> Option<()> {
        let start = r.i;
        r.eat(b'"')?;
        r.string_end()?;
        let quoted = &r.b[start..r.i];
        let inner = &quoted[1..quoted.len() - 1];
        let bytes = if inner.contains(&b'\\') {
            serde_json::from_slice::<String>(quoted).ok()?.into_bytes()
        } else {
            std::str::from_utf8(inner).ok()?.as_bytes().to_vec()
        };
        self.out.push(bytes);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use nimify_model::ElementType;

    use crate::model::TensorSpec;
    use crate::v2::codec::{binary_copy, decode_with};

    /// The decoded request (or the error) with the fast reader and with the reference alone,
    /// bit for bit; and whether the fast reader took the body.
    fn both(body: &str) -> (String, String, bool) {
        let specs: Vec<TensorSpec> = ["x", "y"]
            .iter()
            .map(|n| TensorSpec { name: n.to_string(), elem: ElementType::Float, shape: None })
            .collect();
        let outputs = [TensorSpec { name: "out".into(), elem: ElementType::Float, shape: None }];
        let body = Bytes::from(body.to_string());
        let show = |fast| match decode_with("m", &specs, &outputs, None, &body, fast) {
            Ok(d) => format!(
                "{:?} {:?} {:?}",
                d.id,
                d.outputs,
                d.inputs
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shape.clone(), t.data.element_type(), binary_copy(&t.data)))
                    .collect::<Vec<_>>()
            ),
            Err(e) => format!("error: {e}"),
        };
        (show(true), show(false), super::request(body.as_ref()).is_some())
    }

    fn agree(body: &str) -> bool {
        let (fast, reference, took) = both(body);
        assert_eq!(fast, reference, "{body}");
        took
    }

    fn one(datatype: &str, data: &str) -> String {
        format!(
            r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"{datatype}","data":[{data}]}},{{"name":"y","shape":[0],"datatype":"FP32","data":[]}}]}}"#
        )
    }

    #[test]
    fn takes_what_clients_send_and_reads_it_as_the_reference_does() {
        let bodies = [
            // tritonclient's order and spacing, flat and nested
            r#"{"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1.5, -2, 3e2, 0.25, -0.0, 7]}, {"name": "y", "shape": [1], "datatype": "FP64", "data": [0.1]}], "outputs": [{"name": "out", "parameters": {"binary_data": true}}]}"#,
            r#"{"id":"r1","parameters":{"binary_data_output":false,"extra":[1,{"a":null}]},"inputs":[{"name":"x","shape":[2,2],"datatype":"INT64","data":[[1,-9223372036854775808],[9223372036854775807,0]]},{"name":"y","shape":[1,1,1],"datatype":"UINT64","data":[[[18446744073709551615]]]}]}"#,
            // data before the fields it needs, unknown keys, odd whitespace
            " \n{\"inputs\":[{\"data\":[[true],[false]],\"extra\":{\"k\":[1,2]},\"shape\":[2,1],\"datatype\":\"BOOL\",\"name\":\"x\"},{\"name\":\"y\",\"datatype\":\"FP16\",\"shape\":[3],\"data\":[\"NaN\",\"-Infinity\",65504]}]}\t\r\n",
            r#"{"inputs":[{"name":"x","shape":[3],"datatype":"BYTES","data":["plain","tab\tnewline\n\u00e9","\ud83d\ude00 é"]},{"name":"y","shape":[2,0],"datatype":"INT8","data":[[],[]]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[0],"datatype":"UINT8","data":[]},{"name":"y","shape":[2],"datatype":"INT16","data":[-32768,32767],"parameters":{}}],"id":null,"outputs":null}"#,
        ];
        for body in bodies {
            assert!(agree(body), "the fast reader should take {body}");
        }
    }

    #[test]
    fn numbers_at_the_edges_read_as_serde_json_reads_them() {
        let numbers = [
            "0",
            "-0",
            "-0.0",
            "0.0",
            "1",
            "1.0",
            "1e2",
            "1E+2",
            "1e-2",
            "-1",
            "0.1",
            "0.30000000000000004",
            "0.9405647163912139",
            "2.2250738585072014e-308",
            "2.2250738585072011e-308",
            "4.9e-324",
            "5e-324",
            "2e-324",
            "1e-400",
            "0e999999999999",
            "1e400",
            "-1e400",
            "1.7976931348623157e308",
            "1.7976931348623159e308",
            "3.4028235e38",
            "3.4028236e38",
            "3.5e38",
            "1e-46",
            "65504",
            "65519.99",
            "65520",
            "70000",
            "127",
            "128",
            "-128",
            "-129",
            "255",
            "256",
            "32767",
            "-32769",
            "65535",
            "65536",
            "2147483647",
            "2147483648",
            "-2147483649",
            "4294967295",
            "4294967296",
            "9007199254740993",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
            "0.000000000000000000000000000001",
            "1234567890.0987654321e-5",
            "\"NaN\"",
            "\"Infinity\"",
            "\"-Infinity\"",
            "\"nan\"",
            "NaN",
            "Infinity",
            "-Infinity",
            "true",
            "false",
            "null",
            "00",
            "01",
            "-01",
            "1.",
            ".5",
            "+1",
            "-",
            "1e",
            "1e+",
            "0x10",
            "1_0",
            "1 2",
            "\"1\"",
            "[1]",
            "{}",
        ];
        let types =
            ["FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"];
        let mut taken = 0;
        for t in types {
            for n in numbers {
                taken += usize::from(agree(&one(t, n)));
            }
        }
        // Valid numbers that fit their type are taken (255 of the 1020 pairs), the rest answered
        // by the reference.
        assert!(taken >= 250, "the fast reader took only {taken} of them");
    }

    /// 200 lists of numbers from a fixed generator, spelt as clients spell them: shortest,
    /// exponent, four decimals, 17 digits, integers up to 64 bits and negative ones past them.
    pub(super) fn spelled_numbers() -> Vec<Vec<String>> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut lists = Vec::new();
        for round in 0..200 {
            let mut texts = Vec::new();
            for _ in 0..50 {
                let bits = next();
                let x = match round % 4 {
                    0 => f64::from_bits(bits),
                    1 => f64::from(f32::from_bits(bits as u32)),
                    2 => (bits % 2_000_001) as f64 / 1000.0 - 1000.0,
                    _ => (bits >> 11) as f64 * 2f64.powi(-53) * 10f64.powi((bits % 40) as i32 - 20),
                };
                if !x.is_finite() {
                    continue;
                }
                texts.push(match next() % 6 {
                    0 => format!("{x}"),
                    1 => format!("{x:e}"),
                    2 => format!("{x:.4}"),
                    3 => format!("{}", bits as i64 >> (bits % 64)),
                    4 if bits % 3 == 0 => format!("-{}{}", bits, bits % 1000),
                    // Between -2^64 and -2^63 half the time.
                    5 => format!("-{bits}"),
                    _ => format!("{:.17e}", x),
                });
            }
            lists.push(texts);
        }
        lists
    }

    #[test]
    fn random_floats_in_every_spelling_read_exactly() {
        for texts in spelled_numbers() {
            let n = texts.len();
            for t in ["FP32", "FP64", "FP16"] {
                let body = format!(
                    r#"{{"inputs":[{{"name":"x","shape":[{n}],"datatype":"{t}","data":[{}]}},{{"name":"y","shape":[0],"datatype":"FP32","data":[]}}]}}"#,
                    texts.join(",")
                );
                let (fast, reference, _) = both(&body);
                assert_eq!(fast, reference, "{body}");
            }
        }
    }

    #[test]
    fn every_run_length_and_end_reads_exactly() {
        // Runs of 1 to 9 digits before and after the point, leading zeros, each end a number
        // can have, and numbers at the body's end. Plain floats followed by a separator are
        // the fast reader's to take, not only to agree on.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut digit = move |from: u8| -> char {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'0' + from + (state % u64::from(10 - from)) as u8)
        };
        let mut digits =
            move |n: usize, from: u8| -> String { (0..n).map(|k| digit(if k == 0 { from } else { 0 })).collect() };
        let ends = ["", ",", "]", " ", "\n", "e5", "E-1", ".", ".e1", "x", "-", "0"];
        let mut taken = 0;
        for whole in 1..=9 {
            for fraction in 0..=9 {
                for lead in ["", "0", "-", "-0"] {
                    let number = match fraction {
                        0 => format!("{lead}{}", digits(whole, 1)),
                        _ => format!("{lead}{}.{}", digits(whole, 1), digits(fraction, 0)),
                    };
                    for end in ends {
                        let data = format!("[{number}{end}, 1.5,{number}]");
                        let count = data.matches(',').count() + 1;
                        let plain = matches!(lead, "" | "-") && matches!(end, "" | " " | "\n");
                        for t in ["FP32", "FP64", "FP16", "INT64"] {
                            let must = plain && matches!(t, "FP32" | "FP64");
                            for body in [
                                format!(
                                    r#"{{"inputs":[{{"name":"x","shape":[{count}],"datatype":"{t}","data":{data}}},{{"name":"y","shape":[0],"datatype":"FP32","data":[]}}]}}"#
                                ),
                                // The data last, its last number just before the body's end.
                                format!(
                                    r#"{{"inputs":[{{"name":"y","shape":[0],"datatype":"FP32","data":[]}},{{"name":"x","shape":[{count}],"datatype":"{t}","data":{data}}}]}}"#
                                ),
                            ] {
                                let took = agree(&body);
                                assert!(took || !must, "the fast reader should take {body}");
                                taken += usize::from(took);
                            }
                        }
                    }
                }
            }
        }
        // At least every plain float: 9 x 10 lengths, 2 leads, 3 ends, 2 types, 2 bodies.
        assert!(taken >= 9 * 10 * 2 * 3 * 2 * 2, "the fast reader took only {taken}");
    }

    #[test]
    fn malformed_bodies_go_to_the_reference() {
        let bodies = [
            "",
            "{",
            r#"{"inputs":[]}x"#,
            r#"{"inputs":[],}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]],"y":1}"#,
            r#"{"inputs":[{"name":"x","shape":[2,1],"datatype":"FP32","data":[[1],2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,[2]]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[[1],[2]]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":1}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"data":[2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"inputs":[]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BF16","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":null}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["a\x"]}]}"#,
            "{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"BYTES\",\"data\":[\"\x01\"]}]}",
            r#"{"in\u0070uts":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"id":5}"#,
            r#"{"inputs":[{"name":"x","shape":[1.5],"datatype":"FP32","data":[1]}]}"#,
            // shapes and names read without serde_json, each as serde_json reads them
            r#"{"inputs":[{"name":"x","shape":[-0],"datatype":"FP32","data":[]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1e0],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[9223372036854775808],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[[1]],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1,],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":null,"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[ 1 , 1 ],"datatype":"FP32","data":[[1]]},{"name":"y","shape":[],"datatype":"FP32","data":[2]}]}"#,
            r#"{"inputs":[{"name":"\u0078","shape":[1],"datatype":"FP\u00332","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x\"","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":5,"shape":[1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32,"data":[1]}]}"#,
            "{\"inputs\":[{\"name\":\"x\t\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}",
            r#"{"inputs":[{"name":"é","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            r#"[null,null,[]]"#,
        ];
        for body in bodies {
            agree(body);
        }
        // A shape that lies about its size reserves no more than the body can hold; an unknown
        // field nested 100 000 deep is skipped without recursion and refused by serde_json.
        agree(r#"{"inputs":[{"name":"x","shape":[4000000000000],"datatype":"FP32","data":[1]}]}"#);
        let deep = format!(r#"{{"z":{}{},"inputs":[]}}"#, "[".repeat(100_000), "]".repeat(100_000));
        agree(&deep);
    }
}
