/*!
The one frame codec of the socket protocol: a u32 little-endian length, at most
[`MAX_FRAME`], then that many bytes of JSON.

[`FrameCodec`] is a `tokio_util` codec: `decode` returns `Ok(None)` while a frame is
incomplete and never consumes part of one, so every reader shares it whatever brings the bytes
in: the daemon's async connections (`FramedRead`, cancel-safe inside `select!`), the blocking
client ([`FrameReader`]), and the client's read of the welcome whose first bytes come with the
ring's descriptor from `recvmsg` ([`FrameReader::buffer`]).
*/

use std::io::{Read, Write};
use std::marker::PhantomData;

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::wire::protocol::ProtocolError;

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 64 * 1024;

/// Frames in, messages of type `In` out; any serialisable message in, frames out.
#[derive(Debug)]
pub struct FrameCodec<In> {
    frames: LengthDelimitedCodec,
    _in: PhantomData<fn() -> In>,
}

impl<In> Default for FrameCodec<In> {
    fn default() -> FrameCodec<In> {
        FrameCodec {
            frames: LengthDelimitedCodec::builder()
                .little_endian()
                .length_field_length(4)
                .max_frame_length(MAX_FRAME)
                .new_codec(),
            _in: PhantomData,
        }
    }
}

impl<In: DeserializeOwned> Decoder for FrameCodec<In> {
    type Item = In;
    type Error = ProtocolError;

    /// The next whole message of `buf`, or `Ok(None)` when its frame is incomplete (the bytes
    /// stay in `buf` for the next call).
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        let frame = self.frames.decode(buf).map_err(|e| {
            // The inner codec refuses a length over the limit before reserving room for it,
            // leaving the prefix in place: report the length it read.
            if e.get_ref()
                .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
            {
                let len = buf
                    .get(..4)
                    .map_or(0, |p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize);
                ProtocolError::Oversized {
                    len,
                    max: MAX_FRAME,
                }
            } else {
                e.into()
            }
        })?;
        match frame {
            Some(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| ProtocolError::Malformed(e.to_string())),
            None => Ok(None),
        }
    }
}

impl<In, Out: Serialize> Encoder<&Out> for FrameCodec<In> {
    type Error = ProtocolError;

    fn encode(&mut self, msg: &Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let json = serde_json::to_vec(msg).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if json.len() > MAX_FRAME {
            return Err(ProtocolError::Oversized {
                len: json.len(),
                max: MAX_FRAME,
            });
        }
        self.frames.encode(&json[..], dst)?;
        Ok(())
    }
}

/// Blocking reads of whole messages through a [`FrameCodec`], keeping what it read past a
/// frame for the next one.
#[derive(Debug)]
pub struct FrameReader<In> {
    codec: FrameCodec<In>,
    buf: BytesMut,
}

impl<In> Default for FrameReader<In> {
    fn default() -> FrameReader<In> {
        FrameReader {
            codec: FrameCodec::default(),
            buf: BytesMut::with_capacity(4096),
        }
    }
}

impl<In: DeserializeOwned> FrameReader<In> {
    /// The next message, reading from `r` until its frame is whole.
    ///
    /// # Errors
    /// [`ProtocolError::Io`] (end of stream included), `Oversized` or `Malformed`.
    pub fn read(&mut self, r: &mut impl Read) -> Result<In, ProtocolError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(msg) = self.codec.decode(&mut self.buf)? {
                return Ok(msg);
            }
            let n = r.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The bytes read but not yet decoded, for a reader that brings bytes in another way
    /// (`recvmsg`, which also receives descriptors).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

/// A message as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    // The protocol's messages are plain structs well under MAX_FRAME: this cannot fail, and an
    // empty frame (a malformed message to the peer) would be the outcome if it did.
    let _ = FrameCodec::<()>::default().encode(msg, &mut buf);
    buf.to_vec()
}

/// Writes one message as one frame (blocking).
///
/// # Errors
/// [`ProtocolError::Io`].
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), ProtocolError> {
    w.write_all(&encode(msg))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::Request;

    #[test]
    fn a_frame_split_anywhere_is_incomplete_until_its_last_byte() {
        let frame = encode(&Request::Release { slot: 7 });
        let mut codec = FrameCodec::<Request>::default();
        let mut buf = BytesMut::new();
        for (i, &b) in frame.iter().enumerate() {
            assert!(
                codec.decode(&mut buf).unwrap().is_none(),
                "whole after {i} bytes"
            );
            buf.extend_from_slice(&[b]);
        }
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Request::Release { slot: 7 })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn the_blocking_reader_keeps_what_it_read_past_a_frame() {
        let mut bytes = encode(&Request::Stats);
        bytes.extend(encode(&Request::Bye));
        let mut r = FrameReader::<Request>::default();
        let mut src = &bytes[..];
        assert_eq!(r.read(&mut src).unwrap(), Request::Stats);
        assert_eq!(r.read(&mut src).unwrap(), Request::Bye);
        assert!(matches!(r.read(&mut src), Err(ProtocolError::Io(_))));
        // A length over the limit is refused before its body arrives.
        let mut big = BytesMut::from(&(MAX_FRAME as u32 + 1).to_le_bytes()[..]);
        assert!(matches!(
            FrameCodec::<Request>::default().decode(&mut big),
            Err(ProtocolError::Oversized { .. })
        ));
    }
}
