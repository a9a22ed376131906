//! A served model: its signature (read by `nimify-model`, checked against what ONNX Runtime
//! loaded) and its session. Inference runs on the blocking thread pool, never on the async
//! runtime's workers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nimify_model::{Dim, ElementType, ModelInfo, ValueType};
use ort::session::Session;

use crate::error::ApiError;
use crate::tensor::{Tensor, from_ort};

/// The version every model is served under.
pub const DEFAULT_VERSION: &str = "1";

/// How to load one model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Path to the `.onnx` file.
    pub path: PathBuf,
    /// Served name; the file stem when `None`.
    pub name: Option<String>,
    /// Intra-op threads (0 lets ONNX Runtime choose).
    pub intra_threads: usize,
}

impl ModelOptions {
    /// Options for the model at `path` with defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), name: None, intra_threads: 0 }
    }

    /// Serves the model under `name` instead of the file stem.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The name the model is served under.
    pub fn served_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()))
    }
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The signature could not be read (missing, truncated or not ONNX).
    #[error("model {path}: {source}")]
    Signature {
        /// Model path.
        path: PathBuf,
        /// Reader error.
        source: nimify_model::ModelError,
    },
    /// ONNX Runtime itself is missing or unusable.
    #[error(transparent)]
    Runtime(#[from] crate::ortlib::OrtLibError),
    /// ONNX Runtime refused the model.
    #[error("model {path}: ONNX Runtime cannot load it: {reason}")]
    Session {
        /// Model path.
        path: PathBuf,
        /// ONNX Runtime's message.
        reason: String,
    },
    /// The model takes an input type the protocol cannot carry.
    #[error("model {path}: input {input:?} has type {ty}, which nimify cannot accept over the inference protocol; export the model with tensor inputs of a supported element type")]
    UnsupportedInput {
        /// Model path.
        path: PathBuf,
        /// Input name.
        input: String,
        /// ONNX type spelling.
        ty: String,
    },
}

/// The protocol-level view of one input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Exact tensor name.
    pub name: String,
    /// Element type as carried on the wire (`String` for BYTES, also for non-tensor outputs).
    pub elem: ElementType,
    /// Declared dims; `None` when the rank is unknown.
    pub shape: Option<Vec<Dim>>,
    /// Non-tensor output (sequence/map) served as BYTES with one JSON document per element.
    pub json_encoded: Option<String>,
}

impl TensorSpec {
    /// KServe V2 datatype name.
    pub fn datatype(&self) -> &'static str {
        self.elem.kserve_name().unwrap_or("BYTES")
    }

    /// Shape as metadata shows it (`-1` for anything not fixed).
    pub fn metadata_shape(&self) -> Vec<i64> {
        match &self.shape {
            Some(dims) => dims.iter().map(Dim::as_i64).collect(),
            None => vec![-1],
        }
    }
}

/// A loaded model ready to serve.
pub struct Model {
    name: String,
    version: String,
    path: PathBuf,
    info: ModelInfo,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    session: Arc<Mutex<Session>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.name).field("path", &self.path).finish_non_exhaustive()
    }
}

impl Model {
    /// Reads the signature and opens an ONNX Runtime session.
    pub fn load(options: &ModelOptions) -> Result<Self, LoadError> {
        let path = options.path.clone();
        let info = nimify_model::read_model(&path).map_err(|source| LoadError::Signature { path: path.clone(), source })?;
        let inputs = info.inputs.iter().map(|i| input_spec(&path, i)).collect::<Result<Vec<_>, _>>()?;
        let outputs = info.outputs.iter().map(output_spec).collect();
        let env = crate::ortlib::environment()?;
        let session = open_session(env, &path, options).map_err(|reason| LoadError::Session { path: path.clone(), reason })?;
        Ok(Self {
            name: options.served_name(),
            version: DEFAULT_VERSION.into(),
            path,
            info,
            inputs,
            outputs,
            session: Arc::new(Mutex::new(session)),
        })
    }

    /// Served name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Served version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// File the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The signature read from the file.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Inputs as the protocol sees them.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// Outputs as the protocol sees them.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Runs the model on validated inputs (in model input order) and returns the requested
    /// outputs (all when `wanted` is empty), in the order asked for.
    pub async fn infer(&self, inputs: Vec<(String, Tensor)>, wanted: Vec<String>) -> Result<Vec<(String, Tensor)>, ApiError> {
        let session = Arc::clone(&self.session);
        let model = self.name.clone();
        tokio::task::spawn_blocking(move || run_session(&session, inputs, &wanted))
            .await
            .map_err(|e| ApiError::Internal(format!("inference task for model {model} failed: {e}")))?
    }
}

fn open_session(env: &ort::environment::Environment, path: &Path, options: &ModelOptions) -> Result<Session, String> {
    let builder = Session::builder(env).map_err(|e| e.to_string())?;
    let builder = if options.intra_threads > 0 { builder.with_intra_threads(options.intra_threads).map_err(|e| e.to_string())? } else { builder };
    let mut builder = builder;
    builder.commit_from_file(path).map_err(|e| e.to_string())
}

fn run_session(session: &Mutex<Session>, inputs: Vec<(String, Tensor)>, wanted: &[String]) -> Result<Vec<(String, Tensor)>, ApiError> {
    let values = inputs
        .into_iter()
        .map(|(name, t)| t.into_ort().map(|v| (name, v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::InvalidTensor(format!("cannot build input tensor: {e}")))?;
    let mut session = session.lock().map_err(|_| ApiError::Internal("session lock poisoned".into()))?;
    let outputs = session.run(values).map_err(|e| ApiError::Inference(e.to_string()))?;
    let mut result = Vec::new();
    if wanted.is_empty() {
        for (name, value) in outputs.iter() {
            result.push((name.to_string(), from_ort(&value).map_err(ApiError::Inference)?));
        }
    } else {
        for name in wanted {
            let value = outputs.get(name).ok_or_else(|| ApiError::Inference(format!("ONNX Runtime returned no output {name:?}")))?;
            result.push((name.clone(), from_ort(value).map_err(ApiError::Inference)?));
        }
    }
    Ok(result)
}

fn input_spec(path: &Path, vi: &nimify_model::ValueInfo) -> Result<TensorSpec, LoadError> {
    match &vi.ty {
        ValueType::Tensor { elem: Some(elem), shape } if elem.kserve_name().is_some() => {
            Ok(TensorSpec { name: vi.name.clone(), elem: *elem, shape: shape.clone(), json_encoded: None })
        }
        other => Err(LoadError::UnsupportedInput { path: path.to_path_buf(), input: vi.name.clone(), ty: other.onnx_type() }),
    }
}

fn output_spec(vi: &nimify_model::ValueInfo) -> TensorSpec {
    match &vi.ty {
        ValueType::Tensor { elem: Some(elem), shape } if elem.kserve_name().is_some() => {
            TensorSpec { name: vi.name.clone(), elem: *elem, shape: shape.clone(), json_encoded: None }
        }
        // Sequences and maps (scikit-learn's ZipMap) are served as BYTES: one JSON document per row.
        other => TensorSpec {
            name: vi.name.clone(),
            elem: ElementType::String,
            shape: Some(vec![Dim::Unknown]),
            json_encoded: Some(other.onnx_type()),
        },
    }
}
