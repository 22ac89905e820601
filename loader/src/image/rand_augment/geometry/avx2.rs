/*!
The interior samplers of Pillow's affine transform with AVX2: the same f64 operations in the
same order as `super::sample_interior`, so the same bytes, several lanes at a time.

Bicubic: the twelve source bytes of each of the four rows are transposed so that one 256-bit
register holds one (tap, channel) for all four rows; the horizontal cubic then runs on the four
rows at once, a 4 x 4 transpose turns rows into lanes, and the vertical cubic runs on the three
channels at once. Bilinear: one register per corner holds the three channels.

[`affine_rows`] also has kernels of its own for the matrices of ShearX, TranslateX and
TranslateY, whose points fall on whole source rows or columns (see there).
*/

use std::arch::x86_64::*;

use super::floor_c;
use crate::image::decode::RgbImage;
use crate::image::interpolation::Interpolation;

/// Bytes one load reads from a row (four RGB pixels use 12 of them).
const LOAD: usize = 16;

/// `super::cubic` on four lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn cubic(v1: __m256d, v2: __m256d, v3: __m256d, v4: __m256d, d: __m256d) -> __m256d {
    let p1 = v2;
    // -v1 + v3 is v3 - v1 exactly (IEEE subtraction is addition of the negation); likewise
    // -v1 + v2 in p4.
    let p2 = _mm256_sub_pd(v3, v1);
    let two = _mm256_set1_pd(2.0);
    let p3 = _mm256_sub_pd(
        _mm256_add_pd(_mm256_mul_pd(two, _mm256_sub_pd(v1, v2)), v3),
        v4,
    );
    let p4 = _mm256_add_pd(_mm256_sub_pd(_mm256_sub_pd(v2, v1), v3), v4);
    _mm256_add_pd(
        p1,
        _mm256_mul_pd(
            d,
            _mm256_add_pd(
                p2,
                _mm256_mul_pd(d, _mm256_add_pd(p3, _mm256_mul_pd(d, p4))),
            ),
        ),
    )
}

/// The four bytes in 32-bit lane `LANE` of `v` as four f64 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn lane_to_f64<const LANE: i32>(v: __m128i) -> __m256d {
    _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_shuffle_epi32::<LANE>(v)))
}

/// The pixel at byte `offset` of `block` as f64 lanes [R, G, B, next byte].
#[inline]
#[target_feature(enable = "avx2")]
fn pixel(block: &[u8], offset: usize) -> __m256d {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&block[offset..offset + 4]);
    let v = _mm_cvtsi32_si128(i32::from_le_bytes(bytes));
    _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(v))
}

/// Three f64 lanes (the fourth ignored) to three bytes: Pillow's clip to [0, 255] and
/// truncation (`v <= 0` gives 0, `v >= 255` gives 255).
#[inline]
#[target_feature(enable = "avx2")]
fn store_rgb(v: __m256d, out: &mut [u8]) {
    let v = _mm256_min_pd(_mm256_max_pd(v, _mm256_setzero_pd()), _mm256_set1_pd(255.0));
    let i = _mm256_cvttpd_epi32(v);
    let bytes = _mm_packus_epi16(_mm_packs_epi32(i, i), i);
    out.copy_from_slice(&_mm_cvtsi128_si32(bytes).to_le_bytes()[..3]);
}

