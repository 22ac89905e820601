//! Files a user names, read and written within bounds: the one reader and the one target check
//! the three binaries share.
//!
//! A path on a command line or in a config can name anything: `/dev/zero` (a read that never
//! ends), a FIFO (an open that never returns), a socket, a directory, a file of gigabytes where
//! kilobytes were meant. Reads open without blocking, check the opened descriptor (not the
//! path, so nothing can be swapped in between) is a regular file, and stop at a cap suited to
//! the kind of file. Writes ([`crate::atomic::write_atomic`]) replace a regular file, a symlink
//! (the link itself, as `rename` does) or nothing, and refuse a directory, device, FIFO or
//! socket rather than rename a file over it.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, PathContext, Result};

/// One kibibyte.
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// What a file that is not a regular one is, in words.
fn kind(file_type: fs::FileType) -> Option<&'static str> {
    if file_type.is_file() || file_type.is_symlink() {
        None
    } else if file_type.is_dir() {
        Some("a directory")
    } else if file_type.is_fifo() {
        Some("a FIFO")
    } else if file_type.is_socket() {
        Some("a socket")
    } else if file_type.is_char_device() {
        Some("a character device")
    } else if file_type.is_block_device() {
        Some("a block device")
    } else {
        Some("not a regular file")
    }
}

/// Opens `path` for reading, refusing anything but a regular file (symlinks followed). A FIFO
/// is opened without blocking, so it is refused instead of waiting for a writer.
///
/// # Errors
/// [`Error::NotRegular`] or the I/O error, with the path.
pub fn open_regular(path: &Path) -> Result<File> {
    open_sized(path).map(|(file, _)| file)
}

/// [`open_regular`], with the file's size from the same `fstat`.
pub(crate) fn open_sized(path: &Path) -> Result<(File, u64)> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .at(path)?;
    let meta = file.metadata().at(path)?;
    if let Some(kind) = kind(meta.file_type()) {
        return Err(Error::NotRegular { kind }.with_path(path));
    }
    Ok((file, meta.len()))
}

/// Reads the whole regular file `path`, refusing it when it holds more than `cap` bytes
/// (checked before reading, and again while reading: a file that grows, or reports no size as
/// `/proc` files do, stops at the cap). `what` names the kind of file in the error.
///
/// # Errors
/// [`Error::NotRegular`], [`Error::TooLarge`] or the I/O error, with the path.
pub fn read_capped(path: &Path, cap: u64, what: &'static str) -> Result<Vec<u8>> {
    let (file, size) = open_sized(path)?;
    check_size(size, path, cap, what)?;
    read_to_cap(file, size, path, cap, what)
}

/// Refuses a `size` over `cap`.
fn check_size(size: u64, path: &Path, cap: u64, what: &'static str) -> Result<()> {
    if size > cap {
        return Err(Error::TooLarge { what, size, cap }.with_path(path));
    }
    Ok(())
}

/// Reads the opened regular `file` (`size` bytes by its `fstat`) to its end, stopping past
/// `cap` bytes (a file that grows, or reports no size as `/proc` files do, is refused there,
/// not read on).
///
/// # Errors
/// [`Error::TooLarge`] or the I/O error, with the path.
pub(crate) fn read_to_cap(
    file: File,
    size: u64,
    path: &Path,
    cap: u64,
    what: &'static str,
) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(size.min(cap) as usize);
    file.take(cap + 1).read_to_end(&mut bytes).at(path)?;
    if bytes.len() as u64 > cap {
        return Err(Error::TooLarge {
            what,
            size: bytes.len() as u64,
            cap,
        }
        .with_path(path));
    }
    Ok(bytes)
}

/// For a file another library reads by its path: checks that `path` is a regular file of at
/// most `cap` bytes (it may still change before the library opens it; what this stops is a
/// user's mistake, a FIFO or a device, not a race).
///
/// # Errors
/// [`Error::NotRegular`], [`Error::TooLarge`] or the I/O error, with the path.
pub fn check_regular(path: &Path, cap: u64, what: &'static str) -> Result<()> {
    check_size(open_sized(path)?.1, path, cap, what)
}

/// [`read_capped`] as UTF-8 text.
///
/// # Errors
/// As [`read_capped`], and [`Error::Io`] (`InvalidData`) when the text is not UTF-8.
pub fn read_string_capped(path: &Path, cap: u64, what: &'static str) -> Result<String> {
    let bytes = read_capped(path, cap, what)?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
        .at(path)
}

/// Checks that `path` may be replaced by a new regular file: it is absent, a regular file or a
/// symlink (replaced itself, not its target). A directory, device, FIFO or socket is refused,
/// naming what it is.
///
/// # Errors
/// [`Error::NotRegular`] or the I/O error, with the path.
pub fn check_write_target(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) => match kind(meta.file_type()) {
            Some(kind) => Err(Error::NotRegular { kind }.with_path(path)),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io(e).with_path(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }

    #[test]
    fn a_device_a_fifo_and_a_directory_are_refused_naming_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = fifo(dir.path());
        for (path, said) in [
            (Path::new("/dev/zero"), "/dev/zero: is a character device"),
            (fifo.as_path(), "is a FIFO"),
            (dir.path(), "is a directory"),
        ] {
            let err = read_capped(path, MIB, "a recipe").unwrap_err();
            assert!(err.chain().contains(said), "{}", err.chain());
            assert!(err.is_bad_input(), "{err:?}");
            let err = check_write_target(path).unwrap_err();
            assert!(err.chain().contains(said), "{}", err.chain());
        }
    }

    #[test]
    fn a_file_over_its_cap_is_refused_with_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        fs::write(&path, vec![b' '; 2048]).unwrap();
        let err = read_capped(&path, 1024, "a labels file").unwrap_err();
        assert_eq!(
            err.chain(),
            format!(
                "{}: a labels file of 2048 bytes is over the limit of 1024 bytes",
                path.display()
            )
        );
        assert_eq!(read_capped(&path, 2048, "x").unwrap().len(), 2048);
    }

    #[test]
    fn a_file_reporting_no_size_stops_at_the_cap() {
        // /proc files are regular and report 0 bytes whatever they hold.
        let err = read_capped(Path::new("/proc/self/maps"), 16, "x").unwrap_err();
        assert!(
            err.chain().contains("over the limit of 16 bytes"),
            "{}",
            err.chain()
        );
    }

    #[test]
    fn absent_regular_and_symlinked_targets_may_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        check_write_target(&file).unwrap();
        fs::write(&file, b"x").unwrap();
        check_write_target(&file).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        check_write_target(&link).unwrap();
        assert_eq!(read_string_capped(&file, 1, "x").unwrap(), "x");
    }
}
