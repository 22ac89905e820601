/*!
A baseline JPEG's restart intervals, found by scanning its markers, and the small JPEG made of
those that cover a region.

Parsing is by hand, on purpose: it is a walk over marker lengths plus a `memchr` for `0xFF` in
the entropy-coded data (no Huffman decoding), it must not allocate per image (the loader calls it
for every sample), and no JPEG crate exposes where each interval starts.
*/

use std::ops::Range;

use crate::record::{COEFFICIENTS_PREFIX_LEN, CoefficientRecord, is_coefficients};

/// Why a JPEG is decoded whole rather than by regions. Not an error: the full decode, in strict
/// mode, judges the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotSpliceable {
    /// Progressive, lossless, arithmetic-coded, hierarchical or 12-bit.
    #[error("not a baseline (sequential Huffman, 8-bit) JPEG")]
    NotBaseline,
    /// Its first scan does not hold every component, or other scans follow.
    #[error("more than one scan")]
    MultiScan,
    /// No restart interval.
    #[error("no restart markers")]
    NoRestarts,
    /// Intervals that do not tile the MCU rows (a row is not a whole number of them).
    #[error("the restart interval does not divide an MCU row")]
    Unaligned,
    /// A header that this walk does not follow (the decoder will say more).
    #[error("its header does not parse")]
    Header,
}

/// What [`Intervals::parse`] found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpliceError {
    /// Decode it whole instead.
    #[error("decoded whole: {0}")]
    Whole(NotSpliceable),
    /// A restart marker out of sequence.
    #[error("restart marker RST{found} where RST{expected} was due")]
    Misnumbered {
        /// The number due (0..8).
        expected: u8,
        /// The number found.
        found: u8,
    },
    /// Fewer or more intervals than the frame needs.
    #[error("{found} restart intervals where the frame needs {expected}")]
    Count {
        /// Intervals the frame's size and the restart interval call for.
        expected: u64,
        /// Intervals found in the scan.
        found: u64,
    },
    /// The scan ends without an end-of-image marker.
    #[error("the scan runs past the end of the record")]
    Truncated,
}

impl SpliceError {
    /// Whether the record is damaged (as opposed to merely not splittable).
    pub fn is_corrupt(&self) -> bool {
        !matches!(self, SpliceError::Whole(_))
    }
}

/// The part of an image a splice decodes: whole restart intervals, in whole MCU rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covering {
    /// Left column of the spliced image in the source image.
    pub x: u32,
    /// Top row of the spliced image in the source image.
    pub y: u32,
    /// Columns of the spliced image.
    pub width: u32,
    /// Rows of the spliced image.
    pub height: u32,
    /// Intervals taken from each MCU row, counted from the row's first.
    pub intervals: Range<u32>,
    /// MCU rows taken.
    pub rows: Range<u32>,
}

impl Covering {
    /// Whether it is the whole image (splicing would copy it for nothing).
    pub fn is_whole(&self, intervals: &Intervals) -> bool {
        self.width == intervals.width && self.height == intervals.height
    }
}

/// Where each restart interval of a baseline JPEG lies. Reused from image to image: parsing
/// allocates only when an image has more intervals than any before it.
#[derive(Debug, Clone, Default)]
pub struct Intervals {
    width: u32,
    height: u32,
    mcu_width: u32,
    mcu_height: u32,
    mcus_x: u32,
    mcus_y: u32,
    /// MCUs per interval.
    interval: u32,
    /// Largest horizontal and vertical sampling factors (1 for a single-component scan).
    sampling: (u32, u32),
    /// Offset of the frame header's height field.
    frame_size_at: usize,
    /// Offset of the first byte of entropy-coded data.
    scan_start: usize,
    /// Offset of each interval's first byte.
    starts: Vec<usize>,
    /// Offset of the end-of-image marker (of a coefficient record: the end of its body).
    scan_end: usize,
    /// Whether the record is a coefficient record: its intervals are chunks, found through its
    /// offsets, with no marker between them.
    coefficients: bool,
}

impl Intervals {
    /// Columns.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// MCUs per restart interval.
    pub fn interval(&self) -> u32 {
        self.interval
    }

    /// Intervals in the scan.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether the scan has no interval (never after a successful parse).
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// MCUs per row and MCU rows.
    pub fn mcu_grid(&self) -> (u32, u32) {
        (self.mcus_x, self.mcus_y)
    }

    /// Offset of the first byte after the JPEG header (the entropy-coded data of a JPEG, the
    /// chunk offsets of a coefficient record).
    pub fn scan_start(&self) -> usize {
        self.scan_start
    }

    /// Whether the record parsed is a coefficient record ([`crate::record::CoefficientRecord`]).
    pub fn is_coefficients(&self) -> bool {
        self.coefficients
    }

