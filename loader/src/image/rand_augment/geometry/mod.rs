/*!
RandAugment's geometric ops (Rotate, ShearX/Y, TranslateX/YRel) with Pillow's affine transform
(`Geometry.c`, `ImagingGenericTransform`), bit for bit.

For output pixel (x, y) the source point is `(a·u + b·v + c, d·u + e·v + f)` with
`u = x + 0.5, v = y + 0.5`; a point outside the image keeps the fill colour (timm passes
`fillcolor = (124, 116, 104)`). Inside, Pillow samples at the point minus half a pixel with
its own filters, which are *not* the resize filters: bilinear truncates instead of rounding,
bicubic is the a = −1 cubic, neighbour columns are clamped to the image, the first row is
clamped and a further row outside the image repeats the previous one.

The samplers here are the portable reference; on x86-64 CPUs with AVX2, `avx2` runs the same
floating-point operations several lanes at a time, and tests hold both to the same bytes.
*/

use crate::image::cpu::CpuExt;
use crate::image::decode::RgbImage;
use crate::image::interpolation::Interpolation;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// timm's fill for ImageNet: `round(255 · mean)` of (0.485, 0.456, 0.406).
pub const FILL: [u8; 3] = [124, 116, 104];

/// Pillow's `FLOOR` macro: floor for negatives, truncation otherwise.
#[inline]
fn floor_c(v: f64) -> i64 {
    if v < 0.0 { v.floor() as i64 } else { v as i64 }
}

/// Pillow's cubic convolution with a = −1 (`BICUBIC` macro of `Geometry.c`).
#[inline]
fn cubic(v1: f64, v2: f64, v3: f64, v4: f64, d: f64) -> f64 {
    let p1 = v2;
    let p2 = -v1 + v3;
    let p3 = 2.0 * (v1 - v2) + v3 - v4;
    let p4 = -v1 + v2 - v3 + v4;
    p1 + d * (p2 + d * (p3 + d * p4))
}

/// Samples `src` at source point (`xin`, `yin`) into `out`, or returns false outside it.
#[inline]
fn sample(src: &RgbImage, xin: f64, yin: f64, filter: Interpolation, out: &mut [u8]) -> bool {
    let (w, h) = (i64::from(src.width), i64::from(src.height));
    if xin < 0.0 || xin >= w as f64 || yin < 0.0 || yin >= h as f64 {
        return false;
    }
    let (xin, yin) = (xin - 0.5, yin - 0.5);
    let (x, y) = (floor_c(xin), floor_c(yin));
    let (dx, dy) = (xin - x as f64, yin - y as f64);
    let p = &src.pixels;
    // Byte offsets of the clamped columns and of the rows, computed once per output pixel.
    let col = |c: i64| (c.clamp(0, w - 1) * 3) as usize;
    let row = |r: i64| (r * w * 3) as usize;
    let inside = |r: i64| (0..h).contains(&r);
    match filter {
        Interpolation::Bilinear => {
            let (c0, c1) = (col(x), col(x + 1));
            let r0 = row(y.clamp(0, h - 1));
            let r1 = inside(y + 1).then(|| row(y + 1));
            for (b, o) in out.iter_mut().enumerate() {
                let lerp = |r: usize| {
                    let a = f64::from(p[r + c0 + b]);
                    a + (f64::from(p[r + c1 + b]) - a) * dx
                };
                let v1 = lerp(r0);
                let v2 = r1.map_or(v1, lerp);
                *o = (v1 + (v2 - v1) * dy) as u8;
            }
        }
        Interpolation::Bicubic => {
            let (x, y) = (x - 1, y - 1);
            let cols = [col(x), col(x + 1), col(x + 2), col(x + 3)];
            let r0 = row(y.clamp(0, h - 1));
            let rows = [1, 2, 3].map(|k| inside(y + k).then(|| row(y + k)));
            for (b, o) in out.iter_mut().enumerate() {
                let line = |r: usize| {
                    let v = cols.map(|c| f64::from(p[r + c + b]));
                    cubic(v[0], v[1], v[2], v[3], dx)
                };
                let v1 = line(r0);
                let v2 = rows[0].map_or(v1, line);
                let v3 = rows[1].map_or(v2, line);
                let v4 = rows[2].map_or(v3, line);
                let v = cubic(v1, v2, v3, v4, dy);
                // Pillow's clip to [0, 255] then truncation, which is what Rust's saturating
                // float-to-int cast does.
                *o = v as u8;
            }
        }
    }
    true
}

