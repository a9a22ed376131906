//! `ModelInferRequest` to named tensors and outputs back to `ModelInferResponse`: the gRPC front
//! end's only translation; the checks against the model and the run are the inference path's.
//!
//! Inputs come either all raw (`raw_input_contents`, one entry per input in input order, what
//! tritonclient sends) or all typed (`contents`), as Triton requires. Raw bytes are the binary
//! tensor format of the HTTP extension and decode through the same code. Outputs always go out
//! raw (`raw_output_contents`), as Triton answers, sharing the output buffers' memory.

use bytes::Bytes;
use nimify_model::ElementType;

use super::generated::model_infer_response::InferOutputTensor;
use super::generated::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use crate::error::ApiError;
use crate::inference::wire::{self, Inputs};
use crate::model::Model;
use crate::tensor::{Tensor, TensorData};

/// A request taken apart: the model's inputs in its order, and the outputs wanted.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub id: String,
    pub inputs: Vec<(String, Tensor)>,
    pub outputs: Vec<String>,
}

/// Decodes `request`'s tensors for `model` (each input once, none unknown) and the outputs it
/// asks for (all when it names none). Framing problems are INVALID_ARGUMENT through
/// [`ApiError::BadRequest`]; tensors that do not fit are [`ApiError::InvalidTensor`].
pub(crate) fn decode(model: &Model, request: ModelInferRequest) -> Result<Decoded, ApiError> {
    let ModelInferRequest { id, inputs, outputs, raw_input_contents, .. } = request;
    let raw = !raw_input_contents.is_empty();
    if raw && raw_input_contents.len() != inputs.len() {
        return Err(ApiError::BadRequest(format!(
            "raw_input_contents has {} entries but the request has {} inputs; send one entry per input, in input order",
            raw_input_contents.len(),
            inputs.len()
        )));
    }
    let mut slots = Inputs::new(model.name(), model.inputs());
    let mut raw_contents = raw_input_contents.into_iter();
    for input in inputs {
        let slot = slots.slot(&input.name)?;
        let name = &input.name;
        let elem = wire::datatype(name, &input.datatype)?;
        let (shape, count) = wire::shape(name, &input.shape)?;
        let data = match (raw_contents.next(), input.contents) {
            (Some(_), Some(contents)) if !is_empty(&contents) => {
                return Err(ApiError::BadRequest(format!(
                    "input {name:?} has contents while the request uses raw_input_contents; send every input one way"
                )));
            }
            (Some(bytes), _) => crate::v2::codec::from_binary(name, elem, count, &bytes)?,
            (None, Some(contents)) => from_contents(name, elem, contents)?,
            // An empty `contents` is not sent at all in proto3.
            (None, None) if count == 0 => from_contents(name, elem, InferTensorContents::default())?,
            (None, None) => {
                return Err(ApiError::BadRequest(format!(
                    "input {name:?} has no data: set its contents or raw_input_contents"
                )));
            }
        };
        slots.fill(slot, wire::tensor(name, shape, count, data)?);
    }
    let named = slots.finish()?;
    let wanted = if outputs.is_empty() {
        model.outputs().iter().map(|s| s.name.clone()).collect()
    } else {
        outputs
            .into_iter()
            .map(|o| wire::output(model.name(), model.outputs(), &o.name).map(|()| o.name))
            .collect::<Result<_, _>>()?
    };
    Ok(Decoded { id, inputs: named, outputs: wanted })
}

fn is_empty(c: &InferTensorContents) -> bool {
    c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty()
}

/// Elements from the typed field of `elem`. Narrow integers travel widened (`int_contents`,
/// `uint_contents`) and are refused when out of range; elements in any other field are an error
/// that names the right one.
fn from_contents(name: &str, elem: ElementType, c: InferTensorContents) -> Result<TensorData, ApiError> {
    let field = match elem {
        ElementType::Bool => "bool_contents",
        ElementType::Int8 | ElementType::Int16 | ElementType::Int32 => "int_contents",
        ElementType::Int64 => "int64_contents",
        ElementType::Uint8 | ElementType::Uint16 | ElementType::Uint32 => "uint_contents",
        ElementType::Uint64 => "uint64_contents",
        ElementType::Float => "fp32_contents",
        ElementType::Double => "fp64_contents",
        ElementType::String => "bytes_contents",
        ElementType::Float16 | ElementType::Bfloat16 => {
            return Err(ApiError::InvalidTensor(format!(
                "input {name:?}: {} has no typed contents field; send it in raw_input_contents",
                elem.kserve_name().unwrap_or("?")
            )));
        }
        other => {
            return Err(ApiError::InvalidTensor(format!(
                "input {name:?}: element type {} is not supported",
                other.onnx_name()
            )));
        }
    };
    let used = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    if let Some((other, _)) = used.iter().find(|(f, n)| *n > 0 && *f != field) {
        return Err(ApiError::InvalidTensor(format!(
            "input {name:?}: a {} tensor's elements go in {field}, not {other}",
            elem.kserve_name().unwrap_or("?")
        )));
    }
    fn narrow<W: Copy + std::fmt::Display, T: TryFrom<W>>(
        name: &str,
        ty: &str,
        wide: Vec<W>,
    ) -> Result<Vec<T>, ApiError> {
        wide.into_iter()
            .enumerate()
            .map(|(i, x)| {
                T::try_from(x).map_err(|_| {
                    ApiError::InvalidTensor(format!(
                        "input {name:?}: element {i} is {x}, which is out of range for {ty}"
                    ))
                })
            })
            .collect()
    }
    Ok(match elem {
        ElementType::Bool => TensorData::Bool(c.bool_contents),
        ElementType::Int8 => TensorData::I8(narrow(name, "INT8", c.int_contents)?),
        ElementType::Int16 => TensorData::I16(narrow(name, "INT16", c.int_contents)?),
        ElementType::Int32 => TensorData::I32(c.int_contents),
        ElementType::Int64 => TensorData::I64(c.int64_contents),
        ElementType::Uint8 => TensorData::U8(narrow(name, "UINT8", c.uint_contents)?),
        ElementType::Uint16 => TensorData::U16(narrow(name, "UINT16", c.uint_contents)?),
        ElementType::Uint32 => TensorData::U32(c.uint_contents),
        ElementType::Uint64 => TensorData::U64(c.uint64_contents),
        ElementType::Float => TensorData::F32(c.fp32_contents),
        ElementType::Double => TensorData::F64(c.fp64_contents),
        _ => TensorData::Bytes(c.bytes_contents.into_iter().map(Vec::from).collect()),
    })
}

