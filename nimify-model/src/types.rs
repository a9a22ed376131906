//! The signature IR: what a model takes and returns, independent of protobuf and of ONNX Runtime.

use serde::Serialize;

/// One ONNX tensor element type (`TensorProto.DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum ElementType {
    Float,
    Uint8,
    Int8,
    Uint16,
    Int16,
    Int32,
    Int64,
    String,
    Bool,
    Float16,
    Double,
    Uint32,
    Uint64,
    Complex64,
    Complex128,
    Bfloat16,
    Float8e4m3fn,
    Float8e4m3fnuz,
    Float8e5m2,
    Float8e5m2fnuz,
    Uint4,
    Int4,
    Float4e2m1,
    /// A code this reader does not know (newer ONNX).
    #[serde(untagged)]
    Other(i32),
}

impl ElementType {
    /// Maps `TensorProto.DataType` codes; `None` for 0 (`UNDEFINED`).
    pub fn from_code(code: i32) -> Option<Self> {
        use ElementType::*;
        Some(match code {
            0 => return None,
            1 => Float,
            2 => Uint8,
            3 => Int8,
            4 => Uint16,
            5 => Int16,
            6 => Int32,
            7 => Int64,
            8 => String,
            9 => Bool,
            10 => Float16,
            11 => Double,
            12 => Uint32,
            13 => Uint64,
            14 => Complex64,
            15 => Complex128,
            16 => Bfloat16,
            17 => Float8e4m3fn,
            18 => Float8e4m3fnuz,
            19 => Float8e5m2,
            20 => Float8e5m2fnuz,
            21 => Uint4,
            22 => Int4,
            23 => Float4e2m1,
            other => Other(other),
        })
    }

    /// The ONNX spelling used in `tensor(float)`.
    pub fn onnx_name(self) -> std::borrow::Cow<'static, str> {
        use ElementType::*;
        std::borrow::Cow::Borrowed(match self {
            Float => "float",
            Uint8 => "uint8",
            Int8 => "int8",
            Uint16 => "uint16",
            Int16 => "int16",
            Int32 => "int32",
            Int64 => "int64",
            String => "string",
            Bool => "bool",
            Float16 => "float16",
            Double => "double",
            Uint32 => "uint32",
            Uint64 => "uint64",
            Complex64 => "complex64",
            Complex128 => "complex128",
            Bfloat16 => "bfloat16",
            Float8e4m3fn => "float8e4m3fn",
            Float8e4m3fnuz => "float8e4m3fnuz",
            Float8e5m2 => "float8e5m2",
            Float8e5m2fnuz => "float8e5m2fnuz",
            Uint4 => "uint4",
            Int4 => "int4",
            Float4e2m1 => "float4e2m1",
            Other(code) => return std::borrow::Cow::Owned(format!("dtype{code}")),
        })
    }

    /// The KServe V2 / Open Inference Protocol datatype, `None` when the protocol has none.
    pub fn kserve_name(self) -> Option<&'static str> {
        use ElementType::*;
        Some(match self {
            Bool => "BOOL",
            Uint8 => "UINT8",
            Uint16 => "UINT16",
            Uint32 => "UINT32",
            Uint64 => "UINT64",
            Int8 => "INT8",
            Int16 => "INT16",
            Int32 => "INT32",
            Int64 => "INT64",
            Float16 => "FP16",
            Bfloat16 => "BF16",
            Float => "FP32",
            Double => "FP64",
            String => "BYTES",
            _ => return None,
        })
    }

    /// Parses a KServe V2 datatype name.
    pub fn from_kserve_name(name: &str) -> Option<Self> {
        use ElementType::*;
        Some(match name {
            "BOOL" => Bool,
            "UINT8" => Uint8,
            "UINT16" => Uint16,
            "UINT32" => Uint32,
            "UINT64" => Uint64,
            "INT8" => Int8,
            "INT16" => Int16,
            "INT32" => Int32,
            "INT64" => Int64,
            "FP16" => Float16,
            "BF16" => Bfloat16,
            "FP32" => Float,
            "FP64" => Double,
            "BYTES" => String,
            _ => return None,
        })
    }

    /// Size in bytes of one element in the binary tensor format (`None` for strings).
    pub fn byte_size(self) -> Option<usize> {
        use ElementType::*;
        Some(match self {
            Bool | Uint8 | Int8 => 1,
            Uint16 | Int16 | Float16 | Bfloat16 => 2,
            Uint32 | Int32 | Float => 4,
            Uint64 | Int64 | Double => 8,
            _ => return None,
        })
    }
}

