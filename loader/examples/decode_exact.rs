//! A JPEG decoder that gives Pillow's pixels, measured against Pillow and zune-jpeg: the study
//! behind docs/loader.md's "A decoder of our own" (issue 40). Not the loader's decoder (yet).
//!
//! `cargo run --release -p loader --example decode_exact -- DIR`
//!
//! Decodes every JPEG below DIR (baseline, 8-bit, grayscale or YCbCr at 4:4:4, 4:2:2, 4:2:0 or
//! 4:4:0; anything else is counted as not handled) with libjpeg-turbo's own arithmetic, as
//! Pillow runs it: the Huffman stage into coefficients, jidctint.c's integer IDCT and its range
//! limit, jdsample.c's "fancy" chroma upsampling, jdcolor.c's fixed-point YCbCr → RGB. With
//! python3 and Pillow on the PATH it hashes Pillow's `convert("RGB")` of each file and says how
//! many of ours, and of zune-jpeg's (the loader's decoder), are the same bytes; then it times
//! both decoders over all files, one thread.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use loader::image::decode::{Decoder, RgbImage};
use sha2::{Digest, Sha256};

/// Zigzag position → natural position; past 63, the scratch slot 64 (where an end of block's
/// run lands, so that the fast path has no branch for it).
static NATURAL: [u8; 128] = {
    const ZIGZAG: [u8; 64] = [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
        20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    ];
    let mut t = [64u8; 128];
    let mut i = 0;
    while i < 64 {
        t[i] = ZIGZAG[i];
        i += 1;
    }
    t
};

/// Bits of the Huffman lookup table.
const LOOKUP_BITS: u32 = 11;

/// A Huffman table: an 11-bit lookup whose entries hold the code's length, and for AC codes
/// the run and, where code and value fit in the 11 bits, the value itself; longer codes by
/// their canonical limits.
struct Huffman {
    /// Entry: bits 0-4 the bits to consume, 5-6 the kind, 8-13 the run, 12-15 the value's size
    /// (symbol kind), 16-31 the value (value kind).
    lookup: Vec<u32>,
    maxcode: [i32; 18],
    offset: [i32; 17],
    symbols: Vec<u8>,
    ac: bool,
}

const SLOW: u32 = 0;
const VALUE: u32 = 1;
const SYMBOL: u32 = 2;

/// A value of `size` bits as JPEG codes it (the high half positive).
fn extend(v: i32, size: u32) -> i32 {
    if size == 0 {
        0
    } else if v < 1 << (size - 1) {
        v - (1 << size) + 1
    } else {
        v
    }
}

impl Huffman {
    fn new(counts: &[u8], symbols: &[u8], ac: bool) -> Option<Huffman> {
        let mut lookup = vec![SLOW; 1 << LOOKUP_BITS];
        let mut maxcode = [-1i32; 18];
        let mut offset = [0i32; 17];
        let (mut code, mut k) = (0u32, 0usize);
        for len in 1..=16u32 {
            let n = usize::from(counts[len as usize - 1]);
            offset[len as usize] = k as i32 - code as i32;
            for _ in 0..n {
                let symbol = u32::from(*symbols.get(k)?);
                if len <= LOOKUP_BITS {
                    let (run, size) = if ac {
                        (symbol >> 4, symbol & 15)
                    } else {
                        (0, symbol)
                    };
                    let shift = LOOKUP_BITS - len;
                    for fill in 0..1u32 << shift {
                        let entry = if ac && size == 0 {
                            // End of block: a run past the block's end; 15: sixteen zeros.
                            let run = if run == 15 { 15 } else { 63 };
                            len | VALUE << 5 | run << 8
                        } else if len + size <= LOOKUP_BITS {
                            let bits = (fill >> (shift - size)) & ((1 << size) - 1);
                            let v = extend(bits as i32, size);
                            (len + size) | VALUE << 5 | run << 8 | (v as u32) << 16
                        } else {
                            len | SYMBOL << 5 | run << 8 | size << 12
                        };
                        lookup[((code << shift) | fill) as usize] = entry;
                    }
                }
                code += 1;
                k += 1;
            }
            maxcode[len as usize] = if n > 0 { code as i32 - 1 } else { -1 };
            if code > 1 << len {
                return None;
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        Some(Huffman {
            lookup,
            maxcode,
            offset,
            symbols: symbols.to_vec(),
            ac,
        })
    }
}

/// The entropy-coded data, stuffing removed, read MSB first with 64-bit refills.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u64,
    n: u32,
}

impl Bits<'_> {
    #[inline(always)]
    fn refill(&mut self) {
        let word = match self.data.get(self.pos..self.pos + 8) {
            Some(w) => u64::from_be_bytes(w.try_into().unwrap_or([0; 8])),
            // Past the end: zeros, and the stream is judged by where it ended.
            None => 0,
        };
        self.buf |= word >> self.n;
        self.pos += ((63 - self.n) >> 3) as usize;
        self.n |= 56;
    }

