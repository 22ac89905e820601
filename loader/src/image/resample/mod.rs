/*!
Pillow's antialiased resize, bit for bit (`libImaging/Resample.c`, docs/recipe.md §2.2).

timm resizes every crop with Pillow, and Pillow's filter is not what other libraries compute:
its support grows with the downscale factor (antialiasing), its weights are rounded to 22-bit
fixed point (half away from zero), the horizontal pass runs first into a uint8 image, and a pass
is skipped when its dimension does not change. fast_image_resize rounds its weights
differently and can be off by one level (see the tests); this module reproduces Pillow exactly.
Its portable passes are the reference; on x86-64 CPUs with AVX2 the horizontal pass runs
`avx2`'s kernel and the vertical pass is compiled for AVX2, and tests hold both to the same
bytes (`cargo run --release -p loader --example resize_times` times them side by side).

The crop is not copied: the horizontal pass reads the crop box straight out of the decoded
image, which gives the same result as Pillow's `crop()` followed by `resize()`.
*/

use crate::image::cpu::CpuExt;
use crate::image::crop::CropBox;
use crate::image::interpolation::Interpolation;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Fractional bits of Pillow's fixed-point weights (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's filter kernels and their support at scale 1.
fn kernel(filter: Interpolation) -> (fn(f64) -> f64, f64) {
    fn bilinear(x: f64) -> f64 {
        let x = x.abs();
        if x < 1.0 { 1.0 - x } else { 0.0 }
    }
    fn bicubic(x: f64) -> f64 {
        // Keys cubic with a = -0.5, written as Pillow writes it.
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    }
    match filter {
        Interpolation::Bilinear => (bilinear, 1.0),
        Interpolation::Bicubic => (bicubic, 2.0),
    }
}

/// Fixed-point weights of one pass: for output index `o`, input indices
/// `first[o] .. first[o] + count[o]` with weights `weights[o * ksize ..]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Coefficients {
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for input range
    /// `[0, in_size)` resampled to `out_size`.
    fn compute(&mut self, in_size: usize, out_size: usize, filter: Interpolation) {
        let (k, base_support) = kernel(filter);
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = base_support * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        self.ksize = ksize;
        self.first.clear();
        self.count.clear();
        self.weights.clear();
        self.weights.resize(out_size * ksize, 0);
        let mut prekk = vec![0f64; ksize];
        for o in 0..out_size {
            let center = (o as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let count = xmax.saturating_sub(xmin);
            let mut total = 0.0;
            for (x, w) in prekk.iter_mut().enumerate().take(count) {
                *w = k((x as f64 + xmin as f64 - center + 0.5) * ss);
                total += *w;
            }
            let row = &mut self.weights[o * ksize..(o + 1) * ksize];
            for (dst, w) in row.iter_mut().zip(&prekk).take(count) {
                let w = if total != 0.0 { w / total } else { *w };
                let fixed = w * f64::from(1u32 << PRECISION_BITS);
                // Half away from zero, as Pillow's normalize_coeffs_8bpc.
                *dst = if w < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            self.first.push(xmin);
            self.count.push(count);
        }
    }
}

impl Coefficients {
    /// Reverses the order of the outputs: a pass with these weights writes the columns (or
    /// rows) of the unmirrored pass back to front, the same numbers in mirrored places.
    fn mirror(&mut self) {
        let n = self.first.len();
        self.first.reverse();
        self.count.reverse();
        for o in 0..n / 2 {
            let (head, tail) = self.weights.split_at_mut((n - 1 - o) * self.ksize);
            head[o * self.ksize..][..self.ksize].swap_with_slice(&mut tail[..self.ksize]);
        }
    }
}

/// Pillow's `clip8`: the accumulator back to a pixel.
#[inline]
fn clip8(acc: i32) -> u8 {
    if acc >= (1 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// A borrowed RGB image region: `width` x `height` pixels starting at column `x0`, row `y0` of
/// a buffer with `stride` bytes per row.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [u8],
    stride: usize,
    x0: usize,
    y0: usize,
    width: usize,
}

impl View<'_> {
    #[inline]
    fn row(&self, y: usize) -> &[u8] {
        &self.data[(self.y0 + y) * self.stride + self.x0 * 3..][..self.width * 3]
    }
}

/// Horizontal pass: rows `rows` of `src` into consecutive rows of `dst` (`h.first.len()`
/// pixels wide).
fn horizontal_pass(src: View<'_>, rows: std::ops::Range<usize>, h: &Coefficients, dst: &mut [u8]) {
    let out_width = h.first.len();
    for (line, dst_line) in rows.zip(dst.chunks_exact_mut(out_width * 3)) {
        horizontal_row(src.row(line), h, dst_line);
    }
}

/// One row of the horizontal pass: Pillow's per-pixel loop.
fn horizontal_row(line: &[u8], h: &Coefficients, dst_line: &mut [u8]) {
    for (o, px) in dst_line.chunks_exact_mut(3).enumerate() {
        let (first, count) = (h.first[o], h.count[o]);
        let weights = &h.weights[o * h.ksize..][..count];
        // One slice per output pixel, then no bounds checks in the taps.
        let taps = &line[first * 3..(first + count) * 3];
        let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
        for (p, &k) in taps.chunks_exact(3).zip(weights) {
            acc[0] = acc[0].wrapping_add(i32::from(p[0]).wrapping_mul(k));
            acc[1] = acc[1].wrapping_add(i32::from(p[1]).wrapping_mul(k));
            acc[2] = acc[2].wrapping_add(i32::from(p[2]).wrapping_mul(k));
        }
        px[0] = clip8(acc[0]);
        px[1] = clip8(acc[1]);
        px[2] = clip8(acc[2]);
    }
}

/// Vertical pass: every column of `src` into `dst` (`v.first.len()` rows); the view's row 0 is
/// source row `shift` of the coefficients. Whole rows are accumulated at once in `acc` (the
/// same sums in the same order as Pillow's per-pixel loop, laid out so the compiler
/// vectorises them).
fn vertical_pass(
    src: View<'_>,
    shift: usize,
    v: &Coefficients,
    dst: &mut [u8],
    acc: &mut Vec<i32>,
) {
    let row_bytes = src.width * 3;
    for (o, out_row) in dst.chunks_exact_mut(row_bytes).enumerate() {
        let weights = &v.weights[o * v.ksize..][..v.count[o]];
        let base = v.first[o] - shift;
        acc.clear();
        acc.resize(row_bytes, 1i32 << (PRECISION_BITS - 1));
        for (i, &k) in weights.iter().enumerate() {
            for (a, &p) in acc.iter_mut().zip(src.row(base + i)) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(k));
            }
        }
        for (px, &a) in out_row.iter_mut().zip(acc.iter()) {
            *px = clip8(a);
        }
    }
}

