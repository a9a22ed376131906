//! Decoding inference requests (JSON tensors and the binary tensor data extension) into named
//! tensors (parsed and framed; the inference path checks them against the model), and encoding
//! responses.
//!
//! A body is split at `Inference-Header-Content-Length` (absent: all JSON). Inputs with a
//! `binary_data_size` parameter take their bytes, in order, from what follows the header.
//! Framing problems are 400; tensors that do not fit the model are 422.

use bytes::{BufMut, Bytes, BytesMut};
use half::{bf16, f16};
use nimify_model::ElementType;
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use super::body::ResponseBody;
use super::types::{InferRequest, RequestInput};
use crate::error::ApiError;
use crate::inference::wire::{self, Inputs};
use crate::model::{Model, TensorSpec};
use crate::tensor::{Tensor, TensorData, for_each_numeric};

/// The header naming the length of the JSON part of a binary request or response.
pub const HEADER_LENGTH: axum::http::HeaderName =
    axum::http::HeaderName::from_static("inference-header-content-length");

/// A decoded request: tensors parsed, not yet checked against the model.
#[derive(Debug)]
pub struct Decoded {
    /// Echoed request id.
    pub id: Option<String>,
    /// Inputs in the model's input order.
    pub inputs: Vec<(String, Tensor)>,
    /// Outputs to return, in order.
    pub outputs: Vec<WantedOutput>,
}

/// An output the request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedOutput {
    /// Its name.
    pub name: String,
    /// Whether it is sent as raw bytes after the JSON (`binary_data`) rather than in it.
    pub binary: bool,
}

/// Splits and parses a request body into `model`'s inputs (each present once, none unknown) and
/// the outputs asked for; the inference path checks the tensors themselves.
pub fn decode(model: &Model, header_len: Option<&str>, body: &Bytes) -> Result<Decoded, ApiError> {
    decode_for(model.name(), model.inputs(), model.outputs(), header_len, body)
}

/// [`decode`] for a model known by its name and tensor declarations.
pub(crate) fn decode_for(
    model_name: &str,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
    header_len: Option<&str>,
    body: &Bytes,
) -> Result<Decoded, ApiError> {
    decode_with(model_name, inputs, outputs, header_len, body, true)
}

/// [`decode_for`], with the fast JSON reader (`fast`) or the reference decoder alone (which the
/// fast reader hands every body it does not take, and is compared with when fuzzing).
pub(crate) fn decode_with(
    model_name: &str,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
    header_len: Option<&str>,
    body: &Bytes,
    fast: bool,
) -> Result<Decoded, ApiError> {
    let model = Specs { name: model_name, inputs, outputs };
    let (json, mut binary) = match header_len {
        None => (body.clone(), Bytes::new()),
        Some(raw) => {
            let n: usize = raw.trim().parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "Inference-Header-Content-Length must be a non-negative integer, got {raw:?}"
                ))
            })?;
            if n > body.len() {
                return Err(ApiError::BadRequest(format!(
                    "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
            (body.slice(..n), body.slice(n..))
        }
    };
    let (request, elements) = match fast.then(|| super::fast_json::request(&json)).flatten() {
        Some(read) => read,
        None => {
            let request = reference_request(&json)?;
            let none = request.inputs.iter().map(|_| None).collect();
            (request, none)
        }
    };

    let mut inputs = Inputs::new(model.name(), model.inputs());
    for (input, elements) in request.inputs.iter().zip(elements) {
        let slot = inputs.slot(&input.name)?;
        inputs.fill(slot, decode_input(input, elements, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "{} bytes of binary data follow the JSON header but no input claims them (set binary_data_size on each binary input)",
            binary.len()
        )));
    }
    let inputs = inputs.finish()?;

    let default_binary = flag(request.parameters.as_ref(), "binary_data_output")?;
    let outputs = match &request.outputs {
        None => model.outputs().iter().map(|s| WantedOutput { name: s.name.clone(), binary: default_binary }).collect(),
        Some(wanted) => wanted
            .iter()
            .map(|o| {
                wire::output(model.name(), model.outputs(), &o.name)?;
                let binary = match o.parameters.as_ref().and_then(|p| p.get("binary_data")) {
                    Some(_) => flag(o.parameters.as_ref(), "binary_data")?,
                    None => default_binary,
                };
                Ok(WantedOutput { name: o.name.clone(), binary })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Decoded { id: request.id, inputs, outputs })
}

/// The request as serde_json reads it, each input's `data` as a `Value`: the reference decoder,
/// which gives every answer the fast reader does not (its error messages included).
fn reference_request(json: &[u8]) -> Result<InferRequest, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let request: InferRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        let at = if at == "." { String::new() } else { format!(" at {at}") };
        ApiError::BadRequest(format!("malformed inference request JSON{at}: {}", e.inner()))
    })?;
    de.end().map_err(|_| {
        ApiError::BadRequest(
            "malformed inference request JSON: bytes follow the JSON body (binary tensor data needs the Inference-Header-Content-Length header)".into(),
        )
    })?;
    Ok(request)
}