    fn peek(&self, k: u32) -> u32 {
        (self.buf >> (64 - k)) as u32
    }

    fn consume(&mut self, k: u32) {
        self.buf <<= k;
        self.n -= k;
    }

    fn get(&mut self, k: u32) -> u32 {
        if k == 0 {
            return 0;
        }
        let v = self.peek(k);
        self.consume(k);
        v
    }

    /// A code longer than the lookup: its symbol as (run, size), or `None` for a bad code.
    fn slow(&mut self, t: &Huffman) -> Option<(u32, u32)> {
        let mut len = LOOKUP_BITS + 1;
        while len <= 16 && self.peek(len) as i32 > t.maxcode[len as usize] {
            len += 1;
        }
        if len > 16 {
            return None;
        }
        let at = self.peek(len) as i32 + t.offset[len as usize];
        self.consume(len);
        let symbol = u32::from(*t.symbols.get(usize::try_from(at).ok()?)?);
        Some(if t.ac {
            (symbol >> 4, symbol & 15)
        } else {
            (0, symbol)
        })
    }

    /// One block's coefficients (natural order, slot 64 scratch) after the DC prediction.
    #[inline(always)]
    fn block(
        &mut self,
        dc: &Huffman,
        ac: &Huffman,
        pred: &mut i32,
        out: &mut [i16; 65],
    ) -> Option<()> {
        self.refill();
        let e = dc.lookup[self.peek(LOOKUP_BITS) as usize];
        let diff = match (e >> 5) & 3 {
            VALUE => {
                self.consume(e & 31);
                (e as i32) >> 16
            }
            SYMBOL => {
                self.consume(e & 31);
                let s = (e >> 12) & 15;
                extend(self.get(s) as i32, s)
            }
            _ => {
                let (_, s) = self.slow(dc)?;
                self.refill();
                extend(self.get(s.min(16)) as i32, s.min(16))
            }
        };
        *pred = pred.wrapping_add(diff);
        out[0] = *pred as i16;
        let mut k = 1usize;
        while k < 64 {
            self.refill();
            let e = ac.lookup[self.peek(LOOKUP_BITS) as usize];
            if (e >> 5) & 3 == VALUE {
                self.consume(e & 31);
                k += ((e >> 8) & 63) as usize;
                out[usize::from(NATURAL[k])] = ((e as i32) >> 16) as i16;
                k += 1;
                continue;
            }
            let (r, s) = if (e >> 5) & 3 == SYMBOL {
                self.consume(e & 31);
                ((e >> 8) & 15, (e >> 12) & 15)
            } else {
                let rs = self.slow(ac)?;
                self.refill();
                rs
            };
            if s == 0 {
                if r == 15 {
                    k += 16;
                    continue;
                }
                return Some(());
            }
            k += r as usize;
            out[usize::from(NATURAL[k.min(64)])] = extend(self.get(s) as i32, s) as i16;
            k += 1;
        }
        Some(())
    }
}