/// A reusable resampler: weights and the intermediate image are kept between calls.
#[derive(Debug, Clone)]
pub struct Resampler {
    /// The kernels' extensions (all give the same bytes).
    kernels: CpuExt,
    horizontal: Coefficients,
    #[cfg(target_arch = "x86_64")]
    packed: avx2::PackedWeights,
    vertical: Coefficients,
    temp: Vec<u8>,
    acc: Vec<i32>,
}

impl Default for Resampler {
    fn default() -> Resampler {
        Resampler::with_kernels(CpuExt::current())
    }
}

impl Resampler {
    /// A resampler with empty buffers, using the fastest kernels this CPU supports.
    pub fn new() -> Resampler {
        Resampler::default()
    }

    /// A resampler that runs the portable reference kernels whatever the CPU: the baseline
    /// the SIMD kernels are tested and timed against.
    pub fn portable() -> Resampler {
        Resampler::with_kernels(CpuExt::NONE)
    }

    fn with_kernels(kernels: CpuExt) -> Resampler {
        Resampler {
            kernels,
            horizontal: Coefficients::default(),
            #[cfg(target_arch = "x86_64")]
            packed: avx2::PackedWeights::default(),
            vertical: Coefficients::default(),
            temp: Vec::new(),
            acc: Vec::new(),
        }
    }

