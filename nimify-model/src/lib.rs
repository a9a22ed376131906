//! Pure-Rust ONNX signature reader, shared by the macro, the runtime and `cargo nimify`.
//!
//! [`read_model`] walks the protobuf wire format of a `.onnx` file and decodes only the model
//! header, the graph's inputs and outputs, the names of its initializers and their
//! external-data references. Node lists and weight payloads are skipped by seeking, so a
//! multi-gigabyte model costs about as much as a small one.

pub mod contract;
pub mod decl;
#[doc(hidden)]
pub mod onnx;
pub mod profile;
mod types;
mod wire;

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use prost::Message;

pub use types::{Dim, ElementType, ExternalData, ModelInfo, Opset, ValueInfo, ValueType};
use wire::{Wire, WireType};

/// Why a model's signature could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Open {
        /// The path as given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A read failed midway.
    #[error("read error: {0}")]
    Io(std::io::Error),
    /// The file ends inside a field.
    #[error(
        "truncated ONNX file: a field at byte {offset} runs past the end of the file ({len} bytes); re-export or re-copy the model"
    )]
    Truncated {
        /// Where the broken field starts.
        offset: u64,
        /// File length.
        len: u64,
    },
    /// The bytes are not valid protobuf.
    #[error("not an ONNX model: invalid protobuf at byte {offset} ({what})")]
    Malformed {
        /// Where the problem is.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// Valid protobuf, but not a model (no graph or no IR version).
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
}

