/*!
JPEG (or coefficient record) → interleaved RGB with [`crate::image::jpeg`], Pillow's bytes, where it
handles the JPEG, else (or with [`Decoder::with_pillow_exact`]`(false)`) with zune-jpeg, into a
buffer each worker owns and reuses
(docs/design.md invariant 5: no allocation per image once the buffer has grown to the largest
image seen).
Grayscale JPEGs come out as RGB with three equal channels, as Pillow's `convert("RGB")`.

Records were decoded in strict mode when they were packed, so a failure here means the shard
changed on disk; the error is a small value (no allocation on the hot path) and the caller
counts it, names the record once and substitutes another (invariant 3).
*/

use shard_tool::slice_reader::SliceReader;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// A decoded image: `height` rows of `width` RGB pixels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RgbImage {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// `width * height * 3` bytes, row-major, RGB.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// A black grid of `cols × rows` square tiles of `side` pixels (a preview of samples).
    pub fn grid(cols: usize, rows: usize, side: usize) -> RgbImage {
        RgbImage {
            width: u32::try_from(cols * side).unwrap_or(u32::MAX),
            height: u32::try_from(rows * side).unwrap_or(u32::MAX),
            pixels: vec![0u8; cols * rows * side * side * 3],
        }
    }

    /// Copies `tile` (`side × side` RGB, as a batch holds each image) into tile `i` of a
    /// [`RgbImage::grid`] of `cols` columns, counted row by row.
    pub fn put_tile(&mut self, i: usize, cols: usize, side: usize, tile: &[u8]) {
        let (gx, gy) = ((i % cols) * side, (i / cols) * side);
        for (y, row) in tile.chunks_exact(side * 3).take(side).enumerate() {
            let at = ((gy + y) * cols * side + gx) * 3;
            self.pixels[at..at + side * 3].copy_from_slice(row);
        }
    }
}

/// Why a record did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not a JPEG that decodes completely.
    #[error("the JPEG does not decode (the record changed since it was packed?)")]
    Corrupt,
    /// More pixels than the decoder is allowed to allocate.
    #[error("{width}x{height} is above the decoder's pixel limit")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// So elongated that the eval resize (short side to `floor(img_size / crop_pct)`, the
    /// aspect kept) would make an image above the decoder's pixel limit: a 1×60000 strip
    /// would become 235×14 million pixels, gigabytes for a 224² center crop.
    #[error(
        "{width}x{height}: the eval resize would make it {resized_width}x{resized_height}, above the decoder's pixel limit"
    )]
    TooElongated {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Width after the resize.
        resized_width: u32,
        /// Height after the resize.
        resized_height: u32,
    },
}

/// A reusable JPEG decoder: the decoder with libjpeg-turbo's arithmetic ([`crate::image::jpeg`],
/// Pillow's bytes) where it handles the JPEG, zune-jpeg for the rest (progressive, CMYK, ...) or
/// for every JPEG with [`Decoder::with_pillow_exact`]`(false)`. Coefficient records
/// ([`shard_tool::coefficients`]) always go to the former.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    options: DecoderOptions,
    max_pixels: u64,
    pillow_exact: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(shard_tool::image::DEFAULT_MAX_PIXELS)
    }
}

impl Decoder {
    /// The most pixels an image may have, decoded (or resized by the eval transform).
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// A decoder that refuses images above `max_pixels`.
    pub fn new(max_pixels: u64) -> Decoder {
        let options = DecoderOptions::new_fast()
            .set_strict_mode(true)
            .set_max_width(usize::from(u16::MAX))
            .set_max_height(usize::from(u16::MAX))
            .jpeg_set_out_colorspace(ColorSpace::RGB);
        Decoder {
            options,
            max_pixels,
            pillow_exact: true,
        }
    }

