//! Reading and writing the images of `augment` and `preview`.

use std::path::Path;

use anyhow::{Context, Result};
use loader::image::decode::{Decoder, RgbImage};
use shard_tool::slice_reader::SliceReader;
use zune_core::bit_depth::BitDepth;
use zune_core::colorspace::ColorSpace;
use zune_core::options::{DecoderOptions, EncoderOptions};
use zune_png::{PngDecoder, PngEncoder};

/// Reads a JPEG (through the loader's decoder) or a PNG (as RGB, alpha dropped).
pub fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes =
        shard_tool::user_file::read_capped(path, shard_tool::DEFAULT_MAX_FILE_BYTES, "an image")?;
    if bytes.starts_with(b"\x89PNG") {
        let options = DecoderOptions::default().png_set_strip_to_8bit(true);
        let mut d = PngDecoder::new_with_options(SliceReader::new(&bytes[..]), options);
        let raw = d
            .decode_raw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .with_context(|| format!("decoding {}", path.display()))?;
        let (w, h) = d.dimensions().context("PNG without a header")?;
        let channels = d
            .colorspace()
            .context("PNG without a colorspace")?
            .num_components();
        let mut pixels = Vec::with_capacity(w * h * 3);
        for px in raw.chunks_exact(channels) {
            match channels {
                1 | 2 => pixels.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => pixels.extend_from_slice(&px[..3]),
            }
        }
        return Ok(RgbImage {
            width: w as u32,
            height: h as u32,
            pixels,
        });
    }
    let mut image = RgbImage::default();
    Decoder::default()
        .decode_into(&bytes, &mut image)
        .with_context(|| format!("decoding {}", path.display()))?;
    Ok(image)
}

/// Writes `image` as an RGB PNG.
pub fn write_png(path: &Path, image: &RgbImage) -> Result<()> {
    let options = EncoderOptions::new(
        image.width as usize,
        image.height as usize,
        ColorSpace::RGB,
        BitDepth::Eight,
    );
    let mut out = Vec::new();
    PngEncoder::new(&image.pixels, options)
        .encode(&mut out)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("encoding {}", path.display()))?;
    shard_tool::atomic::write_atomic(path, |w| std::io::Write::write_all(w, &out))
        .with_context(|| format!("writing {}", path.display()))
}