/// Reads the signature of the model at `path`.
pub fn read_model(path: impl AsRef<Path>) -> Result<ModelInfo, ModelError> {
    let path = path.as_ref();
    let open_err = |source| ModelError::Open { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(open_err)?;
    let len = file.metadata().map_err(open_err)?.len();
    if len == 0 {
        return Err(ModelError::NotOnnx(format!("{} is empty", path.display())));
    }
    read_model_from(file, len)
}

/// Reads a signature from any seekable source of `len` bytes.
pub fn read_model_from<R: Read + Seek>(source: R, len: u64) -> Result<ModelInfo, ModelError> {
    let mut w = Wire::new(source, len);
    let mut info = ModelInfo {
        ir_version: 0,
        producer_name: String::new(),
        producer_version: String::new(),
        domain: String::new(),
        model_version: 0,
        doc_string: String::new(),
        graph_name: String::new(),
        opsets: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        metadata: Vec::new(),
        external_data: Vec::new(),
        initializer_count: 0,
        file_size: len,
    };
    let mut graph = GraphParts::default();
    let mut saw_graph = false;
    let end = w.len();
    while let Some((field, wt)) = w.key(end)? {
        match (field, wt) {
            (1, _) => info.ir_version = w.int(wt, end)?.unwrap_or(0),
            (2, WireType::Len) => info.producer_name = w.string(end)?,
            (3, WireType::Len) => info.producer_version = w.string(end)?,
            (4, WireType::Len) => info.domain = w.string(end)?,
            (5, _) => info.model_version = w.int(wt, end)?.unwrap_or(0),
            (6, WireType::Len) => info.doc_string = w.string(end)?,
            (7, WireType::Len) => {
                let graph_end = w.len_end(end)?;
                read_graph(&mut w, graph_end, &mut graph)?;
                saw_graph = true;
            }
            (8, WireType::Len) => {
                let at = w.pos();
                let op = onnx::OperatorSetIdProto::decode(w.bytes(end)?.as_slice()).map_err(|e| decode_err(at, &e))?;
                info.opsets.push(Opset { domain: op.domain.unwrap_or_default(), version: op.version.unwrap_or(0) });
            }
            (14, WireType::Len) => {
                let at = w.pos();
                let kv =
                    onnx::StringStringEntryProto::decode(w.bytes(end)?.as_slice()).map_err(|e| decode_err(at, &e))?;
                info.metadata.push((kv.key.unwrap_or_default(), kv.value.unwrap_or_default()));
            }
            _ => w.skip(wt, end)?,
        }
    }
    if !saw_graph {
        return Err(ModelError::NotOnnx("the file has no graph (ModelProto field 7)".into()));
    }
    if info.ir_version <= 0 {
        return Err(ModelError::NotOnnx("the file has no ir_version (ModelProto field 1)".into()));
    }
    if info.opsets.is_empty() {
        // Every ONNX writer emits opset_import (field 8) after the graph; without it the file is
        // either not a model or was cut short at a field boundary.
        return Err(ModelError::NotOnnx(
            "the file imports no operator set (ModelProto field 8); it may be truncated".into(),
        ));
    }
    info.graph_name = graph.name;
    info.inputs = graph.inputs.into_iter().filter(|i| !graph.initializers.contains(&i.name)).collect();
    info.outputs = graph.outputs;
    info.initializer_count = graph.initializers.len();
    info.external_data = graph.external;
    Ok(info)
}

#[derive(Default)]
struct GraphParts {
    name: String,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    initializers: std::collections::HashSet<String>,
    external: Vec<ExternalData>,
}

fn decode_err(offset: u64, e: &prost::DecodeError) -> ModelError {
    ModelError::Malformed { offset, what: e.to_string() }
}

fn read_graph<R: Read + Seek>(w: &mut Wire<R>, end: u64, g: &mut GraphParts) -> Result<(), ModelError> {
    while let Some((field, wt)) = w.key(end)? {
        match (field, wt) {
            (2, WireType::Len) => g.name = w.string(end)?,
            (5, WireType::Len) => {
                let tensor_end = w.len_end(end)?;
                read_initializer(w, tensor_end, g)?;
            }
            (15, WireType::Len) => {
                // SparseTensorProto: field 1 holds the values tensor, which carries the name.
                let sparse_end = w.len_end(end)?;
                while let Some((f, t)) = w.key(sparse_end)? {
                    if f == 1 && t == WireType::Len {
                        let tensor_end = w.len_end(sparse_end)?;
                        read_initializer(w, tensor_end, g)?;
                    } else {
                        w.skip(t, sparse_end)?;
                    }
                }
            }
            (11 | 12, WireType::Len) => {
                let at = w.pos();
                let vi = onnx::ValueInfoProto::decode(w.bytes(end)?.as_slice()).map_err(|e| decode_err(at, &e))?;
                let vi = value_info(vi);
                if field == 11 { g.inputs.push(vi) } else { g.outputs.push(vi) }
            }
            _ => w.skip(wt, end)?,
        }
    }
    Ok(())
}

/// Visits one `TensorProto`, keeping its name and external-data entries, seeking past its data.
fn read_initializer<R: Read + Seek>(w: &mut Wire<R>, end: u64, g: &mut GraphParts) -> Result<(), ModelError> {
    let mut name = String::new();
    let mut external = Vec::new();
    let mut location_external = false;
    while let Some((field, wt)) = w.key(end)? {
        match (field, wt) {
            (8, WireType::Len) => name = w.string(end)?,
            (13, WireType::Len) => {
                let at = w.pos();
                let kv =
                    onnx::StringStringEntryProto::decode(w.bytes(end)?.as_slice()).map_err(|e| decode_err(at, &e))?;
                external.push((kv.key.unwrap_or_default(), kv.value.unwrap_or_default()));
            }
            (14, _) => location_external = w.int(wt, end)? == Some(1),
            _ => w.skip(wt, end)?,
        }
    }
    if location_external || !external.is_empty() {
        let get = |k: &str| external.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        g.external.push(ExternalData {
            tensor: name.clone(),
            location: get("location").unwrap_or_default(),
            offset: get("offset").and_then(|v| v.parse().ok()),
            length: get("length").and_then(|v| v.parse().ok()),
        });
    }
    g.initializers.insert(name);
    Ok(())
}

fn value_info(vi: onnx::ValueInfoProto) -> ValueInfo {
    ValueInfo {
        name: vi.name.unwrap_or_default(),
        ty: vi.r#type.map_or(ValueType::Unknown, value_type),
        doc: vi.doc_string.unwrap_or_default(),
    }
}

fn value_type(t: onnx::TypeProto) -> ValueType {
    use onnx::type_proto::Value;
    let elem = |code: Option<i32>| code.and_then(ElementType::from_code);
    match t.value {
        Some(Value::TensorType(t)) => ValueType::Tensor { elem: elem(t.elem_type), shape: t.shape.map(shape) },
        Some(Value::SparseTensorType(t)) => {
            ValueType::SparseTensor { elem: elem(t.elem_type), shape: t.shape.map(shape) }
        }
        Some(Value::SequenceType(s)) => {
            ValueType::Sequence { of: Box::new(s.elem_type.map_or(ValueType::Unknown, |t| value_type(*t))) }
        }
        Some(Value::MapType(m)) => ValueType::Map {
            key: elem(m.key_type),
            value: Box::new(m.value_type.map_or(ValueType::Unknown, |t| value_type(*t))),
        },
        Some(Value::OptionalType(o)) => {
            ValueType::Optional { of: Box::new(o.elem_type.map_or(ValueType::Unknown, |t| value_type(*t))) }
        }
        Some(Value::OpaqueType(_)) | None => ValueType::Unknown,
    }
}

fn shape(s: onnx::TensorShapeProto) -> Vec<Dim> {
    use onnx::tensor_shape_proto::dimension::Value;
    s.dim
        .into_iter()
        .map(|d| match d.value {
            Some(Value::DimValue(v)) if v >= 0 => Dim::Fixed(v.unsigned_abs()),
            Some(Value::DimParam(p)) => Dim::Symbolic(p),
            _ => Dim::Unknown,
        })
        .collect()
}

/// The hex sha256 of a file, streamed (used for `inspect` and image labels).
pub fn file_sha256(path: impl AsRef<Path>) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
