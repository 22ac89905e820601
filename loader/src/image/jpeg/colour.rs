//! `jdcolor.c`'s YCbCr → RGB, in libjpeg-turbo's fixed point: portable, and in AVX2 (16 pixels
//! a step, the same bytes).

/// jdcolor.c's tables, computed: FIX(1.40200), FIX(0.34414), FIX(0.71414) and FIX(1.77200) in
/// 16-bit fixed point, with ONE_HALF's rounding.
const CR_R: i32 = 91881;
const CB_G: i32 = -22554;
const CR_G: i32 = -46802;
const CB_B: i32 = 116130;
const HALF: i32 = 32768;

/// One row: `l`, `cb` and `cr` (as long as each other) into `rgb` (three times as long).
#[inline(always)]
pub(super) fn row(l: &[u8], cb: &[u8], cr: &[u8], rgb: &mut [u8]) {
    for (((px, &l), &cb), &cr) in rgb.chunks_exact_mut(3).zip(l).zip(cb).zip(cr) {
        let (l, cb, cr) = (i32::from(l), i32::from(cb) - 128, i32::from(cr) - 128);
        px[0] = (l + ((CR_R * cr + HALF) >> 16)).clamp(0, 255) as u8;
        px[1] = (l + ((CB_G * cb + CR_G * cr + HALF) >> 16)).clamp(0, 255) as u8;
        px[2] = (l + ((CB_B * cb + HALF) >> 16)).clamp(0, 255) as u8;
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::{CB_B, CB_G, CR_G, CR_R, HALF};

    /// Where each output byte of 16 pixels comes from, for each of the three 16-byte blocks
    /// of RGB and each channel: the pixel's index, or 0x80 (a zero) where another channel's
    /// byte goes.
    const fn masks() -> [[[u8; 16]; 3]; 3] {
        let mut m = [[[0x80u8; 16]; 3]; 3];
        let mut i = 0;
        while i < 48 {
            m[i / 16][i % 3][i % 16] = (i / 3) as u8;
            i += 1;
        }
        m
    }
    const MASKS: [[[u8; 16]; 3]; 3] = masks();

    /// [`super::row`] 16 pixels at a time, the remainder by it.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(in super::super) fn row(l: &[u8], cb: &[u8], cr: &[u8], rgb: &mut [u8]) {
        let n = l.len().min(cb.len()).min(cr.len()).min(rgb.len() / 3);
        let whole = n / 16 * 16;
        let c128 = _mm256_set1_epi32(128);
        let half = _mm256_set1_epi32(HALF);
        let [cr_r, cb_g, cr_g, cb_b] = [CR_R, CB_G, CR_G, CB_B].map(|c| _mm256_set1_epi32(c));
        let masks = MASKS.map(|block| {
            // SAFETY: each mask is 16 bytes.
            block.map(|m| unsafe { _mm_loadu_si128(m.as_ptr().cast()) })
        });
        let mut x = 0;
        while x < whole {
            // SAFETY: `x + 16 <= n`, within each input and (×3) within `rgb`.
            unsafe {
                let load = |s: &[u8]| _mm_loadu_si128(s.as_ptr().add(x).cast());
                let (lv, cbv, crv) = (load(l), load(cb), load(cr));
                // R, G and B of pixels 0..8 (`upper` false) or 8..16, as i32.
                let rgb32 = |upper: bool| {
                    let widen = |v: __m128i| {
                        _mm256_cvtepu8_epi32(if upper { _mm_srli_si128(v, 8) } else { v })
                    };
                    let l32 = widen(lv);
                    let cb32 = _mm256_sub_epi32(widen(cbv), c128);
                    let cr32 = _mm256_sub_epi32(widen(crv), c128);
                    let term = |a: __m256i| _mm256_srai_epi32(_mm256_add_epi32(a, half), 16);
                    let r = term(_mm256_mullo_epi32(cr32, cr_r));
                    let g = term(_mm256_add_epi32(
                        _mm256_mullo_epi32(cb32, cb_g),
                        _mm256_mullo_epi32(cr32, cr_g),
                    ));
                    let b = term(_mm256_mullo_epi32(cb32, cb_b));
                    [r, g, b].map(|c| _mm256_add_epi32(l32, c))
                };
                let (lo, hi) = (rgb32(false), rgb32(true));
                // i32 → i16 (saturating; the values are within ±1,000) → u8 (clamped to
                // 0..=255, as the portable row clamps).
                let bytes = [0, 1, 2].map(|c| {
                    let w =
                        _mm256_permute4x64_epi64(_mm256_packs_epi32(lo[c], hi[c]), 0b11_01_10_00);
                    _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1))
                });
                let dst = rgb.as_mut_ptr().add(3 * x);
                for (k, block) in masks.iter().enumerate() {
                    let v = _mm_or_si128(
                        _mm_or_si128(
                            _mm_shuffle_epi8(bytes[0], block[0]),
                            _mm_shuffle_epi8(bytes[1], block[1]),
                        ),
                        _mm_shuffle_epi8(bytes[2], block[2]),
                    );
                    _mm_storeu_si128(dst.add(16 * k).cast(), v);
                }
            }
            x += 16;
        }
        super::row(&l[x..n], &cb[x..n], &cr[x..n], &mut rgb[3 * x..3 * n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_gives_the_portable_bytes() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // Every (cb, cr) pair, with luma sweeping 0..=255 along the row; 37 pixels a row
            // so that the tail is exercised too.
            let w = 37;
            let l: Vec<u8> = (0..w).map(|i| (i * 7) as u8).collect();
            for cb in 0..=255u8 {
                for cr in (0..=255u8).step_by(3) {
                    let (cbs, crs) = (vec![cb; w], vec![cr.wrapping_add(cb); w]);
                    let (mut a, mut b) = (vec![0; 3 * w], vec![0; 3 * w]);
                    row(&l, &cbs, &crs, &mut a);
                    // SAFETY: the CPU has AVX2.
                    unsafe { avx2::row(&l, &cbs, &crs, &mut b) };
                    assert_eq!(a, b, "cb {cb} cr {cr}");
                }
            }
            return;
        }
        eprintln!("SKIPPED: this CPU has no AVX2");
    }
}
