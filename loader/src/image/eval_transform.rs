/*!
timm's eval transform (docs/recipe.md §2.14): resize the short side to `floor(img_size / crop_pct)`
with Pillow's antialiased filter (bicubic for ResNet-50), keeping the aspect ratio as
torchvision's `Resize(int)` does, then `CenterCrop(img_size)`.
*/

use crate::image::crop::CropBox;
use crate::image::decode::RgbImage;
use crate::image::interpolation::Interpolation;
use crate::image::resample::Resampler;

/// The eval transform's settings (timm's `--img-size`, `--crop-pct`, `--interpolation`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalTransform {
    /// Side of the square output.
    pub img_size: u32,
    /// Fraction of the resized short side that the crop keeps (0.95 in the paper's protocol;
    /// timm's default is 0.875).
    pub crop_pct: f64,
    /// Resize filter.
    pub interpolation: Interpolation,
}

impl EvalTransform {
    /// Short side after the resize: `floor(img_size / crop_pct)` (235 for 224 at 0.95).
    pub fn scale_size(&self) -> u32 {
        (f64::from(self.img_size) / self.crop_pct).floor() as u32
    }

    /// Size after torchvision's `Resize(scale_size)`: the short side becomes `scale_size`, the
    /// long one `int(scale_size * long / short)` (truncated).
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        let size = u64::from(self.scale_size());
        let (short, long) = (u64::from(width.min(height)), u64::from(width.max(height)));
        let new_long = ((size * long) as f64 / short as f64) as u32;
        if width <= height {
            (size as u32, new_long)
        } else {
            (new_long, size as u32)
        }
    }

    /// torchvision's `CenterCrop`: offsets `int(round((side - img_size) / 2))`, Python's
    /// round-half-to-even.
    pub fn center_crop(&self, width: u32, height: u32) -> CropBox {
        let offset = |side: u32| (f64::from(side - self.img_size) / 2.0).round_ties_even() as u32;
        CropBox {
            top: offset(height),
            left: offset(width),
            height: self.img_size,
            width: self.img_size,
        }
    }

    /// Applies the transform to `image`, writing `img_size`² RGB pixels to `out`. `resized` is
    /// scratch space, reused between calls.
    ///
    /// # Panics
    /// If `crop_pct` is not in (0, 1] (the resized image would be smaller than the crop), the
    /// image is empty, or `out` is too short.
    pub fn apply(
        &self,
        image: &RgbImage,
        resampler: &mut Resampler,
        resized: &mut RgbImage,
        out: &mut [u8],
    ) {
        assert!(
            self.crop_pct > 0.0 && self.crop_pct <= 1.0,
            "crop_pct must be in (0, 1]"
        );
        let (w, h) = self.resized_size(image.width, image.height);
        resized.width = w;
        resized.height = h;
        resized.pixels.resize(w as usize * h as usize * 3, 0);
        let whole = CropBox {
            top: 0,
            left: 0,
            height: image.height,
            width: image.width,
        };
        resampler.resize(
            &image.pixels,
            image.width as usize,
            whole,
            (w as usize, h as usize),
            self.interpolation,
            &mut resized.pixels,
        );
        let c = self.center_crop(w, h);
        let side = self.img_size as usize;
        for (r, row) in out[..side * side * 3]
            .chunks_exact_mut(side * 3)
            .enumerate()
        {
            let start = ((c.top as usize + r) * w as usize + c.left as usize) * 3;
            row.copy_from_slice(&resized.pixels[start..start + side * 3]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{case_lines, golden_dir, png};

    #[test]
    fn equals_pillow_and_torchvision_on_the_golden_cases() {
        let (mut r, mut resized) = (Resampler::new(), RgbImage::default());
        let cases = case_lines("eval_cases.txt");
        assert_eq!(cases.len(), 3);
        for f in cases {
            let t = EvalTransform {
                img_size: f[2].parse().unwrap(),
                crop_pct: f[3].parse().unwrap(),
                interpolation: match f[4].as_str() {
                    "bilinear" => Interpolation::Bilinear,
                    _ => Interpolation::Bicubic,
                },
            };
            let src = png(&golden_dir().join(format!("inputs/{}.png", f[1])));
            let expected = png(&golden_dir().join(format!("expected/{}.png", f[0])));
            let mut out = vec![0u8; expected.pixels.len()];
            t.apply(&src, &mut r, &mut resized, &mut out);
            assert_eq!(out, expected.pixels, "{}", f[0]);
        }
    }

    #[test]
    fn sizes_follow_torchvision() {
        let t = EvalTransform {
            img_size: 224,
            crop_pct: 0.95,
            interpolation: Interpolation::Bicubic,
        };
        assert_eq!(t.scale_size(), 235);
        assert_eq!(t.resized_size(500, 375), (313, 235)); // int(235 * 500 / 375) = 313
        assert_eq!(t.resized_size(375, 500), (235, 313));
        assert_eq!(t.resized_size(300, 300), (235, 235));
        let timm_default = EvalTransform {
            crop_pct: 0.875,
            ..t
        };
        assert_eq!(timm_default.scale_size(), 256);
        // (313 - 224) / 2 = 44.5 rounds to 44 (half to even); (235 - 224) / 2 = 5.5 to 6.
        assert_eq!(
            t.center_crop(313, 235),
            CropBox {
                top: 6,
                left: 44,
                height: 224,
                width: 224
            }
        );
    }
}
