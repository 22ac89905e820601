/*!
A JPEG decoder with libjpeg-turbo's arithmetic, so Pillow's pixels (docs/loader.md, "A decoder of
our own"): zune-jpeg's RGB is within 4 levels of Pillow's but the same bytes on no imagenet-sample
image; this gives Pillow 13's `convert("RGB")` on all 1,000 of them. It is the loader's default
decoder, and the only reader of coefficient records ([`shard_tool::coefficients`]), whose
blocks it takes as stored instead of Huffman-decoding them (docs/loader.md, "Coefficient
records").

Its stages follow libjpeg-turbo's sources: the Huffman stage into coefficients (`huffman.rs`),
or the stored blocks (`blocks.rs`), `jidctint.c`'s IDCT with `jdmaster.c`'s range limit
(`idct.rs`), `jdsample.c`'s fancy upsampling (`upsample.rs`) and `jdcolor.c`'s fixed-point
YCbCr → RGB (`colour.rs`). It handles baseline, 8-bit, single-scan JPEGs, grayscale or YCbCr
with sampling factors of 1 or 2, restart intervals included; anything else is left to zune-jpeg.
*/

mod blocks;
mod colour;
mod frame;
mod huffman;
mod idct;
mod upsample;

use blocks::{Blocks, Scan, Stored};
use frame::{Frame, frame};
use huffman::{Bits, unstuff};
use idct::idct;
use shard_tool::coefficients::{self, Record};
use upsample::upsample_row;

/// Decodes `jpeg` into `pixels` (RGB rows, as Pillow's `convert("RGB")`) with libjpeg-turbo's
/// arithmetic; its width and height. `jpeg` may also be a coefficient record
/// ([`shard_tool::coefficients`]), whose blocks are read as stored. `None` where it is not a
/// kind handled here (progressive, arithmetic-coded, 12-bit, CMYK, Adobe RGB, sampling factors
/// above 2, an image above `max_pixels`) or does not decode: `pixels` is then unspecified, and
/// the caller decodes it another way (a coefficient record, no other way: it is damaged).
/// `avx2`: take the AVX2 IDCT (the CPU must have it; [`crate::image::cpu::CpuExt`] says); the
/// bytes are the same.
pub fn decode_into(
    jpeg: &[u8],
    pixels: &mut Vec<u8>,
    max_pixels: u64,
    avx2: bool,
) -> Option<(u32, u32)> {
    SCRATCH.with_borrow_mut(|scratch| {
        #[cfg(target_arch = "x86_64")]
        if avx2 && std::arch::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            fn with_avx2(
                jpeg: &[u8],
                pixels: &mut Vec<u8>,
                max_pixels: u64,
                scratch: &mut Scratch,
            ) -> Option<(u32, u32)> {
                decode::<true>(jpeg, pixels, max_pixels, scratch)
            }
            // SAFETY: the CPU has AVX2.
            return unsafe { with_avx2(jpeg, pixels, max_pixels, scratch) };
        }
        let _ = avx2;
        decode::<false>(jpeg, pixels, max_pixels, scratch)
    })
}

/// A thread's buffers, kept from one image to the next (docs/design.md invariant 5: no
/// allocation per image once they have grown).
#[derive(Default)]
struct Scratch {
    /// The scan, unstuffed, and where its restart intervals start.
    data: Vec<u8>,
    starts: Vec<usize>,
    planes: Planes,
}

