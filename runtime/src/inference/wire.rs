//! What both protocols' decoders share: a tensor's datatype and shape as sent, its elements
//! against its shape, and the model's inputs filled in by name (each once, none unknown, none
//! missing) and outputs named, with one wording of each error whatever the wire format.

use nimify_model::ElementType;

use crate::error::ApiError;
use crate::model::TensorSpec;
use crate::tensor::{Tensor, TensorData, element_count};

/// The element type a request names for input `name`.
pub(crate) fn datatype(name: &str, datatype: &str) -> Result<ElementType, ApiError> {
    ElementType::from_kserve_name(datatype).ok_or_else(|| {
        ApiError::InvalidTensor(format!(
            "input {name:?}: unknown datatype {datatype:?}; use one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES"
        ))
    })
}

/// The shape a request gives input `name`, and its element count.
pub(crate) fn shape(name: &str, dims: &[i64]) -> Result<(Vec<usize>, usize), ApiError> {
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::InvalidTensor(format!("input {name:?}: shape {dims:?} has a negative dim")))?;
    let count = element_count(&shape)
        .ok_or_else(|| ApiError::InvalidTensor(format!("input {name:?}: shape {shape:?} is too large")))?;
    Ok((shape, count))
}

/// Input `name` as a tensor, when its elements are as many as its shape needs.
pub(crate) fn tensor(name: &str, shape: Vec<usize>, count: usize, data: TensorData) -> Result<Tensor, ApiError> {
    if data.len() != count {
        return Err(ApiError::InvalidTensor(format!(
            "input {name:?}: shape {shape:?} needs {count} elements but {} were sent",
            data.len()
        )));
    }
    Ok(Tensor { shape, data })
}

fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| format!("{:?}", s.name)).collect::<Vec<_>>().join(", ")
}

/// A model's inputs, filled in by name as a request gives them.
pub(crate) struct Inputs<'a> {
    model: &'a str,
    specs: &'a [TensorSpec],
    tensors: Vec<Option<Tensor>>,
}

impl<'a> Inputs<'a> {
    /// None filled yet.
    pub(crate) fn new(model: &'a str, specs: &'a [TensorSpec]) -> Self {
        Self { model, specs, tensors: vec![None; specs.len()] }
    }

    /// The place of input `name`: an unknown name is 422, one given twice 400.
    pub(crate) fn slot(&self, name: &str) -> Result<usize, ApiError> {
        let Some(index) = self.specs.iter().position(|s| s.name == name) else {
            return Err(ApiError::InvalidTensor(format!(
                "unknown input {name:?}; model {} takes {}",
                self.model,
                names(self.specs)
            )));
        };
        if self.tensors[index].is_some() {
            return Err(ApiError::BadRequest(format!("input {name:?} is given more than once")));
        }
        Ok(index)
    }

    /// Fills the place `slot` (from [`slot`](Self::slot)).
    pub(crate) fn fill(&mut self, slot: usize, tensor: Tensor) {
        self.tensors[slot] = Some(tensor);
    }

    /// Every input in the model's order; a missing one is 422.
    pub(crate) fn finish(self) -> Result<Vec<(String, Tensor)>, ApiError> {
        self.specs
            .iter()
            .zip(self.tensors)
            .map(|(spec, tensor)| {
                let tensor = tensor.ok_or_else(|| {
                    ApiError::InvalidTensor(format!(
                        "missing input {:?}; model {} takes {}",
                        spec.name,
                        self.model,
                        names(self.specs)
                    ))
                })?;
                Ok((spec.name.clone(), tensor))
            })
            .collect()
    }
}

/// Checks that the model has output `name` (422 naming the ones it has).
pub(crate) fn output(model: &str, outputs: &[TensorSpec], name: &str) -> Result<(), ApiError> {
    if outputs.iter().any(|s| s.name == name) {
        return Ok(());
    }
    Err(ApiError::InvalidTensor(format!("unknown output {name:?}; model {model} returns {}", names(outputs))))
}