/// What decoding needs of a model.
struct Specs<'a> {
    name: &'a str,
    inputs: &'a [TensorSpec],
    outputs: &'a [TensorSpec],
}

impl Specs<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn inputs(&self) -> &[TensorSpec] {
        self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        self.outputs
    }
}

fn flag(params: Option<&Map<String, Value>>, key: &str) -> Result<bool, ApiError> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::BadRequest(format!("parameter {key} must be true or false, got {other}"))),
    }
}

/// One input's tensor, from the binary part, from `elements` the fast reader read from its JSON
/// `data`, or from that `data` as a `Value`.
fn decode_input(input: &RequestInput, elements: Option<TensorData>, binary: &mut Bytes) -> Result<Tensor, ApiError> {
    let name = &input.name;
    let elem = wire::datatype(name, &input.datatype)?;
    let (shape, count) = wire::shape(name, &input.shape)?;

    let binary_size = match input.parameters.as_ref().and_then(|p| p.get("binary_data_size")) {
        None => None,
        Some(v) => Some(v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
            ApiError::BadRequest(format!("input {name:?}: binary_data_size must be a non-negative integer, got {v}"))
        })?),
    };
    let data = match (binary_size, &input.data, elements) {
        (Some(_), json, elements) if json.is_some() || elements.is_some() => {
            return Err(ApiError::BadRequest(format!(
                "input {name:?} has both binary_data_size and JSON data; send one"
            )));
        }
        (Some(n), _, _) => {
            if n > binary.len() {
                return Err(ApiError::BadRequest(format!(
                    "truncated binary payload: input {name:?} declares binary_data_size {n} but only {} bytes remain",
                    binary.len()
                )));
            }
            let raw = binary.split_to(n);
            from_binary(name, elem, count, &raw)?
        }
        (None, _, Some(elements)) => elements,
        (None, Some(json), None) => {
            check_nesting(name, json, &shape)?;
            from_json(name, elem, json)?
        }
        (None, None, None) => {
            return Err(ApiError::BadRequest(format!("input {name:?} has no data (give data or binary_data_size)")));
        }
    };
    wire::tensor(name, shape, count, data)
}

/// Elements of type `elem` from the binary tensor format (little-endian; BYTES length-prefixed),
/// checked to be `count` of them. Numeric elements are copied once, straight into the tensor's
/// buffer.
pub(crate) fn from_binary(name: &str, elem: ElementType, count: usize, raw: &[u8]) -> Result<TensorData, ApiError> {
    if elem == ElementType::String {
        return decode_bytes_elements(name, raw).map(TensorData::Bytes);
    }
    let size = elem.byte_size().unwrap_or(1);
    if !raw.len().is_multiple_of(size) || raw.len() / size != count {
        return Err(ApiError::InvalidTensor(format!(
            "input {name:?}: {} binary bytes hold {} {} elements of {size} bytes but the shape needs {count}",
            raw.len(),
            raw.len() as f64 / size as f64,
            elem.kserve_name().unwrap_or("?")
        )));
    }
    // On little-endian targets the wire layout is the memory layout: one copy into a vector of
    // the element type (aligned, whatever the alignment of `raw`).
    #[cfg(target_endian = "little")]
    macro_rules! le {
        ($t:ty, $n:literal, $variant:ident) => {
            TensorData::$variant(bytemuck::pod_collect_to_vec::<u8, $t>(raw))
        };
    }
    #[cfg(not(target_endian = "little"))]
    macro_rules! le {
        ($t:ty, $n:literal, $variant:ident) => {
            TensorData::$variant(
                raw.chunks_exact($n).map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n]))).collect(),
            )
        };
    }
    Ok(match elem {
        ElementType::Bool => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
        ElementType::Uint8 => TensorData::U8(raw.to_vec()),
        ElementType::Int8 => le!(i8, 1, I8),
        ElementType::Uint16 => le!(u16, 2, U16),
        ElementType::Int16 => le!(i16, 2, I16),
        ElementType::Float16 => le!(f16, 2, F16),
        ElementType::Bfloat16 => le!(bf16, 2, Bf16),
        ElementType::Uint32 => le!(u32, 4, U32),
        ElementType::Int32 => le!(i32, 4, I32),
        ElementType::Float => le!(f32, 4, F32),
        ElementType::Uint64 => le!(u64, 8, U64),
        ElementType::Int64 => le!(i64, 8, I64),
        ElementType::Double => le!(f64, 8, F64),
        other => {
            return Err(ApiError::InvalidTensor(format!(
                "input {name:?}: element type {} is not supported",
                other.onnx_name()
            )));
        }
    })
}

