//! safetensors files read header first: the 8-byte length and the JSON header are read and
//! checked (within safetensors' own limit, inside the file, tensors that end exactly where the
//! file ends) before a byte of the tensors is read or a buffer for them allocated. A file
//! whose header is damaged, or that is something else with a `.safetensors` name, costs a
//! few bytes of reading, not the whole file up to the cap.

use std::io::Read;
use std::path::Path;

/// The largest header read: safetensors' own limit (`MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// The little-endian header length every safetensors file starts with.
const LEN_BYTES: u64 = 8;

/// Reads the safetensors file `path` (a regular file of at most `cap` bytes, `what` naming its
/// kind), its header checked before its tensors are read.
///
/// # Errors
/// Why, in words (the caller names the file).
pub fn read_checked(path: &Path, cap: u64, what: &'static str) -> Result<Vec<u8>, String> {
    let file = shard_tool::user_file::open_regular(path).map_err(|e| e.reason())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    read_from(file, size, cap, what)
}

/// [`read_checked`] of a file opened as `file`, of `size` bytes.
fn read_from(
    mut file: impl Read,
    size: u64,
    cap: u64,
    what: &'static str,
) -> Result<Vec<u8>, String> {
    if size > cap {
        return Err(format!(
            "{what} of {size} bytes is over the limit of {cap} bytes"
        ));
    }
    let mut len = [0u8; LEN_BYTES as usize];
    file.read_exact(&mut len).map_err(|_| {
        format!("not a safetensors file: {size} bytes, fewer than its 8-byte header length")
    })?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "not a safetensors file: a header of {header_len} bytes is over safetensors' limit \
             of {MAX_HEADER_BYTES}"
        ));
    }
    // Both at most 100 MB plus 8: no overflow.
    let body_at = LEN_BYTES + header_len;
    if body_at > size {
        return Err(format!(
            "not a safetensors file: its header of {header_len} bytes runs past the file's \
             {size} bytes"
        ));
    }
    let mut bytes = Vec::with_capacity(body_at as usize);
    bytes.extend_from_slice(&len);
    (&mut file)
        .take(header_len)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    let metadata: safetensors::tensor::Metadata =
        serde_json::from_slice(&bytes[LEN_BYTES as usize..])
            .map_err(|e| format!("not a safetensors file: its header: {e}"))?;
    let data_len = metadata.data_len() as u64;
    if body_at.checked_add(data_len) != Some(size) {
        return Err(format!(
            "its header describes {data_len} bytes of tensors, but {} follow it; the file is \
             cut short or damaged",
            size - body_at
        ));
    }
    bytes.reserve_exact(data_len as usize);
    // One byte more than expected: a file that grew since it was measured is caught.
    file.take(data_len + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 != size {
        return Err(format!(
            "changed while being read: {} bytes read of {size}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join("w.safetensors");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn valid() -> Vec<u8> {
        let data = [0u8; 16];
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
        safetensors::serialize([("t", view)], None).unwrap()
    }

    #[test]
    fn a_valid_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = valid();
        let path = file(dir.path(), &bytes);
        assert_eq!(
            read_checked(&path, 1 << 20, "a weights file").unwrap(),
            bytes
        );
    }

    #[test]
    fn a_bad_header_is_refused_before_the_body_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let good = valid();
        let mut cut = good.clone();
        cut.truncate(good.len() - 1);
        let mut longer = good.clone();
        longer.push(0);
        let mut huge = good.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut past = good.clone();
        past[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
        let mut not_json = good.clone();
        not_json[8] = b'[';
        let cases: [(&[u8], &str); 7] = [
            (&good[..5], "fewer than its 8-byte header length"),
            (&huge, "over safetensors' limit"),
            (&past, "runs past the file's"),
            (&not_json, "its header"),
            (&cut, "cut short or damaged"),
            (&longer, "cut short or damaged"),
            (&[0u8; 4096], "its header"),
        ];
        for (bytes, want) in cases {
            let path = file(dir.path(), bytes);
            let err = read_checked(&path, 1 << 20, "a weights file").unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        let path = file(dir.path(), &good);
        let err = read_checked(&path, 10, "a weights file").unwrap_err();
        assert!(err.contains("over the limit of 10 bytes"), "{err}");
    }

    #[test]
    fn a_damaged_header_costs_the_header_not_the_file() {
        // A "file" of 1 GiB whose header is not JSON: only its first bytes are read.
        struct Counting<R> {
            inner: R,
            read: u64,
        }
        impl<R: Read> Read for Counting<R> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.inner.read(buf)?;
                self.read += n as u64;
                Ok(n)
            }
        }
        let mut head = 64u64.to_le_bytes().to_vec();
        head.extend([b'x'; 64]);
        let mut file = Counting {
            inner: head.as_slice().chain(std::io::repeat(0)),
            read: 0,
        };
        let err = read_from(&mut file, 1 << 30, 4 << 30, "a weights file").unwrap_err();
        assert!(err.contains("its header"), "{err}");
        assert_eq!(file.read, 8 + 64);
    }
}