/// [`sample`] for a point whose taps all lie inside the image, where no column or row needs
/// clamping: the same arithmetic in the same order, without the per-tap bounds logic (most
/// pixels of a rotated or sheared image take this path).
#[inline]
fn sample_interior(
    src: &RgbImage,
    xin: f64,
    yin: f64,
    filter: Interpolation,
    out: &mut [u8],
) -> bool {
    let (w, h) = (src.width as usize, src.height as usize);
    let (xin, yin) = (xin - 0.5, yin - 0.5);
    let (x, y) = (floor_c(xin), floor_c(yin));
    let (dx, dy) = (xin - x as f64, yin - y as f64);
    let stride = w * 3;
    match filter {
        Interpolation::Bilinear => {
            if x < 0 || y < 0 || x as usize + 1 >= w || y as usize + 1 >= h {
                return false;
            }
            let at = y as usize * stride + x as usize * 3;
            let (top, bottom) = (
                &src.pixels[at..at + 6],
                &src.pixels[at + stride..at + stride + 6],
            );
            for (b, o) in out.iter_mut().enumerate() {
                let lerp = |r: &[u8]| {
                    let a = f64::from(r[b]);
                    a + (f64::from(r[3 + b]) - a) * dx
                };
                let (v1, v2) = (lerp(top), lerp(bottom));
                *o = (v1 + (v2 - v1) * dy) as u8;
            }
        }
        Interpolation::Bicubic => {
            let (x, y) = (x - 1, y - 1);
            if x < 0 || y < 0 || x as usize + 3 >= w || y as usize + 3 >= h {
                return false;
            }
            let at = y as usize * stride + x as usize * 3;
            let rows: [&[u8]; 4] = std::array::from_fn(|r| &src.pixels[at + r * stride..][..12]);
            // lines[b][r]: the horizontal cubic of channel b on row r, the four rows side by
            // side so that the same operations run on all four at once.
            let lines: [[f64; 4]; 3] = std::array::from_fn(|b| {
                let tap = |k: usize| -> [f64; 4] {
                    std::array::from_fn(|r| f64::from(rows[r][k * 3 + b]))
                };
                let (v1, v2, v3, v4) = (tap(0), tap(1), tap(2), tap(3));
                std::array::from_fn(|r| cubic(v1[r], v2[r], v3[r], v4[r], dx))
            });
            for (b, o) in out.iter_mut().enumerate() {
                let l = lines[b];
                let v = cubic(l[0], l[1], l[2], l[3], dy);
                // Pillow's clip to [0, 255] then truncation, which is what Rust's saturating
                // float-to-int cast does.
                *o = v as u8;
            }
        }
    }
    true
}

/// [`sample_interior`], else [`sample`]: false only outside the image.
#[inline]
fn sample_any(src: &RgbImage, xin: f64, yin: f64, filter: Interpolation, out: &mut [u8]) -> bool {
    sample_interior(src, xin, yin, filter, out) || sample(src, xin, yin, filter, out)
}

/// `img.transform(img.size, AFFINE, matrix, resample=filter, fillcolor=fill)` in place;
/// `scratch` is a buffer kept between calls (it holds the source during the call).
pub fn affine(
    img: &mut RgbImage,
    m: [f64; 6],
    filter: Interpolation,
    fill: [u8; 3],
    scratch: &mut RgbImage,
) {
    affine_with(img, m, filter, fill, scratch, CpuExt::current());
}

/// [`affine`], with the AVX2 samplers where `ext` has AVX2 (a `CpuExt` that says so is made
/// only on a CPU that has it) or the portable ones, the reference.
fn affine_with(
    img: &mut RgbImage,
    m: [f64; 6],
    filter: Interpolation,
    fill: [u8; 3],
    scratch: &mut RgbImage,
    ext: CpuExt,
) {
    // The source moves to `scratch` (no copy); every output pixel is written below, so what
    // `img`'s buffer held before is never read.
    scratch.width = img.width;
    scratch.height = img.height;
    std::mem::swap(&mut scratch.pixels, &mut img.pixels);
    img.pixels.resize(scratch.pixels.len(), 0);
    #[cfg(target_arch = "x86_64")]
    if ext.has_avx2() {
        if let [1.0, 0.0, 0.0, factor, 1.0, 0.0] = m {
            // ShearY is ShearX of the transposed image, transposed back, bit for bit: with
            // `xin = u` exactly its horizontal fraction is zero, so each output is one 1-D
            // interpolation of the same four values at the same fraction (`factor * u + v`
            // equals `v + factor * u`), and Pillow's row rule (clamp the first, repeat the
            // previous) picks the same rows as clamping each, its column rule. The row kernel
            // is several times faster than the per-pixel one.
            transpose(scratch, img);
            std::mem::swap(img, scratch);
            img.width = scratch.width;
            img.height = scratch.height;
            let sheared_x = [1.0, factor, 0.0, 0.0, 1.0, 0.0];
            // SAFETY: `ext` says the CPU has AVX2, and only detection makes such a value.
            unsafe { avx2::affine_rows(img, scratch, sheared_x, filter, fill) };
            transpose(img, scratch);
            std::mem::swap(img, scratch);
            return;
        }
        // SAFETY: `ext` says the CPU has AVX2, and only detection makes such a value.
        unsafe { avx2::affine_rows(img, scratch, m, filter, fill) };
        return;
    }
    let w = img.width as usize;
    for (y, row) in img.pixels.chunks_exact_mut(w * 3).enumerate() {
        let v = y as f64 + 0.5;
        // Pillow's `a0·u + a1·v + a2`, left to right: the products are the same numbers
        // whether computed per pixel or per row.
        let (bv, ev) = (m[1] * v, m[4] * v);
        for (x, out) in row.chunks_exact_mut(3).enumerate() {
            let u = x as f64 + 0.5;
            let xin = m[0] * u + bv + m[2];
            let yin = m[3] * u + ev + m[5];
            if !sample_any(scratch, xin, yin, filter, out) {
                out.copy_from_slice(&fill);
            }
        }
    }
}

