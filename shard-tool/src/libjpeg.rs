/*!
libjpeg's coefficient API through `mozjpeg-sys`, shared by the lossless re-encodes: restart
markers ([`crate::restart`]) and coefficient records ([`crate::coefficients`]).

Why mozjpeg-sys: it is the maintained crate that builds a libjpeg (MozJPEG 4, a libjpeg-turbo
fork) from source with only a C compiler, and it exposes the coefficient API and `C-unwind`
error callbacks. The TurboJPEG API (the `turbojpeg` crate) cannot set a restart interval on a
lossless transform, and a hand-written Huffman re-encoder is what this crate exists to avoid.

libjpeg reports a fatal error by calling `error_exit`, which must not return: ours unwinds
(without the panic hook, so nothing is printed) to the `catch_unwind` in [`with_codec`], after
which both codec objects are destroyed.
*/

use std::ffi::c_int;
use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use mozjpeg_sys as jpeg;

/// One component's coefficients, as libjpeg holds them (a virtual block array).
pub(crate) type BlockArray = *mut jpeg::jvirt_barray_control;

/// Why libjpeg refused: its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("libjpeg cannot re-encode it: {0}")]
pub struct TranscodeError(pub String);

/// Runs `f` on a fresh decompressor/compressor pair; a libjpeg error inside becomes a
/// [`TranscodeError`], and the pair is destroyed either way.
pub(crate) fn with_codec<T>(f: impl FnOnce(&mut Codec) -> T) -> Result<T, TranscodeError> {
    let mut codec = Codec::new();
    let result = catch_unwind(AssertUnwindSafe(|| f(&mut codec)));
    drop(codec);
    match result {
        Ok(out) => Ok(out),
        Err(payload) => match payload.downcast::<LibjpegError>() {
            Ok(e) => Err(TranscodeError(e.0)),
            Err(other) => resume_unwind(other),
        },
    }
}

/// Unwinds out of libjpeg's caller with `message`, as libjpeg's own errors do.
pub(crate) fn fail(message: &str) -> ! {
    resume_unwind(Box::new(LibjpegError(message.to_owned())));
}

/// A libjpeg error message, carried by the unwind out of `error_exit`.
struct LibjpegError(String);

/// `error_exit`: formats libjpeg's message and unwinds to [`with_codec`].
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
    // SAFETY: `dest` points at the `Destination` set up in `Codec::write`, alive for the call.
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
pub(crate) struct Codec {
    err: Box<jpeg::jpeg_error_mgr>,
    /// The decompressor (reads the source's header and coefficients).
    pub(crate) src: Box<jpeg::jpeg_decompress_struct>,
    /// The compressor (writes the result).
    pub(crate) dst: Box<jpeg::jpeg_compress_struct>,
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

    /// Reads `jpeg`'s header into the decompressor. Any libjpeg error unwinds out of here.
    ///
    /// # Safety
    /// `jpeg` must outlive every later use of the decompressor within this codec's run.
    pub(crate) unsafe fn read_header(&mut self, jpeg: &[u8]) {
        // SAFETY: the caller keeps `jpeg` alive; the decompressor was created in `new`.
        unsafe {
            jpeg::jpeg_mem_src(&mut self.src, jpeg.as_ptr(), jpeg.len() as _);
            jpeg::jpeg_read_header(&mut self.src, 1);
        }
    }

    /// Reads the coefficients of the JPEG whose header [`Codec::read_header`] read: one
    /// virtual block array per component. A JPEG that libjpeg reads only with warnings
    /// (damaged data it skipped over) unwinds as an error.
    pub(crate) fn read_coefficients(&mut self) -> *mut BlockArray {
        // SAFETY: called after `read_header`, as libjpeg's order requires.
        let arrays = unsafe { jpeg::jpeg_read_coefficients(&mut self.src) };
        if self.err.num_warnings > 0 {
            fail("libjpeg warned while reading (damaged data)");
        }
        arrays
    }

    /// Writes `arrays` as a baseline JPEG with the decompressor's critical parameters, optimised
    /// Huffman tables (lossless, smaller) and a restart marker every `interval` MCUs (0: none);
    /// MozJPEG's own extensions are off (`JCP_FASTEST`: libjpeg-turbo's defaults).
    pub(crate) fn write(&mut self, arrays: *mut BlockArray, interval: u32) -> Vec<u8> {
        let (src, dst) = (&mut *self.src, &mut *self.dst);
        // SAFETY: the decompressor has read a header; every call below follows libjpeg's
        // documented order for transcoding (`jpegtran`'s).
        unsafe {
            jpeg::jpeg_c_set_int_param(
                dst,
                jpeg::J_INT_PARAM::JINT_COMPRESS_PROFILE,
                jpeg::JCP_FASTEST as c_int,
            );
            jpeg::jpeg_copy_critical_parameters(src, dst);
            dst.optimize_coding = 1;
            dst.scan_info = std::ptr::null();
            dst.num_scans = 0;
            dst.restart_interval = interval;
            self.dest.manager.init_destination = Some(init_destination);
            self.dest.manager.empty_output_buffer = Some(empty_output_buffer);
            self.dest.manager.term_destination = Some(term_destination);
            dst.dest = &mut self.dest.manager;
            jpeg::jpeg_write_coefficients(dst, arrays);
            jpeg::jpeg_finish_compress(dst);
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