/// The decode's sample planes.
#[derive(Default)]
struct Planes {
    /// Each component's samples, whole blocks, for the last three MCU rows (a [`Ring`]).
    planes: [Vec<u8>; 3],
    /// A row of Cb and one of Cr upsampled to the luma's width.
    chroma: [Vec<u8>; 2],
    /// The upsampler's column sums.
    sums: Vec<u16>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// [`decode_into`]'s body, compiled once with AVX2 enabled and once without: the headers, and
/// the blocks' source.
#[inline(always)]
fn decode<const AVX2: bool>(
    bytes: &[u8],
    pixels: &mut Vec<u8>,
    max_pixels: u64,
    scratch: &mut Scratch,
) -> Option<(u32, u32)> {
    let Scratch {
        data,
        starts,
        planes,
    } = scratch;
    let too_large = |f: &Frame| (f.width as u64) * (f.height as u64) > max_pixels;
    if coefficients::is_coefficients(bytes) {
        let record = Record::parse(bytes).ok()?;
        let f = frame(record.header, false)?;
        if too_large(&f) {
            return None;
        }
        let stored = Stored {
            record,
            pos: 0,
            preds: [0; 3],
        };
        return decode_body::<AVX2, _>(&f, stored, pixels, planes);
    }
    let f = frame(bytes, true)?;
    if too_large(&f) {
        return None;
    }
    unstuff(bytes.get(f.scan..)?, data, starts);
    let mut tables = [None; 3];
    for (c, comp) in f.components.iter().enumerate() {
        tables[c] = Some((f.dc[comp.dc].as_ref()?, f.ac[comp.ac].as_ref()?));
    }
    let scan = Scan {
        bits: Bits {
            data,
            pos: 0,
            buf: 0,
            n: 0,
        },
        starts,
        tables,
        preds: [0; 3],
    };
    decode_body::<AVX2, _>(&f, scan, pixels, planes)
}

/// The blocks through the IDCT, upsampling and colour conversion.
#[inline(always)]
fn decode_body<const AVX2: bool, B: Blocks>(
    f: &Frame,
    mut blocks: B,
    pixels: &mut Vec<u8>,
    Planes {
        planes,
        chroma,
        sums,
    }: &mut Planes,
) -> Option<(u32, u32)> {
    let n = f.components.len();
    let hmax = f.components.iter().map(|c| c.h).max()?;
    let vmax = f.components.iter().map(|c| c.v).max()?;
    // A single-component scan is not interleaved: one block per MCU, whatever the factors.
    let (bh, bv) = if n == 1 { (1, 1) } else { (hmax, vmax) };
    let (mcux, mcuy) = (f.width.div_ceil(8 * bh), f.height.div_ceil(8 * bv));
    let mut factors = [(1, 1); 3];
    for (c, comp) in f.components.iter().enumerate() {
        factors[c] = if n == 1 { (1, 1) } else { (comp.h, comp.v) };
    }
    // Luma at full size, chroma at most halved: what libjpeg upsamples as Pillow asks it to.
    if n == 3 && factors[0] != (hmax, vmax) {
        return None;
    }
    let (w, h) = (f.width, f.height);
    let size = (u32::try_from(w).ok()?, u32::try_from(h).ok()?);
    let per_mcu: usize = factors[..n].iter().map(|(fh, fv)| fh * fv).sum();
    if !blocks.may_hold(mcux * mcuy * per_mcu) {
        return None;
    }
    let mut rings = [Ring::default(); 3];
    for c in 0..n {
        // (bh, bv): the largest factors of the scan's interleave (1 for a single component).
        let (fh, fv) = factors[c];
        rings[c] = Ring {
            stride: mcux * fh * 8,
            rows: fv * 8,
            width: (w * fh).div_ceil(bh),
            height: (h * fv).div_ceil(bv),
            up: (bh / fh, bv / fv),
        };
        // Every sample is written by a block's IDCT before it is read: no need to clear.
        planes[c].resize(rings[c].stride * rings[c].rows * RING_ROWS, 0);
    }
    pixels.resize(w * h * 3, 0);
    if n == 3 {
        for c in 0..2 {
            chroma[c].resize(rings[c + 1].width * rings[c + 1].up.0, 0);
        }
        sums.resize(rings[1].width.max(rings[2].width), 0);
    }
    let mut block = [0i16; 65];
    for my in 0..mcuy {
        for mx in 0..mcux {
            let m = my * mcux + mx;
            if f.restart > 0 && m > 0 && m % f.restart == 0 {
                blocks.restart(m / f.restart)?;
            }
            for c in 0..n {
                let ((fh, fv), ring) = (factors[c], &rings[c]);
                for by in 0..fv {
                    for bx in 0..fh {
                        block.fill(0);
                        let any_ac = blocks.block(c, &mut block)?;
                        let (x, y) = ((mx * fh + bx) * 8, (my % RING_ROWS) * ring.rows + by * 8);
                        let stride = ring.stride;
                        let (q, dst) = (&f.components[c].quant, &mut planes[c][y * stride + x..]);
                        if !any_ac {
                            idct::dc_only(block[0], q[0], dst, stride);
                            continue;
                        }
                        #[cfg(target_arch = "x86_64")]
                        if AVX2 {
                            // SAFETY: `AVX2` is true only where the CPU has AVX2 (`decode_into`).
                            unsafe { idct::avx2::idct(&block, q, dst, stride) };
                            continue;
                        }
                        idct(&block, q, dst, stride);
                    }
                }
            }
        }
        // Row `my - 1`'s pixels can be made now: the upsampler reads one chroma row into the
        // MCU rows above and below, and both are in the ring.
        if my > 0 {
            emit::<AVX2>(my - 1, n, &rings, planes, pixels, chroma, sums)?;
        }
    }
    if !blocks.ended() {
        return None;
    }
    emit::<AVX2>(mcuy - 1, n, &rings, planes, pixels, chroma, sums)?;
    Some(size)
}

/// MCU rows of samples kept: the one being decoded, and the two whose rows the one before it
/// needs to be upsampled.
const RING_ROWS: usize = 3;

/// Where a component's samples are kept while they are decoded: the last [`RING_ROWS`] MCU rows.
#[derive(Debug, Clone, Copy, Default)]
struct Ring {
    /// Samples per stored row (whole blocks).
    stride: usize,
    /// Sample rows per MCU row.
    rows: usize,
    /// The component's size in samples (what libjpeg upsamples from).
    width: usize,
    height: usize,
    /// Its upsampling factors to the luma's size.
    up: (usize, usize),
}

impl Ring {
    /// Sample row `y` of the component (`width` samples), if it is still in the ring.
    #[inline(always)]
    fn row<'a>(&self, plane: &'a [u8], y: usize) -> Option<&'a [u8]> {
        let at = ((y / self.rows) % RING_ROWS * self.rows + y % self.rows) * self.stride;
        plane.get(at..at + self.width)
    }
}