/// `dst` = `src` transposed (rows become columns).
#[cfg(target_arch = "x86_64")]
fn transpose(src: &RgbImage, dst: &mut RgbImage) {
    let (w, h) = (src.width as usize, src.height as usize);
    dst.width = src.height;
    dst.height = src.width;
    dst.pixels.resize(src.pixels.len(), 0);
    // Blocks of 16 x 16 pixels keep both sides' lines in the L1 cache.
    const BLOCK: usize = 16;
    for y0 in (0..h).step_by(BLOCK) {
        for x0 in (0..w).step_by(BLOCK) {
            for y in y0..(y0 + BLOCK).min(h) {
                for x in x0..(x0 + BLOCK).min(w) {
                    let (from, to) = ((y * w + x) * 3, (x * h + y) * 3);
                    dst.pixels[to..to + 3].copy_from_slice(&src.pixels[from..from + 3]);
                }
            }
        }
    }
}

/// Python's `round(x, 15)`: correctly rounded to 15 decimals (half to even on the exact
/// binary value), which is what Rust's fixed-precision formatting computes.
fn round15(x: f64) -> f64 {
    format!("{x:.15}").parse().unwrap_or(x)
}

/// `img.rotate(degrees, resample=filter, fillcolor=fill)`: counter-clockwise about the centre,
/// same size, with Pillow's matrix (entries rounded to 15 decimals).
pub fn rotate(
    img: &mut RgbImage,
    degrees: f64,
    filter: Interpolation,
    fill: [u8; 3],
    scratch: &mut RgbImage,
) {
    // Python's % gives a result with the divisor's sign.
    let angle = degrees.rem_euclid(360.0);
    if angle == 0.0 {
        return;
    }
    let (cx, cy) = (f64::from(img.width) / 2.0, f64::from(img.height) / 2.0);
    let phi = -angle.to_radians();
    let (a, b, d, e) = (
        round15(phi.cos()),
        round15(phi.sin()),
        round15(-phi.sin()),
        round15(phi.cos()),
    );
    let c = a * -cx + b * -cy + 0.0 + cx;
    let f = d * -cx + e * -cy + 0.0 + cy;
    affine(img, [a, b, c, d, e, f], filter, fill, scratch);
}

/// timm's `shear_x`: affine `(1, factor, 0, 0, 1, 0)`.
pub fn shear_x(img: &mut RgbImage, factor: f64, filter: Interpolation, scratch: &mut RgbImage) {
    affine(
        img,
        [1.0, factor, 0.0, 0.0, 1.0, 0.0],
        filter,
        FILL,
        scratch,
    );
}

/// timm's `shear_y`: affine `(1, 0, 0, factor, 1, 0)`.
pub fn shear_y(img: &mut RgbImage, factor: f64, filter: Interpolation, scratch: &mut RgbImage) {
    affine(
        img,
        [1.0, 0.0, 0.0, factor, 1.0, 0.0],
        filter,
        FILL,
        scratch,
    );
}

/// timm's `translate_x_rel`: shift by `pct` of the width (not rounded).
pub fn translate_x_rel(
    img: &mut RgbImage,
    pct: f64,
    filter: Interpolation,
    scratch: &mut RgbImage,
) {
    let pixels = pct * f64::from(img.width);
    affine(
        img,
        [1.0, 0.0, pixels, 0.0, 1.0, 0.0],
        filter,
        FILL,
        scratch,
    );
}

