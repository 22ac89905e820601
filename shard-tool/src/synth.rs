/*!
Synthetic images and source trees, for tests and for the README's demo run on a fresh machine.

Class images are learnable on purpose: each class has its own stripe orientation, stripe
frequency and tint, and each image varies phase, brightness, offset and noise, so a small CNN
can separate the classes but not by one pixel. The odd files reproduce what real ImageNet holds
and the packer must handle: a PNG named `.JPEG`, an Adobe CMYK JPEG, a grayscale JPEG, a
truncated JPEG and a zero-byte file.
*/

use std::fs;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zune_core::bit_depth::BitDepth;
use zune_core::colorspace::ColorSpace;
use zune_core::options::EncoderOptions;
use zune_png::PngEncoder;

use crate::atomic::write_scratch;
use crate::error::{Error, PathContext, Result};

/// A JPEG of class `class` (any number; patterns repeat after 16 orientations), variant `index`.
pub fn class_image(class: u32, index: u32, width: u32, height: u32) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(class) << 32 | u64::from(index));
    let angle = f64::from(class % 16) * std::f64::consts::PI / 16.0;
    let freq = 0.15 + 0.1 * f64::from((class / 16) % 4);
    let tint = [
        (class * 37 % 200) as f64 + 40.0,
        (class * 91 % 200) as f64 + 40.0,
        (class * 53 % 200) as f64 + 40.0,
    ];
    let phase: f64 = rng.random_range(0.0..std::f64::consts::TAU);
    let gain: f64 = rng.random_range(0.7..1.2);
    let (dx, dy): (f64, f64) = (rng.random_range(-8.0..8.0), rng.random_range(-8.0..8.0));
    let (ca, sa) = (angle.cos(), angle.sin());
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            let u = (f64::from(x) + dx) * ca + (f64::from(y) + dy) * sa;
            let wave = 0.5 + 0.5 * (u * freq * std::f64::consts::TAU / 4.0 + phase).sin();
            for t in tint {
                let noise: f64 = rng.random_range(-12.0..12.0);
                let v = (t * (0.35 + 0.65 * wave) * gain + noise).clamp(0.0, 255.0);
                rgb.push(v as u8);
            }
        }
    }
    encode(&rgb, width, height, jpeg_encoder::ColorType::Rgb, 90)
}

/// A single-channel JPEG (a horizontal ramp).
pub fn gray_jpeg(width: u32, height: u32) -> Vec<u8> {
    let luma: Vec<u8> = (0..height)
        .flat_map(|_| (0..width).map(move |x| (x * 255 / width.max(1)) as u8))
        .collect();
    encode(&luma, width, height, jpeg_encoder::ColorType::Luma, 90)
}

/// An Adobe CMYK JPEG (inverted storage, APP14 transform 0, as in ImageNet's CMYK files) of one
/// flat colour.
pub fn cmyk_jpeg(width: u32, height: u32, cmyk: [u8; 4]) -> Vec<u8> {
    let data: Vec<u8> = (0..width * height).flat_map(|_| cmyk).collect();
    encode(&data, width, height, jpeg_encoder::ColorType::Cmyk, 95)
}

/// An RGBA PNG (what ImageNet's `n02105855_2933.JPEG` really is).
pub fn png_rgba(width: u32, height: u32) -> Vec<u8> {
    let data: Vec<u8> = (0..width * height)
        .flat_map(|i| [(i * 7) as u8, (i * 3) as u8, 200, 255])
        .collect();
    let options = EncoderOptions::new(
        width as usize,
        height as usize,
        ColorSpace::RGBA,
        BitDepth::Eight,
    );
    let mut out = Vec::new();
    // A PNG encode into a Vec of a small, well-formed image cannot fail.
    #[allow(clippy::expect_used)]
    PngEncoder::new(&data, options)
        .encode(&mut out)
        .expect("PNG encoding into memory");
    out
}

/// A JPEG whose frame header declares `width` x `height` but whose data is that of a tiny image:
/// a decompression bomb as far as a decoder that trusts the header is concerned.
pub fn huge_declared_jpeg(width: u16, height: u16) -> Vec<u8> {
    let mut jpeg = class_image(0, 0, 8, 8);
    // SOF0 segment: FF C0, length (2), precision (1), height (2), width (2).
    if let Some(at) = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]) {
        jpeg[at + 5..at + 7].copy_from_slice(&height.to_be_bytes());
        jpeg[at + 7..at + 9].copy_from_slice(&width.to_be_bytes());
    }
    jpeg
}

