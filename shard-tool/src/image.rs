/*!
The validating decode every source image goes through once at pack time.

A file is stored only if it decodes completely in zune-jpeg's strict mode (the lenient default
"decodes" a truncated file into a full buffer without an error). What the loader cannot read
fast, or reads differently from Pillow, is converted here, once, instead of on every epoch:

- JPEG (YCbCr or grayscale): kept byte for byte, or, with [`ImageOptions::restart_interval`]
  (the train split's default), re-encoded losslessly with restart markers after a check that
  it decodes to exactly the source's pixels ([`crate::restart`]).
- CMYK/YCCK JPEG (22 in ImageNet train, 1 in val): decoded to RGB (Adobe-inverted CMYK, as
  Pillow reads it) and re-encoded as a baseline 4:4:4 RGB JPEG at
  [`ImageOptions::transcode_quality`].
- PNG, whatever the extension (ImageNet's `n02105855_2933.JPEG`): decoded, alpha dropped as
  Pillow's `convert("RGB")` does, re-encoded the same way.
- with `max_side`, anything larger is downscaled (Lanczos3) and re-encoded at
  [`ImageOptions::quality`]: FFCV's speed trick, off by default because it changes pixels.

Anything else is a [`Rejection`] with a reason a user can act on. Each worker owns one
[`ImageChecker`] whose buffers are reused from image to image.
*/

use crate::slice_reader::SliceReader;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;
use zune_png::PngDecoder;

use sha2::{Digest, Sha256};

use crate::record::flags;
use crate::restart;

/// Pillow refuses images above twice its `MAX_IMAGE_PIXELS` (89,478,485) as decompression bombs;
/// timm would fail on them at training time, so the packer refuses them up front.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * 89_478_485;

/// Quality used when a PNG or CMYK JPEG is converted to an RGB JPEG.
pub const DEFAULT_TRANSCODE_QUALITY: u8 = 95;

/// What the checker may accept and how it re-encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageOptions {
    /// Reject images with more pixels than this.
    pub max_pixels: u64,
    /// Downscale images whose longer side exceeds this (None: never).
    pub max_side: Option<u32>,
    /// JPEG quality for images downscaled because of `max_side`.
    pub quality: u8,
    /// JPEG quality for PNG and CMYK sources converted to RGB JPEG.
    pub transcode_quality: u8,
    /// Re-encode every JPEG losslessly with a restart marker about every this many MCUs, so
    /// that the loader decodes only what a crop keeps ([`crate::restart`]); 0 stores the
    /// bytes as they are. Absent (0) in manifests written before it existed.
    #[serde(default)]
    pub restart_interval: u32,
    /// Store each JPEG that got restart markers as its coefficients instead
    /// ([`crate::coefficients`]): read without Huffman decoding, at 1.7 times the bytes.
    /// Absent (false) in manifests written before it existed.
    #[serde(default)]
    pub coefficients: bool,
}

impl ImageOptions {
    /// The options for the split `name`: restart markers only where random crops read
    /// records, the train split. Eval decodes whole images (its resize reads all of them),
    /// and a restart-marked JPEG decodes whole 3 to 6 % slower than its source (measured on
    /// imagenet-sample), so val/ and test/ are stored as they are.
    pub fn for_split(self, name: &str) -> ImageOptions {
        ImageOptions {
            restart_interval: if name == "train" {
                self.restart_interval
            } else {
                0
            },
            ..self
        }
    }
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_side: None,
            quality: 90,
            transcode_quality: DEFAULT_TRANSCODE_QUALITY,
            restart_interval: crate::restart::DEFAULT_INTERVAL_MCUS,
            coefficients: true,
        }
    }
}

/// Why a source file is not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Zero-byte file.
    #[error("empty file (0 bytes)")]
    Empty,
    /// A known image format rsb does not store.
    #[error("{0} image: not supported (convert it to JPEG)")]
    UnsupportedFormat(&'static str),
    /// Not an image at all. Nothing of the file's content is quoted: the report is readable
    /// by whoever can read the dataset, and the file may be anything (a key, a password file
    /// reached through a symlink).
    #[error("not a JPEG or PNG (no image signature in its first bytes)")]
    NotAnImage,
    /// Declared size above `max_pixels`.
    #[error(
        "declares {width}x{height} = {} pixels, above the limit of {limit} (Pillow's \
         decompression-bomb threshold; raise --max-pixels to accept it)",
        *width as u64 * *height as u64
    )]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit in force.
        limit: u64,
    },
    /// The JPEG decoder (strict mode) failed.
    #[error("JPEG does not decode (strict mode): {0}")]
    Jpeg(String),
    /// The PNG decoder failed.
    #[error("PNG does not decode: {0}")]
    Png(String),
    /// Re-encoding a converted image failed.
    #[error("re-encoding to JPEG failed: {0}")]
    Encode(String),
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Read(String),
}