/// `super::sample_interior` for the bicubic filter, or false where it would return false or
/// where a 16-byte load would leave the image's buffer (the caller then takes the scalar
/// path).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn bicubic_interior(src: &RgbImage, xin: f64, yin: f64, out: &mut [u8]) -> bool {
    let (w, h) = (src.width as usize, src.height as usize);
    let (xin, yin) = (xin - 0.5, yin - 0.5);
    let (x, y) = (floor_c(xin), floor_c(yin));
    let (dx, dy) = (xin - x as f64, yin - y as f64);
    let (x, y) = (x - 1, y - 1);
    if x < 0 || y < 0 || x as usize + 3 >= w || y as usize + 3 >= h {
        return false;
    }
    let stride = w * 3;
    let at = y as usize * stride + x as usize * 3;
    let Some(block) = src.pixels.get(at..at + 3 * stride + LOAD) else {
        return false;
    };
    let row = |r: usize| {
        let bytes = &block[r * stride..][..LOAD];
        // SAFETY: `bytes` is 16 readable bytes; the load is unaligned.
        unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
    };
    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
    // 32-bit lane j of c[j / 4] holds byte j of rows 0..3.
    let (a, b) = (_mm_unpacklo_epi8(r0, r1), _mm_unpacklo_epi8(r2, r3));
    let (a2, b2) = (_mm_unpackhi_epi8(r0, r1), _mm_unpackhi_epi8(r2, r3));
    let c0 = _mm_unpacklo_epi16(a, b);
    let c1 = _mm_unpackhi_epi16(a, b);
    let c2 = _mm_unpacklo_epi16(a2, b2);
    // Byte 3k + channel is tap k of that channel.
    let dxv = _mm256_set1_pd(dx);
    let red = cubic(
        lane_to_f64::<0>(c0),
        lane_to_f64::<3>(c0),
        lane_to_f64::<2>(c1),
        lane_to_f64::<1>(c2),
        dxv,
    );
    let green = cubic(
        lane_to_f64::<1>(c0),
        lane_to_f64::<0>(c1),
        lane_to_f64::<3>(c1),
        lane_to_f64::<2>(c2),
        dxv,
    );
    let blue = cubic(
        lane_to_f64::<2>(c0),
        lane_to_f64::<1>(c1),
        lane_to_f64::<0>(c2),
        lane_to_f64::<3>(c2),
        dxv,
    );
    // Rows to lanes: t[r] = [red[r], green[r], blue[r], blue[r]].
    let u0 = _mm256_unpacklo_pd(red, green);
    let u1 = _mm256_unpackhi_pd(red, green);
    let u2 = _mm256_unpacklo_pd(blue, blue);
    let u3 = _mm256_unpackhi_pd(blue, blue);
    let t0 = _mm256_permute2f128_pd::<0x20>(u0, u2);
    let t1 = _mm256_permute2f128_pd::<0x20>(u1, u3);
    let t2 = _mm256_permute2f128_pd::<0x31>(u0, u2);
    let t3 = _mm256_permute2f128_pd::<0x31>(u1, u3);
    store_rgb(cubic(t0, t1, t2, t3, _mm256_set1_pd(dy)), out);
    true
}

/// `super::sample_interior` for the bilinear filter, with the same fallbacks as
/// [`bicubic_interior`].
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn bilinear_interior(src: &RgbImage, xin: f64, yin: f64, out: &mut [u8]) -> bool {
    let (w, h) = (src.width as usize, src.height as usize);
    let (xin, yin) = (xin - 0.5, yin - 0.5);
    let (x, y) = (floor_c(xin), floor_c(yin));
    let (dx, dy) = (xin - x as f64, yin - y as f64);
    if x < 0 || y < 0 || x as usize + 1 >= w || y as usize + 1 >= h {
        return false;
    }
    let stride = w * 3;
    let at = y as usize * stride + x as usize * 3;
    let Some(block) = src.pixels.get(at..at + stride + LOAD) else {
        return false;
    };
    let lerp = |a: __m256d, b: __m256d, d: f64| {
        _mm256_add_pd(a, _mm256_mul_pd(_mm256_sub_pd(b, a), _mm256_set1_pd(d)))
    };
    let (tl, tr) = (pixel(block, 0), pixel(block, 3));
    let (bl, br) = (pixel(block, stride), pixel(block, stride + 3));
    let (v1, v2) = (lerp(tl, tr, dx), lerp(bl, br, dx));
    store_rgb(lerp(v1, v2, dy), out);
    true
}

