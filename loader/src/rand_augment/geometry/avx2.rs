/*!
The interior samplers of Pillow's affine transform with AVX2: the same f64 operations in the
same order as `super::sample_interior`, so the same bytes, several lanes at a time.

Bicubic: the twelve source bytes of each of the four rows are transposed so that one 256-bit
register holds one (tap, channel) for all four rows; the horizontal cubic then runs on the four
rows at once, a 4 x 4 transpose turns rows into lanes, and the vertical cubic runs on the three
channels at once. Bilinear: one register per corner holds the three channels.
*/

use std::arch::x86_64::{
    __m128i, __m256d, _mm_cvtepu8_epi32, _mm_cvtsi32_si128, _mm_cvtsi128_si32, _mm_loadu_si128,
    _mm_packs_epi32, _mm_packus_epi16, _mm_shuffle_epi32, _mm_unpackhi_epi8, _mm_unpackhi_epi16,
    _mm_unpacklo_epi8, _mm_unpacklo_epi16, _mm256_add_pd, _mm256_cvtepi32_pd, _mm256_cvttpd_epi32,
    _mm256_max_pd, _mm256_min_pd, _mm256_mul_pd, _mm256_permute2f128_pd, _mm256_set1_pd,
    _mm256_setzero_pd, _mm256_sub_pd, _mm256_unpackhi_pd, _mm256_unpacklo_pd,
};

use super::floor_c;
use crate::crop::Interpolation;
use crate::decode::RgbImage;

/// Bytes one load reads from a row (four RGB pixels use 12 of them).
const LOAD: usize = 16;

/// `super::cubic` on four lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn cubic(v1: __m256d, v2: __m256d, v3: __m256d, v4: __m256d, d: __m256d) -> __m256d {
    let p1 = v2;
    // -v1 + v3 is v3 - v1 exactly (IEEE subtraction is addition of the negation).
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
    // With a zero fraction a cubic is its second tap exactly (`v2 + 0 * (...)`): shears and
    // translations, whose points fall on whole source rows or columns, interpolate in one
    // direction only.
    if dy == 0.0 {
        let tap = |k: usize| pixel(block, stride + 3 * k);
        let (v1, v2, v3, v4) = (tap(0), tap(1), tap(2), tap(3));
        store_rgb(cubic(v1, v2, v3, v4, _mm256_set1_pd(dx)), out);
        return true;
    }
    if dx == 0.0 {
        let tap = |r: usize| pixel(block, r * stride + 3);
        let (v1, v2, v3, v4) = (tap(0), tap(1), tap(2), tap(3));
        store_rgb(cubic(v1, v2, v3, v4, _mm256_set1_pd(dy)), out);
        return true;
    }
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
    // A zero fraction makes a lerp its first end exactly (`a + (b - a) * 0`).
    if dy == 0.0 {
        store_rgb(lerp(pixel(block, 0), pixel(block, 3), dx), out);
        return true;
    }
    if dx == 0.0 {
        store_rgb(lerp(pixel(block, 0), pixel(block, stride), dy), out);
        return true;
    }
    let (tl, tr) = (pixel(block, 0), pixel(block, 3));
    let (bl, br) = (pixel(block, stride), pixel(block, stride + 3));
    let (v1, v2) = (lerp(tl, tr, dx), lerp(bl, br, dx));
    store_rgb(lerp(v1, v2, dy), out);
    true
}

/// The rows of `super::affine` with the AVX2 interior samplers; `scratch` holds the source.
#[target_feature(enable = "avx2")]
pub(super) fn affine_rows(
    img: &mut RgbImage,
    scratch: &RgbImage,
    m: [f64; 6],
    filter: Interpolation,
    fill: [u8; 3],
) {
    let w = img.width as usize;
    for (y, row) in img.pixels.chunks_exact_mut(w * 3).enumerate() {
        let v = y as f64 + 0.5;
        let (bv, ev) = (m[1] * v, m[4] * v);
        for (x, out) in row.chunks_exact_mut(3).enumerate() {
            let u = x as f64 + 0.5;
            let xin = m[0] * u + bv + m[2];
            let yin = m[3] * u + ev + m[5];
            let fast = match filter {
                Interpolation::Bilinear => bilinear_interior(scratch, xin, yin, out),
                Interpolation::Bicubic => bicubic_interior(scratch, xin, yin, out),
            };
            if !fast && !super::sample_any(scratch, xin, yin, filter, out) {
                out.copy_from_slice(&fill);
            }
        }
    }
}