/// Bytes to store for an accepted image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The source bytes, unchanged.
    Original,
    /// A new JPEG that replaces the source bytes.
    Encoded(Vec<u8>),
}

/// An accepted image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// What to store.
    pub stored: Stored,
    /// Width of the stored image.
    pub width: u32,
    /// Height of the stored image.
    pub height: u32,
    /// [`flags`] describing what was done.
    pub flags: u16,
    /// SHA-256 (hex) of the source file when `stored` is not its bytes.
    pub source_sha256: Option<String>,
}

/// The per-worker validating decoder; reuses its buffers across images.
pub struct ImageChecker {
    options: ImageOptions,
    pixels: Vec<u8>,
    /// The decode of a re-encode, compared with `pixels`.
    check_pixels: Vec<u8>,
    resizer: Resizer,
}

impl ImageChecker {
    /// A checker with the given options.
    pub fn new(options: ImageOptions) -> Self {
        ImageChecker {
            options,
            pixels: Vec::new(),
            check_pixels: Vec::new(),
            resizer: Resizer::new(),
        }
    }

    /// The options it checks with.
    pub fn options(&self) -> ImageOptions {
        self.options
    }

    /// Bytes held in reusable buffers (for memory accounting).
    pub fn buffer_size(&self) -> usize {
        self.pixels.capacity() + self.check_pixels.capacity()
    }

    /// Decodes `bytes` completely and decides what to store.
    ///
    /// # Errors
    /// A [`Rejection`] saying why the file cannot be stored.
    pub fn check(&mut self, bytes: &[u8]) -> Result<Checked, Rejection> {
        let mut checked = match sniff(bytes)? {
            Format::Jpeg => self.check_jpeg(bytes)?,
            Format::Png => self.check_png(bytes)?,
        };
        if self.options.restart_interval > 0 {
            self.add_restart_markers(bytes, &mut checked);
        }
        if checked.stored != Stored::Original {
            checked.source_sha256 = Some(format!("{:x}", Sha256::digest(bytes)));
        }
        Ok(checked)
    }

    /// Replaces what `checked` stores by its lossless re-encode with restart markers, if
    /// libjpeg can make one, the loader can split it, and it decodes to exactly the same
    /// pixels (checked here, once, so that no later reader has to trust the re-encode).
    /// Otherwise `checked` is left as it is: such a record is decoded whole.
    fn add_restart_markers(&mut self, source: &[u8], checked: &mut Checked) {
        let current = match &checked.stored {
            Stored::Original => source,
            Stored::Encoded(data) => data.as_slice(),
        };
        let Ok(restarted) = restart::add_restart_markers(current, self.options.restart_interval)
        else {
            return;
        };
        if restart::Intervals::default().parse(&restarted).is_err() {
            return;
        }
        // `pixels` holds the decode of a source kept as it is; a conversion is decoded afresh.
        if checked.stored != Stored::Original && decode_rgb(current, &mut self.pixels).is_err() {
            return;
        }
        if decode_rgb(&restarted, &mut self.check_pixels).is_err()
            || self.check_pixels != self.pixels
        {
            return;
        }
        checked.flags |= flags::RESTART_MARKERS;
        if self.options.coefficients
            && let Ok(record) = crate::coefficients::from_jpeg(&restarted)
            // The record must give back this very JPEG, whose pixels were checked above.
            && crate::coefficients::to_jpeg(&record).as_ref() == Ok(&restarted)
        {
            checked.stored = Stored::Encoded(record);
            checked.flags |= flags::COEFFICIENTS;
            return;
        }
        checked.stored = Stored::Encoded(restarted);
    }