/// BYTES in binary: each element is a 4-byte little-endian length, then that many bytes.
fn decode_bytes_elements(name: &str, mut raw: &[u8]) -> Result<Vec<Vec<u8>>, ApiError> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        if raw.len() < 4 {
            return Err(ApiError::BadRequest(format!(
                "input {name:?}: BYTES element {} has a truncated 4-byte length prefix",
                out.len()
            )));
        }
        let n = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        raw = &raw[4..];
        if n > raw.len() {
            return Err(ApiError::BadRequest(format!(
                "input {name:?}: BYTES element {} declares {n} bytes but only {} remain",
                out.len(),
                raw.len()
            )));
        }
        out.push(raw[..n].to_vec());
        raw = &raw[n..];
    }
    Ok(out)
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        leaf => out.push(leaf),
    }
}

/// Flat `data` may carry any shape (the element count is checked later); nested `data` must
/// nest exactly as the declared shape does, so `[[1],[2],[3],[4]]` is not a `[1, 4]` tensor.
fn check_nesting(name: &str, json: &Value, shape: &[usize]) -> Result<(), ApiError> {
    let Value::Array(items) = json else { return Ok(()) };
    if !items.iter().any(Value::is_array) {
        return Ok(());
    }
    fn walk(v: &Value, shape: &[usize], at: &mut Vec<usize>) -> Result<(), String> {
        let place = || {
            if at.is_empty() {
                "data".to_string()
            } else {
                format!("data{}", at.iter().map(|i| format!("[{i}]")).collect::<String>())
            }
        };
        match (v, shape.split_first()) {
            (Value::Array(items), Some((&n, inner))) => {
                if items.len() != n {
                    return Err(format!("{} has {} items where the shape needs {n}", place(), items.len()));
                }
                for (i, item) in items.iter().enumerate() {
                    at.push(i);
                    walk(item, inner, at)?;
                    at.pop();
                }
                Ok(())
            }
            (Value::Array(_), None) => Err(format!("{} nests deeper than the shape's {} dims", place(), at.len())),
            (_, Some(_)) => {
                Err(format!("{} is a single value where the shape needs {} more nested dims", place(), shape.len()))
            }
            (_, None) => Ok(()),
        }
    }
    walk(json, shape, &mut Vec::new()).map_err(|e| {
        ApiError::InvalidTensor(format!("input {name:?}: nested data does not match shape {shape:?}: {e}"))
    })
}

