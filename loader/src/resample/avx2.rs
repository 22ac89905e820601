/*!
Pillow's horizontal pass with AVX2: the same integer sums, four taps per instruction.

Pillow's weights have 22 fractional bits, too wide for `vpmaddwd`'s 16-bit lanes, so each
weight `w` is split as `a * 2^15 + b` with `0 <= b < 2^15`, and the pass computes
`2^15 * sum(p * a) + sum(p * b)`. Both sums are exact integers and Pillow's own sum does not
overflow 32 bits (pixels are at most 255 and the weights sum to one), so the result equals the
scalar pass bit for bit whatever the order of the additions; wrapping 32-bit arithmetic keeps
that true even where a partial sum would not fit.

One 256-bit register holds four taps of one output pixel: its low half `[R0 R1 G0 G1 B0 B1 0
0]` as 16-bit lanes, its high half the same for taps 2 and 3, so `vpmaddwd` leaves per-channel
sums of two taps in each half.
*/

use std::arch::x86_64::{
    __m256i, _mm_cvtsi128_si32, _mm_loadu_si128, _mm_setr_epi8, _mm_shuffle_epi8, _mm_storeu_si128,
    _mm_unpacklo_epi32, _mm256_add_epi32, _mm256_broadcastsi128_si256, _mm256_castsi256_si128,
    _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_packs_epi32,
    _mm256_packus_epi16, _mm256_permute2x128_si256, _mm256_set1_epi32, _mm256_setr_epi8,
    _mm256_setzero_si256, _mm256_shuffle_epi8, _mm256_slli_epi32, _mm256_srai_epi32,
};

use super::{Coefficients, PRECISION_BITS, View};

/// Bits of a weight kept in the low part of the split (`b` above).
const LOW_BITS: i32 = 15;

/// One pass's weights split and laid out for [`horizontal_pass`]: for output pixel `o`,
/// `ceil(count[o] / 4)` groups of four taps, each a high and a low register, zero past
/// `count[o]`.
#[derive(Debug, Clone, Default)]
pub(super) struct PackedWeights {
    /// Registers per output pixel (two per group of `ceil(ksize / 4)` groups).
    stride: usize,
    registers: Vec<__m256i>,
}

impl PackedWeights {
    /// Splits and lays out `c`'s weights.
    #[target_feature(enable = "avx2")]
    pub(super) fn pack(&mut self, c: &Coefficients) {
        let groups = c.ksize.div_ceil(4);
        self.stride = groups * 2;
        self.registers.clear();
        for o in 0..c.first.len() {
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

/// The high and low sums of output pixel `o`: per channel, two taps in each 128-bit half.
#[inline]
#[target_feature(enable = "avx2")]
fn taps_sums(
    line: &[u8],
    h: &Coefficients,
    packed: &PackedWeights,
    o: usize,
    shuffle: __m256i,
) -> (__m256i, __m256i) {
    let first = h.first[o] * 3;
    let weights = &packed.registers[o * packed.stride..][..packed.stride];
    let (mut high, mut low) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for (g, w) in weights
        .chunks_exact(2)
        .take(h.count[o].div_ceil(4))
        .enumerate()
    {
        let bytes = &line[first + g * 12..][..LOAD];
        // SAFETY: `bytes` is 16 readable bytes; the load is unaligned.
        let taps = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
        let taps = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(taps), shuffle);
        high = _mm256_add_epi32(high, _mm256_madd_epi16(taps, w[0]));
        low = _mm256_add_epi32(low, _mm256_madd_epi16(taps, w[1]));
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
    let out_width = h.first.len();
    // Byte offsets past a row's start that the loads reach, over all output pixels.
    let reach = (0..out_width)
        .map(|o| (h.first[o] + 4 * (h.count[o].div_ceil(4).max(1) - 1)) * 3 + LOAD)
        .max()
        .unwrap_or(0);
    // Byte order within each 128-bit half: taps 0 and 1 (low), 2 and 3 (high) of the group as
    // [R R G G B B 0 0] 16-bit lanes; -1 writes a zero byte.
    let shuffle = _mm256_setr_epi8(
        0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1, //
        6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1,
    );
    for (y, dst_line) in rows.zip(dst.chunks_exact_mut(out_width * 3)) {
        let start = (src.y0 + y) * src.stride + src.x0 * 3;
        let Some(line) = src.data.get(start..start + reach) else {
            super::horizontal_row(src.row(y), h, dst_line);
            continue;
        };
        let mut quads = dst_line.chunks_exact_mut(12);
        for (q, px) in (&mut quads).enumerate() {
            let sums: [(__m256i, __m256i); 4] =
                std::array::from_fn(|i| taps_sums(line, h, packed, q * 4 + i, shuffle));
            // Halves of two pixels side by side: [sum of pixel i | sum of pixel i + 1].
            let pair = |a: __m256i, b: __m256i| {
                _mm256_add_epi32(
                    _mm256_permute2x128_si256::<0x20>(a, b),
                    _mm256_permute2x128_si256::<0x31>(a, b),
                )
            };
            let [(h0, l0), (h1, l1), (h2, l2), (h3, l3)] = sums;
            let v01 = finish(pair(h0, h1), pair(l0, l1));
            let v23 = finish(pair(h2, h3), pair(l2, l3));
            // 16-bit lanes [p0 p2 | p1 p3], then bytes [p0 p2 p0 p2 | p1 p3 p1 p3].
            let bytes = _mm256_packus_epi16(_mm256_packs_epi32(v01, v23), v01);
            let (low, high) = (
                _mm256_castsi256_si128(bytes),
                _mm256_extracti128_si256::<1>(bytes),
            );
            let rgbx = _mm_unpacklo_epi32(low, high);
            let rgb = _mm_shuffle_epi8(
                rgbx,
                _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1),
            );
            let mut out = [0u8; 16];
            // SAFETY: `out` is 16 writable bytes; the store is unaligned.
            unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), rgb) };
            px.copy_from_slice(&out[..12]);
        }
        let done = out_width / 4 * 4;
        for (i, px) in quads.into_remainder().chunks_exact_mut(3).enumerate() {
            let (high, low) = taps_sums(line, h, packed, done + i, shuffle);
            let v = finish(
                _mm256_add_epi32(high, _mm256_permute2x128_si256::<0x01>(high, high)),
                _mm256_add_epi32(low, _mm256_permute2x128_si256::<0x01>(low, low)),
            );
            let bytes = _mm256_castsi256_si128(_mm256_packus_epi16(_mm256_packs_epi32(v, v), v));
            px.copy_from_slice(&_mm_cvtsi128_si32(bytes).to_le_bytes()[..3]);
        }
    }
}
