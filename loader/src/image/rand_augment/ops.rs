/*!
RandAugment's pixel operations with Pillow's exact arithmetic (docs/recipe.md §2.3): the LUT ops of
`ImageOps` and the `ImageEnhance` blends. Each works in place on an RGB image and is a pure
function of its explicit argument; the random parts (which op, magnitude, sign) live in the
caller.

The geometric ops are in [`super::geometry`]; the golden test here covers all fifteen.
*/

#[cfg(target_arch = "x86_64")]
use crate::image::cpu::CpuExt;
use crate::image::decode::RgbImage;

/// Per-channel 256-bin histograms.
fn histograms(img: &RgbImage) -> [[u32; 256]; 3] {
    let mut h = [[0u32; 256]; 3];
    for px in img.pixels.chunks_exact(3) {
        for c in 0..3 {
            h[c][px[c] as usize] += 1;
        }
    }
    h
}

/// Applies one lookup table per channel.
fn apply_luts(img: &mut RgbImage, luts: &[[u8; 256]; 3]) {
    for px in img.pixels.chunks_exact_mut(3) {
        for c in 0..3 {
            px[c] = luts[c][px[c] as usize];
        }
    }
}

/// Applies the same lookup table to every channel.
fn apply_lut(img: &mut RgbImage, lut: &[u8; 256]) {
    for v in &mut img.pixels {
        *v = lut[*v as usize];
    }
}

/// `ImageOps.autocontrast(img)`: per channel, stretch [lowest, highest] used level to [0, 255].
pub fn auto_contrast(img: &mut RgbImage) {
    let hist = histograms(img);
    let mut luts = [[0u8; 256]; 3];
    for (lut, h) in luts.iter_mut().zip(&hist) {
        let lo = h.iter().position(|&n| n > 0).unwrap_or(0);
        let hi = h.iter().rposition(|&n| n > 0).unwrap_or(0);
        if hi <= lo {
            *lut = std::array::from_fn(|i| i as u8);
            continue;
        }
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        for (i, v) in lut.iter_mut().enumerate() {
            // Python's int() truncates toward zero, as `as i64` does.
            *v = ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8;
        }
    }
    apply_luts(img, &luts);
}

/// `ImageOps.equalize(img)`: per channel, histogram equalisation with Pillow's integer steps.
pub fn equalize(img: &mut RgbImage) {
    let hist = histograms(img);
    let mut luts = [[0u8; 256]; 3];
    for (lut, h) in luts.iter_mut().zip(&hist) {
        let used: Vec<u64> = h
            .iter()
            .filter(|&&n| n > 0)
            .map(|&n| u64::from(n))
            .collect();
        let step = match used.last() {
            Some(last) if used.len() > 1 => (used.iter().sum::<u64>() - last) / 255,
            _ => 0,
        };
        if step == 0 {
            *lut = std::array::from_fn(|i| i as u8);
            continue;
        }
        let mut n = step / 2;
        for (v, &count) in lut.iter_mut().zip(h) {
            // Pillow builds the table in Python ints and clips to 255 when it applies it.
            *v = (n / step).min(255) as u8;
            n += u64::from(count);
        }
    }
    apply_luts(img, &luts);
}

/// `ImageOps.invert(img)`.
pub fn invert(img: &mut RgbImage) {
    for v in &mut img.pixels {
        *v = 255 - *v;
    }
}

/// `ImageOps.posterize(img, bits)`: keep the `bits` high bits (8 or more: unchanged, as timm).
pub fn posterize(img: &mut RgbImage, bits: u32) {
    if bits >= 8 {
        return;
    }
    let mask = !((1u32 << (8 - bits)) - 1) as u8;
    for v in &mut img.pixels {
        *v &= mask;
    }
}

/// `ImageOps.solarize(img, threshold)`: invert every level at or above `threshold`.
pub fn solarize(img: &mut RgbImage, threshold: u32) {
    let lut: [u8; 256] = std::array::from_fn(|i| {
        if (i as u32) < threshold {
            i as u8
        } else {
            255 - i as u8
        }
    });
    apply_lut(img, &lut);
}

/// timm's `solarize_add`: add `add` (saturating) to every level below `threshold` (128).
pub fn solarize_add(img: &mut RgbImage, add: u32, threshold: u32) {
    let lut: [u8; 256] = std::array::from_fn(|i| {
        if (i as u32) < threshold {
            (i as u32 + add).min(255) as u8
        } else {
            i as u8
        }
    });
    apply_lut(img, &lut);
}

/// Pillow's `L` conversion of one RGB pixel (`Convert.c`, ITU-R 601-2 in 16-bit fixed point).
#[inline]
fn luma(px: &[u8]) -> u8 {
    ((19595 * u32::from(px[0]) + 38470 * u32::from(px[1]) + 7471 * u32::from(px[2]) + 0x8000) >> 16)
        as u8
}

