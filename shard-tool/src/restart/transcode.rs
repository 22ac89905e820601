/*!
The lossless re-encode that gives a JPEG restart markers: libjpeg's coefficient API, exactly as
`jpegtran -restart` drives it (`jpeg_read_coefficients`, `jpeg_copy_critical_parameters`,
`jpeg_write_coefficients`), through [`crate::libjpeg`] (why that crate: there). Huffman tables
are optimised, which is lossless and makes the file smaller.
*/

use mozjpeg_sys as jpeg;

pub use crate::libjpeg::TranscodeError;
use crate::libjpeg::with_codec;

/// MCUs per restart interval aimed at: 32 pixels of a 4:4:4 row, 64 of a 4:2:0 one. Finer
/// intervals skip more of a crop's surroundings but cost a marker and a DC reset each. Measured
/// on imagenet-sample (A3, one thread; docs/loader.md, "Crop-aware decoding"): 2 decodes 44.6 % of the
/// pixels and stores 1.9 % more bytes than the sources, 4 45.7 % and 1.3 % more, 8 52.7 % and
/// 0.8 % fewer (the optimised Huffman tables win back more than the markers cost), 16 60.6 %.
pub const DEFAULT_INTERVAL_MCUS: u32 = 4;

/// The restart interval, in MCUs, for an image with `mcus_per_row` MCUs per row: the divisor
/// of the row closest to `target` (by ratio), so that intervals tile the rows and a crop's
/// columns can be cut out. A row whose length is prime gets one interval per row.
pub fn choose_interval(mcus_per_row: u32, target: u32) -> u32 {
    let target = f64::from(target.max(1));
    (1..=mcus_per_row.max(1))
        .filter(|d| mcus_per_row.max(1).is_multiple_of(*d))
        .min_by(|a, b| {
            let far = |d: &u32| (f64::from(*d) / target).ln().abs();
            far(a).total_cmp(&far(b))
        })
        .unwrap_or(1)
}

/// Re-encodes `jpeg`'s coefficients as a baseline JPEG with a restart marker every
/// [`choose_interval`]`(row, target)` MCUs (`target` 0: [`DEFAULT_INTERVAL_MCUS`]). Markers
/// other than the frame's (EXIF, ICC, comments) are not carried over: nothing that decodes
/// pixels for timm reads them.
///
/// # Errors
/// [`TranscodeError`] with libjpeg's message (arithmetic coding, 12-bit, damage).
pub fn add_restart_markers(jpeg: &[u8], target: u32) -> Result<Vec<u8>, TranscodeError> {
    let target = if target == 0 {
        DEFAULT_INTERVAL_MCUS
    } else {
        target
    };
    with_codec(|codec| {
        // SAFETY: `jpeg` outlives the codec's run (this call).
        unsafe { codec.read_header(jpeg) };
        let arrays = codec.read_coefficients();
        // The source's sampling factors: the compressor computes its own only when it starts
        // writing.
        let src = &codec.src;
        let row = if src.num_components == 1 {
            src.image_width.div_ceil(8)
        } else {
            src.image_width
                .div_ceil(8 * src.max_h_samp_factor.max(1) as u32)
        };
        let out = codec.write(arrays, choose_interval(row, target));
        // SAFETY: the decompressor has read all of its coefficients.
        unsafe { jpeg::jpeg_finish_decompress(&mut codec.src) };
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restart::Intervals;
    use crate::synth;

    #[test]
    fn the_interval_divides_the_row_and_is_near_the_target() {
        assert_eq!(choose_interval(63, 8), 9);
        assert_eq!(choose_interval(32, 8), 8);
        assert_eq!(choose_interval(47, 8), 47);
        assert_eq!(choose_interval(3, 8), 3);
        assert_eq!(choose_interval(1, 8), 1);
        assert_eq!(choose_interval(0, 8), 1);
    }

    #[test]
    fn the_re_encode_decodes_to_the_same_pixels() {
        let decode = |jpeg: &[u8]| {
            let mut d = zune_jpeg::JpegDecoder::new_with_options(
                crate::slice_reader::SliceReader::new(jpeg),
                crate::image::jpeg_options(),
            );
            d.decode().unwrap()
        };
        for jpeg in [
            synth::class_image(3, 1, 123, 77),
            synth::gray_jpeg(50, 40),
            synth::class_image(0, 0, 8, 8),
        ] {
            let out = add_restart_markers(&jpeg, 0).unwrap();
            assert_eq!(decode(&out), decode(&jpeg));
            Intervals::default().parse(&out).unwrap();
        }
    }

    #[test]
    fn damage_is_an_error_not_a_crash_or_a_message() {
        let jpeg = synth::class_image(3, 1, 64, 64);
        assert!(add_restart_markers(b"not a jpeg at all", 0).is_err());
        assert!(add_restart_markers(&jpeg[..jpeg.len() / 2], 0).is_err());
        assert!(add_restart_markers(&[], 0).is_err());
    }
}