    /// An MCU's size in pixels (8×8 without subsampling, 16×16 for 4:2:0).
    pub fn mcu_size(&self) -> (u32, u32) {
        (self.mcu_width, self.mcu_height)
    }

    /// Finds the intervals of `jpeg`.
    ///
    /// # Errors
    /// [`SpliceError::Whole`] when `jpeg` is not a single-scan baseline JPEG whose intervals
    /// tile its MCU rows; any other [`SpliceError`] when the markers contradict the header.
    pub fn parse(&mut self, jpeg: &[u8]) -> Result<(), SpliceError> {
        use NotSpliceable::*;
        let whole = SpliceError::Whole;
        self.coefficients = is_coefficients(jpeg);
        let first = if self.coefficients {
            COEFFICIENTS_PREFIX_LEN
        } else {
            0
        };
        if jpeg.get(first..first + 2) != Some(&[0xFF, 0xD8]) {
            return Err(whole(Header));
        }
        let mut at = first + 2;
        let mut components = 0usize;
        let mut sampling = (1u32, 1u32);
        let mut have_frame = false;
        self.interval = 0;
        loop {
            // Markers may be preceded by fill bytes (0xFF).
            while jpeg.get(at) == Some(&0xFF) && jpeg.get(at + 1) == Some(&0xFF) {
                at += 1;
            }
            let (Some(&0xFF), Some(&marker)) = (jpeg.get(at), jpeg.get(at + 1)) else {
                return Err(whole(Header));
            };
            let len = match jpeg.get(at + 2..at + 4) {
                Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
                _ => return Err(whole(Header)),
            };
            let body = jpeg.get(at + 4..at + 2 + len).ok_or(whole(Header))?;
            if len < 2 {
                return Err(whole(Header));
            }
            match marker {
                0xC0 | 0xC1 => {
                    let (&[8, h0, h1, w0, w1, n], rest) =
                        body.split_at_checked(6).ok_or(whole(Header))?
                    else {
                        return Err(whole(NotBaseline));
                    };
                    components = usize::from(n);
                    let specs = rest.get(..components * 3).ok_or(whole(Header))?;
                    if components == 0 || have_frame {
                        return Err(whole(Header));
                    }
                    for spec in specs.chunks_exact(3) {
                        let (h, v) = (u32::from(spec[1] >> 4), u32::from(spec[1] & 15));
                        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
                            return Err(whole(Header));
                        }
                        sampling = (sampling.0.max(h), sampling.1.max(v));
                    }
                    self.height = u32::from(u16::from_be_bytes([h0, h1]));
                    self.width = u32::from(u16::from_be_bytes([w0, w1]));
                    if self.height == 0 || self.width == 0 {
                        return Err(whole(Header));
                    }
                    self.frame_size_at = at + 5;
                    have_frame = true;
                }
                // Any other frame type: progressive, lossless, arithmetic, hierarchical.
                0xC2..=0xCF if marker != 0xC4 && marker != 0xC8 && marker != 0xCC => {
                    return Err(whole(NotBaseline));
                }
                0xDD => {
                    let &[hi, lo] = body else {
                        return Err(whole(Header));
                    };
                    self.interval = u32::from(u16::from_be_bytes([hi, lo]));
                }
                0xDA => {
                    if !have_frame {
                        return Err(whole(Header));
                    }
                    if body.first().map(|&n| usize::from(n)) != Some(components) {
                        return Err(whole(MultiScan));
                    }
                    self.scan_start = at + 2 + len;
                    break;
                }
                0xD0..=0xD9 | 0x01 => return Err(whole(Header)),
                _ => {}
            }
            at += 2 + len;
        }
        if self.interval == 0 {
            return Err(whole(NoRestarts));
        }
        // A single-component scan is not interleaved: its MCU is one 8×8 block (T.81 A.2.2).
        if components == 1 {
            sampling = (1, 1);
        }
        self.sampling = sampling;
        self.mcu_width = 8 * sampling.0;
        self.mcu_height = 8 * sampling.1;
        self.mcus_x = self.width.div_ceil(self.mcu_width);
        self.mcus_y = self.height.div_ceil(self.mcu_height);
        if !self.mcus_x.is_multiple_of(self.interval) {
            return Err(whole(Unaligned));
        }
        if self.coefficients {
            return self.find_chunks(jpeg);
        }
        self.find_intervals(jpeg)
    }

    /// A coefficient record's chunks, from its offsets: one per restart interval.
    fn find_chunks(&mut self, record: &[u8]) -> Result<(), SpliceError> {
        let expected = u64::from(self.mcus_x) * u64::from(self.mcus_y) / u64::from(self.interval);
        let r = CoefficientRecord::parse(record).map_err(|_| SpliceError::Truncated)?;
        if r.header.len() + COEFFICIENTS_PREFIX_LEN != self.scan_start {
            return Err(SpliceError::Whole(NotSpliceable::Header));
        }
        if r.chunks() as u64 != expected {
            return Err(SpliceError::Count {
                expected,
                found: r.chunks() as u64,
            });
        }
        let body = r.body_start();
        self.starts.clear();
        self.starts
            .extend((0..r.chunks()).map(|k| body + r.offset(k)));
        self.scan_end = body + r.body.len();
        Ok(())
    }

    /// Walks the entropy-coded data from `scan_start`, recording where each interval begins.
    fn find_intervals(&mut self, jpeg: &[u8]) -> Result<(), SpliceError> {
        let expected = u64::from(self.mcus_x) * u64::from(self.mcus_y) / u64::from(self.interval);
        self.starts.clear();
        self.starts.push(self.scan_start);
        let mut at = self.scan_start;
        loop {
            let Some(found) = memchr::memchr(0xFF, &jpeg[at..]) else {
                return Err(SpliceError::Truncated);
            };
            at += found;
            match jpeg.get(at + 1) {
                None => return Err(SpliceError::Truncated),
                // A stuffed 0xFF data byte, or a fill byte before a marker.
                Some(0x00) => at += 2,
                Some(0xFF) => at += 1,
                Some(&m @ 0xD0..=0xD7) => {
                    let due = ((self.starts.len() - 1) % 8) as u8;
                    if m - 0xD0 != due {
                        return Err(SpliceError::Misnumbered {
                            expected: due,
                            found: m - 0xD0,
                        });
                    }
                    if self.starts.len() as u64 >= expected {
                        return Err(SpliceError::Count {
                            expected,
                            found: self.starts.len() as u64 + 1,
                        });
                    }
                    at += 2;
                    self.starts.push(at);
                }
                Some(0xD9) => {
                    self.scan_end = at;
                    break;
                }
                // Another scan, a table or a DNL after the first scan.
                Some(_) => return Err(SpliceError::Whole(NotSpliceable::MultiScan)),
            }
        }
        let found = self.starts.len() as u64;
        if found != expected {
            return Err(SpliceError::Count { expected, found });
        }
        Ok(())
    }

    /// The intervals covering the region `x`, `y` (half-open ranges of source pixels, within
    /// the image), widened by the context the chroma upsampler reads: two chroma samples on each
    /// side when the image is subsampled (libjpeg's and zune-jpeg's "fancy" upsampling read one;
    /// the second is slack). Without subsampling each pixel depends on its own block only.
    pub fn covering(&self, x: Range<u32>, y: Range<u32>) -> Covering {
        let margin = |factor: u32| if factor > 1 { 2 * factor } else { 0 };
        let (mx, my) = (margin(self.sampling.0), margin(self.sampling.1));
        let x0 = x.start.saturating_sub(mx) / self.mcu_width / self.interval;
        let x1 = (x.end.saturating_add(mx).min(self.width))
            .div_ceil(self.mcu_width)
            .div_ceil(self.interval);
        let r0 = y.start.saturating_sub(my) / self.mcu_height;
        let r1 = (y.end.saturating_add(my).min(self.height)).div_ceil(self.mcu_height);
        let step = self.interval * self.mcu_width;
        let left = x0 * step;
        let top = r0 * self.mcu_height;
        Covering {
            x: left,
            y: top,
            width: (x1 * step).min(self.width) - left,
            height: (r1 * self.mcu_height).min(self.height) - top,
            intervals: x0..x1,
            rows: r0..r1,
        }
    }

    /// Writes into `out` a JPEG of the covering's intervals: `jpeg`'s headers with the frame's
    /// size changed, then the intervals with restart markers numbered afresh, then EOI.
    /// `jpeg` must be the bytes last given to [`Intervals::parse`].
    pub fn splice(&self, jpeg: &[u8], covering: &Covering, out: &mut Vec<u8>) {
        self.splice_header(jpeg, covering, out);
        if self.coefficients {
            return self.splice_chunks(jpeg, covering, out);
        }
        let per_row = (self.mcus_x / self.interval) as usize;
        let mut next_marker: Option<u8> = None;
        for row in covering.rows.clone() {
            for i in covering.intervals.clone() {
                let k = row as usize * per_row + i as usize;
                let start = self.starts[k];
                // Each interval but the last ends with its two-byte restart marker.
                let end = match self.starts.get(k + 1) {
                    Some(&next) => next - 2,
                    None => self.scan_end,
                };
                if let Some(n) = next_marker {
                    out.extend_from_slice(&[0xFF, 0xD0 + n]);
                }
                next_marker = Some(next_marker.map_or(0, |n| (n + 1) % 8));
                out.extend_from_slice(&jpeg[start..end]);
            }
        }
        out.extend_from_slice(&[0xFF, 0xD9]);
    }

    /// Starts a splice: `bytes` up to the scan (a coefficient record's prefix included), with
    /// the frame's size changed to the covering's.
    fn splice_header(&self, bytes: &[u8], covering: &Covering, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&bytes[..self.scan_start]);
        let size = self.frame_size_at;
        // The frame's size fields are 16-bit and the covering is within the frame.
        out[size..size + 2].copy_from_slice(&(covering.height as u16).to_be_bytes());
        out[size + 2..size + 4].copy_from_slice(&(covering.width as u16).to_be_bytes());
    }

    /// [`Intervals::splice`] for a coefficient record, after [`Intervals::splice_header`]: the
    /// chunk count and offsets of the covering's chunks, then the chunks.
    fn splice_chunks(&self, record: &[u8], covering: &Covering, out: &mut Vec<u8>) {
        let per_row = (self.mcus_x / self.interval) as usize;
        let taken = || {
            covering.rows.clone().flat_map(move |row| {
                covering
                    .intervals
                    .clone()
                    .map(move |i| row as usize * per_row + i as usize)
            })
        };
        let end = |k: usize| self.starts.get(k + 1).copied().unwrap_or(self.scan_end);
        let count = taken().count() as u32;
        out[8..12].copy_from_slice(&count.to_le_bytes());
        let mut offset = 0u32;
        out.extend_from_slice(&offset.to_le_bytes());
        for k in taken() {
            offset += (end(k) - self.starts[k]) as u32;
            out.extend_from_slice(&offset.to_le_bytes());
        }
        for k in taken() {
            out.extend_from_slice(&record[self.starts[k]..end(k)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restart::add_restart_markers;
    use crate::synth;

    #[test]
    fn a_jpeg_without_restart_markers_is_decoded_whole() {
        let jpeg = synth::class_image(1, 2, 64, 48);
        let mut iv = Intervals::default();
        assert_eq!(
            iv.parse(&jpeg),
            Err(SpliceError::Whole(NotSpliceable::NoRestarts))
        );
        assert_eq!(
            iv.parse(b"not a jpeg"),
            Err(SpliceError::Whole(NotSpliceable::Header))
        );
    }

    #[test]
    fn intervals_are_found_and_damage_is_named() {
        let jpeg = add_restart_markers(&synth::class_image(1, 2, 100, 60), 0).unwrap();
        let mut iv = Intervals::default();
        iv.parse(&jpeg).unwrap();
        let (mw, mh) = iv.mcu_size();
        let cells = 100u32.div_ceil(mw) * 60u32.div_ceil(mh);
        assert_eq!(iv.len() as u32 * iv.interval(), cells);
        // Truncated: no EOI.
        let cut = &jpeg[..jpeg.len() - 2];
        assert_eq!(iv.parse(cut), Err(SpliceError::Truncated));
        // A marker renumbered.
        let second = iv.starts[2] - 1;
        let mut bad = jpeg.clone();
        bad[second] = 0xD0 + (bad[second] - 0xD0 + 3) % 8;
        assert!(matches!(
            iv.parse(&bad),
            Err(SpliceError::Misnumbered { expected: 1, .. })
        ));
        // A marker removed (its two bytes overwritten with data): one interval too few.
        let mut bad = jpeg.clone();
        bad[second - 1..=second].copy_from_slice(&[0x12, 0x34]);
        assert!(matches!(
            iv.parse(&bad),
            Err(SpliceError::Misnumbered { .. } | SpliceError::Count { .. })
        ));
        iv.parse(&jpeg).unwrap();
    }

    #[test]
    fn a_covering_is_whole_intervals_and_rows_around_the_region() {
        let jpeg = add_restart_markers(&synth::class_image(0, 1, 200, 120), 0).unwrap();
        let mut iv = Intervals::default();
        iv.parse(&jpeg).unwrap();
        let all = iv.covering(0..200, 0..120);
        assert!(all.is_whole(&iv));
        let c = iv.covering(90..110, 50..60);
        assert!(!c.is_whole(&iv));
        assert!(c.x <= 90 && c.x + c.width >= 110 && c.y <= 50 && c.y + c.height >= 60);
        let mut out = Vec::new();
        iv.splice(&jpeg, &c, &mut out);
        let mut small = Intervals::default();
        small.parse(&out).unwrap();
        assert_eq!((small.width(), small.height()), (c.width, c.height));
        assert_eq!(
            small.len() as u32,
            c.intervals.len() as u32 * c.rows.len() as u32
        );
    }
}
