/*!
A JPEG decoder with libjpeg-turbo's arithmetic, so Pillow's pixels (docs/loader.md, "A decoder of
our own"): zune-jpeg's RGB is within 4 levels of Pillow's but the same bytes on no imagenet-sample
image; this gives Pillow 13's `convert("RGB")` on all 1,000 of them, within 6 % of zune-jpeg's
speed.

Its stages follow libjpeg-turbo's sources: the Huffman stage into coefficients (`huffman.rs`),
`jidctint.c`'s IDCT with `jdmaster.c`'s range limit (`idct.rs`), `jdsample.c`'s fancy
upsampling (`upsample.rs`) and `jdcolor.c`'s fixed-point YCbCr → RGB (here). It handles baseline,
8-bit, single-scan JPEGs, grayscale or YCbCr with sampling factors of 1 or 2, restart intervals
included; anything else is left to zune-jpeg. Not yet the loader's default decoder
(`loader bench --decoder pillow` measures it).
*/

mod frame;
mod huffman;
mod idct;
mod upsample;

use frame::frame;
use huffman::{Bits, Huffman, unstuff};
use idct::idct;
use upsample::upsample;

/// Decodes `jpeg` into `pixels` (RGB rows, as Pillow's `convert("RGB")`) with libjpeg-turbo's
/// arithmetic; its width and height. `None` where it is not a kind handled here (progressive, arithmetic-coded,
/// 12-bit, CMYK, Adobe RGB, sampling factors above 2, an image above `max_pixels`) or does not
/// decode: `pixels` is then unspecified, and the caller decodes it another way. `avx2`: take the
/// AVX2 IDCT (the CPU must have it; [`crate::image::cpu::CpuExt`] says); the bytes are the same.
pub fn decode_into(
    jpeg: &[u8],
    pixels: &mut Vec<u8>,
    max_pixels: u64,
    avx2: bool,
) -> Option<(u32, u32)> {
    #[cfg(target_arch = "x86_64")]
    if avx2 && std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn with_avx2(jpeg: &[u8], pixels: &mut Vec<u8>, max_pixels: u64) -> Option<(u32, u32)> {
            decode_body::<true>(jpeg, pixels, max_pixels)
        }
        // SAFETY: the CPU has AVX2.
        return unsafe { with_avx2(jpeg, pixels, max_pixels) };
    }
    let _ = avx2;
    decode_body::<false>(jpeg, pixels, max_pixels)
}

/// [`decode_into`]'s body, compiled once with AVX2 enabled and once without.
#[inline(always)]
fn decode_body<const AVX2: bool>(
    jpeg: &[u8],
    pixels: &mut Vec<u8>,
    max_pixels: u64,
) -> Option<(u32, u32)> {
    let f = frame(jpeg)?;
    if (f.width as u64) * (f.height as u64) > max_pixels {
        return None;
    }
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
    // Luma at full size, chroma at most halved: what libjpeg upsamples as Pillow asks it to.
    if n == 3 && factors[0] != (hmax, vmax) {
        return None;
    }
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
                    let (q, dst) = (&f.components[c].quant, &mut plane[y * *stride + x..]);
                    #[cfg(target_arch = "x86_64")]
                    if AVX2 {
                        // SAFETY: `AVX2` is true only where the CPU has AVX2 (`decode_into`).
                        unsafe { idct::avx2::idct(&block, q, dst, *stride) };
                        continue;
                    }
                    idct(&block, q, dst, *stride);
                }
            }
        }
    }
    // A stream that ends far from where its data ends did not decode.
    if bits.pos.saturating_sub(bits.n as usize / 8) + 2 < data.len() - 16 {
        return None;
    }
    let (w, h) = (f.width, f.height);
    let size = (u32::try_from(w).ok()?, u32::try_from(h).ok()?);
    pixels.resize(w * h * 3, 0);
    if n == 1 {
        let (p, stride) = &planes[0];
        for (i, px) in pixels.chunks_exact_mut(3).enumerate() {
            px.fill(p[(i / w) * stride + i % w]);
        }
    } else {
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
    Some(size)
}