/// One value of `Image.blend(degenerate, img, alpha)` (`Blend.c`): C `float` arithmetic,
/// truncated, clamped only when extrapolating (`alpha` outside [0, 1]). Rust's float-to-int
/// cast truncates and saturates, which is both rules at once; and `alpha == 0`, which Pillow
/// answers with the degenerate image, gives `d + 0` here, the same value.
#[inline(always)]
fn blend(d: u8, v: u8, alpha: f32) -> u8 {
    (f32::from(d) + alpha * (i32::from(v) - i32::from(d)) as f32) as u8
}

/// Blends every value of `img` with the matching value of `degenerate`, in a loop the
/// compiler vectorises (each value's operations unchanged).
#[inline(always)]
fn blend_values(img: &mut [u8], degenerate: &[u8], alpha: f32) {
    for (v, &d) in img.iter_mut().zip(degenerate) {
        *v = blend(d, *v, alpha);
    }
}

/// [`blend_values`] compiled for AVX2 (eight floats per instruction, and the conversions
/// baseline x86-64 lacks).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn blend_values_avx2(img: &mut [u8], degenerate: &[u8], alpha: f32) {
    blend_values(img, degenerate, alpha);
}

/// Blends every value of `img` with the matching value of `degenerate` (`factor` 1: no
/// change).
fn blend_with(img: &mut RgbImage, factor: f64, degenerate: &[u8]) {
    let alpha = factor as f32;
    if alpha == 1.0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if CpuExt::current().has_avx2() {
        // SAFETY: a `CpuExt` with AVX2 is only made on a CPU that has it.
        unsafe { blend_values_avx2(&mut img.pixels, degenerate, alpha) };
        return;
    }
    blend_values(&mut img.pixels, degenerate, alpha);
}

/// Blends every value of `img` with the constant `d`: a function of the value alone, so one
/// lookup table of 256 blends.
fn blend_with_constant(img: &mut RgbImage, factor: f64, d: u8) {
    let alpha = factor as f32;
    if alpha == 1.0 {
        return;
    }
    let lut: [u8; 256] = std::array::from_fn(|v| blend(d, v as u8, alpha));
    apply_lut(img, &lut);
}

/// `ImageEnhance.Color(img).enhance(factor)`: blend with the image's grayscale version,
/// built in `scratch` (reused between calls).
pub fn color(img: &mut RgbImage, factor: f64, scratch: &mut Vec<u8>) {
    if factor as f32 == 1.0 {
        return;
    }
    scratch.clear();
    scratch.extend(img.pixels.chunks_exact(3).flat_map(|px| [luma(px); 3]));
    blend_with(img, factor, scratch);
}

/// `ImageEnhance.Contrast(img).enhance(factor)`: blend with a flat gray at the mean luma.
pub fn contrast(img: &mut RgbImage, factor: f64) {
    let mut hist = [0u64; 256];
    for px in img.pixels.chunks_exact(3) {
        hist[luma(px) as usize] += 1;
    }
    let count: u64 = hist.iter().sum();
    let sum: u64 = hist.iter().enumerate().map(|(i, &n)| i as u64 * n).sum();
    // ImageStat's mean is sum / count in Python floats; Contrast takes int(mean + 0.5).
    let mean = (sum as f64 / count.max(1) as f64 + 0.5) as u8;
    blend_with_constant(img, factor, mean);
}

/// `ImageEnhance.Brightness(img).enhance(factor)`: blend with black.
pub fn brightness(img: &mut RgbImage, factor: f64) {
    blend_with_constant(img, factor, 0);
}

/// `ImageEnhance.Sharpness(img).enhance(factor)`: blend with `img.filter(SMOOTH)`, built in
/// `scratch` (reused between calls).
pub fn sharpness(img: &mut RgbImage, factor: f64, scratch: &mut Vec<u8>) {
    smooth(img, scratch);
    blend_with(img, factor, scratch);
}

/// Pillow's SMOOTH filter (`Filter.c`, 3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13 in `float`,
/// +0.5, clamped and truncated). The one-pixel border is copied unchanged.
fn smooth(img: &RgbImage, out: &mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if CpuExt::current().has_avx2() {
        // SAFETY: a `CpuExt` with AVX2 is only made on a CPU that has it.
        unsafe { smooth_avx2(img, out) };
        return;
    }
    smooth_values(img, out);
}

/// [`smooth_values`] compiled for AVX2 (eight floats per instruction; no FMA, which would
/// round differently).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn smooth_avx2(img: &RgbImage, out: &mut Vec<u8>) {
    smooth_values(img, out);
}

