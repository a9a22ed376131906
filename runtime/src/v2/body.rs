//! Response bodies that hold one copy of the outputs: binary tensors go out straight from the
//! tensors' own memory, and the JSON of large outputs is written piece by piece as the client
//! reads it instead of as one text several times the tensor's size.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::HttpBody;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::codec::write_json_elements;
use crate::tensor::TensorData;

/// Elements written per piece of a streamed JSON output (some tens of KB of text).
const ELEMENTS_PER_PIECE: usize = 4096;

/// One part of a response body.
enum Part {
    /// Bytes ready to send.
    Ready(Bytes),
    /// A tensor's elements as comma-separated JSON values, written as they are sent.
    Json { data: TensorData, next: usize },
}

/// A response body made of parts, sent in order.
#[derive(Default)]
pub struct ResponseBody {
    parts: VecDeque<Part>,
}

impl ResponseBody {
    /// Adds bytes.
    pub(crate) fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.parts.push_back(Part::Ready(bytes));
        }
    }

    /// Adds a tensor's elements as JSON values, written when sent.
    pub(crate) fn push_json(&mut self, data: TensorData) {
        self.parts.push_back(Part::Json { data, next: 0 });
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            let Some(part) = self.parts.front_mut() else { return Poll::Ready(None) };
            match part {
                Part::Ready(_) => {
                    let Some(Part::Ready(bytes)) = self.parts.pop_front() else { unreachable!("front was Ready") };
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Part::Json { data, next } => {
                    let end = (*next + ELEMENTS_PER_PIECE).min(data.len());
                    if *next >= end {
                        self.parts.pop_front();
                        continue;
                    }
                    let mut text = Vec::with_capacity(16 * (end - *next) + 1);
                    if *next > 0 {
                        text.push(b',');
                    }
                    write_json_elements(data, *next..end, &mut text);
                    *next = end;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        let mut ready = 0u64;
        for part in &self.parts {
            match part {
                Part::Ready(b) => ready += b.len() as u64,
                // Unknown until written: sent chunked.
                Part::Json { .. } => return SizeHint::default(),
            }
        }
        SizeHint::with_exact(ready)
    }
}

/// A tensor's elements in the binary tensor format (little-endian, BYTES length-prefixed),
/// sharing the tensor's memory where its layout is already that.
pub(crate) fn binary_bytes(data: TensorData) -> Bytes {
    #[cfg(target_endian = "little")]
    {
        /// Owns a numeric vector and shows it as its bytes.
        struct Le<T: bytemuck::Pod>(Vec<T>);
        impl<T: bytemuck::Pod> AsRef<[u8]> for Le<T> {
            fn as_ref(&self) -> &[u8] {
                bytemuck::cast_slice(&self.0)
            }
        }
        match data {
            TensorData::U8(v) => return Bytes::from(v),
            TensorData::I8(v) => return Bytes::from_owner(Le(v)),
            TensorData::U16(v) => return Bytes::from_owner(Le(v)),
            TensorData::I16(v) => return Bytes::from_owner(Le(v)),
            TensorData::F16(v) => return Bytes::from_owner(Le(v)),
            TensorData::Bf16(v) => return Bytes::from_owner(Le(v)),
            TensorData::U32(v) => return Bytes::from_owner(Le(v)),
            TensorData::I32(v) => return Bytes::from_owner(Le(v)),
            TensorData::F32(v) => return Bytes::from_owner(Le(v)),
            TensorData::U64(v) => return Bytes::from_owner(Le(v)),
            TensorData::I64(v) => return Bytes::from_owner(Le(v)),
            TensorData::F64(v) => return Bytes::from_owner(Le(v)),
            TensorData::Bool(_) | TensorData::Bytes(_) => {}
        }
        super::codec::binary_copy(&data)
    }
    #[cfg(not(target_endian = "little"))]
    super::codec::binary_copy(&data)
}