    /// The horizontal pass with this resampler's kernels and current weights.
    fn horizontal_pass(&self, src: View<'_>, rows: std::ops::Range<usize>, dst: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.kernels.has_avx2() {
            // SAFETY: a `CpuExt` with AVX2 is only made on a CPU that has it.
            unsafe { avx2::horizontal_pass(src, rows, &self.horizontal, &self.packed, dst) };
            return;
        }
        horizontal_pass(src, rows, &self.horizontal, dst);
    }

    /// The vertical pass with this resampler's kernels and current weights.
    fn vertical_pass(&mut self, src: View<'_>, shift: usize, dst: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.kernels.has_avx2() {
            // SAFETY: a `CpuExt` with AVX2 is only made on a CPU that has it.
            unsafe { avx2::vertical_pass(src, shift, &self.vertical, dst) };
            return;
        }
        vertical_pass(src, shift, &self.vertical, dst, &mut self.acc);
    }

    /// Resizes `crop` of the RGB image `src` (`src_width` pixels per row) to
    /// `out_width` x `out_height` RGB pixels in `out`, exactly as Pillow's
    /// `img.crop(box).resize((out_width, out_height), filter)`.
    ///
    /// # Panics
    /// If `crop` is empty or does not lie inside `src`, or `out` is shorter than
    /// `out_width * out_height * 3`: callers draw crops inside the image they decoded.
    pub fn resize(
        &mut self,
        src: &[u8],
        src_width: usize,
        crop: CropBox,
        out_size: (usize, usize),
        filter: Interpolation,
        out: &mut [u8],
    ) {
        self.resize_and_flip(src, src_width, crop, out_size, filter, false, out);
    }

    /// [`Resampler::resize`], then, where `flip`, a left-right mirror of the result
    /// (`transpose(FLIP_LEFT_RIGHT)`) at no extra cost: every output column depends on its
    /// own weights only, so the horizontal pass writes its columns in reverse order.
    ///
    /// # Panics
    /// As [`Resampler::resize`].
    // ~90 lines on purpose: the two passes share their scratch buffers and the per-crop
    // coefficients, and read in the order of Pillow's `ImagingResample`
    // (`libImaging/Resample.c`), which is what a reader checks them against.
    #[allow(clippy::too_many_arguments)] // resize's arguments plus the flip, as timm applies them
    pub fn resize_and_flip(
        &mut self,
        src: &[u8],
        src_width: usize,
        crop: CropBox,
        (out_width, out_height): (usize, usize),
        filter: Interpolation,
        flip: bool,
        out: &mut [u8],
    ) {
        let (cw, ch) = (crop.width as usize, crop.height as usize);
        let (left, top) = (crop.left as usize, crop.top as usize);
        assert!(cw > 0 && ch > 0 && out_width > 0 && out_height > 0);
        assert!(left + cw <= src_width && (top + ch) * src_width * 3 <= src.len());
        let out = &mut out[..out_width * out_height * 3];
        let view = View {
            data: src,
            stride: src_width * 3,
            x0: left,
            y0: top,
            width: cw,
        };
        let need_h = out_width != cw;
        let need_v = out_height != ch;
        // Pillow (since 10.x) runs the vertical pass first when the height shrinks by more
        // than twice as many pixels as the width does, which changes the rounding of the
        // intermediate image, so the order is part of the result.
        let shrink_h = ch as i64 - out_height as i64;
        let shrink_w = cw as i64 - out_width as i64;
        let horizontal_first = !(shrink_h > 0 && shrink_h > shrink_w * 2);
        if need_h {
            self.horizontal.compute(cw, out_width, filter);
            if flip {
                self.horizontal.mirror();
            }
            #[cfg(target_arch = "x86_64")]
            if self.kernels.has_avx2() {
                // SAFETY: a `CpuExt` with AVX2 is only made on a CPU that has it.
                unsafe { self.packed.pack(&self.horizontal) };
            }
        }
        if need_v {
            self.vertical.compute(ch, out_height, filter);
        }
        let mut temp = std::mem::take(&mut self.temp);
        match (need_h, need_v, horizontal_first) {
            (false, false, _) => {
                for (r, out_row) in out.chunks_exact_mut(out_width * 3).enumerate() {
                    out_row.copy_from_slice(view.row(r));
                }
            }
            (true, false, _) => self.horizontal_pass(view, 0..ch, out),
            (false, true, _) => self.vertical_pass(view, 0, out),
            (true, true, true) => {
                // Only the rows the vertical pass reads, as Pillow does.
                let v = &self.vertical;
                let first = v.first[0];
                let end = v.first[out_height - 1] + v.count[out_height - 1];
                temp.resize((end - first) * out_width * 3, 0);
                self.horizontal_pass(view, first..end, &mut temp);
                let temp_view = View {
                    data: &temp,
                    stride: out_width * 3,
                    x0: 0,
                    y0: 0,
                    width: out_width,
                };
                self.vertical_pass(temp_view, first, out);
            }
            (true, true, false) => {
                temp.resize(cw * out_height * 3, 0);
                self.vertical_pass(view, 0, &mut temp);
                let temp_view = View {
                    data: &temp,
                    stride: cw * 3,
                    x0: 0,
                    y0: 0,
                    width: cw,
                };
                self.horizontal_pass(temp_view, 0..out_height, out);
            }
        }
        self.temp = temp;
        if flip && !need_h {
            crate::image::flip::flip_horizontal(out, out_width);
        }
    }
}