/// A component: sampling factors, Huffman tables, quantization table (natural order).
struct Component {
    h: usize,
    v: usize,
    dc: usize,
    ac: usize,
    quant: [i32; 64],
}

/// What the headers say.
struct Frame {
    width: usize,
    height: usize,
    components: Vec<Component>,
    dc: Vec<Option<Huffman>>,
    ac: Vec<Option<Huffman>>,
    restart: usize,
    scan: usize,
}

/// Reads the headers of a single-scan baseline JPEG up to its scan; `None` for anything else.
fn frame(j: &[u8]) -> Option<Frame> {
    let (mut dc, mut ac) = (
        (0..4).map(|_| None).collect::<Vec<_>>(),
        (0..4).map(|_| None).collect::<Vec<_>>(),
    );
    let mut quant = [[0i32; 64]; 4];
    let (mut width, mut height, mut restart) = (0, 0, 0);
    let mut ids: Vec<(u8, usize, usize, usize)> = Vec::new();
    let mut p = 2;
    loop {
        if *j.get(p)? != 0xFF {
            return None;
        }
        let marker = *j.get(p + 1)?;
        let len = usize::from(u16::from_be_bytes([*j.get(p + 2)?, *j.get(p + 3)?]));
        let seg = j.get(p + 4..p + 2 + len)?;
        match marker {
            0xC0 | 0xC1 => {
                if *seg.first()? != 8 {
                    return None;
                }
                height = usize::from(u16::from_be_bytes([*seg.get(1)?, *seg.get(2)?]));
                width = usize::from(u16::from_be_bytes([*seg.get(3)?, *seg.get(4)?]));
                for c in 0..usize::from(*seg.get(5)?) {
                    let s = seg.get(6 + 3 * c..9 + 3 * c)?;
                    ids.push((
                        s[0],
                        usize::from(s[1] >> 4),
                        usize::from(s[1] & 15),
                        usize::from(s[2] & 3),
                    ));
                }
            }
            // Progressive, lossless, arithmetic coding: not handled here.
            0xC2 | 0xC3 | 0xC5..=0xCF => return None,
            // Adobe's marker: an RGB or CMYK JPEG is not YCbCr.
            0xEE => return None,
            0xDB => {
                let mut q = 0;
                while q < seg.len() {
                    let (precision, t) = (seg[q] >> 4, usize::from(seg[q] & 3));
                    for (z, &at) in NATURAL[..64].iter().enumerate() {
                        quant[t][usize::from(at)] = if precision == 0 {
                            i32::from(*seg.get(q + 1 + z)?)
                        } else {
                            i32::from(u16::from_be_bytes([
                                *seg.get(q + 1 + 2 * z)?,
                                *seg.get(q + 2 + 2 * z)?,
                            ]))
                        };
                    }
                    q += if precision == 0 { 65 } else { 129 };
                }
            }
            0xC4 => {
                let mut q = 0;
                while q < seg.len() {
                    let (class, t) = (seg[q] >> 4, usize::from(seg[q] & 3));
                    let counts = seg.get(q + 1..q + 17)?;
                    let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    let table = Huffman::new(counts, seg.get(q + 17..q + 17 + total)?, class == 1)?;
                    if class == 0 {
                        dc[t] = Some(table);
                    } else {
                        ac[t] = Some(table);
                    }
                    q += 17 + total;
                }
            }
            0xDD => restart = usize::from(u16::from_be_bytes([*seg.first()?, *seg.get(1)?])),
            0xDA => {
                let n = usize::from(*seg.first()?);
                if n != ids.len() || !(n == 1 || n == 3) || width == 0 || height == 0 {
                    return None;
                }
                let mut components = Vec::with_capacity(n);
                for &(id, h, v, q) in &ids {
                    let at = (0..n).find(|&c| seg.get(1 + 2 * c) == Some(&id))?;
                    let tables = *seg.get(2 + 2 * at)?;
                    if !(1..=2).contains(&h) || !(1..=2).contains(&v) {
                        return None;
                    }
                    components.push(Component {
                        h,
                        v,
                        dc: usize::from(tables >> 4) & 3,
                        ac: usize::from(tables & 15) & 3,
                        quant: quant[q],
                    });
                }
                return Some(Frame {
                    width,
                    height,
                    components,
                    dc,
                    ac,
                    restart,
                    scan: p + 2 + len,
                });
            }
            _ => {}
        }
        p += 2 + len;
    }
}

