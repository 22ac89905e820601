/*!
Pillow's two resize passes with AVX2: the same integer sums as the portable passes, so the same
bytes.

The horizontal pass multiplies four taps of one output pixel per instruction:

Pillow's weights have 22 fractional bits, too wide for `vpmaddwd`'s 16-bit lanes, so each
weight `w` is split as `a * 2^15 + b` with `0 <= b < 2^15`, and the pass computes
`2^15 * sum(p * a) + sum(p * b)`. Both sums are exact integers and Pillow's own sum does not
overflow 32 bits (pixels are at most 255 and the weights sum to one), so the result equals the
scalar pass bit for bit whatever the order of the additions; wrapping 32-bit arithmetic keeps
that true even where a partial sum would not fit.

One 256-bit register holds four taps of one output pixel: its low half `[R0 R1 G0 G1 B0 B1 0
0]` as 16-bit lanes, its high half the same for taps 2 and 3, so `vpmaddwd` leaves per-channel
sums of two taps in each half.

The vertical pass keeps the sums of sixteen bytes of an output row in registers while it runs
over the taps (32-bit products, `vpmulld`).
*/

use std::arch::x86_64::{
    __m256i, _mm_cvtsi128_si32, _mm_loadu_si128, _mm_setr_epi8, _mm_shuffle_epi8, _mm_srli_si128,
    _mm_storeu_si128, _mm_unpacklo_epi32, _mm_unpacklo_epi64, _mm256_add_epi32,
    _mm256_broadcastsi128_si256, _mm256_castsi256_si128, _mm256_cvtepu8_epi32,
    _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_mullo_epi32,
    _mm256_packs_epi32, _mm256_packus_epi16, _mm256_permute2x128_si256, _mm256_permute4x64_epi64,
    _mm256_set1_epi32, _mm256_setr_epi8, _mm256_setzero_si256, _mm256_shuffle_epi8,
    _mm256_slli_epi32, _mm256_srai_epi32,
};

use super::{Coefficients, PRECISION_BITS, View};

/// Bits of a weight kept in the low part of the split (`b` above).
const LOW_BITS: i32 = 15;

/// One pass's weights split and laid out for [`horizontal_pass`]: every output pixel gets the
/// same number of groups of four taps (enough for the widest), each group a high and a low
/// register, with zero weights past the pixel's own taps.
#[derive(Debug, Clone, Default)]
pub(super) struct PackedWeights {
    /// Groups of four taps per output pixel.
    groups: usize,
    /// Byte offset of each output pixel's first tap within a source row.
    offsets: Vec<usize>,
    /// `2 * groups` registers per output pixel.
    registers: Vec<__m256i>,
}

impl PackedWeights {
    /// Splits and lays out `c`'s weights.
    #[target_feature(enable = "avx2")]
    pub(super) fn pack(&mut self, c: &Coefficients) {
        let groups = c.count.iter().max().map_or(1, |&n| n.div_ceil(4).max(1));
        self.groups = groups;
        self.offsets.clear();
        self.registers.clear();
        for o in 0..c.first.len() {
            self.offsets.push(c.first[o] * 3);
            let weights = &c.weights[o * c.ksize..][..c.count[o]];
            for g in 0..groups {
                let (mut high, mut low) = ([0i16; 16], [0i16; 16]);
                for t in 0..4 {
                    let w = weights.get(g * 4 + t).copied().unwrap_or(0);
                    // |w| < 2^23, so the high part fits easily; the low part is in [0, 2^15).
                    let (a, b) = ((w >> LOW_BITS) as i16, (w & ((1 << LOW_BITS) - 1)) as i16);
                    let lane = (t / 2) * 8 + t % 2;
                    for channel in 0..3 {
                        high[lane + 2 * channel] = a;
                        low[lane + 2 * channel] = b;
                    }
                }
                for part in [high, low] {
                    // SAFETY: `part` is 32 readable bytes; the load is unaligned.
                    let r = unsafe { _mm256_loadu_si256(part.as_ptr().cast()) };
                    self.registers.push(r);
                }
            }
        }
    }
}

/// Bytes past a group's first tap that one load reads (four RGB pixels use 12 of them).
const LOAD: usize = 16;