/// The rows of `super::affine` with the AVX2 samplers; `scratch` holds the source.
///
/// Two shapes of matrix get kernels of their own. Where `m[3..6]` is `(0, 1, 0)` (ShearX,
/// TranslateXRel) every output row reads its own source row only: `yin = v` exactly, so the
/// vertical fraction is zero and a cubic (or lerp) at a zero fraction is exactly its tap on
/// that row (`v2 + 0 * (...)`). Where the matrix is `(1, 0, 0, 0, 1, t)` (TranslateYRel) every
/// output row reads the same rows at the same fraction for every column (`xin = u` exactly,
/// a zero horizontal fraction). Four output pixels, or eight bytes, then go through one set
/// of registers.
#[target_feature(enable = "avx2")]
pub(super) fn affine_rows(
    img: &mut RgbImage,
    scratch: &RgbImage,
    m: [f64; 6],
    filter: Interpolation,
    fill: [u8; 3],
) {
    let w = img.width as usize;
    let along_rows = m[3] == 0.0 && m[4] == 1.0 && m[5] == 0.0;
    let shifted_rows = m[..5] == [1.0, 0.0, 0.0, 0.0, 1.0];
    for (y, row) in img.pixels.chunks_exact_mut(w * 3).enumerate() {
        if shifted_rows && shifted_row(row, scratch, m, y, filter, fill) {
            continue;
        }
        let mut x = 0;
        if along_rows {
            while x + 4 <= w {
                if !four_along_row(&mut row[x * 3..x * 3 + 12], scratch, m, x, y, filter, fill) {
                    for i in x..x + 4 {
                        one_pixel(&mut row[i * 3..i * 3 + 3], scratch, m, i, y, filter, fill);
                    }
                }
                x += 4;
            }
        }
        for (i, out) in row.chunks_exact_mut(3).enumerate().skip(x) {
            one_pixel(out, scratch, m, i, y, filter, fill);
        }
    }
}

/// Output pixel (`x`, `y`) by the per-pixel samplers (the general path).
#[inline]
#[target_feature(enable = "avx2")]
fn one_pixel(
    out: &mut [u8],
    scratch: &RgbImage,
    m: [f64; 6],
    x: usize,
    y: usize,
    filter: Interpolation,
    fill: [u8; 3],
) {
    let (u, v) = (x as f64 + 0.5, y as f64 + 0.5);
    // Pillow's `a0·u + a1·v + a2`, left to right: the products are the same numbers whether
    // computed per pixel or per row.
    let xin = m[0] * u + m[1] * v + m[2];
    let yin = m[3] * u + m[4] * v + m[5];
    let fast = match filter {
        Interpolation::Bilinear => bilinear_interior(scratch, xin, yin, out),
        Interpolation::Bicubic => bicubic_interior(scratch, xin, yin, out),
    };
    if !fast && !super::sample_any(scratch, xin, yin, filter, out) {
        out.copy_from_slice(&fill);
    }
}