#[cfg(test)]
mod tests {
    use fast_image_resize::images::{Image, ImageRef};
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::testutil::{case_lines, golden_dir, png};

    fn full(w: u32, h: u32) -> CropBox {
        CropBox {
            top: 0,
            left: 0,
            height: h,
            width: w,
        }
    }

    struct Case {
        name: String,
        input: String,
        crop: CropBox,
        out: (usize, usize),
        filter: Interpolation,
    }

    fn cases() -> Vec<Case> {
        case_lines("cases.txt")
            .into_iter()
            .map(|f| {
                let n = |i: usize| f[i].parse::<u32>().unwrap();
                Case {
                    crop: CropBox {
                        left: n(2),
                        top: n(3),
                        width: n(4),
                        height: n(5),
                    },
                    out: (n(6) as usize, n(7) as usize),
                    filter: filter(&f[8]),
                    name: f[0].clone(),
                    input: f[1].clone(),
                }
            })
            .collect()
    }

    /// A filter name of the case lists.
    pub(crate) fn filter(name: &str) -> Interpolation {
        match name {
            "bilinear" => Interpolation::Bilinear,
            "bicubic" => Interpolation::Bicubic,
            other => panic!("unknown filter {other}"),
        }
    }

    #[test]
    fn equals_pillow_on_every_golden_case() {
        let mut r = Resampler::new();
        let cases = cases();
        assert!(cases.len() >= 10);
        for c in cases {
            let src = png(&golden_dir().join(format!("inputs/{}.png", c.input)));
            let expected = png(&golden_dir().join(format!("expected/{}.png", c.name)));
            assert_eq!((expected.width as usize, expected.height as usize), c.out);
            let mut out = vec![0u8; expected.pixels.len()];
            r.resize(
                &src.pixels,
                src.width as usize,
                c.crop,
                c.out,
                c.filter,
                &mut out,
            );
            let max = out
                .iter()
                .zip(&expected.pixels)
                .map(|(a, b)| a.abs_diff(*b))
                .max();
            assert_eq!(max, Some(0), "{}: differs from Pillow", c.name);
        }
    }

    /// fast_image_resize's result on a golden case (Bilinear, or CatmullRom = Keys a = -0.5),
    /// cropping first as torchvision does (fast_image_resize's own crop option samples pixels
    /// outside the box, like Pillow's `resize(box=...)`, which is not what timm runs).
    fn fast_image_resize(c: &Case, w: usize, src: &[u8]) -> Vec<u8> {
        let b = c.crop;
        let (cw, ch) = (b.width as usize, b.height as usize);
        let mut cropped = Vec::with_capacity(cw * ch * 3);
        for y in 0..ch {
            let start = ((b.top as usize + y) * w + b.left as usize) * 3;
            cropped.extend_from_slice(&src[start..start + cw * 3]);
        }
        let src = ImageRef::new(b.width, b.height, &cropped, PixelType::U8x3).unwrap();
        let mut dst = Image::new(c.out.0 as u32, c.out.1 as u32, PixelType::U8x3);
        let filter = match c.filter {
            Interpolation::Bilinear => FilterType::Bilinear,
            Interpolation::Bicubic => FilterType::CatmullRom,
        };
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
        Resizer::new().resize(&src, &mut dst, &options).unwrap();
        dst.into_vec()
    }

    #[test]
    fn fast_image_resize_is_not_a_substitute_for_pillow_bicubic() {
        // Measured on the golden cases (fast_image_resize 6.1 vs Pillow 13): bilinear is
        // within one level; bicubic differs by up to 19 levels where hard edges overshoot
        // (the two libraries clip and order the passes differently). So the crop resize
        // uses this module's exact kernel, and a SIMD version must be tested against it.
        let mut worst = [0u8; 2];
        for c in cases() {
            let src = png(&golden_dir().join(format!("inputs/{}.png", c.input)));
            let expected = png(&golden_dir().join(format!("expected/{}.png", c.name)));
            let out = fast_image_resize(&c, src.width as usize, &src.pixels);
            let max = out
                .iter()
                .zip(&expected.pixels)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            eprintln!("{}: fast_image_resize max |diff| {max}", c.name);
            let slot = &mut worst[usize::from(c.filter == Interpolation::Bicubic)];
            *slot = (*slot).max(max);
        }
        assert!(worst[0] <= 1, "bilinear: {}", worst[0]);
        assert!(worst[1] > 1, "bicubic now within one level: {}", worst[1]);
    }