/// The high and low sums of one output pixel: `taps` holds the bytes its loads read, from
/// its first tap on, `w` its `2 * groups` weight registers. Per channel, two taps in each
/// 128-bit half.
#[inline]
#[target_feature(enable = "avx2")]
fn pixel_sums(taps: &[u8], w: &[__m256i], groups: usize, shuffle: __m256i) -> (__m256i, __m256i) {
    let (mut high, mut low) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for g in 0..groups {
        let bytes = &taps[g * 12..][..LOAD];
        // SAFETY: `bytes` is 16 readable bytes; the load is unaligned.
        let taps = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
        let taps = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(taps), shuffle);
        high = _mm256_add_epi32(high, _mm256_madd_epi16(taps, w[2 * g]));
        low = _mm256_add_epi32(low, _mm256_madd_epi16(taps, w[2 * g + 1]));
    }
    (high, low)
}

/// Whole sums from high and low parts, rounded and shifted as Pillow's clip8 before
/// saturation: a sum at or below zero shifts to 0 or -1 and one at or above 2^30 to 256 or
/// more, which the packs that follow saturate to 0 and 255.
#[inline]
#[target_feature(enable = "avx2")]
fn finish(high: __m256i, low: __m256i) -> __m256i {
    let sum = _mm256_add_epi32(
        _mm256_add_epi32(_mm256_slli_epi32::<LOW_BITS>(high), low),
        _mm256_set1_epi32(1 << (PRECISION_BITS - 1)),
    );
    _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(sum)
}

/// Horizontal pass, as `super::horizontal_pass`; `packed` holds `h` packed. Rows whose loads
/// would run past the end of `src`'s buffer (the last row or two) take the scalar path.
#[target_feature(enable = "avx2")]
pub(super) fn horizontal_pass(
    src: View<'_>,
    rows: std::ops::Range<usize>,
    h: &Coefficients,
    packed: &PackedWeights,
    dst: &mut [u8],
) {
    // A constant group count lets the compiler unroll the taps: 1 covers bilinear up to a
    // 1.5x reduction and bicubic upscales, 2 and 3 the reductions RandomResizedCrop makes
    // from ImageNet-sized images.
    match packed.groups {
        1 => rows_with::<1>(src, rows, h, packed, dst),
        2 => rows_with::<2>(src, rows, h, packed, dst),
        3 => rows_with::<3>(src, rows, h, packed, dst),
        _ => rows_with::<0>(src, rows, h, packed, dst),
    }
}

/// [`horizontal_pass`] with `G` groups per pixel (0: `packed.groups`, not known at compile
/// time).
#[target_feature(enable = "avx2")]
fn rows_with<const G: usize>(
    src: View<'_>,
    rows: std::ops::Range<usize>,
    h: &Coefficients,
    packed: &PackedWeights,
    dst: &mut [u8],
) {
    let groups = if G == 0 { packed.groups } else { G };
    let out_width = packed.offsets.len();
    // Bytes one pixel's loads span, and past a row's start, over all output pixels.
    let span = (groups - 1) * 12 + LOAD;
    let reach = packed.offsets.iter().max().map_or(0, |&o| o + span);
    let per_pixel = 2 * groups;
    // Byte order within each 128-bit half: taps 0 and 1 (low), 2 and 3 (high) of the group as
    // [R R G G B B 0 0] 16-bit lanes; -1 writes a zero byte.
    let shuffle = _mm256_setr_epi8(
        0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1, //
        6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1,
    );
    let compact = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    for (y, dst_line) in rows.zip(dst.chunks_exact_mut(out_width * 3)) {
        let start = (src.y0 + y) * src.stride + src.x0 * 3;
        let Some(line) = src.data.get(start..start + reach) else {
            super::horizontal_row(src.row(y), h, dst_line);
            continue;
        };
        let sums = |o: usize| {
            let taps = &line[packed.offsets[o]..][..span];
            let w = &packed.registers[o * per_pixel..][..per_pixel];
            pixel_sums(taps, w, groups, shuffle)
        };
        let mut quads = dst_line.chunks_exact_mut(12);
        for (q, px) in (&mut quads).enumerate() {
            let (h0, l0) = sums(q * 4);
            let (h1, l1) = sums(q * 4 + 1);
            let (h2, l2) = sums(q * 4 + 2);
            let (h3, l3) = sums(q * 4 + 3);
            // Halves of two pixels side by side: [sum of pixel i | sum of pixel i + 1].
            let pair = |a: __m256i, b: __m256i| {
                _mm256_add_epi32(
                    _mm256_permute2x128_si256::<0x20>(a, b),
                    _mm256_permute2x128_si256::<0x31>(a, b),
                )
            };
            let v01 = finish(pair(h0, h1), pair(l0, l1));
            let v23 = finish(pair(h2, h3), pair(l2, l3));
            // 16-bit lanes [p0 p2 | p1 p3], then bytes [p0 p2 p0 p2 | p1 p3 p1 p3].
            let bytes = _mm256_packus_epi16(_mm256_packs_epi32(v01, v23), v01);
            let (low, high) = (
                _mm256_castsi256_si128(bytes),
                _mm256_extracti128_si256::<1>(bytes),
            );
            let rgb = _mm_shuffle_epi8(_mm_unpacklo_epi32(low, high), compact);
            let mut out = [0u8; 16];
            // SAFETY: `out` is 16 writable bytes; the store is unaligned.
            unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), rgb) };
            px.copy_from_slice(&out[..12]);
        }
        let done = out_width / 4 * 4;
        for (i, px) in quads.into_remainder().chunks_exact_mut(3).enumerate() {
            let (high, low) = sums(done + i);
            let v = finish(
                _mm256_add_epi32(high, _mm256_permute2x128_si256::<0x01>(high, high)),
                _mm256_add_epi32(low, _mm256_permute2x128_si256::<0x01>(low, low)),
            );
            let bytes = _mm256_castsi256_si128(_mm256_packus_epi16(_mm256_packs_epi32(v, v), v));
            px.copy_from_slice(&_mm_cvtsi128_si32(bytes).to_le_bytes()[..3]);
        }
    }
}