/// [`smooth`]'s body.
#[inline(always)]
fn smooth_values(img: &RgbImage, out: &mut Vec<u8>) {
    let (w, h) = (img.width as usize, img.height as usize);
    out.clear();
    out.extend_from_slice(&img.pixels);
    if w < 3 || h < 3 {
        return;
    }
    let (k1, k5) = (1.0f32 / 13.0f32, 5.0f32 / 13.0f32);
    let row = |y: usize| &img.pixels[y * w * 3..(y + 1) * w * 3];
    // The interior of a row as one run of values: value i has its left, centre and right
    // neighbours at i, i + 3 and i + 6 of each source row, so the loop vectorises (the same
    // float operations in the same order per value, hence the same bytes).
    let n = (w - 2) * 3;
    for y in 1..h - 1 {
        let (above, this, below) = (row(y - 1), row(y), row(y + 1));
        let out_row = &mut out[(y * w + 1) * 3..][..n];
        let (b0, b1, b2) = (&below[..n], &below[3..3 + n], &below[6..6 + n]);
        let (t0, t1, t2) = (&this[..n], &this[3..3 + n], &this[6..6 + n]);
        let (a0, a1, a2) = (&above[..n], &above[3..3 + n], &above[6..6 + n]);
        for i in 0..n {
            // The row below first, as Pillow sums them (float addition is not associative).
            let mut ss = 0.5f32;
            ss += f32::from(b0[i]) * k1 + f32::from(b1[i]) * k1 + f32::from(b2[i]) * k1;
            ss += f32::from(t0[i]) * k1 + f32::from(t1[i]) * k5 + f32::from(t2[i]) * k1;
            ss += f32::from(a0[i]) * k1 + f32::from(a1[i]) * k1 + f32::from(a2[i]) * k1;
            out_row[i] = ss.clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{case_lines, golden_dir, png};

    fn apply(op: &str, arg: &str, img: &mut RgbImage) {
        use crate::image::interpolation::Interpolation;
        use crate::image::rand_augment::geometry;

        let int = || arg.parse::<u32>().unwrap();
        let float = || arg.parse::<f64>().unwrap();
        // Geometric ops: "value:filter".
        let geo = || {
            let (v, f) = arg.split_once(':').unwrap();
            let f = match f {
                "bilinear" => Interpolation::Bilinear,
                _ => Interpolation::Bicubic,
            };
            (v.parse::<f64>().unwrap(), f, RgbImage::default())
        };
        match op {
            "rotate" => {
                let (v, f, mut s) = geo();
                geometry::rotate(img, v, f, geometry::FILL, &mut s)
            }
            "shear_x" => {
                let (v, f, mut s) = geo();
                geometry::shear_x(img, v, f, &mut s)
            }
            "shear_y" => {
                let (v, f, mut s) = geo();
                geometry::shear_y(img, v, f, &mut s)
            }
            "translate_x_rel" => {
                let (v, f, mut s) = geo();
                geometry::translate_x_rel(img, v, f, &mut s)
            }
            "translate_y_rel" => {
                let (v, f, mut s) = geo();
                geometry::translate_y_rel(img, v, f, &mut s)
            }
            "auto_contrast" => auto_contrast(img),
            "equalize" => equalize(img),
            "invert" => invert(img),
            "posterize" => posterize(img, int()),
            "solarize" => solarize(img, int()),
            "solarize_add" => solarize_add(img, int(), 128),
            "color" => color(img, float(), &mut Vec::new()),
            "contrast" => contrast(img, float()),
            "brightness" => brightness(img, float()),
            "sharpness" => sharpness(img, float(), &mut Vec::new()),
            other => panic!("unknown op {other}"),
        }
    }

    #[test]
    fn blend_is_pillows_branches_in_one_expression() {
        // Blend.c as written: the degenerate value at alpha 0, truncation inside [0, 1],
        // clamping then truncation outside.
        let pillow = |d: u8, v: u8, alpha: f32| -> u8 {
            if alpha == 0.0 {
                return d;
            }
            let t = f32::from(d) + alpha * (i32::from(v) - i32::from(d)) as f32;
            if (0.0..=1.0).contains(&alpha) {
                t as u8
            } else if t <= 0.0 {
                0
            } else if t >= 255.0 {
                255
            } else {
                t as u8
            }
        };
        for alpha in [0.0f32, -0.0, 0.37, 1.0, -0.63, 1.63, 1.9, -1.3, 0.1 + 0.2] {
            for d in 0..=255u8 {
                for v in 0..=255u8 {
                    assert_eq!(blend(d, v, alpha), pillow(d, v, alpha), "{d} {v} {alpha}");
                }
            }
        }
    }

    #[test]
    fn every_op_equals_pillow_on_the_golden_cases() {
        let cases = case_lines("op_cases.txt");
        assert!(cases.len() >= 140);
        let mut failures = Vec::new();
        for f in cases {
            let mut img = png(&golden_dir().join(format!("inputs/{}.png", f[1])));
            let expected = png(&golden_dir().join(format!("expected/{}.png", f[0])));
            apply(&f[2], &f[3], &mut img);
            let max = img
                .pixels
                .iter()
                .zip(&expected.pixels)
                .map(|(a, b)| a.abs_diff(*b))
                .max();
            if max != Some(0) {
                failures.push(format!("{}: max |diff| {max:?}", f[0]));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