/// The scan's bytes with the stuffing removed, and where each restart interval starts.
fn unstuff(src: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let (mut out, mut starts) = (Vec::with_capacity(src.len() + 16), vec![0]);
    let mut p = 0;
    while p < src.len() {
        if src[p] != 0xFF {
            out.push(src[p]);
            p += 1;
            continue;
        }
        match src.get(p + 1) {
            Some(0) => {
                out.push(0xFF);
                p += 2;
            }
            Some(0xD0..=0xD7) => {
                out.extend_from_slice(&[0; 8]);
                starts.push(out.len());
                p += 2;
            }
            Some(0xFF) => p += 1,
            _ => break,
        }
    }
    out.extend_from_slice(&[0; 16]);
    (out, starts)
}

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

/// jidctint.c's `jpeg_idct_islow`: dequantization, two passes of the LL&M IDCT in 13-bit
/// fixed point (eight columns, then eight rows, at once), and the range limit of `jdmaster.c`
/// (x + 128 clamped, with its wrap). Its shortcut for a column of zeros gives the same values
/// as the full pass, so every column takes the full pass here. 32-bit arithmetic, as
/// libjpeg-turbo's SIMD IDCT, which is what Pillow runs.
#[inline(always)]
fn idct(coef: &[i16; 65], q: &[i32; 64], out: &mut [u8], stride: usize) {
    let descale = |x: i32, n: i32| (x.wrapping_add(1 << (n - 1))) >> n;
    let limit = |x: i32| match x & 1023 {
        i @ 0..128 => (i + 128) as u8,
        128..512 => 255,
        512..896 => 0,
        i => (i - 896) as u8,
    };
    if coef[1..64].iter().all(|&c| c == 0) {
        // Only the DC term: both passes give the same value everywhere (the column pass
        // `dc << 2`, the row pass its descale), so it is computed once.
        let v = limit(descale(i32::from(coef[0]).wrapping_mul(q[0]) << 2, 5));
        for o in out.chunks_mut(stride).take(8) {
            o[..8].fill(v);
        }
        return;
    }
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
mod avx2 {
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
        let t: [V; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_epi32(a, b)
            } else {
                _mm256_unpackhi_epi32(a, b)
            }
        });
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
    pub(super) unsafe fn idct(coef: &[i16; 65], q: &[i32; 64], out: &mut [u8], stride: usize) {
        if coef[1..64].iter().all(|&c| c == 0) {
            super::idct(coef, q, out, stride);
            return;
        }
        let rows: [V; 8] = std::array::from_fn(|r| {
            // SAFETY: the 8 i16 of row r are in bounds (r * 8 + 8 <= 64).
            let c = unsafe { _mm_loadu_si128(coef.as_ptr().add(r * 8).cast()) };
            // SAFETY: the 8 i32 of the table's row r are in bounds.
            let q = unsafe { _mm256_loadu_si256(q.as_ptr().add(r * 8).cast()) };
            _mm256_mullo_epi32(_mm256_cvtepi16_epi32(c), q)
        });
        let ws = butterfly(rows).map(|x| _mm256_srai_epi32::<11>(_mm256_add_epi32(x, k(1 << 10))));
        let cols = butterfly(transpose(ws));
        // Descale, then the range limit: u = (x + 128) & 1023 is the output below 256, 255
        // from 256 to 639, 0 above.
        let limited = cols.map(|x| {
            let x = _mm256_srai_epi32::<18>(_mm256_add_epi32(x, k(1 << 17)));
            let u = _mm256_and_si256(_mm256_add_epi32(x, k(128)), k(1023));
            _mm256_andnot_si256(_mm256_cmpgt_epi32(u, k(639)), _mm256_min_epi32(u, k(255)))
        });
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

/// jdsample.c's fancy upsampling of a `w`×`h` plane (row `stride`) by (`fh`, `fv`) in {1, 2}:
/// ¾ of the nearer sample and ¼ of the next in each doubled direction, libjpeg's rounding
/// biases, edges replicated. `None` for other factors.
#[inline(always)]
fn upsample(
    p: &[u8],
    stride: usize,
    (w, h): (usize, usize),
    (fh, fv): (usize, usize),
) -> Option<(Vec<u8>, usize)> {
    let at = |x: usize, y: usize| i32::from(p[y * stride + x]);
    let (ow, oh) = (w * fh, h * fv);
    let mut out = vec![0u8; ow * oh];
    for (oy, o) in out.chunks_exact_mut(ow).enumerate() {
        let (y, below) = (oy / fv, oy % fv == 1);
        let far = if below {
            (y + 1).min(h - 1)
        } else {
            y.saturating_sub(1)
        };
        match (fh, fv) {
            (1, 1) => o
                .iter_mut()
                .enumerate()
                .for_each(|(x, v)| *v = p[y * stride + x]),
            (1, 2) => {
                let bias = if below { 2 } else { 1 };
                for (x, v) in o.iter_mut().enumerate() {
                    *v = ((at(x, y) * 3 + at(x, far) + bias) >> 2) as u8;
                }
            }
            (2, 1) => {
                for x in 0..w {
                    let near = at(x, y) * 3;
                    o[2 * x] = if x == 0 {
                        at(0, y) as u8
                    } else {
                        ((near + at(x - 1, y) + 1) >> 2) as u8
                    };
                    o[2 * x + 1] = if x + 1 == w {
                        at(x, y) as u8
                    } else {
                        ((near + at(x + 1, y) + 2) >> 2) as u8
                    };
                }
            }
            (2, 2) => {
                let col = |x: usize| at(x, y) * 3 + at(x, far);
                for x in 0..w {
                    let this = col(x);
                    o[2 * x] = if x == 0 {
                        ((this * 4 + 8) >> 4) as u8
                    } else {
                        ((this * 3 + col(x - 1) + 8) >> 4) as u8
                    };
                    o[2 * x + 1] = if x + 1 == w {
                        ((this * 4 + 7) >> 4) as u8
                    } else {
                        ((this * 3 + col(x + 1) + 7) >> 4) as u8
                    };
                }
            }
            _ => return None,
        }
    }
    Some((out, ow))
}

/// Decodes `jpeg` to RGB as Pillow does; `None` where it is not a kind handled here or does not
/// decode. The body is compiled twice: for AVX2 (its IDCT's eight lanes are one register),
/// taken where the CPU has it, and for the baseline.
fn decode(jpeg: &[u8]) -> Option<RgbImage> {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn with_avx2(jpeg: &[u8]) -> Option<RgbImage> {
            decode_body::<true>(jpeg)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { with_avx2(jpeg) };
        }
    }
    decode_body::<false>(jpeg)
}