    #[test]
    fn every_kernel_equals_the_scalar_reference() {
        // Random images and crops (upscales, downscales up to 400x, crops touching the last
        // row and column, where the SIMD loads fall back to the scalar path, and shapes that
        // run the vertical pass first), busy pixels with hard edges so bicubic overshoots.
        let mut scalar = Resampler::portable();
        let mut fast = Resampler::new();
        assert_eq!(fast.kernels, crate::image::cpu::CpuExt::detect());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut cases = 0;
        for _ in 0..150 {
            let (w, h) = (rng.random_range(1..400u32), rng.random_range(1..400u32));
            let pixels: Vec<u8> = (0..w * h * 3)
                .map(|_| {
                    if rng.random_bool(0.25) {
                        255
                    } else {
                        rng.random()
                    }
                })
                .collect();
            let (width, height) = (rng.random_range(1..=w), rng.random_range(1..=h));
            // A third of the crops touch the last column or row.
            let mut place = |free: u32| {
                if rng.random_bool(1.0 / 3.0) {
                    free
                } else {
                    rng.random_range(0..=free)
                }
            };
            let crop = CropBox {
                left: place(w - width),
                top: place(h - height),
                width,
                height,
            };
            // Some crops keep their width or height, so that one pass is skipped.
            let mut side = |crop: u32| match rng.random_range(0..6) {
                0 => crop as usize,
                _ => rng.random_range(1..260usize),
            };
            let out_size = (side(width), side(height));
            for f in [Interpolation::Bilinear, Interpolation::Bicubic] {
                let mut a = vec![0u8; out_size.0 * out_size.1 * 3];
                let mut b = a.clone();
                scalar.resize(&pixels, w as usize, crop, out_size, f, &mut a);
                fast.resize(&pixels, w as usize, crop, out_size, f, &mut b);
                assert!(a == b, "{w}x{h} {crop:?} -> {out_size:?} {f:?}");
                // The flip folded into the pass is the flip of the result.
                crate::image::flip::flip_horizontal(&mut a, out_size.0);
                for r in [&mut scalar, &mut fast] {
                    r.resize_and_flip(&pixels, w as usize, crop, out_size, f, true, &mut b);
                    assert!(a == b, "flipped: {w}x{h} {crop:?} -> {out_size:?} {f:?}");
                }
                cases += 1;
            }
        }
        assert_eq!(cases, 300);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        let mut c = Coefficients::default();
        for (inp, out) in [(500, 224), (224, 500), (1000, 7), (3, 224)] {
            for f in [Interpolation::Bilinear, Interpolation::Bicubic] {
                c.compute(inp, out, f);
                for o in 0..out {
                    let s: i32 = c.weights[o * c.ksize..][..c.count[o]].iter().sum();
                    assert!(
                        (s - (1 << PRECISION_BITS)).abs() <= c.count[o] as i32,
                        "{s}"
                    );
                    assert!(c.first[o] + c.count[o] <= inp);
                }
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_identity_is_a_copy() {
        let src = vec![77u8; 50 * 40 * 3];
        let mut out = vec![0u8; 224 * 224 * 3];
        let mut r = Resampler::new();
        for f in [Interpolation::Bilinear, Interpolation::Bicubic] {
            r.resize(&src, 50, full(50, 40), (224, 224), f, &mut out);
            assert!(out.iter().all(|&p| p == 77));
        }
        let src: Vec<u8> = (0..30 * 20 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let mut out = vec![0u8; 10 * 5 * 3];
        let crop = CropBox {
            top: 3,
            left: 4,
            height: 5,
            width: 10,
        };
        r.resize(&src, 30, crop, (10, 5), Interpolation::Bicubic, &mut out);
        for y in 0..5 {
            assert_eq!(out[y * 30..(y + 1) * 30], src[(3 + y) * 90 + 12..][..30]);
        }
    }
}
