//! libjpeg-turbo's integer IDCT (`jidctint.c`) and its range limit, in eight 32-bit lanes,
//! portable and in AVX2 intrinsics: the same bytes either way.

/// Eight lanes of 32-bit integers: a row (or column) of a block, which the compiler keeps in
/// one AVX2 register.
type Lanes = [i32; 8];

#[inline(always)]
fn lanes(f: impl Fn(usize) -> i32) -> Lanes {
    std::array::from_fn(f)
}

/// The LL&M butterfly of `jidctint.c` on eight inputs (each eight lanes): its even part
/// (`tmp10`..`tmp13`) and odd part, as the eight outputs before descaling.
#[inline(always)]
fn butterfly(v: &[Lanes; 8]) -> [Lanes; 8] {
    let m = |a: &Lanes, k: i32| lanes(|i| a[i].wrapping_mul(k));
    let add = |a: &Lanes, b: &Lanes| lanes(|i| a[i].wrapping_add(b[i]));
    let sub = |a: &Lanes, b: &Lanes| lanes(|i| a[i].wrapping_sub(b[i]));
    let z1 = m(&add(&v[2], &v[6]), 4433);
    let t2 = sub(&z1, &m(&v[6], 15137));
    let t3 = add(&z1, &m(&v[2], 6270));
    let t0 = lanes(|i| v[0][i].wrapping_add(v[4][i]) << 13);
    let t1 = lanes(|i| v[0][i].wrapping_sub(v[4][i]) << 13);
    let (t10, t13, t11, t12) = (add(&t0, &t3), sub(&t0, &t3), add(&t1, &t2), sub(&t1, &t2));
    let (a0, a1, a2, a3) = (&v[7], &v[5], &v[3], &v[1]);
    let (z1, z2, z3, z4) = (add(a0, a3), add(a1, a2), add(a0, a2), add(a1, a3));
    let z5 = m(&add(&z3, &z4), 9633);
    let (z1, z2) = (m(&z1, -7373), m(&z2, -20995));
    let (z3, z4) = (add(&m(&z3, -16069), &z5), add(&m(&z4, -3196), &z5));
    let o0 = add(&add(&m(a0, 2446), &z1), &z3);
    let o1 = add(&add(&m(a1, 16819), &z2), &z4);
    let o2 = add(&add(&m(a2, 25172), &z2), &z3);
    let o3 = add(&add(&m(a3, 12299), &z1), &z4);
    [
        add(&t10, &o3),
        add(&t11, &o2),
        add(&t12, &o1),
        add(&t13, &o0),
        sub(&t13, &o0),
        sub(&t12, &o1),
        sub(&t11, &o2),
        sub(&t10, &o3),
    ]
}

/// `x` descaled by `n` bits with rounding, as libjpeg's `DESCALE`.
#[inline(always)]
fn descale(x: i32, n: i32) -> i32 {
    x.wrapping_add(1 << (n - 1)) >> n
}

/// The post-IDCT range limit of `jdmaster.c`: x + 128 clamped, with its wrap (index x & 1023).
#[inline(always)]
fn limit(x: i32) -> u8 {
    match x & 1023 {
        i @ 0..128 => (i + 128) as u8,
        128..512 => 255,
        512..896 => 0,
        i => (i - 896) as u8,
    }
}

/// [`idct`] of a block with only its DC term (`dc`, quantization step `q`): both passes give
/// the same value everywhere (the column pass `dc << 2`, the row pass its descale), so it is
/// computed once.
#[inline(always)]
pub(super) fn dc_only(dc: i16, q: i32, out: &mut [u8], stride: usize) {
    let v = limit(descale(i32::from(dc).wrapping_mul(q) << 2, 5));
    for o in out.chunks_mut(stride).take(8) {
        o[..8].fill(v);
    }
}

/// jidctint.c's `jpeg_idct_islow`: dequantization, two passes of the LL&M IDCT in 13-bit
/// fixed point (eight columns, then eight rows, at once), and the range limit. Its shortcut for
/// a column of zeros gives the same values as the full pass, so every column takes the full
/// pass here ([`dc_only`] is the whole block's shortcut). 32-bit arithmetic, as libjpeg-turbo's
/// SIMD IDCT, which is what Pillow runs.
#[inline(always)]
pub(super) fn idct(coef: &[i16; 65], q: &[i32; 64], out: &mut [u8], stride: usize) {
    let rows: [Lanes; 8] =
        std::array::from_fn(|r| lanes(|c| i32::from(coef[r * 8 + c]).wrapping_mul(q[r * 8 + c])));
    let pass1 = butterfly(&rows).map(|row| row.map(|x| descale(x, 11)));
    // Rows of the workspace become lanes: column k of every row at once.
    let cols: [Lanes; 8] = std::array::from_fn(|k| lanes(|r| pass1[r][k]));
    let pass2 = butterfly(&cols);
    for (r, o) in out.chunks_mut(stride).take(8).enumerate() {
        for (j, v) in o[..8].iter_mut().enumerate() {
            *v = limit(descale(pass2[j][r], 18));
        }
    }
}

