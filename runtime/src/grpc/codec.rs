//! The protobuf codec of the gRPC service: prost's, with a bound on what a request message may
//! cost in memory once decoded, checked on the wire bytes before decoding.
//!
//! A protobuf message can decode to far more memory than it has bytes: an empty `inputs` entry
//! is 2 bytes on the wire and about 300 in memory, so a 64 MiB message of them would take tens
//! of GB. The scan walks `ModelInferRequest`'s wire format (no allocation), estimates what each
//! repeated entry and element will take, and refuses (RESOURCE_EXHAUSTED) a message estimated
//! above [`AMPLIFICATION`] times its size plus [`SLACK`]: real requests stay well below (raw
//! tensors decode to a slice of the message; the widest honest case, small integers as varints
//! in `int64_contents`, is 8x). Every other request message is small: above [`SMALL_MESSAGE`]
//! it is refused.

use std::any::TypeId;
use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::generated::ModelInferRequest;

/// Most decoded bytes per message byte.
const AMPLIFICATION: usize = 10;
/// Decoded bytes allowed on top, for small messages' fixed costs.
const SLACK: usize = 1 << 20;
/// Largest message of any RPC but inference (metadata, configuration, ...).
const SMALL_MESSAGE: usize = 64 * 1024;

/// Estimated decoded sizes of the entries of `ModelInferRequest`.
mod cost {
    pub const INPUT: usize = 320;
    pub const OUTPUT: usize = 120;
    pub const PARAMETER: usize = 120;
    pub const RAW: usize = 32;
    pub const BYTES_ELEMENT: usize = 32;
    pub const WIDE: usize = 8;
}

/// prost's codec with the decoded-size bound.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

/// prost's decoder after the bound.
#[derive(Debug)]
pub struct BoundedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + 'static> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes::Buf as _;
        let wire = buf.chunk();
        // A DecodeBuf is one contiguous message; if it ever were not, prost decodes it unchecked.
        if wire.len() == buf.remaining() {
            check::<U>(wire)?;
        }
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

fn check<U: 'static>(wire: &[u8]) -> Result<(), Status> {
    if TypeId::of::<U>() != TypeId::of::<ModelInferRequest>() {
        if wire.len() > SMALL_MESSAGE {
            return Err(Status::resource_exhausted(format!(
                "a {} byte message is too large for this RPC (at most {SMALL_MESSAGE})",
                wire.len()
            )));
        }
        return Ok(());
    }
    let limit = wire.len().saturating_mul(AMPLIFICATION).saturating_add(SLACK);
    // A malformed message is left to prost, whose error names the problem.
    let Some(estimate) = infer_request_cost(wire) else { return Ok(()) };
    if estimate > limit {
        return Err(Status::resource_exhausted(format!(
            "the {} byte request would take about {estimate} bytes once decoded (its entries and elements are mostly overhead); send tensors in raw_input_contents, or fewer, larger entries",
            wire.len()
        )));
    }
    Ok(())
}

/// One field of a protobuf message: its number and, for length-delimited fields, the payload.
enum Field<'a> {
    Varint(u32),
    Fixed,
    Len(u32, &'a [u8]),
}

/// The fields of a message, `None` at the first malformed one.
fn fields(mut wire: &[u8]) -> impl Iterator<Item = Option<Field<'_>>> {
    std::iter::from_fn(move || {
        if wire.is_empty() {
            return None;
        }
        let field = next_field(&mut wire);
        if field.is_none() {
            wire = &[];
        }
        Some(field)
    })
}

fn varint(wire: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = wire.split_first()?;
        *wire = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn next_field<'a>(wire: &mut &'a [u8]) -> Option<Field<'a>> {
    let key = varint(wire)?;
    let number = u32::try_from(key >> 3).ok()?;
    match key & 7 {
        0 => varint(wire).map(|_| Field::Varint(number)),
        1 | 5 => {
            let n = if key & 7 == 1 { 8 } else { 4 };
            let rest = wire.get(n..)?;
            *wire = rest;
            Some(Field::Fixed)
        }
        2 => {
            let len = usize::try_from(varint(wire)?).ok()?;
            let payload = wire.get(..len)?;
            *wire = &wire[len..];
            Some(Field::Len(number, payload))
        }
        _ => None,
    }
}