/// Output pixels `x .. x + 4` of row `y` (into `out`, 12 bytes) for a matrix whose rows read
/// their own source row, when the four points are inside, their taps need no clamping and
/// fall on consecutive source pixels, or when all four are outside (the fill); false (nothing
/// written) otherwise.
// ~100 lines on purpose: one AVX2 kernel, its loads, multiplies and stores in the order the
// CPU runs them; split, the pieces would pass `__m256i` values through calls the compiler
// may not inline across `target_feature`, and the portable code in `mod.rs` is its readable
// reference (the tests hold the two byte for byte equal).
#[inline]
#[target_feature(enable = "avx2")]
fn four_along_row(
    out: &mut [u8],
    src: &RgbImage,
    m: [f64; 6],
    x: usize,
    y: usize,
    filter: Interpolation,
    fill: [u8; 3],
) -> bool {
    let w = src.width as usize;
    let v = y as f64 + 0.5;
    // The same operations as `one_pixel`, four lanes at once.
    let u = _mm256_add_pd(
        _mm256_cvtepi32_pd(_mm_add_epi32(
            _mm_set1_epi32(x as i32),
            _mm_setr_epi32(0, 1, 2, 3),
        )),
        _mm256_set1_pd(0.5),
    );
    let xin = _mm256_add_pd(
        _mm256_add_pd(
            _mm256_mul_pd(_mm256_set1_pd(m[0]), u),
            _mm256_set1_pd(m[1] * v),
        ),
        _mm256_set1_pd(m[2]),
    );
    let xs = _mm256_sub_pd(xin, _mm256_set1_pd(0.5));
    let floor = _mm256_floor_pd(xs);
    let dx = _mm256_sub_pd(xs, floor);
    // Every point inside the image (`0 <= xin < w`); then the taps' columns.
    let inside = _mm256_and_pd(
        _mm256_cmp_pd::<_CMP_GE_OQ>(xin, _mm256_setzero_pd()),
        _mm256_cmp_pd::<_CMP_LT_OQ>(xin, _mm256_set1_pd(w as f64)),
    );
    match _mm256_movemask_pd(inside) {
        0b1111 => {}
        0 => {
            // All four outside (a translation's or shear's uncovered strip).
            for px in out.chunks_exact_mut(3) {
                px.copy_from_slice(&fill);
            }
            return true;
        }
        _ => return false,
    }
    let mut cols = [0i32; 4];
    // SAFETY: `cols` is 16 writable bytes; the store is unaligned.
    unsafe { _mm_storeu_si128(cols.as_mut_ptr().cast(), _mm256_cvttpd_epi32(floor)) };
    if cols != [cols[0], cols[0] + 1, cols[0] + 2, cols[0] + 3] {
        return false;
    }
    let (first, last) = match filter {
        Interpolation::Bilinear => (cols[0], cols[3] + 1),
        Interpolation::Bicubic => (cols[0] - 1, cols[3] + 2),
    };
    if first < 0 || last as usize >= w {
        return false;
    }
    let at = y * w * 3 + first as usize * 3;
    // Tap k of the four pixels is the 12 bytes from `3 k` on; loads read 16.
    let taps = match filter {
        Interpolation::Bilinear => 2,
        Interpolation::Bicubic => 4,
    };
    let Some(block) = src.pixels.get(at..at + 3 * (taps - 1) + 16) else {
        return false;
    };
    // Per tap, the four pixels' values of one channel in four lanes.
    let planes = |k: usize| {
        let bytes = &block[3 * k..][..16];
        // SAFETY: `bytes` is 16 readable bytes; the load is unaligned.
        let v = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
        let v = _mm_shuffle_epi8(
            v,
            _mm_setr_epi8(0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11, -1, -1, -1, -1),
        );
        [
            _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(v)),
            _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_srli_si128::<4>(v))),
            _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_srli_si128::<8>(v))),
        ]
    };
    let rgb: [__m256d; 3] = match filter {
        Interpolation::Bilinear => {
            let (a, b) = (planes(0), planes(1));
            std::array::from_fn(|c| {
                _mm256_add_pd(a[c], _mm256_mul_pd(_mm256_sub_pd(b[c], a[c]), dx))
            })
        }
        Interpolation::Bicubic => {
            let (t0, t1, t2, t3) = (planes(0), planes(1), planes(2), planes(3));
            std::array::from_fn(|c| cubic(t0[c], t1[c], t2[c], t3[c], dx))
        }
    };
    store_planes(rgb, out);
    true
}

/// Three channel registers of four pixels each, clipped and truncated as Pillow, to 12
/// interleaved RGB bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn store_planes(rgb: [__m256d; 3], out: &mut [u8]) {
    let [r, g, b] = rgb.map(|v| {
        _mm256_cvttpd_epi32(_mm256_min_pd(
            _mm256_max_pd(v, _mm256_setzero_pd()),
            _mm256_set1_pd(255.0),
        ))
    });
    // [R0..R3 G0..G3 B0..B3 B0..B3] as bytes, then interleaved.
    let bytes = _mm_packus_epi16(_mm_packs_epi32(r, g), _mm_packs_epi32(b, b));
    let rgb = _mm_shuffle_epi8(
        bytes,
        _mm_setr_epi8(0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1),
    );
    let mut tmp = [0u8; 16];
    // SAFETY: `tmp` is 16 writable bytes; the store is unaligned.
    unsafe { _mm_storeu_si128(tmp.as_mut_ptr().cast(), rgb) };
    out.copy_from_slice(&tmp[..12]);
}

