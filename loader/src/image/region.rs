/*!
Crop-aware decoding: decode only the part of a record that a sample's crops read (issue 40).

A record packed with restart markers ([`shard_tool::restart`]) is split into intervals that tile
its MCU rows (a coefficient record, [`shard_tool::coefficients`], into the chunks that hold them).
Given the region the crops need, [`RegionDecoder`] copies the intervals that cover it, with a
margin for the chroma upsampler's context, into a small JPEG (or coefficient record) and decodes
that with the same decoder as a full decode. Inside the region the pixels are the bits a full decode
gives (`loader/tests/region.rs`: random regions of synthetic images, every imagenet-sample
record and the JPEG corpus), so every later stage and every batch digest stays as it was.

A record without restart markers, or one that is not a single-scan baseline JPEG, is decoded
whole, as before. Restart markers that contradict the header (missing, misnumbered, past the end)
mean the shard changed on disk: [`DecodeError::Corrupt`], counted and replaced like any corrupt
record.
*/

use std::ops::Range;

use shard_tool::restart::{Intervals, SpliceError};

use crate::image::decode::{DecodeError, Decoder, RgbImage};

/// Where a decoded region lies in its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Column of the region's left edge in the image.
    pub x: u32,
    /// Row of the region's top edge in the image.
    pub y: u32,
    /// Whether the region is the whole image (the crops covered every interval, so the record
    /// was decoded as it is, without a splice).
    pub whole: bool,
}

/// Decodes regions of records; owns the buffers it reuses (no allocation per record once they
/// have grown).
#[derive(Debug, Default)]
pub struct RegionDecoder {
    intervals: Intervals,
    spliced: Vec<u8>,
}

impl RegionDecoder {
    /// Reads `jpeg`'s header and restart intervals: its size if it can be decoded by regions,
    /// `None` if it is to be decoded whole.
    ///
    /// # Errors
    /// [`DecodeError::Corrupt`] if its restart markers contradict its header.
    pub fn open(&mut self, jpeg: &[u8]) -> Result<Option<(u32, u32)>, DecodeError> {
        match self.intervals.parse(jpeg) {
            Ok(()) => Ok(Some((self.intervals.width(), self.intervals.height()))),
            Err(SpliceError::Whole(_)) => Ok(None),
            Err(_) => Err(DecodeError::Corrupt),
        }
    }

    /// Decodes the part of `jpeg` (last given to [`RegionDecoder::open`]) that covers columns
    /// `x` and rows `y` into `out`; returns where `out` lies in the image.
    ///
    /// # Errors
    /// [`DecodeError`] as [`Decoder::decode_into`].
    pub fn decode(
        &mut self,
        decoder: &Decoder,
        jpeg: &[u8],
        x: Range<u32>,
        y: Range<u32>,
        out: &mut RgbImage,
    ) -> Result<Placed, DecodeError> {
        let covering = self.intervals.covering(x, y);
        if covering.is_whole(&self.intervals) {
            decoder.decode_into(jpeg, out)?;
            return Ok(Placed {
                x: 0,
                y: 0,
                whole: true,
            });
        }
        self.intervals.splice(jpeg, &covering, &mut self.spliced);
        decoder.decode_into(&self.spliced, out)?;
        if (out.width, out.height) != (covering.width, covering.height) {
            return Err(DecodeError::Corrupt);
        }
        Ok(Placed {
            x: covering.x,
            y: covering.y,
            whole: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use shard_tool::restart::add_restart_markers;
    use shard_tool::synth;

    use super::*;

    #[test]
    fn a_record_without_markers_is_decoded_whole_and_damage_is_corrupt() {
        let jpeg = synth::class_image(1, 2, 64, 48);
        let mut region = RegionDecoder::default();
        assert_eq!(region.open(&jpeg), Ok(None));
        let restarted = add_restart_markers(&jpeg, 1).unwrap();
        assert_eq!(region.open(&restarted), Ok(Some((64, 48))));
        let cut = &restarted[..restarted.len() - 3];
        assert_eq!(region.open(cut), Err(DecodeError::Corrupt));
        // A coefficient record: split by its chunk offsets; offsets that do not rise to its
        // end, or a chunk count the frame does not call for, are damage.
        let record = shard_tool::coefficients::from_jpeg(&restarted).unwrap();
        assert_eq!(region.open(&record), Ok(Some((64, 48))));
        assert_eq!(
            region.open(&record[..record.len() - 1]),
            Err(DecodeError::Corrupt)
        );
        let mut past_the_end = record.clone();
        let offsets = shard_tool::coefficients::PREFIX_LEN
            + u32::from_le_bytes(record[4..8].try_into().unwrap()) as usize;
        // Chunk 1's offset, made to point past the record's end.
        past_the_end[offsets + 7] = 0xFF;
        assert_eq!(region.open(&past_the_end), Err(DecodeError::Corrupt));
    }
}
