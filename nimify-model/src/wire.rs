//! A minimal protobuf wire-format walker over a seekable file. It lets the signature reader visit
//! only the fields it needs and *seek past* everything else (node lists, initializer payloads), so
//! that reading the signature of a multi-gigabyte model costs a few reads, never the weights.

use std::io::{BufRead, BufReader, Read, Seek};

use crate::ModelError;

/// Largest single message the reader will copy into memory (a value info, an opset entry).
/// Anything bigger is skipped by seeking or refused: it cannot be a real signature entry.
pub(crate) const MAX_COPY: u64 = 64 * 1024 * 1024;

/// Protobuf wire types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireType {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

/// A reader that knows its absolute position and the end of the file.
pub(crate) struct Wire<R> {
    inner: BufReader<R>,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Wire<R> {
    pub(crate) fn new(inner: R, len: u64) -> Self {
        Self { inner: BufReader::with_capacity(8 * 1024, inner), pos: 0, len }
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    fn byte(&mut self) -> Result<u8, ModelError> {
        let buf = self.inner.fill_buf().map_err(ModelError::Io)?;
        let Some(&b) = buf.first() else {
            return Err(ModelError::Truncated { offset: self.pos, len: self.len });
        };
        self.inner.consume(1);
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, ModelError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ModelError::Malformed { offset: start, what: "varint longer than 10 bytes".into() })
    }

    /// Reads a field key; `None` at `end`.
    pub(crate) fn key(&mut self, end: u64) -> Result<Option<(u32, WireType)>, ModelError> {
        if self.pos >= end {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).unwrap_or(0);
        let wire = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::Len,
            5 => WireType::Fixed32,
            other => {
                return Err(ModelError::Malformed {
                    offset: at,
                    what: format!("unsupported protobuf wire type {other}"),
                });
            }
        };
        if field == 0 {
            return Err(ModelError::Malformed { offset: at, what: "protobuf field number 0".into() });
        }
        Ok(Some((field, wire)))
    }

    /// Reads the length prefix of a length-delimited field and returns the end offset of its body.
    pub(crate) fn len_end(&mut self, end: u64) -> Result<u64, ModelError> {
        let at = self.pos;
        let n = self.varint()?;
        let body_end =
            self.pos.checked_add(n).ok_or(ModelError::Malformed { offset: at, what: "length overflows".into() })?;
        if body_end > self.len {
            return Err(ModelError::Truncated { offset: at, len: self.len });
        }
        if body_end > end {
            return Err(ModelError::Malformed {
                offset: at,
                what: format!("field of {n} bytes runs past its enclosing message"),
            });
        }
        Ok(body_end)
    }

    /// Moves forward to `to` without reading what lies between.
    pub(crate) fn seek_to(&mut self, to: u64) -> Result<(), ModelError> {
        if to > self.len {
            return Err(ModelError::Truncated { offset: self.pos, len: self.len });
        }
        let delta = i64::try_from(to - self.pos)
            .map_err(|_| ModelError::Malformed { offset: self.pos, what: "skip too large".into() })?;
        self.inner.seek_relative(delta).map_err(ModelError::Io)?;
        self.pos = to;
        Ok(())
    }

    /// Skips the value of a field whose key was just read.
    pub(crate) fn skip(&mut self, wire: WireType, end: u64) -> Result<(), ModelError> {
        match wire {
            WireType::Varint => self.varint().map(drop),
            WireType::Fixed64 => self.seek_to(self.pos + 8),
            WireType::Fixed32 => self.seek_to(self.pos + 4),
            WireType::Len => {
                let body_end = self.len_end(end)?;
                self.seek_to(body_end)
            }
        }
    }

    /// Copies a length-delimited body into memory (bounded by [`MAX_COPY`]).
    pub(crate) fn bytes(&mut self, end: u64) -> Result<Vec<u8>, ModelError> {
        let at = self.pos;
        let body_end = self.len_end(end)?;
        let n = body_end - self.pos;
        if n > MAX_COPY {
            return Err(ModelError::Malformed {
                offset: at,
                what: format!("signature entry of {n} bytes exceeds the {MAX_COPY} byte limit"),
            });
        }
        let mut buf = vec![0; n as usize];
        self.inner.read_exact(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ModelError::Truncated { offset: at, len: self.len },
            _ => ModelError::Io(e),
        })?;
        self.pos = body_end;
        Ok(buf)
    }

    pub(crate) fn string(&mut self, end: u64) -> Result<String, ModelError> {
        let at = self.pos;
        let b = self.bytes(end)?;
        String::from_utf8(b).map_err(|_| ModelError::Malformed { offset: at, what: "string is not UTF-8".into() })
    }

    /// Reads an `int64`/enum varint field value, checking the wire type.
    pub(crate) fn int(&mut self, wire: WireType, end: u64) -> Result<Option<i64>, ModelError> {
        if wire != WireType::Varint {
            self.skip(wire, end)?;
            return Ok(None);
        }
        #[allow(clippy::cast_possible_wrap)]
        Ok(Some(self.varint()? as i64))
    }
}