/// Output row `y` (into `row`) of a vertical translation: every byte of it is the same
/// combination of the same source rows. False (nothing written) where the taps' rows need
/// clamping; a row whose point lies outside the image is the fill.
// ~80 lines on purpose, as `four_along_row`: one AVX2 kernel, read against `mod.rs`.
#[inline]
#[target_feature(enable = "avx2")]
fn shifted_row(
    row: &mut [u8],
    src: &RgbImage,
    m: [f64; 6],
    y: usize,
    filter: Interpolation,
    fill: [u8; 3],
) -> bool {
    let (w, h) = (src.width as usize, src.height as usize);
    // `one_pixel`'s yin, which does not depend on u here (`0 * u` is zero).
    let yin = m[3] * 0.5 + m[4] * (y as f64 + 0.5) + m[5];
    if yin < 0.0 || yin >= h as f64 {
        for px in row.chunks_exact_mut(3) {
            px.copy_from_slice(&fill);
        }
        return true;
    }
    let ys = yin - 0.5;
    let fy = floor_c(ys);
    let dy = ys - fy as f64;
    let (first, taps) = match filter {
        Interpolation::Bilinear => (fy, 2),
        Interpolation::Bicubic => (fy - 1, 4),
    };
    if first < 0 || first as usize + taps > h {
        return false;
    }
    let stride = w * 3;
    let rows: [&[u8]; 4] = std::array::from_fn(|k| {
        let r = first as usize + k.min(taps - 1);
        &src.pixels[r * stride..(r + 1) * stride]
    });
    let d = _mm256_set1_pd(dy);
    let mut chunks = row.chunks_exact_mut(8);
    for (c, out) in (&mut chunks).enumerate() {
        // Eight bytes of each tap row as two registers of four f64.
        let tap = |k: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&rows[k][c * 8..c * 8 + 8]);
            let v = _mm_cvtsi64_si128(i64::from_le_bytes(bytes));
            (
                _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(v)),
                _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_srli_si128::<4>(v))),
            )
        };
        let (low, high) = match filter {
            Interpolation::Bilinear => {
                let ((a0, a1), (b0, b1)) = (tap(0), tap(1));
                let lerp = |a: __m256d, b: __m256d| {
                    _mm256_add_pd(a, _mm256_mul_pd(_mm256_sub_pd(b, a), d))
                };
                (lerp(a0, b0), lerp(a1, b1))
            }
            Interpolation::Bicubic => {
                let (t0, t1, t2, t3) = (tap(0), tap(1), tap(2), tap(3));
                (
                    cubic(t0.0, t1.0, t2.0, t3.0, d),
                    cubic(t0.1, t1.1, t2.1, t3.1, d),
                )
            }
        };
        let [low, high] = [low, high].map(|v| {
            _mm256_cvttpd_epi32(_mm256_min_pd(
                _mm256_max_pd(v, _mm256_setzero_pd()),
                _mm256_set1_pd(255.0),
            ))
        });
        let bytes = _mm_packus_epi16(_mm_packs_epi32(low, high), low);
        out.copy_from_slice(&_mm_cvtsi128_si64(bytes).to_le_bytes());
    }
    // The last bytes one at a time, with the scalar samplers' arithmetic.
    let done = row.len() / 8 * 8;
    for (i, out) in row[done..].iter_mut().enumerate() {
        let t = |k: usize| f64::from(rows[k][done + i]);
        let v = match filter {
            Interpolation::Bilinear => t(0) + (t(1) - t(0)) * dy,
            Interpolation::Bicubic => super::cubic(t(0), t(1), t(2), t(3), dy),
        };
        // As the samplers clip: the saturating cast is 0 at or below 0, 255 at or above 255.
        *out = v as u8;
    }
    true
}
