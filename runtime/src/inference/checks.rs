//! Named input tensors against the model's declaration: the checks every front end gets, so a
//! wrong tensor is the same 422 whether it came as V2 JSON, V2 binary, a typed request or user
//! code.

use nimify_model::Dim;

use crate::error::ApiError;
use crate::model::TensorSpec;
use crate::tensor::Tensor;

/// Orders named tensors by the model's inputs and checks each against its declaration,
/// including that a named dim has one size across inputs (V2 and typed requests alike). `?` is
/// how some exporters spell "unknown", so it is not a name that ties dims together.
pub(crate) fn check_named(
    inputs: &[TensorSpec],
    mut tensors: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>, ApiError> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut sizes: Vec<(&str, usize, &str)> = Vec::new();
    for spec in inputs {
        let i = tensors
            .iter()
            .position(|(n, _)| *n == spec.name)
            .ok_or_else(|| ApiError::InvalidTensor(format!("missing input {:?}", spec.name)))?;
        let (name, tensor) = tensors.swap_remove(i);
        check_against(spec, &tensor)?;
        for (dim, &size) in spec.shape.iter().flatten().zip(&tensor.shape) {
            let Dim::Symbolic(sym) = dim else { continue };
            if sym == "?" {
                continue;
            }
            match sizes.iter().find(|(s, _, _)| s == sym) {
                Some((_, other, first)) if *other != size => {
                    return Err(ApiError::InvalidTensor(format!(
                        "input {name:?}: dim `{sym}` is {size} but input {first:?} has {other}"
                    )));
                }
                Some(_) => {}
                None => sizes.push((sym, size, &spec.name)),
            }
        }
        out.push((name, tensor));
    }
    Ok(out)
}

/// Checks datatype, rank and fixed dims against the model's declaration.
fn check_against(spec: &TensorSpec, tensor: &Tensor) -> Result<(), ApiError> {
    let name = &spec.name;
    if tensor.data.element_type() != spec.elem {
        return Err(ApiError::InvalidTensor(format!(
            "input {name:?}: datatype {} does not match the model's {}",
            tensor.data.element_type().kserve_name().unwrap_or("?"),
            spec.datatype()
        )));
    }
    let Some(dims) = &spec.shape else { return Ok(()) };
    let declared = || dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    if dims.len() != tensor.shape.len() {
        return Err(ApiError::InvalidTensor(format!(
            "input {name:?}: shape {:?} has rank {} but the model expects rank {} [{}]",
            tensor.shape,
            tensor.shape.len(),
            dims.len(),
            declared()
        )));
    }
    for (i, (dim, &got)) in dims.iter().zip(&tensor.shape).enumerate() {
        if let Dim::Fixed(want) = dim
            && *want != got as u64
        {
            return Err(ApiError::InvalidTensor(format!(
                "input {name:?}: dim {i} is {got} but the model expects {want} (shape {:?} vs [{}])",
                tensor.shape,
                declared()
            )));
        }
    }
    Ok(())
}