fn from_json(name: &str, elem: ElementType, json: &Value) -> Result<TensorData, ApiError> {
    let mut leaves = Vec::new();
    flatten(json, &mut leaves);
    let bad = |i: usize, v: &Value| {
        ApiError::InvalidTensor(format!(
            "input {name:?}: element {i} is {v}, which is not a valid {} value",
            elem.kserve_name().unwrap_or("?")
        ))
    };
    macro_rules! ints {
        ($t:ty, $variant:ident, $get:ident) => {
            TensorData::$variant(
                leaves
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.$get().and_then(|n| <$t>::try_from(n).ok()).ok_or_else(|| bad(i, v)))
                    .collect::<Result<_, _>>()?,
            )
        };
    }
    // A float element is a JSON number, or one of the names JSON outputs use for non-finite
    // values. A number that becomes infinite does not fit the type (3.5e38 as FP32, 70000 as
    // FP16): refused rather than sent to the model as infinity.
    let out_of_range = |i: usize, v: &Value| {
        ApiError::InvalidTensor(format!(
            "input {name:?}: element {i} is {v}, which is out of range for {}",
            elem.kserve_name().unwrap_or("?")
        ))
    };
    let float = |v: &Value| match v {
        Value::String(s) => NON_FINITE.iter().find(|(n, _)| n == s).map(|&(_, x)| (x, false)),
        other => other.as_f64().map(|x| (x, true)),
    };
    macro_rules! floats {
        ($variant:ident, $conv:expr, $finite:expr) => {
            TensorData::$variant(
                leaves
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let (x, number) = float(v).ok_or_else(|| bad(i, v))?;
                        let x = $conv(x);
                        if number && !$finite(x) { Err(out_of_range(i, v)) } else { Ok(x) }
                    })
                    .collect::<Result<_, _>>()?,
            )
        };
    }
    Ok(match elem {
        ElementType::Bool => TensorData::Bool(
            leaves.iter().enumerate().map(|(i, v)| v.as_bool().ok_or_else(|| bad(i, v))).collect::<Result<_, _>>()?,
        ),
        ElementType::Uint8 => ints!(u8, U8, as_u64),
        ElementType::Uint16 => ints!(u16, U16, as_u64),
        ElementType::Uint32 => ints!(u32, U32, as_u64),
        ElementType::Uint64 => ints!(u64, U64, as_u64),
        ElementType::Int8 => ints!(i8, I8, as_i64),
        ElementType::Int16 => ints!(i16, I16, as_i64),
        ElementType::Int32 => ints!(i32, I32, as_i64),
        ElementType::Int64 => ints!(i64, I64, as_i64),
        ElementType::Float16 => floats!(F16, f16::from_f64, |x: f16| x.is_finite()),
        ElementType::Float => floats!(F32, |x| x as f32, |x: f32| x.is_finite()),
        ElementType::Double => floats!(F64, |x| x, |x: f64| x.is_finite()),
        ElementType::String => TensorData::Bytes(
            leaves
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_str().map(|s| s.as_bytes().to_vec()).ok_or_else(|| bad(i, v)))
                .collect::<Result<_, _>>()?,
        ),
        ElementType::Bfloat16 => {
            return Err(ApiError::InvalidTensor(format!(
                "input {name:?}: BF16 tensors travel only in binary (set binary_data_size and send the bytes after the JSON header)"
            )));
        }
        other => {
            return Err(ApiError::InvalidTensor(format!(
                "input {name:?}: element type {} is not supported",
                other.onnx_name()
            )));
        }
    })
}

/// Output data serialised as a flat JSON array (FP16 as numbers, BYTES as UTF-8 strings). JSON
/// has no NaN or infinity: those float elements are the strings `"NaN"`, `"Infinity"` and
/// `"-Infinity"` (numpy and JavaScript's `Number()` read them back), never `null`.
#[derive(Debug)]
pub struct JsonData(TensorData);

/// How JSON spells the float values it has no number for, in outputs and in inputs.
pub(super) const NON_FINITE: [(&str, f64); 3] =
    [("NaN", f64::NAN), ("Infinity", f64::INFINITY), ("-Infinity", f64::NEG_INFINITY)];

/// One float of a JSON output: a number, or the name of a non-finite value.
struct JsonFloat(f64);

impl Serialize for JsonFloat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            x if x.is_finite() => s.serialize_f64(x),
            x if x.is_nan() => s.serialize_str(NON_FINITE[0].0),
            x if x > 0.0 => s.serialize_str(NON_FINITE[1].0),
            _ => s.serialize_str(NON_FINITE[2].0),
        }
    }
}

/// f32 elements keep their shortest decimal form: through f64 they would print every digit of
/// the widened value.
struct JsonF32(f32);

impl Serialize for JsonF32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_finite() { s.serialize_f32(self.0) } else { JsonFloat(f64::from(self.0)).serialize(s) }
    }
}

