//! Owned tensors as the server moves them around, and their conversion to and from ONNX Runtime
//! values. Shapes come from the data ONNX Runtime returns, never from the declared signature.

use half::{bf16, f16};
use nimify_model::ElementType;
use ort::value::{DynValue, Tensor as OrtTensor, ValueType as OrtValueType};

/// The element buffer of a tensor, one variant per element type the protocol carries.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// BYTES / ONNX `string`: one byte string per element.
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the typed vector inside any numeric variant, binding it as `$v`; strings go
/// to `$bytes`.
macro_rules! for_each_numeric {
    ($data:expr, $v:ident => $body:expr, $b:ident => $bytes:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::U16($v) => $body,
            TensorData::U32($v) => $body,
            TensorData::U64($v) => $body,
            TensorData::I8($v) => $body,
            TensorData::I16($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::F16($v) => $body,
            TensorData::Bf16($v) => $body,
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::Bytes($b) => $bytes,
        }
    };
}
pub(crate) use for_each_numeric;

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        for_each_numeric!(self, v => v.len(), b => b.len())
    }

    /// Size in the binary tensor format: elements times their size, or for BYTES each string
    /// with its 4-byte length prefix.
    pub fn byte_len(&self) -> usize {
        match self {
            TensorData::Bytes(b) => b.iter().map(|s| s.len() + 4).sum(),
            other => other.len() * other.element_type().byte_size().unwrap_or(1),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        match self {
            TensorData::Bool(_) => ElementType::Bool,
            TensorData::U8(_) => ElementType::Uint8,
            TensorData::U16(_) => ElementType::Uint16,
            TensorData::U32(_) => ElementType::Uint32,
            TensorData::U64(_) => ElementType::Uint64,
            TensorData::I8(_) => ElementType::Int8,
            TensorData::I16(_) => ElementType::Int16,
            TensorData::I32(_) => ElementType::Int32,
            TensorData::I64(_) => ElementType::Int64,
            TensorData::F16(_) => ElementType::Float16,
            TensorData::Bf16(_) => ElementType::Bfloat16,
            TensorData::F32(_) => ElementType::Float,
            TensorData::F64(_) => ElementType::Double,
            TensorData::Bytes(_) => ElementType::String,
        }
    }
}

/// A tensor: a row-major element buffer and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first; empty for a scalar.
    pub shape: Vec<usize>,
    /// Elements; `data.len()` equals the product of `shape`.
    pub data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that the element count matches the shape.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self, String> {
        let expected = element_count(&shape).ok_or_else(|| format!("shape {shape:?} overflows"))?;
        if expected != data.len() {
            return Err(format!("shape {shape:?} needs {expected} elements, got {}", data.len()));
        }
        Ok(Self { shape, data })
    }

    /// Converts into an ONNX Runtime value (copies strings; moves numeric buffers).
    pub(crate) fn into_ort(self) -> Result<DynValue, ort::Error> {
        let shape: Vec<i64> = self.shape.iter().map(|&d| i64::try_from(d).unwrap_or(i64::MAX)).collect();
        for_each_numeric!(self.data,
            v => Ok(OrtTensor::from_array((shape, v))?.into_dyn()),
            b => {
                let strings = b.into_iter().map(|s| String::from_utf8(s).map_err(|_| ort::Error::new("string tensor element is not valid UTF-8"))).collect::<Result<Vec<_>, _>>()?;
                Ok(OrtTensor::from_string_array((shape, strings.as_slice()))?.into_dyn())
            }
        )
    }
}