    fn check_jpeg(&mut self, bytes: &[u8]) -> Result<Checked, Rejection> {
        let mut decoder = JpegDecoder::new_with_options(SliceReader::new(bytes), jpeg_options());
        decoder
            .decode_headers()
            .map_err(|e| Rejection::Jpeg(message(&e)))?;
        let (w, h) = decoder
            .dimensions()
            .ok_or_else(|| Rejection::Jpeg("no frame header".into()))?;
        let (width, height) = (w as u32, h as u32);
        self.check_size(width, height)?;
        let input = decoder.input_colorspace();
        let size = decoder
            .output_buffer_size()
            .ok_or_else(|| Rejection::Jpeg("image size overflows".into()))?;
        self.pixels.resize(size, 0);
        decoder
            .decode_into(&mut self.pixels)
            .map_err(|e| Rejection::Jpeg(message(&e)))?;
        let flag = match input {
            Some(ColorSpace::CMYK | ColorSpace::YCCK) => flags::FROM_CMYK,
            Some(ColorSpace::Luma) => flags::GRAYSCALE,
            _ => 0,
        };
        if let Some(resized) = self.downscale(width, height)? {
            return Ok(resized);
        }
        if flag & flags::FROM_CMYK != 0 {
            let q = self.options.transcode_quality;
            let data = encode_rgb(&self.pixels, width, height, q)?;
            return Ok(Checked {
                stored: Stored::Encoded(data),
                width,
                height,
                flags: flag,
                source_sha256: None,
            });
        }
        Ok(Checked {
            stored: Stored::Original,
            width,
            height,
            flags: flag,
            source_sha256: None,
        })
    }

    fn check_png(&mut self, bytes: &[u8]) -> Result<Checked, Rejection> {
        let options = DecoderOptions::new_fast()
            .png_set_strip_to_8bit(true)
            .set_max_width(usize::from(u16::MAX))
            .set_max_height(usize::from(u16::MAX));
        let mut decoder = PngDecoder::new_with_options(SliceReader::new(bytes), options);
        decoder
            .decode_headers()
            .map_err(|e| Rejection::Png(message(&e)))?;
        let (w, h) = decoder
            .dimensions()
            .ok_or_else(|| Rejection::Png("no header".into()))?;
        let (width, height) = (w as u32, h as u32);
        self.check_size(width, height)?;
        let raw = decoder
            .decode_raw()
            .map_err(|e| Rejection::Png(message(&e)))?;
        let colorspace = decoder
            .colorspace()
            .ok_or_else(|| Rejection::Png("no colorspace".into()))?;
        let channels = colorspace.num_components();
        let pixels = width as usize * height as usize;
        if raw.len() < pixels * channels {
            return Err(Rejection::Png("decoded fewer pixels than declared".into()));
        }
        // Pillow's convert("RGB") drops alpha without compositing and replicates gray.
        self.pixels.clear();
        self.pixels.reserve(pixels * 3);
        for px in raw.chunks_exact(channels).take(pixels) {
            match channels {
                1 | 2 => self.pixels.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => self.pixels.extend_from_slice(&px[..3]),
            }
        }
        if let Some(mut resized) = self.downscale(width, height)? {
            resized.flags |= flags::FROM_PNG;
            return Ok(resized);
        }
        let data = encode_rgb(&self.pixels, width, height, self.options.transcode_quality)?;
        Ok(Checked {
            stored: Stored::Encoded(data),
            width,
            height,
            flags: flags::FROM_PNG,
            source_sha256: None,
        })
    }

    fn check_size(&self, width: u32, height: u32) -> Result<(), Rejection> {
        let limit = self.options.max_pixels;
        if u64::from(width) * u64::from(height) > limit {
            return Err(Rejection::TooLarge {
                width,
                height,
                limit,
            });
        }
        Ok(())
    }

    /// With `max_side`, shrinks the RGB image in `self.pixels` and encodes it.
    fn downscale(&mut self, width: u32, height: u32) -> Result<Option<Checked>, Rejection> {
        let Some(max_side) = self.options.max_side else {
            return Ok(None);
        };
        let longer = width.max(height);
        if longer <= max_side {
            return Ok(None);
        }
        let scale = f64::from(max_side) / f64::from(longer);
        let nw = ((f64::from(width) * scale).round() as u32).max(1);
        let nh = ((f64::from(height) * scale).round() as u32).max(1);
        let src = ImageRef::new(width, height, &self.pixels, PixelType::U8x3)
            .map_err(|e| Rejection::Encode(e.to_string()))?;
        let mut dst = Image::new(nw, nh, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| Rejection::Encode(e.to_string()))?;
        let data = encode_rgb(dst.buffer(), nw, nh, self.options.quality)?;
        Ok(Some(Checked {
            stored: Stored::Encoded(data),
            width: nw,
            height: nh,
            flags: flags::RESIZED,
            source_sha256: None,
        }))
    }
}

