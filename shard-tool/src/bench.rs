/*!
Baselines for `shard-tool bench`: the decode-only rate of zune-jpeg on the same files and
threads as a pack, and the process's peak memory.

The pack's goal is to cost little beyond its validating decode, so the baseline decodes exactly
as the packer does ([`crate::image::jpeg_options`]: strict mode, RGB out, a reused buffer per
thread) but from bytes already in memory, with nothing else around it.
*/

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::slice_reader::SliceReader;
use zune_jpeg::JpegDecoder;

use crate::image::jpeg_options;

/// Work done in a measured time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Images processed.
    pub images: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Rate {
    /// Images per second.
    pub fn per_sec(&self) -> f64 {
        self.images as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Decodes every JPEG in `files` once with `threads` threads; files that fail are skipped
/// and not counted.
pub fn decode_only(files: &[Vec<u8>], threads: usize) -> Rate {
    let next = AtomicUsize::new(0);
    let decoded = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let mut buf = Vec::new();
                let mut ok = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(bytes) = files.get(i) else { break };
                    let mut dec = JpegDecoder::new_with_options(
                        SliceReader::new(bytes.as_slice()),
                        jpeg_options(),
                    );
                    if dec.decode_headers().is_err() {
                        continue;
                    }
                    let Some(size) = dec.output_buffer_size() else {
                        continue;
                    };
                    buf.resize(size, 0);
                    ok += usize::from(dec.decode_into(&mut buf).is_ok());
                }
                decoded.fetch_add(ok, Ordering::Relaxed);
            });
        }
    });
    Rate {
        images: decoded.into_inner() as u64,
        elapsed: start.elapsed(),
    }
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak reported by [`peak_rss`] to the current resident size (Linux ≥ 4.0), so
/// that one phase of a benchmark can be measured on its own. Returns false where unsupported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth;

    #[test]
    fn counts_only_decodable_files() {
        let good = synth::class_image(0, 0, 32, 32);
        let bad = good[..good.len() / 2].to_vec();
        let rate = decode_only(&[good.clone(), bad, good], 2);
        assert_eq!(rate.images, 2);
        assert!(rate.per_sec() > 0.0);
    }
}