/// The response for `outputs` (in the order asked for), raw, with the request's id.
pub(crate) fn encode(model: &Model, id: String, outputs: Vec<(String, Tensor)>) -> ModelInferResponse {
    let mut tensors = Vec::with_capacity(outputs.len());
    let mut raw: Vec<Bytes> = Vec::with_capacity(outputs.len());
    for (name, tensor) in outputs {
        tensors.push(InferOutputTensor {
            name,
            datatype: tensor.data.element_type().kserve_name().unwrap_or("BYTES").to_string(),
            shape: tensor.shape.iter().map(|&d| i64::try_from(d).unwrap_or(i64::MAX)).collect(),
            parameters: Default::default(),
            contents: None,
        });
        raw.push(crate::v2::body::binary_bytes(tensor.data));
    }
    ModelInferResponse {
        model_name: model.name().to_string(),
        model_version: model.version().to_string(),
        id,
        parameters: Default::default(),
        outputs: tensors,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(f: impl FnOnce(&mut InferTensorContents)) -> InferTensorContents {
        let mut c = InferTensorContents::default();
        f(&mut c);
        c
    }

    #[test]
    fn every_typed_field_decodes_and_narrow_integers_are_range_checked() {
        let ok = |elem, c| from_contents("t", elem, c).expect("decodes");
        assert_eq!(
            ok(ElementType::Bool, contents(|c| c.bool_contents = vec![true, false])),
            TensorData::Bool(vec![true, false])
        );
        assert_eq!(
            ok(ElementType::Int8, contents(|c| c.int_contents = vec![-128, 127])),
            TensorData::I8(vec![-128, 127])
        );
        assert_eq!(
            ok(ElementType::Int16, contents(|c| c.int_contents = vec![-32768, 5])),
            TensorData::I16(vec![-32768, 5])
        );
        assert_eq!(
            ok(ElementType::Int32, contents(|c| c.int_contents = vec![i32::MIN])),
            TensorData::I32(vec![i32::MIN])
        );
        assert_eq!(
            ok(ElementType::Int64, contents(|c| c.int64_contents = vec![i64::MAX])),
            TensorData::I64(vec![i64::MAX])
        );
        assert_eq!(ok(ElementType::Uint8, contents(|c| c.uint_contents = vec![255])), TensorData::U8(vec![255]));
        assert_eq!(ok(ElementType::Uint16, contents(|c| c.uint_contents = vec![65535])), TensorData::U16(vec![65535]));
        assert_eq!(
            ok(ElementType::Uint32, contents(|c| c.uint_contents = vec![u32::MAX])),
            TensorData::U32(vec![u32::MAX])
        );
        assert_eq!(
            ok(ElementType::Uint64, contents(|c| c.uint64_contents = vec![u64::MAX])),
            TensorData::U64(vec![u64::MAX])
        );
        assert_eq!(ok(ElementType::Float, contents(|c| c.fp32_contents = vec![1.5])), TensorData::F32(vec![1.5]));
        assert_eq!(ok(ElementType::Double, contents(|c| c.fp64_contents = vec![0.1])), TensorData::F64(vec![0.1]));
        assert_eq!(
            ok(ElementType::String, contents(|c| c.bytes_contents = vec![Bytes::from_static(b"hi"), Bytes::new()])),
            TensorData::Bytes(vec![b"hi".to_vec(), Vec::new()])
        );
        // Empty tensors have no elements in any field.
        assert_eq!(ok(ElementType::Float, InferTensorContents::default()), TensorData::F32(Vec::new()));

        let err = |elem, c| from_contents("t", elem, c).expect_err("refused").to_string();
        assert!(
            err(ElementType::Int8, contents(|c| c.int_contents = vec![0, 128]))
                .contains("element 1 is 128, which is out of range for INT8")
        );
        assert!(err(ElementType::Uint8, contents(|c| c.uint_contents = vec![256])).contains("out of range for UINT8"));
        assert!(err(ElementType::Int16, contents(|c| c.int_contents = vec![40000])).contains("out of range for INT16"));
        assert!(
            err(ElementType::Uint16, contents(|c| c.uint_contents = vec![70000])).contains("out of range for UINT16")
        );
        assert!(
            err(ElementType::Float, contents(|c| c.fp64_contents = vec![1.0]))
                .contains("go in fp32_contents, not fp64_contents")
        );
        assert!(
            err(ElementType::Float16, contents(|c| c.fp32_contents = vec![1.0]))
                .contains("send it in raw_input_contents")
        );
        assert!(
            err(ElementType::Bfloat16, InferTensorContents::default()).contains("BF16 has no typed contents field")
        );
    }
}
