/*!
The byte source zune's decoders read a record through: bytes already in memory.

Why not zune-core's `ZCursor`: zune-core implements its reader trait for `ZCursor` only when
built without its `std` feature; with `std` (which zune-jpeg needs to detect AVX2 at run time,
and so turns on) `ZCursor` reads through the blanket implementation for `BufRead + Seek`, one
`std::io::Read::read` call per byte and a `memcpy` call per 4-byte refill of the Huffman
decoder's bit buffer. That was 4 % of an A3 sample in `memmove` alone, and more in the calls
around it (perf, `loader bench --transform a3`). [`SliceReader`] is `ZCursor`'s own `no_std`
implementation, line for line: the same positions, the same bytes, the same errors, so the
same pixels, with reads of a constant size that compile to loads once inlined into the
decoder.
*/

use zune_core::bytestream::{ZByteIoError, ZByteReaderTrait, ZSeekFrom};

/// A JPEG or PNG in memory, as zune's decoders read it
/// (`JpegDecoder::new_with_options(SliceReader::new(bytes), options)`).
#[derive(Debug, Clone, Copy)]
pub struct SliceReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> SliceReader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> SliceReader<'a> {
        SliceReader { bytes, position: 0 }
    }

    /// The bytes from the position on, as many as fit `buf`, copied into it.
    #[inline(always)]
    fn peek(&self, buf: &mut [u8]) -> usize {
        // Whole, the copy's length is `buf`'s, a constant where the decoder asks for 4 bytes:
        // a load, not a call to `memcpy`.
        let whole = self.position.checked_add(buf.len());
        if let Some(src) = whole.and_then(|end| self.bytes.get(self.position..end)) {
            buf.copy_from_slice(src);
            return buf.len();
        }
        let start = self.position.min(self.bytes.len());
        let end = self
            .position
            .saturating_add(buf.len())
            .min(self.bytes.len());
        let n = end - start;
        buf[..n].copy_from_slice(&self.bytes[start..end]);
        n
    }
}

