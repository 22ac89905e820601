/*!
The lossless re-encode that gives a JPEG restart markers: libjpeg's coefficient API, exactly as
`jpegtran -restart` drives it (`jpeg_read_coefficients`, `jpeg_copy_critical_parameters`,
`jpeg_write_coefficients`), through `mozjpeg-sys`.

Why mozjpeg-sys: it is the maintained crate that builds a libjpeg (MozJPEG 4, a libjpeg-turbo
fork) from source with only a C compiler, and it exposes the coefficient API and `C-unwind`
error callbacks. The TurboJPEG API (the `turbojpeg` crate) cannot set a restart interval on a
lossless transform, and a hand-written Huffman re-encoder is what this crate exists to avoid.
MozJPEG's own extensions are switched off (`JCP_FASTEST`: libjpeg-turbo's defaults, baseline
sequential); Huffman tables are optimised, which is lossless and makes the file smaller.

libjpeg reports a fatal error by calling `error_exit`, which must not return: ours unwinds
(without the panic hook, so nothing is printed) to a `catch_unwind` here, after which both
codec objects are destroyed.
*/

use std::ffi::c_int;
use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use mozjpeg_sys as jpeg;

/// MCUs per restart interval aimed at: 32 pixels of a 4:4:4 row, 64 of a 4:2:0 one. Finer
/// intervals skip more of a crop's surroundings but cost a marker and a DC reset each. Measured
/// on imagenet-sample (A3, one thread; docs/loader.md, "Crop-aware decoding"): 2 decodes 44.6 % of the
/// pixels and stores 1.9 % more bytes than the sources, 4 45.7 % and 1.3 % more, 8 52.7 % and
/// 0.8 % fewer (the optimised Huffman tables win back more than the markers cost), 16 60.6 %.
pub const DEFAULT_INTERVAL_MCUS: u32 = 4;

/// Why a JPEG was not re-encoded (the packer then stores it as it was).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("libjpeg cannot re-encode it: {0}")]
pub struct TranscodeError(pub String);

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
    let mut codec = Codec::new();
    let result = catch_unwind(AssertUnwindSafe(|| codec.transcode(jpeg, target)));
    drop(codec);
    match result {
        Ok(out) => Ok(out),
        Err(payload) => match payload.downcast::<LibjpegError>() {
            Ok(e) => Err(TranscodeError(e.0)),
            Err(other) => resume_unwind(other),
        },
    }
}

/// A libjpeg error message, carried by the unwind out of `error_exit`.
struct LibjpegError(String);

/// `error_exit`: formats libjpeg's message and unwinds to [`add_restart_markers`].
unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg::jpeg_common_struct) {
    // libjpeg's message template for the code (its `%d` left unfilled): `format_message` would
    // write through the shared reference the binding declares.
    // SAFETY: libjpeg calls this with its own object, whose `err` points at our manager, whose
    // table holds `last_jpeg_message + 1` NUL-terminated strings.
    let message = unsafe {
        let err = &*cinfo.err;
        let code = err.msg_code;
        if code > 0 && code <= err.last_jpeg_message && !err.jpeg_message_table.is_null() {
            let text = *err.jpeg_message_table.add(code as usize);
            std::ffi::CStr::from_ptr(text)
                .to_string_lossy()
                .into_owned()
        } else {
            format!("libjpeg error {code}")
        }
    };
    resume_unwind(Box::new(LibjpegError(message)));
}

/// `output_message`: silent. Warnings are counted by libjpeg (`num_warnings`) and turned into
/// a refusal after the read.
unsafe extern "C-unwind" fn quiet(_: &mut jpeg::jpeg_common_struct) {}

/// The output buffer, with libjpeg's destination manager first so that the manager's address
/// is the struct's.
#[repr(C)]
struct Destination {
    manager: jpeg::jpeg_destination_mgr,
    buffer: Vec<u8>,
}

unsafe extern "C-unwind" fn init_destination(cinfo: &mut jpeg::jpeg_compress_struct) {
    // SAFETY: `dest` points at the `Destination` set up in `transcode`, alive for the call.
    let dest = unsafe { &mut *cinfo.dest.cast::<Destination>() };
    dest.buffer.resize(64 * 1024, 0);
    dest.manager.next_output_byte = dest.buffer.as_mut_ptr();
    dest.manager.free_in_buffer = dest.buffer.len();
}

unsafe extern "C-unwind" fn empty_output_buffer(
    cinfo: &mut jpeg::jpeg_compress_struct,
) -> jpeg::boolean {
    // SAFETY: as in `init_destination`.
    let dest = unsafe { &mut *cinfo.dest.cast::<Destination>() };
    // libjpeg calls this when the whole buffer is full (free_in_buffer is 0).
    let full = dest.buffer.len();
    dest.buffer.resize(full * 2, 0);
    // SAFETY: `full` is within the resized buffer.
    dest.manager.next_output_byte = unsafe { dest.buffer.as_mut_ptr().add(full) };
    dest.manager.free_in_buffer = dest.buffer.len() - full;
    1
}