/// Decodes `jpeg` to RGB into `out` (strict mode).
fn decode_rgb(jpeg: &[u8], out: &mut Vec<u8>) -> Result<(), zune_jpeg::errors::DecodeErrors> {
    let mut decoder = JpegDecoder::new_with_options(SliceReader::new(jpeg), jpeg_options());
    decoder.decode_headers()?;
    let size =
        decoder
            .output_buffer_size()
            .ok_or(zune_jpeg::errors::DecodeErrors::FormatStatic(
                "image size overflows",
            ))?;
    out.resize(size, 0);
    decoder.decode_into(out)
}

/// Decoder options for every JPEG decode of the packer: SIMD paths on, strict mode on, and the
/// dimension limits left to [`ImageOptions::max_pixels`] so the message names that limit.
pub fn jpeg_options() -> DecoderOptions {
    DecoderOptions::new_fast()
        .set_strict_mode(true)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .jpeg_set_out_colorspace(ColorSpace::RGB)
}

enum Format {
    Jpeg,
    Png,
}

/// Decides the format from the magic bytes; extensions are not trusted.
fn sniff(bytes: &[u8]) -> Result<Format, Rejection> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.is_empty() {
        return Err(Rejection::Empty);
    }
    // SOI alone decides: a damaged first marker is the decoder's to report, with its reason.
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(Format::Jpeg);
    }
    if bytes.starts_with(PNG) {
        return Ok(Format::Png);
    }
    let other = if bytes.starts_with(b"GIF8") {
        "GIF"
    } else if bytes.starts_with(b"BM") {
        "BMP"
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "WebP"
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        "TIFF"
    } else {
        return Err(Rejection::NotAnImage);
    };
    Err(Rejection::UnsupportedFormat(other))
}

/// The zune decoders' error text, without the quotes their `Display` (which is `Debug`) adds.
fn message(e: &impl std::fmt::Display) -> String {
    e.to_string().trim_matches('"').to_owned()
}