/// One dimension of a tensor shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dim {
    /// A fixed, non-negative size.
    Fixed(u64),
    /// A named dimension (`batch`, `seq`, `?`, `N + 1`...), kept exactly as written.
    Symbolic(String),
    /// Neither value nor name (or a negative value in the file): any size.
    Unknown,
}

impl Dim {
    /// The size as KServe V2 metadata shows it: `-1` when not fixed.
    pub fn as_i64(&self) -> i64 {
        match self {
            Dim::Fixed(n) => i64::try_from(*n).unwrap_or(i64::MAX),
            _ => -1,
        }
    }

    /// Whether any size is accepted in this dimension.
    pub fn is_dynamic(&self) -> bool {
        !matches!(self, Dim::Fixed(_))
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => write!(f, "{s}"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// The type of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValueType {
    /// A dense tensor; `shape` is `None` when even the rank is unknown.
    Tensor {
        /// Element type; `None` when the file leaves it undefined.
        elem: Option<ElementType>,
        /// Dimensions, outermost first.
        shape: Option<Vec<Dim>>,
    },
    /// A sparse tensor.
    SparseTensor {
        /// Element type.
        elem: Option<ElementType>,
        /// Dimensions.
        shape: Option<Vec<Dim>>,
    },
    /// `seq(T)`.
    Sequence {
        /// Element type of the sequence.
        of: Box<ValueType>,
    },
    /// `map(K, V)`.
    Map {
        /// Key element type.
        key: Option<ElementType>,
        /// Value type.
        value: Box<ValueType>,
    },
    /// `optional(T)`.
    Optional {
        /// Wrapped type.
        of: Box<ValueType>,
    },
    /// The type field is missing or of a kind this reader does not know.
    Unknown,
}

impl ValueType {
    /// The ONNX-style spelling, e.g. `tensor(float)` or `seq(map(int64,tensor(float)))`.
    pub fn onnx_type(&self) -> String {
        let elem = |e: &Option<ElementType>| e.map_or_else(|| "undefined".into(), |e| e.onnx_name().into_owned());
        match self {
            ValueType::Tensor { elem: e, .. } => format!("tensor({})", elem(e)),
            ValueType::SparseTensor { elem: e, .. } => format!("sparse_tensor({})", elem(e)),
            ValueType::Sequence { of } => format!("seq({})", of.onnx_type()),
            ValueType::Map { key, value } => format!("map({},{})", elem(key), value.onnx_type()),
            ValueType::Optional { of } => format!("optional({})", of.onnx_type()),
            ValueType::Unknown => "unknown".into(),
        }
    }

    /// Element type and shape when this is a dense tensor.
    pub fn as_tensor(&self) -> Option<(Option<ElementType>, Option<&[Dim]>)> {
        match self {
            ValueType::Tensor { elem, shape } => Some((*elem, shape.as_deref())),
            _ => None,
        }
    }
}

/// A named graph input or output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ValueInfo {
    /// The exact tensor name (may contain `/`, `:`, `.`, spaces, quotes).
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: ValueType,
    /// The model author's description, if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub doc: String,
}

/// An operator set the model imports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Opset {
    /// Domain; empty means the default `ai.onnx` domain.
    pub domain: String,
    /// Version.
    pub version: i64,
}

/// An initializer whose data lives in another file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalData {
    /// Initializer name.
    pub tensor: String,
    /// Path relative to the model file.
    pub location: String,
    /// Byte offset in that file, when given.
    pub offset: Option<u64>,
    /// Byte length, when given.
    pub length: Option<u64>,
}

/// Everything nimify needs to know about a model without loading its weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    /// `ModelProto.ir_version`.
    pub ir_version: i64,
    /// Producer (e.g. `pytorch`, `skl2onnx`).
    pub producer_name: String,
    /// Producer version.
    pub producer_version: String,
    /// Model domain.
    pub domain: String,
    /// `ModelProto.model_version`.
    pub model_version: i64,
    /// Model description.
    pub doc_string: String,
    /// The main graph's name.
    pub graph_name: String,
    /// Operator sets imported.
    pub opsets: Vec<Opset>,
    /// Graph inputs that are not initializers, in file order.
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs, in file order.
    pub outputs: Vec<ValueInfo>,
    /// `metadata_props` in file order.
    pub metadata: Vec<(String, String)>,
    /// Initializers stored outside the model file.
    pub external_data: Vec<ExternalData>,
    /// Number of initializers (including those also listed as inputs).
    pub initializer_count: usize,
    /// Size of the model file in bytes.
    pub file_size: u64,
}