/// Vertical pass, as `super::vertical_pass`: sixteen bytes of a row at a time, their sums kept
/// in registers over all taps (the scalar pass streams a row of sums through memory per tap);
/// the bytes past the last multiple of sixteen take Pillow's per-pixel loop.
#[target_feature(enable = "avx2")]
pub(super) fn vertical_pass(src: View<'_>, shift: usize, v: &Coefficients, dst: &mut [u8]) {
    let row_bytes = src.width * 3;
    let wide = row_bytes / 16 * 16;
    let rounding = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    for (o, out_row) in dst.chunks_exact_mut(row_bytes).enumerate() {
        let weights = &v.weights[o * v.ksize..][..v.count[o]];
        let base = v.first[o] - shift;
        let row_start = |i: usize| (src.y0 + base + i) * src.stride + src.x0 * 3;
        for (c, out) in out_row[..wide].chunks_exact_mut(16).enumerate() {
            let (mut low, mut high) = (rounding, rounding);
            for (i, &k) in weights.iter().enumerate() {
                let at = row_start(i) + c * 16;
                let bytes = &src.data[at..at + 16];
                // SAFETY: `bytes` is 16 readable bytes; the load is unaligned.
                let x = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
                let k = _mm256_set1_epi32(k);
                low = _mm256_add_epi32(low, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(x), k));
                high = _mm256_add_epi32(
                    high,
                    _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(x)), k),
                );
            }
            let (low, high) = (
                _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(low),
                _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(high),
            );
            // packs works within 128-bit halves: [l0..4 h0..4 | l4..8 h4..8] → reorder the
            // 64-bit quarters to [l0..4 l4..8 | h0..4 h4..8] before narrowing to bytes.
            let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(low, high));
            let bytes = _mm256_packus_epi16(words, words);
            let bytes = _mm_unpacklo_epi64(
                _mm256_castsi256_si128(bytes),
                _mm256_extracti128_si256::<1>(bytes),
            );
            let mut tmp = [0u8; 16];
            // SAFETY: `tmp` is 16 writable bytes; the store is unaligned.
            unsafe { _mm_storeu_si128(tmp.as_mut_ptr().cast(), bytes) };
            out.copy_from_slice(&tmp);
        }
        for (c, px) in out_row.iter_mut().enumerate().skip(wide) {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (i, &k) in weights.iter().enumerate() {
                acc = acc.wrapping_add(i32::from(src.data[row_start(i) + c]).wrapping_mul(k));
            }
            *px = super::clip8(acc);
        }
    }
}