/// Elements in a packed run of varints.
fn packed_varints(payload: &[u8]) -> usize {
    payload.iter().filter(|&&b| b & 0x80 == 0).count()
}

/// The estimated decoded size of a `ModelInferRequest`, `None` when the wire is malformed.
fn infer_request_cost(wire: &[u8]) -> Option<usize> {
    let mut total = 0usize;
    for field in fields(wire) {
        total += match field? {
            Field::Len(4, _) => cost::PARAMETER,
            Field::Len(5, input) => cost::INPUT + input_cost(input)?,
            Field::Len(6, _) => cost::OUTPUT,
            Field::Len(7, _) => cost::RAW,
            _ => 0,
        };
    }
    Some(total)
}

/// An `InferInputTensor`'s shape, parameters and typed contents.
fn input_cost(wire: &[u8]) -> Option<usize> {
    let mut total = 0usize;
    for field in fields(wire) {
        total += match field? {
            Field::Len(3, packed) => cost::WIDE * packed_varints(packed),
            Field::Varint(3) => cost::WIDE,
            Field::Len(4, _) => cost::PARAMETER,
            Field::Len(5, contents) => contents_cost(contents)?,
            _ => 0,
        };
    }
    Some(total)
}

/// `InferTensorContents`: each element at its size in memory.
fn contents_cost(wire: &[u8]) -> Option<usize> {
    let mut total = 0usize;
    for field in fields(wire) {
        total += match field? {
            // bool_contents: one byte each, packed or not.
            Field::Len(1, packed) => packed.len(),
            // int_contents, uint_contents: varints into 4 bytes.
            Field::Len(2 | 4, packed) => 4 * packed_varints(packed),
            // int64_contents, uint64_contents: varints into 8 bytes.
            Field::Len(3 | 5, packed) => cost::WIDE * packed_varints(packed),
            // fp32_contents, fp64_contents: the same size as on the wire.
            Field::Len(6 | 7, packed) => packed.len(),
            Field::Len(8, bytes) => cost::BYTES_ELEMENT + bytes.len(),
            Field::Varint(_) | Field::Fixed => cost::WIDE,
            Field::Len(..) => 0,
        };
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::generated::model_infer_request::InferInputTensor;
    use crate::grpc::generated::{InferTensorContents, ModelMetadataRequest};

    fn wire(request: &ModelInferRequest) -> Vec<u8> {
        request.encode_to_vec()
    }

    #[test]
    fn honest_requests_pass_and_cheap_floods_are_refused() {
        let raw = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1000, 64],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0u8; 256_000].into()],
            ..Default::default()
        };
        assert!(check::<ModelInferRequest>(&wire(&raw)).is_ok());
        // Token ids as small varints: 8 bytes each in memory, one on the wire.
        let ids = ModelInferRequest {
            inputs: vec![InferInputTensor {
                name: "ids".into(),
                datatype: "INT64".into(),
                shape: vec![1, 2_000_000],
                contents: Some(InferTensorContents { int64_contents: vec![7; 2_000_000], ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(check::<ModelInferRequest>(&wire(&ids)).is_ok());

        let flood = ModelInferRequest { inputs: vec![InferInputTensor::default(); 100_000], ..Default::default() };
        let err = check::<ModelInferRequest>(&wire(&flood)).expect_err("refused");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("once decoded"), "{}", err.message());
        let strings = ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: Some(InferTensorContents {
                    bytes_contents: vec![Default::default(); 200_000],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(check::<ModelInferRequest>(&wire(&strings)).is_err());
        let outputs = ModelInferRequest {
            outputs: vec![Default::default(); 100_000],
            raw_input_contents: vec![Default::default(); 100_000],
            ..Default::default()
        };
        assert!(check::<ModelInferRequest>(&wire(&outputs)).is_err());

        // Other RPCs' messages are small.
        let big = ModelMetadataRequest { name: "m".repeat(100_000), version: String::new() };
        assert_eq!(
            check::<ModelMetadataRequest>(&big.encode_to_vec()).expect_err("refused").code(),
            tonic::Code::ResourceExhausted
        );
        assert!(
            check::<ModelMetadataRequest>(
                &ModelMetadataRequest { name: "m".into(), version: "1".into() }.encode_to_vec()
            )
            .is_ok()
        );
        // Malformed wire is left to prost.
        assert!(check::<ModelInferRequest>(&[0x2a, 0xff]).is_ok());
    }
}