unsafe extern "C-unwind" fn term_destination(cinfo: &mut jpeg::jpeg_compress_struct) {
    // SAFETY: as in `init_destination`.
    let dest = unsafe { &mut *cinfo.dest.cast::<Destination>() };
    let written = dest.buffer.len() - dest.manager.free_in_buffer;
    dest.buffer.truncate(written);
}

/// An all-zero C struct: the state libjpeg's create functions expect to overwrite.
///
/// # Safety
/// `T` must be plain C data for which all-zero is valid (pointers, integers and optional
/// function pointers).
unsafe fn zeroed<T>() -> T {
    // SAFETY: the caller promises all-zero is a valid `T`.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

/// A decompressor and a compressor sharing one silent error manager; destroyed on drop, also
/// after an error unwound out of libjpeg.
struct Codec {
    err: Box<jpeg::jpeg_error_mgr>,
    src: Box<jpeg::jpeg_decompress_struct>,
    dst: Box<jpeg::jpeg_compress_struct>,
    dest: Box<Destination>,
}

impl Codec {
    fn new() -> Codec {
        let mut codec = Codec {
            // SAFETY: libjpeg's structs are plain C data.
            err: Box::new(unsafe { zeroed() }),
            // SAFETY: as above.
            src: Box::new(unsafe { zeroed() }),
            // SAFETY: as above.
            dst: Box::new(unsafe { zeroed() }),
            dest: Box::new(Destination {
                // SAFETY: as above.
                manager: unsafe { zeroed() },
                buffer: Vec::new(),
            }),
        };
        // SAFETY: `err` is a valid manager that outlives both codec objects (dropped after).
        unsafe {
            jpeg::jpeg_std_error(&mut codec.err);
        }
        codec.err.error_exit = Some(error_exit);
        codec.err.output_message = Some(quiet);
        codec.src.common.err = &mut *codec.err;
        codec.dst.common.err = &mut *codec.err;
        // SAFETY: the structs are zeroed with `err` set, as jpeg_create_* require; these cannot
        // fail but for a version mismatch, which unwinds through `error_exit`.
        unsafe {
            jpeg::jpeg_create_decompress(&mut *codec.src);
            jpeg::jpeg_create_compress(&mut *codec.dst);
        }
        codec
    }

    /// The jpegtran sequence. Any libjpeg error unwinds out of here.
    fn transcode(&mut self, jpeg: &[u8], target: u32) -> Vec<u8> {
        let src = &mut *self.src;
        let dst = &mut *self.dst;
        // SAFETY: `jpeg` outlives the decompressor's use of it (this call); every call below
        // follows libjpeg's documented order for transcoding.
        unsafe {
            jpeg::jpeg_mem_src(src, jpeg.as_ptr(), jpeg.len() as _);
            jpeg::jpeg_read_header(src, 1);
            let coefficients = jpeg::jpeg_read_coefficients(src);
            if self.err.num_warnings > 0 {
                // libjpeg skipped over damage: what it holds is not the source's data.
                let message = "libjpeg warned while reading (damaged data)".to_owned();
                resume_unwind(Box::new(LibjpegError(message)));
            }
            jpeg::jpeg_c_set_int_param(
                dst,
                jpeg::J_INT_PARAM::JINT_COMPRESS_PROFILE,
                jpeg::JCP_FASTEST as c_int,
            );
            jpeg::jpeg_copy_critical_parameters(src, dst);
            dst.optimize_coding = 1;
            dst.scan_info = std::ptr::null();
            dst.num_scans = 0;
            // The source's sampling factors: the compressor computes its own only when it
            // starts writing.
            let width = src.image_width;
            let row = if src.num_components == 1 {
                width.div_ceil(8)
            } else {
                width.div_ceil(8 * src.max_h_samp_factor.max(1) as u32)
            };
            dst.restart_interval = choose_interval(row, target);
            self.dest.manager.init_destination = Some(init_destination);
            self.dest.manager.empty_output_buffer = Some(empty_output_buffer);
            self.dest.manager.term_destination = Some(term_destination);
            dst.dest = &mut self.dest.manager;
            jpeg::jpeg_write_coefficients(dst, coefficients);
            jpeg::jpeg_finish_compress(dst);
            jpeg::jpeg_finish_decompress(src);
        }
        std::mem::take(&mut self.dest.buffer)
    }
}

impl Drop for Codec {
    fn drop(&mut self) {
        // SAFETY: both objects were created in `new`; destroy frees their pools whatever state
        // an error left them in.
        unsafe {
            jpeg::jpeg_destroy_compress(&mut self.dst);
            jpeg::jpeg_destroy_decompress(&mut self.src);
        }
    }
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