/// The product of `shape`, `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Converts an ONNX Runtime output into a tensor. Sequences and maps (e.g. scikit-learn's
/// ZipMap) become a BYTES tensor holding one JSON document per element.
pub(crate) fn from_ort(value: &DynValue) -> Result<Tensor, String> {
    match value.dtype() {
        OrtValueType::Tensor { ty, .. } => tensor_from_ort(value, *ty),
        OrtValueType::Sequence(_) => {
            let items = value
                .try_extract_sequence::<ort::value::DynValueTypeMarker>()
                .map_err(|e| format!("cannot read sequence output: {e}"))?;
            let docs = items
                .iter()
                .map(|item| json_of(item).map(|j| j.to_string().into_bytes()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Tensor { shape: vec![docs.len()], data: TensorData::Bytes(docs) })
        }
        OrtValueType::Map { .. } => {
            let doc = json_of(value)?.to_string().into_bytes();
            Ok(Tensor { shape: vec![1], data: TensorData::Bytes(vec![doc]) })
        }
        other => Err(format!("unsupported output type {other}")),
    }
}

fn tensor_from_ort(value: &DynValue, ty: ort::value::TensorElementType) -> Result<Tensor, String> {
    use ort::value::TensorElementType as T;
    let err = |e: ort::Error| format!("cannot read tensor output: {e}");
    macro_rules! grab {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(err)?;
            (
                shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect::<Vec<_>>(),
                TensorData::$variant(data.to_vec()),
            )
        }};
    }
    let (shape, data) = match ty {
        T::Bool => grab!(bool, Bool),
        T::Uint8 => grab!(u8, U8),
        T::Uint16 => grab!(u16, U16),
        T::Uint32 => grab!(u32, U32),
        T::Uint64 => grab!(u64, U64),
        T::Int8 => grab!(i8, I8),
        T::Int16 => grab!(i16, I16),
        T::Int32 => grab!(i32, I32),
        T::Int64 => grab!(i64, I64),
        T::Float16 => grab!(f16, F16),
        T::Bfloat16 => grab!(bf16, Bf16),
        T::Float32 => grab!(f32, F32),
        T::Float64 => grab!(f64, F64),
        T::String => {
            let (shape, strings) = value.try_extract_strings().map_err(err)?;
            (
                shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect(),
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
        other => return Err(format!("unsupported output element type {other}")),
    };
    Ok(Tensor { shape, data })
}

/// What an ONNX Runtime output will take once read: elements times their size for numeric
/// tensors, one byte an element for strings (their real size is known only once read), nothing
/// for sequences and maps (counted once read).
pub(crate) fn ort_byte_len(value: &DynValue) -> usize {
    use ort::value::TensorElementType as T;
    match value.dtype() {
        OrtValueType::Tensor { ty, shape, .. } => {
            let elements = shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).fold(1usize, usize::saturating_mul);
            let size = match ty {
                T::Bool | T::Uint8 | T::Int8 | T::String => 1,
                T::Uint16 | T::Int16 | T::Float16 | T::Bfloat16 => 2,
                T::Uint32 | T::Int32 | T::Float32 => 4,
                _ => 8,
            };
            elements.saturating_mul(size)
        }
        _ => 0,
    }
}

/// A JSON rendering of a map or of a small tensor inside a sequence.
fn json_of(value: &DynValue) -> Result<serde_json::Value, String> {
    use ort::value::TensorElementType as T;
    use serde_json::{Map, Value};
    match value.dtype() {
        OrtValueType::Map { key, value: v } => {
            let err = |e: ort::Error| format!("cannot read map output: {e}");
            macro_rules! entries {
                ($k:ty, $v:ty) => {
                    value
                        .try_extract_key_values::<$k, $v>()
                        .map_err(err)?
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                        .collect::<Vec<_>>()
                };
            }
            let pairs = match (key, v) {
                (T::Int64, T::Float32) => entries!(i64, f32),
                (T::Int64, T::Float64) => entries!(i64, f64),
                (T::Int64, T::Int64) => entries!(i64, i64),
                (T::String, T::Float32) => entries!(String, f32),
                (T::String, T::Float64) => entries!(String, f64),
                (T::String, T::Int64) => entries!(String, i64),
                (k, v) => return Err(format!("unsupported map output map({k},{v})")),
            };
            Ok(Value::Object(pairs.into_iter().collect::<Map<_, _>>()))
        }
        OrtValueType::Tensor { .. } => {
            let t = from_ort(value)?;
            let data = for_each_numeric!(&t.data, v => serde_json::json!(v), b => serde_json::json!(b.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect::<Vec<_>>()));
            Ok(serde_json::json!({ "shape": t.shape, "data": data }))
        }
        other => Err(format!("unsupported nested output type {other}")),
    }
}

/// Expands `$m!(Variant, ...)` over every [`TensorData`] variant.
macro_rules! with_variants {
    ($m:ident) => {
        $m!(Bool, U8, U16, U32, U64, I8, I16, I32, I64, F16, Bf16, F32, F64, Bytes)
    };
}