impl Serialize for JsonData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        JsonRange(&self.0, 0..self.0.len()).serialize(s)
    }
}

/// Some elements of a tensor as a JSON array, spelt as [`JsonData`] spells them.
struct JsonRange<'a>(&'a TensorData, std::ops::Range<usize>);

impl Serialize for JsonRange<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn seq<S: Serializer, T: Serialize>(s: S, items: impl ExactSizeIterator<Item = T>) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(items.len()))?;
            for item in items {
                seq.serialize_element(&item)?;
            }
            seq.end()
        }
        let r = self.1.clone();
        match self.0 {
            TensorData::F16(v) => seq(s, v[r].iter().map(|x| JsonF32(x.to_f32()))),
            TensorData::Bf16(v) => seq(s, v[r].iter().map(|x| JsonF32(x.to_f32()))),
            TensorData::F32(v) => seq(s, v[r].iter().map(|&x| JsonF32(x))),
            TensorData::F64(v) => seq(s, v[r].iter().map(|&x| JsonFloat(x))),
            TensorData::Bytes(v) => seq(s, v[r].iter().map(|b| String::from_utf8_lossy(b))),
            other => for_each_numeric!(other, v => seq(s, v[r].iter()), _b => unreachable!("handled above")),
        }
    }
}

/// Appends the elements `range` of `data` to `out` as comma-separated JSON values (an array's
/// inside), spelt as [`JsonData`] spells them.
pub(crate) fn write_json_elements(data: &TensorData, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
    // Floats, most outputs, in one loop (serde's per-element calls took about half the time).
    match data {
        TensorData::F32(v) => return write_floats(&v[range], out),
        TensorData::F64(v) => return write_floats(&v[range], out),
        _ => {}
    }
    let start = out.len();
    // Writing into a Vec cannot fail, and every element type serialises.
    let _ = serde_json::to_writer(&mut *out, &JsonRange(data, range));
    // Drop the brackets: the caller writes the array around the pieces.
    out.remove(start);
    out.pop();
}

/// Floats as [`JsonFloat`] and [`JsonF32`] spell them (serde_json's shortest round-trip
/// form, non-finite values as strings), comma-separated.
fn write_floats<F: zmij::Float + Copy + Into<f64>>(values: &[F], out: &mut Vec<u8>) {
    out.reserve(values.len() * 12);
    let mut buffer = zmij::Buffer::new();
    for (i, &x) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let wide: f64 = x.into();
        if wide.is_finite() {
            out.extend_from_slice(buffer.format_finite(x).as_bytes());
            continue;
        }
        let name = match wide {
            x if x.is_nan() => NON_FINITE[0].0,
            x if x > 0.0 => NON_FINITE[1].0,
            _ => NON_FINITE[2].0,
        };
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.push(b'"');
    }
}

/// A tensor in the binary tensor format, copied.
pub(crate) fn binary_copy(data: &TensorData) -> Bytes {
    let mut out = BytesMut::with_capacity(data.byte_len());
    append_binary(&mut out, data);
    out.freeze()
}

fn append_binary(out: &mut BytesMut, data: &TensorData) {
    match data {
        TensorData::Bool(v) => v.iter().for_each(|&b| out.put_u8(u8::from(b))),
        TensorData::U8(v) => out.put_slice(v),
        TensorData::I8(v) => v.iter().for_each(|&x| out.put_i8(x)),
        TensorData::U16(v) => v.iter().for_each(|&x| out.put_u16_le(x)),
        TensorData::I16(v) => v.iter().for_each(|&x| out.put_i16_le(x)),
        TensorData::F16(v) => v.iter().for_each(|x| out.put_slice(&x.to_le_bytes())),
        TensorData::Bf16(v) => v.iter().for_each(|x| out.put_slice(&x.to_le_bytes())),
        TensorData::U32(v) => v.iter().for_each(|&x| out.put_u32_le(x)),
        TensorData::I32(v) => v.iter().for_each(|&x| out.put_i32_le(x)),
        TensorData::F32(v) => v.iter().for_each(|&x| out.put_f32_le(x)),
        TensorData::U64(v) => v.iter().for_each(|&x| out.put_u64_le(x)),
        TensorData::I64(v) => v.iter().for_each(|&x| out.put_i64_le(x)),
        TensorData::F64(v) => v.iter().for_each(|&x| out.put_f64_le(x)),
        TensorData::Bytes(v) => v.iter().for_each(|b| {
            out.put_u32_le(u32::try_from(b.len()).unwrap_or(u32::MAX));
            out.put_slice(b);
        }),
    }
}

