//! The contract between `#[nimify]`'s generated code and the runtime: the traits the generated
//! structs implement and the signature compiled in, checked against the model loaded at start.

use nimify_model::decl::TensorDecl;
use nimify_model::{Dim, ValueInfo};
use serde::Serialize;

use crate::tensor::Tensor;

/// A model whose signature is known at compile time.
pub trait TypedModel: Send + Sync + 'static {
    /// One field per input tensor.
    type Input: IntoTensors + serde::de::DeserializeOwned + Serialize + utoipa::ToSchema + Send + 'static;
    /// One field per output tensor.
    type Output: FromTensors + Serialize + serde::de::DeserializeOwned + utoipa::ToSchema + Send + 'static;
    /// Served name.
    const NAME: &'static str;
    /// Absolute path of the model file the signature was read from at compile time.
    const MODEL_PATH: &'static str;
    /// The signature compiled in; checked against the model loaded at start.
    fn signature() -> Signature;
}

/// Converts generated input structs into named tensors (model input order).
pub trait IntoTensors {
    /// The tensors, or a message naming the tensor and the problem.
    fn into_tensors(self) -> Result<Vec<(String, Tensor)>, String>;
}

/// Builds generated output structs from named tensors.
pub trait FromTensors: Sized {
    /// The struct, or a message naming the tensor and the problem.
    fn from_tensors(outputs: Vec<(String, Tensor)>) -> Result<Self, String>;
}

/// Inputs and outputs as compiled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Inputs in model order.
    pub inputs: Vec<TensorDecl>,
    /// Outputs in model order.
    pub outputs: Vec<TensorDecl>,
    /// Tensors whose dims the service declares instead of the model file
    /// (`#[nimify(dims("y" = ["batch", 22]))]`), applied to the file when it is loaded.
    pub dims_overrides: Vec<(String, Vec<Dim>)>,
    /// The reference profile compiled in (`#[nimify(reference = "...")]`): its path as written
    /// and its JSON, already checked against this signature.
    pub reference: Option<(&'static str, &'static str)>,
}

impl Signature {
    /// What the service declares for its model file, applied to how it is loaded: the dims
    /// overrides, and the reference profile compiled in.
    pub(crate) fn apply_to(&self, options: &mut crate::ModelOptions) {
        options.dims.clone_from(&self.dims_overrides);
        options.reference = self.reference.map(|(path, json)| crate::drift::Reference::Embedded { path, json });
    }
}

/// Refuses a loaded model a typed service cannot serve: another signature than the compiled-in
/// one, or outputs whose declared dims warm-up contradicted (the typed route would fail every
/// answer), saying how to fix it.
pub(crate) fn check_loaded(model: &crate::Model, compiled: &Signature) -> Result<(), crate::LoadError> {
    check_signature(model, compiled)?;
    match model.shape_lie() {
        Some(lie) => Err(crate::LoadError::ShapeMismatch {
            path: model.path().to_path_buf(),
            detail: format!(
                "{lie}; the typed types are built from the declared dims: declare the real ones in #[nimify(model = ..., dims(...))]"
            ),
        }),
        None => Ok(()),
    }
}

/// Refuses a loaded model whose signature differs from the compiled-in one, describing both.
pub fn check_signature(model: &crate::Model, compiled: &Signature) -> Result<(), crate::LoadError> {
    check_file(model.path(), model.info(), compiled)
}

/// Refuses a model file whose signature (`info`, with the compiled-in dims overrides applied)
/// differs from the compiled-in one, describing both.
pub(crate) fn check_file(
    path: &std::path::Path,
    info: &nimify_model::ModelInfo,
    compiled: &Signature,
) -> Result<(), crate::LoadError> {
    // The file is read with the compiled-in overrides applied (ServerBuilder::typed), with the
    // same rule the macro used ([`TensorDecl::classify`]).
    let matches = |values: &[ValueInfo], decls: &[TensorDecl]| {
        values.len() == decls.len() && values.iter().zip(decls).all(|(v, d)| TensorDecl::classify(v).as_ref() == Ok(d))
    };
    if matches(&info.inputs, &compiled.inputs) && matches(&info.outputs, &compiled.outputs) {
        return Ok(());
    }
    let list = |items: Vec<String>| items.join(", ");
    let file_side = |values: &[ValueInfo]| {
        list(
            values
                .iter()
                .map(|v| match TensorDecl::classify(v) {
                    Ok(d) => d.describe(),
                    Err(_) => format!("{:?}: {} (not typeable)", v.name, v.ty.onnx_type()),
                })
                .collect(),
        )
    };
    let compiled_side = |decls: &[TensorDecl]| list(decls.iter().map(TensorDecl::describe).collect());
    Err(crate::LoadError::SignatureMismatch {
        path: path.to_path_buf(),
        compiled: format!(
            "inputs ({}) -> outputs ({})",
            compiled_side(&compiled.inputs),
            compiled_side(&compiled.outputs)
        ),
        found: format!("inputs ({}) -> outputs ({})", file_side(&info.inputs), file_side(&info.outputs)),
    })
}