impl Tensor {
    /// Concatenates tensors along dim 0. `None` when ranks, trailing dims or types differ, or a
    /// tensor is a scalar.
    pub fn concat(parts: &[&Tensor]) -> Option<Tensor> {
        let first = parts.first()?;
        let tail = first.shape.get(1..)?;
        if parts.iter().any(|p| p.shape.get(1..) != Some(tail)) {
            return None;
        }
        let rows = parts.iter().map(|p| p.shape[0]).sum::<usize>();
        macro_rules! cat {
            ($($v:ident),*) => {
                match &first.data {
                    $(TensorData::$v(_) => {
                        let mut out = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
                        for p in parts {
                            let TensorData::$v(v) = &p.data else { return None };
                            out.extend_from_slice(v);
                        }
                        TensorData::$v(out)
                    })*
                }
            };
        }
        let data = with_variants!(cat);
        let mut shape = vec![rows];
        shape.extend_from_slice(tail);
        Some(Tensor { shape, data })
    }

    /// Splits along dim 0 into pieces of `rows[i]` rows. `None` unless the rows add up to dim 0.
    pub fn split(self, rows: &[usize]) -> Option<Vec<Tensor>> {
        let total = *self.shape.first()?;
        if rows.iter().sum::<usize>() != total {
            return None;
        }
        let row_len = element_count(&self.shape[1..])?;
        let tail = self.shape[1..].to_vec();
        macro_rules! cut {
            ($($v:ident),*) => {
                match self.data {
                    $(TensorData::$v(v) => {
                        let mut it = v.into_iter();
                        rows.iter().map(|&r| TensorData::$v(it.by_ref().take(r * row_len).collect())).collect::<Vec<_>>()
                    })*
                }
            };
        }
        let pieces = with_variants!(cut);
        Some(
            pieces
                .into_iter()
                .zip(rows)
                .map(|(data, &r)| {
                    let mut shape = vec![r];
                    shape.extend_from_slice(&tail);
                    Tensor { shape, data }
                })
                .collect(),
        )
    }

    /// A tensor of `shape` filled with zeros (empty strings for BYTES), for warm-up.
    pub fn zeros(elem: ElementType, shape: Vec<usize>) -> Option<Tensor> {
        let n = element_count(&shape)?;
        let data = match elem {
            ElementType::Bool => TensorData::Bool(vec![false; n]),
            ElementType::Uint8 => TensorData::U8(vec![0; n]),
            ElementType::Uint16 => TensorData::U16(vec![0; n]),
            ElementType::Uint32 => TensorData::U32(vec![0; n]),
            ElementType::Uint64 => TensorData::U64(vec![0; n]),
            ElementType::Int8 => TensorData::I8(vec![0; n]),
            ElementType::Int16 => TensorData::I16(vec![0; n]),
            ElementType::Int32 => TensorData::I32(vec![0; n]),
            ElementType::Int64 => TensorData::I64(vec![0; n]),
            ElementType::Float16 => TensorData::F16(vec![f16::ZERO; n]),
            ElementType::Bfloat16 => TensorData::Bf16(vec![bf16::ZERO; n]),
            ElementType::Float => TensorData::F32(vec![0.0; n]),
            ElementType::Double => TensorData::F64(vec![0.0; n]),
            ElementType::String => TensorData::Bytes(vec![Vec::new(); n]),
            _ => return None,
        };
        Some(Tensor { shape, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_then_split_round_trips() {
        let a = Tensor::new(vec![1, 2], TensorData::F32(vec![1.0, 2.0])).expect("a");
        let b = Tensor::new(vec![2, 2], TensorData::F32(vec![3.0, 4.0, 5.0, 6.0])).expect("b");
        let c = Tensor::concat(&[&a, &b]).expect("concat");
        assert_eq!(c.shape, vec![3, 2]);
        let parts = c.split(&[1, 2]).expect("split");
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn concat_refuses_mismatches() {
        let a = Tensor::new(vec![1, 2], TensorData::F32(vec![1.0, 2.0])).expect("a");
        let b = Tensor::new(vec![1, 3], TensorData::F32(vec![1.0, 2.0, 3.0])).expect("b");
        let s = Tensor::new(vec![], TensorData::F32(vec![1.0])).expect("scalar");
        let i = Tensor::new(vec![1, 2], TensorData::I32(vec![1, 2])).expect("i");
        assert!(Tensor::concat(&[&a, &b]).is_none());
        assert!(Tensor::concat(&[&s, &s]).is_none());
        assert!(Tensor::concat(&[&a, &i]).is_none());
        assert!(a.split(&[2]).is_none());
    }
}