#[inline(always)]
fn decode_body<const AVX2: bool>(jpeg: &[u8]) -> Option<RgbImage> {
    let f = frame(jpeg)?;
    let (data, starts) = unstuff(jpeg.get(f.scan..)?);
    let n = f.components.len();
    let hmax = f.components.iter().map(|c| c.h).max()?;
    let vmax = f.components.iter().map(|c| c.v).max()?;
    // A single-component scan is not interleaved: one block per MCU, whatever the factors.
    let (bh, bv) = if n == 1 { (1, 1) } else { (hmax, vmax) };
    let (mcux, mcuy) = (f.width.div_ceil(8 * bh), f.height.div_ceil(8 * bv));
    let factors: Vec<(usize, usize)> = f
        .components
        .iter()
        .map(|c| if n == 1 { (1, 1) } else { (c.h, c.v) })
        .collect();
    let mut planes: Vec<(Vec<u8>, usize)> = factors
        .iter()
        .map(|&(h, v)| (vec![0u8; mcux * h * 8 * mcuy * v * 8], mcux * h * 8))
        .collect();
    let tables: Vec<(&Huffman, &Huffman)> = f
        .components
        .iter()
        .map(|c| Some((f.dc[c.dc].as_ref()?, f.ac[c.ac].as_ref()?)))
        .collect::<Option<_>>()?;
    let mut bits = Bits {
        data: &data,
        pos: 0,
        buf: 0,
        n: 0,
    };
    let mut preds = vec![0i32; n];
    let mut block = [0i16; 65];
    for m in 0..mcux * mcuy {
        if f.restart > 0 && m > 0 && m % f.restart == 0 {
            let start = *starts.get(m / f.restart)?;
            bits = Bits {
                data: &data,
                pos: start,
                buf: 0,
                n: 0,
            };
            preds.iter_mut().for_each(|p| *p = 0);
        }
        let (mx, my) = (m % mcux, m / mcux);
        for (c, &(h, v)) in factors.iter().enumerate() {
            for by in 0..v {
                for bx in 0..h {
                    block.fill(0);
                    bits.block(tables[c].0, tables[c].1, &mut preds[c], &mut block)?;
                    let (plane, stride) = &mut planes[c];
                    let (x, y) = ((mx * h + bx) * 8, (my * v + by) * 8);
                    let (q, out) = (&f.components[c].quant, &mut plane[y * *stride + x..]);
                    #[cfg(target_arch = "x86_64")]
                    if AVX2 {
                        // SAFETY: `AVX2` is true only where the CPU has AVX2 (`decode`).
                        unsafe { avx2::idct(&block, q, out, *stride) };
                        continue;
                    }
                    idct(&block, q, out, *stride);
                }
            }
        }
    }
    // A stream that ends far from where its data ends did not decode.
    if bits.pos.saturating_sub(bits.n as usize / 8) + 2 < data.len() - 16 {
        return None;
    }
    let (w, h) = (f.width, f.height);
    let mut pixels = vec![0u8; w * h * 3];
    if n == 1 {
        let (p, stride) = &planes[0];
        for (i, px) in pixels.chunks_exact_mut(3).enumerate() {
            px.fill(p[(i / w) * stride + i % w]);
        }
    } else {
        if factors[0] != (hmax, vmax) {
            return None;
        }
        let mut chroma = Vec::new();
        for c in 1..3 {
            let (fh, fv) = factors[c];
            let size = ((w * fh).div_ceil(hmax), (h * fv).div_ceil(vmax));
            chroma.push(upsample(
                &planes[c].0,
                planes[c].1,
                size,
                (hmax / fh, vmax / fv),
            )?);
        }
        let (yp, ys) = &planes[0];
        for (y, row) in pixels.chunks_exact_mut(w * 3).enumerate() {
            let l = &yp[y * ys..y * ys + w];
            let cb = &chroma[0].0[y * chroma[0].1..y * chroma[0].1 + w];
            let cr = &chroma[1].0[y * chroma[1].1..y * chroma[1].1 + w];
            for (((px, &l), &cb), &cr) in row.chunks_exact_mut(3).zip(l).zip(cb).zip(cr) {
                // jdcolor.c's tables, computed: FIX(1.40200), FIX(0.34414), FIX(0.71414) and
                // FIX(1.77200) in 16-bit fixed point, with ONE_HALF's rounding.
                let (l, cb, cr) = (i32::from(l), i32::from(cb) - 128, i32::from(cr) - 128);
                px[0] = (l + ((91881 * cr + 32768) >> 16)).clamp(0, 255) as u8;
                px[1] = (l + ((-22554 * cb - 46802 * cr + 32768) >> 16)).clamp(0, 255) as u8;
                px[2] = (l + ((116130 * cb + 32768) >> 16)).clamp(0, 255) as u8;
            }
        }
    }
    Some(RgbImage {
        width: w as u32,
        height: h as u32,
        pixels,
    })
}