/// An encoded response: the body and, for binary responses, the JSON header length.
pub struct Encoded {
    /// Response body.
    pub body: ResponseBody,
    /// `Some(n)` when binary data follows `n` bytes of JSON.
    pub header_len: Option<usize>,
}

/// JSON outputs above this many bytes of tensor data are written as they are sent.
const STREAM_JSON_ABOVE: usize = 1 << 20;

/// Encodes outputs (already in the requested order), each binary or JSON as `wanted` says.
///
/// The JSON is written straight, members in the order the serde form of
/// [`InferResponse`](super::types::InferResponse) has them
/// (which a test holds it to), elements by [`write_json_elements`].
pub fn encode(
    model: &Model,
    id: Option<String>,
    outputs: Vec<(String, Tensor)>,
    wanted: &[WantedOutput],
) -> Result<Encoded, ApiError> {
    encode_for((model.name(), model.version()), id, outputs, wanted)
}

/// [`encode`] for a model known by its name and version.
fn encode_for(
    (model_name, model_version): (&str, &str),
    id: Option<String>,
    outputs: Vec<(String, Tensor)>,
    wanted: &[WantedOutput],
) -> Result<Encoded, ApiError> {
    let any_binary = wanted.iter().any(|w| w.binary);
    let json_bytes: usize =
        outputs.iter().zip(wanted).filter(|(_, w)| !w.binary).map(|((_, t), _)| t.data.byte_len()).sum();
    // Without binary parts the body needs no length up front, so large JSON can be written as
    // it is sent: the header gets empty `data` arrays, filled in by the body.
    let stream = !any_binary && json_bytes > STREAM_JSON_ABOVE;
    let mut binary = Vec::new();
    // Where each streamed output's elements go, and the elements.
    let mut streamed = Vec::new();
    // Roughly: the names, each element's text (a few MB at most up front: JSON outputs beside
    // binary ones are not streamed, however large), and each shape.
    let elements = if stream { 0 } else { (json_bytes * 3).min(4 * STREAM_JSON_ABOVE) };
    let mut json = Vec::with_capacity(96 + elements + outputs.len() * 96);
    json.extend_from_slice(b"{\"model_name\":");
    write_json_str(&mut json, model_name);
    json.extend_from_slice(b",\"model_version\":");
    write_json_str(&mut json, model_version);
    if let Some(id) = &id {
        json.extend_from_slice(b",\"id\":");
        write_json_str(&mut json, id);
    }
    json.extend_from_slice(b",\"outputs\":[");
    for (i, ((name, tensor), w)) in outputs.into_iter().zip(wanted).enumerate() {
        if !w.binary && matches!(tensor.data, TensorData::Bf16(_)) {
            return Err(ApiError::InvalidTensor(format!(
                "output {name:?} is BF16, which travels only in binary: request it with parameters {{\"binary_data\": true}}"
            )));
        }
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(b"{\"name\":");
        write_json_str(&mut json, &name);
        json.extend_from_slice(b",\"datatype\":\"");
        json.extend_from_slice(tensor.data.element_type().kserve_name().unwrap_or("BYTES").as_bytes());
        json.extend_from_slice(b"\",\"shape\":[");
        let mut digits = itoa::Buffer::new();
        for (d, dim) in tensor.shape.iter().enumerate() {
            if d > 0 {
                json.push(b',');
            }
            json.extend_from_slice(digits.format(*dim).as_bytes());
        }
        if w.binary {
            let bytes = super::body::binary_bytes(tensor.data);
            json.extend_from_slice(b"],\"parameters\":{\"binary_data_size\":");
            json.extend_from_slice(digits.format(bytes.len()).as_bytes());
            json.extend_from_slice(b"}}");
            binary.push(bytes);
        } else {
            json.extend_from_slice(b"],\"data\":[");
            if stream {
                streamed.push((json.len(), tensor.data));
            } else {
                write_json_elements(&tensor.data, 0..tensor.data.len(), &mut json);
            }
            json.extend_from_slice(b"]}");
        }
    }
    json.extend_from_slice(b"]}");
    let mut body = ResponseBody::default();
    if stream {
        let mut json = Bytes::from(json);
        let mut taken = 0;
        for (at, data) in streamed {
            body.push(json.split_to(at - taken));
            taken = at;
            body.push_json(data);
        }
        body.push(json);
        return Ok(Encoded { body, header_len: None });
    }
    let header_len = json.len();
    body.push(Bytes::from(json));
    if !any_binary {
        return Ok(Encoded { body, header_len: None });
    }
    for bytes in binary {
        body.push(bytes);
    }
    Ok(Encoded { body, header_len: Some(header_len) })
}