fn encode(
    data: &[u8],
    width: u32,
    height: u32,
    color: jpeg_encoder::ColorType,
    quality: u8,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
    // Sizes here are small constants chosen by callers in this crate, and the buffer matches
    // them, so encoding cannot fail.
    #[allow(clippy::expect_used)]
    encoder
        .encode(data, width as u16, height as u16, color)
        .expect("JPEG encoding of a synthetic image");
    out
}

/// What [`write_tree`] makes.
#[derive(Debug, Clone)]
pub struct TreeSpec {
    /// Number of classes (`class_000`, `class_001`, ...).
    pub classes: u32,
    /// Images per class in `train/`.
    pub train_per_class: u32,
    /// Images per class in `val/`.
    pub val_per_class: u32,
    /// Side of the square images.
    pub size: u32,
    /// Also write the five odd files into `train/class_000/`.
    pub odd_files: bool,
}

impl Default for TreeSpec {
    fn default() -> Self {
        TreeSpec {
            classes: 10,
            train_per_class: 100,
            val_per_class: 20,
            size: 64,
            odd_files: false,
        }
    }
}

/// Names of the odd files [`write_tree`] adds with `odd_files`, and what each one is.
pub const ODD_FILES: [(&str, &str); 5] = [
    ("png_named.JPEG", "a PNG file named .JPEG"),
    ("cmyk.JPEG", "an Adobe CMYK JPEG"),
    ("grayscale.JPEG", "a grayscale JPEG"),
    ("truncated.JPEG", "a JPEG cut at two thirds"),
    ("empty.JPEG", "a zero-byte file"),
];

/// Writes an ImageFolder tree (`train/<class>/`, `val/<class>/`) under `root`.
///
/// # Errors
/// I/O errors, with the path.
pub fn write_tree(root: &Path, spec: &TreeSpec) -> Result<u64> {
    let mut written = 0;
    let splits = [
        ("train", spec.train_per_class, 0),
        ("val", spec.val_per_class, 1 << 20),
    ];
    for (split, per_class, offset) in splits {
        for class in 0..spec.classes {
            let dir = root.join(split).join(format!("class_{class:03}"));
            fs::create_dir_all(&dir).at(&dir)?;
            for i in 0..per_class {
                let path = dir.join(format!("{split}_{class:03}_{i:05}.jpg"));
                let jpeg = class_image(class, offset + i, spec.size, spec.size);
                // Not `write_atomic`: a synthetic tree is scratch input made again at will,
                // and a sync per image would make the tests' thousands of images slow; a
                // file cut short by a crash is what `pack` rejects anyway.
                write_scratch(&path, &jpeg)?;
                written += 1;
            }
        }
    }
    if spec.odd_files {
        let dir = root.join("train").join("class_000");
        fs::create_dir_all(&dir).at(&dir)?;
        let good = class_image(0, 99_999, spec.size, spec.size);
        let contents: [Vec<u8>; 5] = [
            png_rgba(spec.size, spec.size),
            cmyk_jpeg(spec.size, spec.size, [10, 200, 30, 40]),
            gray_jpeg(spec.size, spec.size),
            good[..good.len() * 2 / 3].to_vec(),
            Vec::new(),
        ];
        for ((name, _), bytes) in ODD_FILES.iter().zip(contents) {
            let path = dir.join(name);
            // As above: scratch input, not a file a user keeps.
            write_scratch(&path, &bytes)?;
            written += 1;
        }
    }
    if written == 0 {
        return Err(Error::Config("the tree spec makes no images".into()));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_images_are_deterministic_and_distinct() {
        assert_eq!(class_image(2, 5, 32, 32), class_image(2, 5, 32, 32));
        assert_ne!(class_image(2, 5, 32, 32), class_image(2, 6, 32, 32));
        assert_ne!(class_image(2, 5, 32, 32), class_image(3, 5, 32, 32));
    }

    #[test]
    fn tree_has_the_requested_shape() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TreeSpec {
            classes: 3,
            train_per_class: 2,
            val_per_class: 1,
            size: 16,
            odd_files: true,
        };
        assert_eq!(write_tree(dir.path(), &spec).unwrap(), 3 * 3 + 5);
        assert!(dir.path().join("val/class_002").is_dir());
        assert_eq!(
            fs::metadata(dir.path().join("train/class_000/empty.JPEG"))
                .unwrap()
                .len(),
            0
        );
    }
}