/// Pillow's `convert("RGB")` of each file as a SHA-256, or `None` without python3 and Pillow.
fn pillow_hashes(files: &[PathBuf]) -> Option<Vec<String>> {
    const SCRIPT: &str = "import sys, hashlib\nfrom PIL import Image\nfor p in sys.stdin.read().splitlines():\n    try:\n        print(hashlib.sha256(Image.open(p).convert('RGB').tobytes()).hexdigest())\n    except Exception:\n        print('-')\n";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let list: String = files.iter().map(|p| format!("{}\n", p.display())).collect();
    child.stdin.take()?.write_all(list.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (out.status.success() && lines.len() == files.len()).then_some(lines)
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn jpegs(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            jpegs(&p, into);
        } else if std::fs::read(&p).is_ok_and(|b| b.starts_with(&[0xFF, 0xD8])) {
            into.push(p);
        }
    }
}

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: cargo run --release -p loader --example decode_exact -- DIR");
        std::process::exit(2);
    };
    let mut files = Vec::new();
    jpegs(Path::new(&dir), &mut files);
    let bytes: Vec<Vec<u8>> = files.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    let zune = Decoder::default();
    let ours: Vec<Option<RgbImage>> = bytes.iter().map(|b| decode(b)).collect();
    let handled = ours.iter().filter(|o| o.is_some()).count();
    println!(
        "{} JPEGs below {dir}; {handled} of a kind decoded here",
        files.len()
    );
    match pillow_hashes(&files) {
        None => println!("(no python3 with Pillow: not compared)"),
        Some(pillow) => {
            let (mut ours_same, mut zune_same) = (0, 0);
            for (((b, o), want), path) in bytes.iter().zip(&ours).zip(&pillow).zip(&files) {
                match o {
                    Some(o) if sha256(&o.pixels) == *want => ours_same += 1,
                    Some(o) => println!(
                        "  differs from Pillow: {} ({}x{})",
                        path.display(),
                        o.width,
                        o.height
                    ),
                    None => {}
                }
                let mut z = RgbImage::default();
                if zune.decode_into(b, &mut z).is_ok() && sha256(&z.pixels) == *want {
                    zune_same += 1;
                }
            }
            println!(
                "the same bytes as Pillow's convert(\"RGB\"): ours {ours_same} of {handled}, zune-jpeg {zune_same} of {}",
                files.len()
            );
        }
    }
    let kept: Vec<&Vec<u8>> = bytes
        .iter()
        .zip(&ours)
        .filter(|(_, o)| o.is_some())
        .map(|(b, _)| b)
        .collect();
    let mut out = RgbImage::default();
    for round in 1..=3 {
        let t = Instant::now();
        for b in &kept {
            std::hint::black_box(decode(b));
        }
        let ours = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for b in &kept {
            let _ = zune.decode_into(b, &mut out);
        }
        let theirs = t.elapsed().as_secs_f64();
        println!(
            "round {round}, the {} files, one thread: ours {:.0} ms, zune-jpeg {:.0} ms",
            kept.len(),
            ours * 1e3,
            theirs * 1e3
        );
    }
}