/// [`idct`] in AVX2 intrinsics: the same arithmetic on eight 32-bit lanes, with the two
/// transposes in registers (libjpeg-turbo's AVX2 IDCT, which Pillow runs, is organised so).
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    type V = __m256i;

    #[target_feature(enable = "avx2")]
    #[inline]
    fn k(x: i32) -> V {
        _mm256_set1_epi32(x)
    }

    #[target_feature(enable = "avx2")]
    fn butterfly(v: [V; 8]) -> [V; 8] {
        let (add, sub, mul) = (_mm256_add_epi32, _mm256_sub_epi32, _mm256_mullo_epi32);
        let z1 = mul(add(v[2], v[6]), k(4433));
        let t2 = sub(z1, mul(v[6], k(15137)));
        let t3 = add(z1, mul(v[2], k(6270)));
        let t0 = _mm256_slli_epi32::<13>(add(v[0], v[4]));
        let t1 = _mm256_slli_epi32::<13>(sub(v[0], v[4]));
        let (t10, t13, t11, t12) = (add(t0, t3), sub(t0, t3), add(t1, t2), sub(t1, t2));
        let (a0, a1, a2, a3) = (v[7], v[5], v[3], v[1]);
        let (z1, z2, z3, z4) = (add(a0, a3), add(a1, a2), add(a0, a2), add(a1, a3));
        let z5 = mul(add(z3, z4), k(9633));
        let (z1, z2) = (mul(z1, k(-7373)), mul(z2, k(-20995)));
        let (z3, z4) = (add(mul(z3, k(-16069)), z5), add(mul(z4, k(-3196)), z5));
        let o0 = add(add(mul(a0, k(2446)), z1), z3);
        let o1 = add(add(mul(a1, k(16819)), z2), z4);
        let o2 = add(add(mul(a2, k(25172)), z2), z3);
        let o3 = add(add(mul(a3, k(12299)), z1), z4);
        [
            add(t10, o3),
            add(t11, o2),
            add(t12, o1),
            add(t13, o0),
            sub(t13, o0),
            sub(t12, o1),
            sub(t11, o2),
            sub(t10, o3),
        ]
    }

    #[target_feature(enable = "avx2")]
    fn transpose(r: [V; 8]) -> [V; 8] {
        // Written out: closures here are not inlined into the AVX2 code.
        let t = [
            _mm256_unpacklo_epi32(r[0], r[1]),
            _mm256_unpackhi_epi32(r[0], r[1]),
            _mm256_unpacklo_epi32(r[2], r[3]),
            _mm256_unpackhi_epi32(r[2], r[3]),
            _mm256_unpacklo_epi32(r[4], r[5]),
            _mm256_unpackhi_epi32(r[4], r[5]),
            _mm256_unpacklo_epi32(r[6], r[7]),
            _mm256_unpackhi_epi32(r[6], r[7]),
        ];
        // t0..t3 from rows 0-3, t4..t7 from rows 4-7.
        let u = [
            _mm256_unpacklo_epi64(t[0], t[2]),
            _mm256_unpackhi_epi64(t[0], t[2]),
            _mm256_unpacklo_epi64(t[1], t[3]),
            _mm256_unpackhi_epi64(t[1], t[3]),
            _mm256_unpacklo_epi64(t[4], t[6]),
            _mm256_unpackhi_epi64(t[4], t[6]),
            _mm256_unpacklo_epi64(t[5], t[7]),
            _mm256_unpackhi_epi64(t[5], t[7]),
        ];
        [
            _mm256_permute2x128_si256::<0x20>(u[0], u[4]),
            _mm256_permute2x128_si256::<0x20>(u[1], u[5]),
            _mm256_permute2x128_si256::<0x20>(u[2], u[6]),
            _mm256_permute2x128_si256::<0x20>(u[3], u[7]),
            _mm256_permute2x128_si256::<0x31>(u[0], u[4]),
            _mm256_permute2x128_si256::<0x31>(u[1], u[5]),
            _mm256_permute2x128_si256::<0x31>(u[2], u[6]),
            _mm256_permute2x128_si256::<0x31>(u[3], u[7]),
        ]
    }

    /// # Safety
    /// The CPU must have AVX2; `out` must hold 8 rows of `stride` from its start, 8 bytes each.
    #[target_feature(enable = "avx2")]
    pub(in crate::image::jpeg) unsafe fn idct(
        coef: &[i16; 65],
        q: &[i32; 64],
        out: &mut [u8],
        stride: usize,
    ) {
        let mut rows = [_mm256_setzero_si256(); 8];
        for (r, row) in rows.iter_mut().enumerate() {
            // SAFETY: the 8 i16 of row r are in bounds (r * 8 + 8 <= 64).
            let c = unsafe { _mm_loadu_si128(coef.as_ptr().add(r * 8).cast()) };
            // SAFETY: the 8 i32 of the table's row r are in bounds.
            let q = unsafe { _mm256_loadu_si256(q.as_ptr().add(r * 8).cast()) };
            *row = _mm256_mullo_epi32(_mm256_cvtepi16_epi32(c), q);
        }
        let mut ws = butterfly(rows);
        for x in &mut ws {
            *x = _mm256_srai_epi32::<11>(_mm256_add_epi32(*x, k(1 << 10)));
        }
        let mut limited = butterfly(transpose(ws));
        // Descale, then the range limit: u = (x + 128) & 1023 is the output below 256, 255
        // from 256 to 639, 0 above.
        for x in &mut limited {
            let d = _mm256_srai_epi32::<18>(_mm256_add_epi32(*x, k(1 << 17)));
            let u = _mm256_and_si256(_mm256_add_epi32(d, k(128)), k(1023));
            *x = _mm256_andnot_si256(_mm256_cmpgt_epi32(u, k(639)), _mm256_min_epi32(u, k(255)));
        }
        for (r, v) in transpose(limited).into_iter().enumerate() {
            let lo = _mm256_castsi256_si128(v);
            let hi = _mm256_extracti128_si256::<1>(v);
            let bytes = _mm_packus_epi16(_mm_packs_epi32(lo, hi), _mm_setzero_si128());
            let row = &mut out[r * stride..r * stride + 8];
            // SAFETY: the row holds 8 bytes.
            unsafe { _mm_storel_epi64(row.as_mut_ptr().cast(), bytes) };
        }
    }
}