/// Writes the RGB rows of MCU row `r` into `pixels`: luma, and chroma upsampled row by row.
#[inline(always)]
fn emit<const AVX2: bool>(
    r: usize,
    n: usize,
    rings: &[Ring; 3],
    planes: &[Vec<u8>; 3],
    pixels: &mut [u8],
    chroma: &mut [Vec<u8>; 2],
    sums: &mut [u16],
) -> Option<()> {
    let luma = &rings[0];
    let w = luma.width;
    let first = r * luma.rows;
    let last = (first + luma.rows).min(luma.height);
    let out = pixels.get_mut(first * w * 3..last * w * 3)?;
    for (oy, row) in (first..last).zip(out.chunks_exact_mut(w * 3)) {
        let l = luma.row(&planes[0], oy)?;
        if n == 1 {
            for (px, &v) in row.chunks_exact_mut(3).zip(l) {
                px.fill(v);
            }
            continue;
        }
        let [cb_row, cr_row] = &mut *chroma;
        let cb = chroma_row(&rings[1], &planes[1], oy, cb_row, sums)?.get(..w)?;
        let cr = chroma_row(&rings[2], &planes[2], oy, cr_row, sums)?.get(..w)?;
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: `AVX2` is true only where the CPU has AVX2 (`decode_into`).
            unsafe { colour::avx2::row(l, cb, cr, row) };
            continue;
        }
        colour::row(l, cb, cr, row);
    }
    Some(())
}

/// A chroma component's samples under output row `oy`, at the luma's size: its own row where
/// it is not subsampled, else upsampled into `buf`.
#[inline(always)]
fn chroma_row<'a>(
    ring: &Ring,
    plane: &'a [u8],
    oy: usize,
    buf: &'a mut [u8],
    sums: &mut [u16],
) -> Option<&'a [u8]> {
    let (fh, fv) = ring.up;
    let (y, below) = (oy / fv, oy % fv == 1);
    let near = ring.row(plane, y)?;
    if (fh, fv) == (1, 1) {
        return Some(near);
    }
    // The row above or below, the edge row itself at the component's top and bottom.
    let far_y = if fv == 1 {
        y
    } else if below {
        (y + 1).min(ring.height - 1)
    } else {
        y.saturating_sub(1)
    };
    upsample_row((near, ring.row(plane, far_y)?), (fh, fv), below, buf, sums)?;
    Some(buf)
}
