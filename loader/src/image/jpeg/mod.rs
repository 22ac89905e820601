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
    /// Each component's samples, whole blocks.
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
    let mut strides = [0; 3];
    for c in 0..n {
        let (h, v) = factors[c];
        strides[c] = mcux * h * 8;
        // Every sample is written by a block's IDCT: no need to clear.
        planes[c].resize(strides[c] * mcuy * v * 8, 0);
    }
    let mut block = [0i16; 65];
    for m in 0..mcux * mcuy {
        if f.restart > 0 && m > 0 && m % f.restart == 0 {
            blocks.restart(m / f.restart)?;
        }
        let (mx, my) = (m % mcux, m / mcux);
        for c in 0..n {
            let ((h, v), stride) = (factors[c], strides[c]);
            for by in 0..v {
                for bx in 0..h {
                    block.fill(0);
                    let any_ac = blocks.block(c, &mut block)?;
                    let (x, y) = ((mx * h + bx) * 8, (my * v + by) * 8);
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
    if !blocks.ended() {
        return None;
    }
    let (w, h) = (f.width, f.height);
    let size = (u32::try_from(w).ok()?, u32::try_from(h).ok()?);
    pixels.resize(w * h * 3, 0);
    if n == 1 {
        let (p, stride) = (&planes[0], strides[0]);
        for (row, gray) in pixels.chunks_exact_mut(w * 3).zip(p.chunks(stride)) {
            for (px, &v) in row.chunks_exact_mut(3).zip(gray) {
                px.fill(v);
            }
        }
    } else {
        // Cb and Cr, each its plane's size and its factors against the luma's.
        let sub = [1, 2].map(|c| {
            let (fh, fv) = factors[c];
            let size = ((w * fh).div_ceil(hmax), (h * fv).div_ceil(vmax));
            (size, (hmax / fh, vmax / fv))
        });
        for (c, ((cw, _), (fh, _))) in sub.iter().enumerate() {
            chroma[c].resize(cw * fh, 0);
        }
        sums.resize(sub[0].0.0.max(sub[1].0.0), 0);
        let (yp, ys) = (&planes[0], strides[0]);
        for (y, row) in pixels.chunks_exact_mut(w * 3).enumerate() {
            let l = &yp[y * ys..y * ys + w];
            let [cb_row, cr_row] = &mut *chroma;
            let cb = chroma_row(&planes[1], strides[1], sub[0], y, w, cb_row, sums)?;
            let cr = chroma_row(&planes[2], strides[2], sub[1], y, w, cr_row, sums)?;
            #[cfg(target_arch = "x86_64")]
            if AVX2 {
                // SAFETY: `AVX2` is true only where the CPU has AVX2 (`decode_into`).
                unsafe { colour::avx2::row(l, cb, cr, row) };
                continue;
            }
            colour::row(l, cb, cr, row);
        }
    }
    Some(size)
}

/// Row `y` of a chroma plane (row `stride`) at the luma's size, `w` samples: the plane's own row
/// where it is not subsampled, else upsampled into `buf`.
#[inline(always)]
fn chroma_row<'a>(
    plane: &'a [u8],
    stride: usize,
    (size, factors): ((usize, usize), (usize, usize)),
    y: usize,
    w: usize,
    buf: &'a mut [u8],
    sums: &mut [u16],
) -> Option<&'a [u8]> {
    if factors == (1, 1) {
        return plane.get(y * stride..y * stride + w);
    }
    upsample_row(plane, stride, size, factors, y, buf, sums)?;
    buf.get(..w)
}