impl ZByteReaderTrait for SliceReader<'_> {
    /// The next byte, or 0 past the end (the position moves on either way, as `ZCursor`'s).
    #[inline(always)]
    fn read_byte_no_error(&mut self) -> u8 {
        let byte = self.bytes.get(self.position).copied().unwrap_or(0);
        self.position = self.position.wrapping_add(1);
        byte
    }

    #[inline(always)]
    fn read_exact_bytes(&mut self, buf: &mut [u8]) -> Result<(), ZByteIoError> {
        let n = self.peek(buf);
        if n != buf.len() {
            return Err(ZByteIoError::NotEnoughBytes(n, buf.len()));
        }
        self.position = self.position.wrapping_add(n);
        Ok(())
    }

    #[inline(always)]
    fn read_bytes(&mut self, buf: &mut [u8]) -> Result<usize, ZByteIoError> {
        let n = self.peek(buf);
        self.position = self.position.wrapping_add(n);
        Ok(n)
    }

    #[inline(always)]
    fn peek_bytes(&mut self, buf: &mut [u8]) -> Result<usize, ZByteIoError> {
        Ok(self.peek(buf))
    }

    #[inline(always)]
    fn peek_exact_bytes(&mut self, buf: &mut [u8]) -> Result<(), ZByteIoError> {
        let n = self.peek(buf);
        if n != buf.len() {
            return Err(ZByteIoError::NotEnoughBytes(n, buf.len()));
        }
        Ok(())
    }

    #[inline(always)]
    fn z_seek(&mut self, from: ZSeekFrom) -> Result<u64, ZByteIoError> {
        let (base, offset) = match from {
            ZSeekFrom::Start(n) => {
                self.position = usize::try_from(n)
                    .map_err(|_| ZByteIoError::SeekError("seek past the address space"))?;
                return Ok(n);
            }
            ZSeekFrom::End(n) => (self.bytes.len(), n),
            ZSeekFrom::Current(n) => (self.position, n),
        };
        let offset = isize::try_from(offset)
            .map_err(|_| ZByteIoError::SeekError("seek past the address space"))?;
        match base.checked_add_signed(offset) {
            Some(n) => {
                self.position = n;
                Ok(n as u64)
            }
            None => Err(ZByteIoError::SeekError("Negative seek")),
        }
    }

    #[inline(always)]
    fn is_eof(&mut self) -> Result<bool, ZByteIoError> {
        Ok(self.position >= self.bytes.len())
    }

    #[inline(always)]
    fn z_position(&mut self) -> Result<u64, ZByteIoError> {
        Ok(self.position as u64)
    }

    fn read_remaining(&mut self, sink: &mut Vec<u8>) -> Result<usize, ZByteIoError> {
        let rest = self
            .bytes
            .get(self.position..)
            .ok_or(ZByteIoError::Generic(
                "read_remaining: the position is past the end",
            ))?;
        sink.extend_from_slice(rest);
        self.position = self.position.wrapping_add(rest.len());
        Ok(rest.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zune_core::bytestream::{ZCursor, ZReader};
    use zune_jpeg::JpegDecoder;

    /// The pixels, or that it failed, as zune-jpeg decodes `jpeg` through `reader`.
    fn decode<R: ZByteReaderTrait>(reader: R) -> Option<Vec<u8>> {
        JpegDecoder::new_with_options(reader, crate::image::jpeg_options())
            .decode()
            .ok()
    }

    #[test]
    fn jpegs_whole_cut_and_damaged_decode_as_through_zcursor() {
        let sources = [
            crate::synth::class_image(3, 7, 61, 45),
            crate::synth::gray_jpeg(33, 17),
            crate::synth::class_image(1, 2, 200, 150),
        ];
        for jpeg in &sources {
            let mut variants = vec![jpeg.clone()];
            for cut in [jpeg.len() / 2, jpeg.len() - 3, 20] {
                variants.push(jpeg[..cut].to_vec());
            }
            for at in [jpeg.len() / 3, jpeg.len() * 2 / 3, jpeg.len() - 4] {
                let mut damaged = jpeg.clone();
                damaged[at] ^= 0x5A;
                variants.push(damaged);
            }
            for v in &variants {
                let ours = decode(SliceReader::new(v));
                assert_eq!(ours, decode(ZCursor::new(&v[..])), "{} bytes", v.len());
            }
            assert!(decode(SliceReader::new(jpeg)).is_some());
        }
    }

    #[test]
    fn reads_peeks_and_seeks_as_zcursor_does() {
        let bytes = [1u8, 2, 3, 4, 5, 6];
        let mut r = ZReader::new(SliceReader::new(&bytes));
        assert_eq!(r.read_u8(), 1);
        assert_eq!(r.read_fixed_bytes_or_error::<4>().unwrap(), [2, 3, 4, 5]);
        // Not enough left: an error, and the position stays.
        assert!(r.read_fixed_bytes_or_error::<4>().is_err());
        assert_eq!(r.position().unwrap(), 5);
        r.rewind(2).unwrap();
        assert_eq!(r.read_u8(), 4);
        r.set_position(0).unwrap();
        assert_eq!(r.read_u8(), 1);
        // Past the end: zeros, the position moving on, and end of file.
        r.set_position(6).unwrap();
        assert!(r.eof().unwrap());
        assert_eq!(r.read_u8(), 0);
        assert_eq!(r.position().unwrap(), 7);
        assert!(r.eof().unwrap());
        let mut inner = SliceReader::new(&bytes);
        assert!(inner.z_seek(ZSeekFrom::Current(-1)).is_err());
        assert_eq!(inner.z_seek(ZSeekFrom::End(-2)).unwrap(), 4);
        let mut rest = Vec::new();
        assert_eq!(inner.read_remaining(&mut rest).unwrap(), 2);
        assert_eq!(rest, [5, 6]);
        inner.z_seek(ZSeekFrom::Start(9)).unwrap();
        assert!(inner.read_remaining(&mut rest).is_err());
    }
}
