//! JPEG ↔ coefficient record, through libjpeg's coefficient API ([`crate::libjpeg`]): the
//! coefficients are read and written by libjpeg, only their layout is ours.

use mozjpeg_sys as jpeg;

use super::{CoefficientError, MAGIC, MalformedRecord, Record, read_block, write_block};
use crate::libjpeg::{BlockArray, Codec, fail, with_codec};
use crate::restart::Intervals;

/// Each component's (h, v) sampling factors as the scan lays out blocks: one block per MCU in a
/// single-component scan, whatever its factors.
fn mcu_layout(src: &jpeg::jpeg_decompress_struct) -> Vec<(usize, usize)> {
    let n = src.num_components.max(0) as usize;
    (0..n)
        .map(|c| {
            // SAFETY: `comp_info` holds `num_components` entries once a header has been read.
            let comp = unsafe { &*src.comp_info.add(c) };
            if n == 1 {
                (1, 1)
            } else {
                (comp.h_samp_factor as usize, comp.v_samp_factor as usize)
            }
        })
        .collect()
}

/// Whether the loader's decoder (`loader::image::jpeg`, the only reader of coefficient records)
/// handles the JPEG whose header `src` read: grayscale, or YCbCr with the luma at full size,
/// sampling factors of 1 or 2. Anything else (CMYK, Adobe RGB, 4:1:1) stays a JPEG record.
fn readable_by_the_loader(src: &jpeg::jpeg_decompress_struct) -> bool {
    let layout = mcu_layout(src);
    let factors_ok = layout
        .iter()
        .all(|&(h, v)| (1..=2).contains(&h) && (1..=2).contains(&v));
    let luma_full = layout
        .first()
        .is_some_and(|&luma| layout.iter().all(|&(h, v)| h <= luma.0 && v <= luma.1));
    let space_ok = matches!(
        (src.jpeg_color_space, layout.len()),
        (jpeg::J_COLOR_SPACE::JCS_GRAYSCALE, 1) | (jpeg::J_COLOR_SPACE::JCS_YCbCr, 3)
    );
    factors_ok && luma_full && space_ok
}

/// Visits the blocks of `arrays` in scan order: `f(chunk_start, component, block)`, with
/// `chunk_start` true for the first block of each restart interval.
fn for_each_block(
    codec: &mut Codec,
    arrays: *mut BlockArray,
    (mcus_x, mcus_y, interval): (usize, usize, usize),
    writable: bool,
    mut f: impl FnMut(bool, usize, &mut [i16; 64]),
) {
    let layout = mcu_layout(&codec.src);
    let src = &mut *codec.src;
    // SAFETY: `mem` is the decompressor's manager, set up by jpeg_create_decompress.
    let access = unsafe { (*src.common.mem).access_virt_barray };
    let Some(access) = access else {
        fail("libjpeg has no block access");
    };
    let mut rows: Vec<jpeg::JBLOCKARRAY> = vec![std::ptr::null_mut(); layout.len()];
    for my in 0..mcus_y {
        for (c, &(_, v)) in layout.iter().enumerate() {
            // SAFETY: `arrays` holds one realised array per component, each at least
            // `mcus_y * v` block rows tall; the rows stay valid until the next access of it.
            rows[c] = unsafe {
                access(
                    &mut src.common,
                    *arrays.add(c),
                    (my * v) as u32,
                    v as u32,
                    jpeg::boolean::from(writable),
                )
            };
        }
        for mx in 0..mcus_x {
            let m = my * mcus_x + mx;
            let mut start = m % interval == 0;
            for (c, &(h, v)) in layout.iter().enumerate() {
                for by in 0..v {
                    for bx in 0..h {
                        // SAFETY: row `by` of the `v` accessed, block `mx * h + bx` of a row
                        // at least `mcus_x * h` blocks wide.
                        let block = unsafe { &mut *(*rows[c].add(by)).add(mx * h + bx) };
                        f(start, c, block);
                        start = false;
                    }
                }
            }
        }
    }
}