/// Encodes interleaved RGB as a baseline 4:4:4 JPEG (no chroma subsampling, so a conversion
/// loses as little colour as the quality allows).
pub fn encode_rgb(rgb: &[u8], width: u32, height: u32, quality: u8) -> Result<Vec<u8>, Rejection> {
    let (Ok(w), Ok(h)) = (u16::try_from(width), u16::try_from(height)) else {
        return Err(Rejection::Encode(format!(
            "{width}x{height} exceeds JPEG's 65535-pixel side"
        )));
    };
    let mut out = Vec::with_capacity(rgb.len() / 8);
    let mut encoder = Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(SamplingFactor::F_1_1);
    encoder
        .encode(rgb, w, h, ColorType::Rgb)
        .map_err(|e| Rejection::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth;

    fn checker() -> ImageChecker {
        ImageChecker::new(ImageOptions::default())
    }

    fn decode_rgb(jpeg: &[u8]) -> Vec<u8> {
        JpegDecoder::new_with_options(SliceReader::new(jpeg), jpeg_options())
            .decode()
            .unwrap()
    }

    /// A checker that stores JPEGs as they are (`--restart-interval 0`).
    fn plain() -> ImageChecker {
        ImageChecker::new(ImageOptions {
            restart_interval: 0,
            ..Default::default()
        })
    }

    #[test]
    fn rgb_jpeg_is_kept_as_is() {
        let jpeg = synth::class_image(3, 7, 40, 30);
        let c = plain().check(&jpeg).unwrap();
        assert_eq!(c.stored, Stored::Original);
        assert_eq!((c.width, c.height, c.flags), (40, 30, 0));
        assert_eq!(c.source_sha256, None);
    }

    #[test]
    fn grayscale_is_kept_and_flagged() {
        let c = plain().check(&synth::gray_jpeg(16, 8)).unwrap();
        assert_eq!(c.stored, Stored::Original);
        assert_eq!(c.flags, flags::GRAYSCALE);
    }

    #[test]
    fn by_default_a_jpeg_is_stored_as_the_coefficients_of_its_restart_marked_re_encode() {
        let jpeg_records = ImageOptions {
            coefficients: false,
            ..Default::default()
        };
        for (jpeg, flag) in [
            (synth::class_image(3, 7, 40, 30), 0),
            (synth::gray_jpeg(16, 8), flags::GRAYSCALE),
        ] {
            let c = checker().check(&jpeg).unwrap();
            let re_encoded = flag | flags::RESTART_MARKERS;
            assert_eq!(c.flags, re_encoded | flags::COEFFICIENTS);
            let Stored::Encoded(record) = &c.stored else {
                panic!("re-encoded")
            };
            // The coefficients are the restart-marked JPEG's, whose pixels are the source's.
            let bytes = &crate::coefficients::to_jpeg(record).unwrap();
            let c_jpeg = ImageChecker::new(jpeg_records).check(&jpeg).unwrap();
            assert_eq!(c_jpeg.flags, re_encoded);
            assert_eq!(c_jpeg.stored, Stored::Encoded(bytes.clone()));
            assert_eq!(decode_rgb(bytes), decode_rgb(&jpeg));
            crate::restart::Intervals::default().parse(bytes).unwrap();
            crate::restart::Intervals::default().parse(record).unwrap();
            assert_eq!(
                c.source_sha256,
                Some(format!("{:x}", Sha256::digest(&jpeg)))
            );
        }
        // Not for the eval splits, which are decoded whole.
        let val = ImageChecker::new(ImageOptions::default().for_split("val"));
        let c = {
            let mut val = val;
            val.check(&synth::class_image(3, 7, 40, 30)).unwrap()
        };
        assert_eq!((c.stored, c.flags), (Stored::Original, 0));
    }

    #[test]
    fn cmyk_becomes_rgb_with_pillow_colours() {
        // Pillow: R = (255 - C) * (255 - K) / 255 for Adobe CMYK.
        let (c, m, y, k) = (0u8, 255u8, 128u8, 51u8);
        let jpeg = synth::cmyk_jpeg(16, 16, [c, m, y, k]);
        let out = plain().check(&jpeg).unwrap();
        assert_eq!(out.flags, flags::FROM_CMYK);
        let Stored::Encoded(bytes) = out.stored else {
            panic!("CMYK must be re-encoded")
        };
        let rgb = decode_rgb(&bytes);
        let want = |v: u8| (255.0 - f64::from(v)) * (255.0 - f64::from(k)) / 255.0;
        for (got, want) in rgb[..3].iter().zip([want(c), want(m), want(y)]) {
            assert!((f64::from(*got) - want).abs() <= 3.0, "{got} vs {want}");
        }
    }

    #[test]
    fn png_with_jpeg_name_is_transcoded() {
        let png = synth::png_rgba(10, 6);
        let out = checker().check(&png).unwrap();
        // Converted, then given restart markers and stored as coefficients like any JPEG.
        assert_eq!(
            out.flags,
            flags::FROM_PNG | flags::RESTART_MARKERS | flags::COEFFICIENTS
        );
        assert!(out.source_sha256.is_some());
        assert_eq!((out.width, out.height), (10, 6));
        let Stored::Encoded(bytes) = out.stored else {
            panic!("PNG must be re-encoded")
        };
        let jpeg = crate::coefficients::to_jpeg(&bytes).unwrap();
        assert_eq!(decode_rgb(&jpeg).len(), 10 * 6 * 3);
    }

    #[test]
    fn truncated_empty_and_garbage_are_rejected() {
        let jpeg = synth::class_image(1, 2, 64, 64);
        let cut = &jpeg[..jpeg.len() * 2 / 3];
        assert!(matches!(checker().check(cut), Err(Rejection::Jpeg(_))));
        assert_eq!(checker().check(&[]), Err(Rejection::Empty));
        assert_eq!(checker().check(b"root:secret"), Err(Rejection::NotAnImage));
        assert!(
            !Rejection::NotAnImage.to_string().contains("72 6f"),
            "the report must not quote the file"
        );
        assert_eq!(
            checker().check(b"GIF89a...."),
            Err(Rejection::UnsupportedFormat("GIF"))
        );
    }

    #[test]
    fn huge_declared_dimensions_are_rejected_before_decoding() {
        let bomb = synth::huge_declared_jpeg(60_000, 60_000);
        match checker().check(&bomb) {
            Err(Rejection::TooLarge { width, height, .. }) => {
                assert_eq!((width, height), (60_000, 60_000))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn max_side_downscales() {
        let opts = ImageOptions {
            max_side: Some(32),
            restart_interval: 0,
            ..Default::default()
        };
        let out = ImageChecker::new(opts)
            .check(&synth::class_image(0, 0, 80, 40))
            .unwrap();
        assert_eq!((out.width, out.height, out.flags), (32, 16, flags::RESIZED));
        let Stored::Encoded(bytes) = out.stored else {
            panic!("resized images are re-encoded")
        };
        assert_eq!(decode_rgb(&bytes).len(), 32 * 16 * 3);
    }
}