    /// This decoder, giving Pillow's bytes (`on`, the default) through [`crate::image::jpeg`]
    /// for the JPEGs it handles (baseline, 8-bit, grayscale or YCbCr; the others go to
    /// zune-jpeg), or zune-jpeg's (within 4 levels of Pillow's) for every JPEG.
    #[must_use]
    pub fn with_pillow_exact(self, on: bool) -> Decoder {
        Decoder {
            pillow_exact: on,
            ..self
        }
    }

    /// Whether it gives Pillow's bytes ([`Decoder::with_pillow_exact`]).
    pub fn pillow_exact(&self) -> bool {
        self.pillow_exact
    }

    /// Decodes `jpeg` into `out`, reusing its buffer.
    ///
    /// # Errors
    /// [`DecodeError`]; `out` is then unspecified.
    pub fn decode_into(&self, jpeg: &[u8], out: &mut RgbImage) -> Result<(), DecodeError> {
        let coefficients = shard_tool::coefficients::is_coefficients(jpeg);
        if (self.pillow_exact || coefficients)
            && let Some((width, height)) = crate::image::jpeg::decode_into(
                jpeg,
                &mut out.pixels,
                self.max_pixels,
                crate::image::cpu::CpuExt::current().has_avx2(),
            )
        {
            out.width = width;
            out.height = height;
            return Ok(());
        }
        // Only this crate's decoder reads coefficient records.
        if coefficients {
            return Err(DecodeError::Corrupt);
        }
        let mut decoder = JpegDecoder::new_with_options(SliceReader::new(jpeg), self.options);
        decoder.decode_headers().map_err(|_| DecodeError::Corrupt)?;
        let (w, h) = decoder.dimensions().ok_or(DecodeError::Corrupt)?;
        let (width, height) = (w as u32, h as u32);
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(DecodeError::TooLarge { width, height });
        }
        let size = decoder.output_buffer_size().ok_or(DecodeError::Corrupt)?;
        out.pixels.resize(size, 0);
        decoder
            .decode_into(&mut out.pixels)
            .map_err(|_| DecodeError::Corrupt)?;
        out.width = width;
        out.height = height;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use shard_tool::synth;

    use super::*;

    #[test]
    fn decodes_rgb_and_expands_grayscale() {
        let d = Decoder::default();
        let mut img = RgbImage::default();
        d.decode_into(&synth::class_image(1, 2, 40, 30), &mut img)
            .unwrap();
        assert_eq!(
            (img.width, img.height, img.pixels.len()),
            (40, 30, 40 * 30 * 3)
        );
        d.decode_into(&synth::gray_jpeg(16, 8), &mut img).unwrap();
        assert_eq!(img.pixels.len(), 16 * 8 * 3);
        assert!(
            img.pixels
                .chunks_exact(3)
                .all(|p| p[0] == p[1] && p[1] == p[2])
        );
    }

    #[test]
    fn the_buffer_is_reused() {
        let d = Decoder::default();
        let mut img = RgbImage::default();
        d.decode_into(&synth::class_image(0, 0, 64, 64), &mut img)
            .unwrap();
        let (ptr, cap) = (img.pixels.as_ptr(), img.pixels.capacity());
        for i in 0..10 {
            d.decode_into(&synth::class_image(0, i, 48, 32), &mut img)
                .unwrap();
            assert_eq!((img.pixels.as_ptr(), img.pixels.capacity()), (ptr, cap));
        }
    }

    #[test]
    fn corrupt_and_oversized_records_are_errors_not_panics() {
        let d = Decoder::default();
        let mut img = RgbImage::default();
        let jpeg = synth::class_image(0, 0, 32, 32);
        assert_eq!(
            d.decode_into(&jpeg[..jpeg.len() / 2], &mut img),
            Err(DecodeError::Corrupt)
        );
        assert_eq!(
            d.decode_into(b"not a jpeg", &mut img),
            Err(DecodeError::Corrupt)
        );
        assert_eq!(
            d.decode_into(&synth::huge_declared_jpeg(50_000, 50_000), &mut img),
            Err(DecodeError::TooLarge {
                width: 50_000,
                height: 50_000
            })
        );
    }
}
