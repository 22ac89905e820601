//! Opening a dataset's files: regular files only (a FIFO or a device named like a dataset
//! file is an error at once, never a hang), and memory maps of them.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, PathContext, Result};

/// Maps `path` read-only.
///
/// # Safety
/// The file must not be modified or truncated while the map is alive.
pub(crate) unsafe fn map(path: &Path) -> Result<Mmap> {
    let file = open_regular(path)?;
    // SAFETY: the caller guarantees the file stays unchanged while mapped.
    unsafe { Mmap::map(&file) }.at(path)
}

/// Opens `path` for reading if it is a regular file. A FIFO would block the opener until
/// some writer came, and a device (`/dev/zero`) never ends: neither is a dataset file, so
/// both are errors at once (the open itself does not block: `O_NONBLOCK`).
pub(crate) fn open_regular(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .at(path)?;
    if !file.metadata().at(path)?.is_file() {
        return Err(Error::Corrupt("not a regular file".into()).with_path(path));
    }
    Ok(file)
}