/// timm's `translate_y_rel`: shift by `pct` of the height (not rounded).
pub fn translate_y_rel(
    img: &mut RgbImage,
    pct: f64,
    filter: Interpolation,
    scratch: &mut RgbImage,
) {
    let pixels = pct * f64::from(img.height);
    affine(
        img,
        [1.0, 0.0, 0.0, 0.0, 1.0, pixels],
        filter,
        FILL,
        scratch,
    );
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn round15_is_pythons_round() {
        // Values checked with CPython: round(x, 15).
        assert_eq!(round15(0.9335804264972017), 0.933580426497202);
        assert_eq!(round15(-0.3583679495453003), -0.3583679495453);
        assert_eq!(round15(1.0), 1.0);
    }

    #[test]
    fn the_interior_path_gives_the_general_samplers_bytes() {
        let (w, h) = (37u32, 29u32);
        let src = RgbImage {
            width: w,
            height: h,
            pixels: (0..w * h * 3).map(|i| (i * 97 % 251) as u8).collect(),
        };
        let mut scratch = RgbImage::default();
        let mut interior = 0;
        // Rotations, shears and translations by odd amounts, as RandAugment draws them.
        let matrices = [
            [0.93, -0.36, 7.3, 0.36, 0.93, -5.1],
            [1.0, 0.27, -3.9, 0.0, 1.0, 0.0],
            [1.0, 0.0, 0.0, -0.19, 1.0, 2.7],
            [1.0, 0.0, 4.37, 0.0, 1.0, -2.81],
        ];
        for m in matrices {
            for f in [Interpolation::Bilinear, Interpolation::Bicubic] {
                let mut fast = src.clone();
                affine(&mut fast, m, f, FILL, &mut scratch);
                for y in 0..h as usize {
                    for x in 0..w as usize {
                        let (u, v) = (x as f64 + 0.5, y as f64 + 0.5);
                        let (xin, yin) = (m[0] * u + m[1] * v + m[2], m[3] * u + m[4] * v + m[5]);
                        let mut want = [0u8; 3];
                        if !sample(&src, xin, yin, f, &mut want) {
                            want = FILL;
                        }
                        let mut probe = [0u8; 3];
                        interior += usize::from(sample_interior(&src, xin, yin, f, &mut probe));
                        let at = (y * w as usize + x) * 3;
                        assert_eq!(fast.pixels[at..at + 3], want, "{m:?} {f:?} at ({x}, {y})");
                    }
                }
            }
        }
        // Both paths were exercised.
        assert!(
            interior > 4000 && interior < 8 * (w * h) as usize,
            "{interior}"
        );
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_and_portable_samplers_give_the_same_bytes() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: only the portable samplers run here");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut scratch = RgbImage::default();
        for _ in 0..60 {
            let (w, h) = (rng.random_range(1..90u32), rng.random_range(1..90u32));
            // Hard edges (0 and 255 next to each other) make the cubic overshoot and clip.
            let src = RgbImage {
                width: w,
                height: h,
                pixels: (0..w * h * 3)
                    .map(|_| match rng.random_range(0..4) {
                        0 => 0,
                        1 => 255,
                        _ => rng.random(),
                    })
                    .collect(),
            };
            let angle: f64 = rng.random_range(-30.0..30.0f64).to_radians();
            let (shift, factor) = (rng.random_range(-9.0..9.0), rng.random_range(-0.3..0.3));
            // General matrices, and the shears and translations RandAugment makes, whose
            // points fall on whole rows or columns (a path of their own).
            let m = match rng.random_range(0..5) {
                0 => [1.0, factor, 0.0, 0.0, 1.0, 0.0],
                1 => [1.0, 0.0, 0.0, factor, 1.0, 0.0],
                2 => [1.0, 0.0, shift, 0.0, 1.0, 0.0],
                3 => [1.0, 0.0, 0.0, 0.0, 1.0, shift],
                _ => [
                    angle.cos(),
                    -angle.sin() + factor,
                    shift,
                    angle.sin(),
                    angle.cos() - factor,
                    rng.random_range(-9.0..9.0),
                ],
            };
            for f in [Interpolation::Bilinear, Interpolation::Bicubic] {
                let (mut simd, mut portable) = (src.clone(), src.clone());
                affine_with(&mut simd, m, f, FILL, &mut scratch, CpuExt::detect());
                affine_with(&mut portable, m, f, FILL, &mut scratch, CpuExt::NONE);
                assert!(simd == portable, "{w}x{h} {m:?} {f:?}");
            }
        }
    }

    #[test]
    fn identity_matrix_keeps_the_image() {
        let mut img = RgbImage {
            width: 5,
            height: 4,
            pixels: (0..60).map(|i| (i * 13 % 256) as u8).collect(),
        };
        let orig = img.clone();
        let mut scratch = RgbImage::default();
        for f in [Interpolation::Bilinear, Interpolation::Bicubic] {
            affine(
                &mut img,
                [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                f,
                FILL,
                &mut scratch,
            );
            assert_eq!(img, orig);
        }
    }
}