/// `jpeg` (a single-scan baseline JPEG whose restart intervals tile its MCU rows, as
/// [`crate::restart::add_restart_markers`] writes them) as a coefficient record.
///
/// # Errors
/// [`CoefficientError::Unsuitable`] for any other JPEG; [`CoefficientError::Libjpeg`] if
/// libjpeg cannot read it.
pub fn from_jpeg(jpeg: &[u8]) -> Result<Vec<u8>, CoefficientError> {
    let mut intervals = Intervals::default();
    intervals
        .parse(jpeg)
        .map_err(|e| CoefficientError::Unsuitable(e.to_string()))?;
    let header = &jpeg[..intervals.scan_start()];
    let chunks = intervals.len();
    let grid = intervals.mcu_grid();
    let grid = (
        grid.0 as usize,
        grid.1 as usize,
        intervals.interval() as usize,
    );
    let mut body = Vec::with_capacity(jpeg.len() * 2);
    let mut offsets = Vec::with_capacity(chunks + 1);
    let readable = with_codec(|codec| {
        // SAFETY: `jpeg` outlives the codec's run (this call).
        unsafe { codec.read_header(jpeg) };
        if !readable_by_the_loader(&codec.src) {
            return false;
        }
        let arrays = codec.read_coefficients();
        let mut preds = [0i16; 4];
        for_each_block(codec, arrays, grid, false, |start, c, block| {
            if start {
                offsets.push(body.len() as u32);
                preds = [0; 4];
            }
            let mut natural = *block;
            natural[0] = block[0].wrapping_sub(preds[c & 3]);
            preds[c & 3] = block[0];
            write_block(&mut body, &natural);
        });
        true
    })?;
    if !readable {
        return Err(CoefficientError::Unsuitable(
            "not grayscale or YCbCr with sampling factors of 1 or 2 and full-size luma (what \
             the loader's decoder reads)"
                .into(),
        ));
    }
    offsets.push(body.len() as u32);
    if offsets.len() != chunks + 1 || u32::try_from(body.len()).is_err() {
        return Err(CoefficientError::Unsuitable(
            "its blocks do not fill its restart intervals".into(),
        ));
    }
    let mut out = Vec::with_capacity(12 + header.len() + 4 * offsets.len() + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&(chunks as u32).to_le_bytes());
    out.extend_from_slice(header);
    for o in offsets {
        out.extend_from_slice(&o.to_le_bytes());
    }
    out.extend_from_slice(&body);
    Ok(out)
}

/// The JPEG a coefficient record was made from, byte for byte: libjpeg writes its coefficients
/// again with the same parameters as [`crate::restart::add_restart_markers`].
///
/// # Errors
/// [`CoefficientError::Malformed`] if the record's bytes contradict its layout;
/// [`CoefficientError::Libjpeg`] if libjpeg refuses its header.
pub fn to_jpeg(record: &[u8]) -> Result<Vec<u8>, CoefficientError> {
    let malformed = |why| CoefficientError::Malformed(MalformedRecord(why));
    let r = Record::parse(record)?;
    let mut intervals = Intervals::default();
    intervals
        .parse(record)
        .map_err(|_| malformed("its header and chunks disagree"))?;
    let grid = intervals.mcu_grid();
    let grid = (
        grid.0 as usize,
        grid.1 as usize,
        intervals.interval() as usize,
    );
    let mut damaged = false;
    let jpeg = with_codec(|codec| {
        // SAFETY: `r.header` outlives the codec's run (this call).
        unsafe { codec.read_header(r.header) };
        let arrays = allocate(codec);
        let (mut pos, mut chunk, mut preds) = (0, 0, [0i16; 4]);
        for_each_block(
            codec,
            arrays.as_ptr().cast_mut(),
            grid,
            true,
            |start, c, block| {
                if start {
                    damaged |= pos != r.offset(chunk);
                    chunk += 1;
                    preds = [0; 4];
                }
                let mut natural = [0i16; 64];
                if read_block(r.body, &mut pos, &mut natural).is_none() {
                    damaged = true;
                    return;
                }
                preds[c & 3] = preds[c & 3].wrapping_add(natural[0]);
                natural[0] = preds[c & 3];
                *block = natural;
            },
        );
        damaged |= pos != r.body.len();
        codec.write(arrays.as_ptr().cast_mut(), intervals.interval())
    })?;
    if damaged {
        return Err(malformed("its blocks do not match its chunk offsets"));
    }
    Ok(jpeg)
}