/// `text` as a JSON string, escaped as serde_json escapes it.
fn write_json_str(out: &mut Vec<u8>, text: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::super::types::{InferResponse, ResponseOutput};
    use super::*;

    /// The answer as serde writes [`InferResponse`] (the types the OpenAPI document shows),
    /// then the binary parts: what [`encode`] must write.
    fn reference_encode(
        (model_name, model_version): (&str, &str),
        id: Option<String>,
        outputs: Vec<(String, Tensor)>,
        wanted: &[WantedOutput],
    ) -> (Vec<u8>, Option<usize>) {
        let mut binary = Vec::new();
        let outputs = outputs
            .into_iter()
            .zip(wanted)
            .map(|((name, tensor), w)| {
                let datatype = tensor.data.element_type().kserve_name().unwrap_or("BYTES");
                let (parameters, data) = if w.binary {
                    let bytes = super::super::body::binary_bytes(tensor.data);
                    let size = Map::from_iter([("binary_data_size".to_string(), Value::from(bytes.len()))]);
                    binary.extend_from_slice(&bytes);
                    (Some(size), None)
                } else {
                    (None, Some(JsonData(tensor.data)))
                };
                ResponseOutput { name, datatype, shape: tensor.shape, parameters, data }
            })
            .collect();
        let response =
            InferResponse { model_name: model_name.into(), model_version: model_version.into(), id, outputs };
        let mut body = serde_json::to_vec(&response).expect("serialises");
        let header_len = wanted.iter().any(|w| w.binary).then_some(body.len());
        body.extend_from_slice(&binary);
        (body, header_len)
    }

    /// A body's bytes, its JSON pieces written.
    fn collect(mut body: ResponseBody) -> Vec<u8> {
        use axum::body::HttpBody as _;
        let mut out = Vec::new();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        while let std::task::Poll::Ready(Some(frame)) = std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            out.extend_from_slice(&frame.expect("infallible").into_data().expect("data"));
        }
        out
    }

    #[test]
    fn answers_are_written_as_serde_writes_the_response_types() {
        let model = ("m\"odel\u{1}é", "v\\2");
        let tensor = |data: TensorData, shape: Vec<usize>| Tensor { data, shape };
        let all = || {
            vec![
                (
                    "y".to_string(),
                    tensor(TensorData::F32(vec![0.5, -0.0, f32::NAN, 1e-45, 3.4e38, f32::INFINITY]), vec![2, 3]),
                ),
                ("quote\"d\n".to_string(), tensor(TensorData::F64(vec![0.1, f64::NEG_INFINITY, 5e-324]), vec![3])),
                ("i".to_string(), tensor(TensorData::I64(vec![i64::MIN, 0, i64::MAX]), vec![1, 3, 1])),
                ("u".to_string(), tensor(TensorData::U64(vec![u64::MAX]), vec![1])),
                ("b".to_string(), tensor(TensorData::Bool(vec![true, false]), vec![2])),
                ("h".to_string(), tensor(TensorData::F16(vec![f16::from_f32(0.333), f16::NAN]), vec![2])),
                ("s".to_string(), tensor(TensorData::Bytes(vec![b"a\"b".to_vec(), vec![0xff, b'x'], vec![]]), vec![3])),
                ("e".to_string(), tensor(TensorData::U8(vec![]), vec![0, 4])),
                ("scalar".to_string(), tensor(TensorData::I8(vec![-7]), vec![])),
            ]
        };
        let n = all().len();
        let ids = [None, Some(String::new()), Some("id \"7\" \\ \u{7f} 😀".to_string())];
        let choices: [fn(usize) -> bool; 4] = [|_| false, |_| true, |i| i % 2 == 0, |i| i % 3 == 1];
        for id in ids {
            for binary in choices {
                let wanted: Vec<WantedOutput> = all()
                    .iter()
                    .enumerate()
                    .map(|(i, (name, _))| WantedOutput { name: name.clone(), binary: binary(i) })
                    .collect();
                let ours = encode_for(model, id.clone(), all(), &wanted).expect("encodes");
                let (body, header_len) = reference_encode(model, id.clone(), all(), &wanted);
                assert_eq!(ours.header_len, header_len);
                let ours = collect(ours.body);
                assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&body), "id {id:?}, {n} outputs");
                assert_eq!(ours, body);
            }
        }
        let none = encode_for(model, None, Vec::new(), &[]).expect("encodes");
        assert_eq!(collect(none.body), reference_encode(model, None, Vec::new(), &[]).0);
    }

    #[test]
    fn a_large_json_answer_is_written_as_serde_writes_it_in_pieces() {
        let model = ("big", "1");
        let big = |seed: u32| {
            let values: Vec<f32> =
                (0..300_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761) ^ seed)).collect();
            Tensor { shape: vec![values.len()], data: TensorData::F32(values) }
        };
        let outputs = || {
            vec![
                ("a".to_string(), big(1)),
                ("small".to_string(), Tensor { shape: vec![1], data: TensorData::I32(vec![3]) }),
                ("b\"".to_string(), big(7)),
            ]
        };
        let wanted: Vec<WantedOutput> =
            outputs().iter().map(|(name, _)| WantedOutput { name: name.clone(), binary: false }).collect();
        let ours = encode_for(model, Some("r".into()), outputs(), &wanted).expect("encodes");
        assert_eq!(ours.header_len, None);
        assert!(axum::body::HttpBody::size_hint(&ours.body).exact().is_none(), "streamed, not written up front");
        assert_eq!(collect(ours.body), reference_encode(model, Some("r".into()), outputs(), &wanted).0);
    }

    #[test]
    fn a_bf16_output_asked_for_in_json_is_refused() {
        let model = ("m", "1");
        let outputs = vec![("x".to_string(), Tensor { shape: vec![1], data: TensorData::Bf16(vec![bf16::ONE]) })];
        let wanted = [WantedOutput { name: "x".into(), binary: false }];
        let Err(e) = encode_for(model, None, outputs, &wanted) else { panic!("BF16 in JSON encoded") };
        assert!(e.detail().contains("travels only in binary"), "{}", e.detail());
    }

    #[test]
    fn floats_are_written_as_serde_writes_them() {
        let f64s = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            0.1,
            1e21,
            1e-7,
            123_456_789.123,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut f32s: Vec<f32> = f64s.iter().map(|&x| x as f32).collect();
        f32s.extend([f32::MAX, f32::MIN_POSITIVE, 1e-45, 0.3, 16_777_217.0, -2.1e-3]);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f32s.push(f32::from_bits(state as u32));
        }
        for data in [TensorData::F32(f32s), TensorData::F64(f64s)] {
            let n = data.len();
            for range in [0..n, 1..n, 0..0, 3..4] {
                let mut fast = b"[".to_vec();
                write_json_elements(&data, range.clone(), &mut fast);
                fast.push(b']');
                let reference = serde_json::to_vec(&JsonRange(&data, range.clone())).expect("serialises");
                assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&reference), "{range:?}");
            }
        }
    }

    #[test]
    fn fp64_json_elements_read_back_exactly() {
        // Without serde_json's `float_roundtrip` its fast parser lands one ulp off on some
        // decimals (0.9405647163912139 read as 0.940564716391214), which a client comparing
        // doubles sees as a wrong answer.
        let decimals =
            ["0.9405647163912139", "0.750451", "2.2250738585072014e-308", "-1.7976931348623157e308", "5e-324"];
        let json: Value = serde_json::from_str(&format!("[{}]", decimals.join(","))).expect("json");
        let TensorData::F64(got) = from_json("x", ElementType::Double, &json).expect("parses") else {
            panic!("not f64")
        };
        let want: Vec<u64> = decimals.iter().map(|d| d.parse::<f64>().expect("decimal").to_bits()).collect();
        assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
    }
}