/// One zeroed block array per component of the header the decompressor read, sized as libjpeg's
/// own coefficient reader sizes them (`jdcoefct.c`: rounded up to whole MCUs).
fn allocate(codec: &mut Codec) -> Vec<BlockArray> {
    let src = &mut *codec.src;
    let n = src.num_components.max(0) as usize;
    // SAFETY: `mem` is the decompressor's manager.
    let mem = unsafe { &*src.common.mem };
    let (Some(request), Some(realize)) = (mem.request_virt_barray, mem.realize_virt_arrays) else {
        fail("libjpeg has no block arrays");
    };
    let arrays = (0..n)
        .map(|c| {
            // SAFETY: `comp_info` holds `num_components` entries after the header.
            let comp = unsafe { &*src.comp_info.add(c) };
            let (h, v) = (comp.h_samp_factor as u32, comp.v_samp_factor as u32);
            let (w, rows) = (comp.width_in_blocks, comp.height_in_blocks);
            // SAFETY: libjpeg's documented request, before the arrays are realised.
            unsafe {
                request(
                    &mut src.common,
                    jpeg::JPOOL_IMAGE,
                    1,
                    w.div_ceil(h) * h,
                    rows.div_ceil(v) * v,
                    v,
                )
            }
        })
        .collect();
    // SAFETY: every array requested above is realised (allocated, zeroed) here.
    unsafe { realize(&mut src.common) };
    arrays
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restart::{Intervals, add_restart_markers};
    use crate::synth;

    fn restarted() -> Vec<Vec<u8>> {
        [
            synth::class_image(3, 1, 123, 77),
            synth::class_image(0, 0, 8, 8),
            synth::class_image(2, 2, 300, 40),
            synth::gray_jpeg(50, 40),
        ]
        .iter()
        .map(|j| add_restart_markers(j, 2).unwrap())
        .collect()
    }

    #[test]
    fn a_record_gives_back_its_jpeg_byte_for_byte() {
        for jpeg in restarted() {
            let record = from_jpeg(&jpeg).unwrap();
            assert!(super::super::is_coefficients(&record));
            assert_eq!(to_jpeg(&record).unwrap(), jpeg);
        }
    }

    #[test]
    fn a_record_splits_into_the_jpegs_intervals_and_splices_into_a_record() {
        let jpeg = &restarted()[0];
        let record = from_jpeg(jpeg).unwrap();
        let (mut a, mut b) = (Intervals::default(), Intervals::default());
        a.parse(jpeg).unwrap();
        b.parse(&record).unwrap();
        assert!(b.is_coefficients() && !a.is_coefficients());
        assert_eq!(
            (a.len(), a.mcu_grid(), a.interval(), a.width(), a.height()),
            (b.len(), b.mcu_grid(), b.interval(), b.width(), b.height())
        );
        let covering = b.covering(40..60, 20..30);
        assert!(!covering.is_whole(&b));
        let mut spliced = Vec::new();
        b.splice(&record, &covering, &mut spliced);
        let mut c = Intervals::default();
        c.parse(&spliced).unwrap();
        assert_eq!((c.width(), c.height()), (covering.width, covering.height));
        let taken = covering.rows.len() * covering.intervals.len();
        assert_eq!(c.len(), taken);
        // The spliced record is the spliced JPEG's record.
        let mut spliced_jpeg = Vec::new();
        a.splice(jpeg, &covering, &mut spliced_jpeg);
        assert_eq!(from_jpeg(&spliced_jpeg).unwrap(), spliced);
    }

    #[test]
    fn damage_is_an_error_not_a_crash() {
        let record = from_jpeg(&restarted()[0]).unwrap();
        for cut in (0..record.len()).step_by(41) {
            assert!(to_jpeg(&record[..cut]).is_err());
        }
        for at in (0..record.len()).step_by(7) {
            let mut damaged = record.clone();
            damaged[at] ^= 0x21;
            let _ = to_jpeg(&damaged);
        }
        assert!(from_jpeg(&synth::class_image(1, 1, 32, 32)).is_err());
        assert!(from_jpeg(b"not a jpeg").is_err());
        // CMYK: a JPEG the loader's decoder does not read stays a JPEG.
        let cmyk = add_restart_markers(&synth::cmyk_jpeg(32, 16, [1, 2, 3, 4]), 0).unwrap();
        assert!(matches!(
            from_jpeg(&cmyk),
            Err(CoefficientError::Unsuitable(_))
        ));
    }
}
