/*!
Crop-aware decoding: decode only the part of a record that a sample's crops read (issue 40).

A record packed with restart markers ([`shard_tool::restart`]) is split into intervals that tile
its MCU rows. Given the region the crops need, [`RegionDecoder`] copies the intervals that cover
it, with a margin for the chroma upsampler's context, into a small JPEG and decodes that with the
same zune-jpeg decoder as a full decode. Inside the region the pixels are the bits a full decode
gives (tested on every imagenet-sample record and the JPEG corpus), so every later stage and every
batch digest stays as it was.

A record without restart markers, or one that is not a single-scan baseline JPEG, is decoded
whole, as before. Restart markers that contradict the header (missing, misnumbered, past the end)
mean the shard changed on disk: [`DecodeError::Corrupt`], counted and replaced like any corrupt
record.
*/

use std::ops::Range;

use shard_tool::restart::{Intervals, SpliceError};

use crate::decode::{DecodeError, Decoder, RgbImage};

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
    /// `x` and rows `y` into `out`; returns where `out`'s top-left pixel lies in the image.
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
    ) -> Result<(u32, u32), DecodeError> {
        let covering = self.intervals.covering(x, y);
        if covering.is_whole(&self.intervals) {
            decoder.decode_into(jpeg, out)?;
            return Ok((0, 0));
        }
        self.intervals.splice(jpeg, &covering, &mut self.spliced);
        decoder.decode_into(&self.spliced, out)?;
        if (out.width, out.height) != (covering.width, covering.height) {
            return Err(DecodeError::Corrupt);
        }
        Ok((covering.x, covering.y))
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use shard_tool::restart::add_restart_markers;
    use shard_tool::synth;

    use super::*;

    /// Decodes random regions of `jpeg` and compares each with the full decode's pixels.
    pub(crate) fn regions_match(jpeg: &[u8], draws: u32, seed: u64) -> Result<u32, String> {
        let decoder = Decoder::default();
        let mut full = RgbImage::default();
        decoder
            .decode_into(jpeg, &mut full)
            .map_err(|e| e.to_string())?;
        let mut region = RegionDecoder::default();
        let Some((w, h)) = region.open(jpeg).map_err(|e| e.to_string())? else {
            return Ok(0);
        };
        assert_eq!((w, h), (full.width, full.height));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = RgbImage::default();
        for _ in 0..draws {
            let (x0, y0) = (rng.random_range(0..w), rng.random_range(0..h));
            let (x1, y1) = (rng.random_range(x0 + 1..=w), rng.random_range(y0 + 1..=h));
            let (ox, oy) = region
                .decode(&decoder, jpeg, x0..x1, y0..y1, &mut out)
                .map_err(|e| e.to_string())?;
            for y in y0..y1 {
                let row = |img: &RgbImage, top: u32, left: u32| {
                    let at = (((y - top) * img.width + (x0 - left)) * 3) as usize;
                    img.pixels[at..at + (x1 - x0) as usize * 3].to_vec()
                };
                if row(&out, oy, ox) != row(&full, 0, 0) {
                    return Err(format!(
                        "{w}x{h}: region x {x0}..{x1} y {y0}..{y1}, row {y} differs"
                    ));
                }
            }
        }
        Ok(draws)
    }

    #[test]
    fn regions_are_the_full_decodes_pixels() {
        for (i, jpeg) in [
            synth::class_image(1, 2, 300, 200),
            synth::class_image(4, 0, 97, 211),
            synth::gray_jpeg(130, 70),
        ]
        .iter()
        .enumerate()
        {
            let restarted = add_restart_markers(jpeg, 2).unwrap();
            assert_eq!(regions_match(&restarted, 50, i as u64), Ok(50));
        }
    }

    #[test]
    fn a_record_without_markers_is_decoded_whole_and_damage_is_corrupt() {
        let jpeg = synth::class_image(1, 2, 64, 48);
        let mut region = RegionDecoder::default();
        assert_eq!(region.open(&jpeg), Ok(None));
        let restarted = add_restart_markers(&jpeg, 1).unwrap();
        assert_eq!(region.open(&restarted), Ok(Some((64, 48))));
        let cut = &restarted[..restarted.len() - 3];
        assert_eq!(region.open(cut), Err(DecodeError::Corrupt));
    }
}

/// On the real data of `../shared/data` (skipped with a message where it is absent).
#[cfg(test)]
mod real_data {
    use std::path::{Path, PathBuf};

    use super::tests::regions_match;

    fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::metadata(&path).unwrap().is_dir() {
                files_under(&path, out);
            } else {
                out.push(path);
            }
        }
    }

    /// Every imagenet-sample JPEG and every corpus file libjpeg re-encodes: 10 random regions
    /// each, decoded from the re-encode by region, equal the full decode's pixels.
    #[test]
    fn every_real_record_decodes_by_region_to_the_full_decodes_pixels() {
        let data = std::env::var_os("RSB_SHARED_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
        let tars = ["imagenet-sample.tar", "jpeg-corpus.tar"].map(|t| data.join(t));
        if !tars.iter().all(|t| t.is_file()) {
            eprintln!(
                "SKIPPED: {} is absent (set RSB_SHARED_DATA to the shared data folder)",
                data.display()
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for tar in &tars {
            let ok = std::process::Command::new("tar")
                .arg("xf")
                .arg(tar)
                .arg("-C")
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "tar xf {}", tar.display());
        }
        for (tree, at_least) in [("imagenet-sample", 1000), ("jpeg-corpus", 60)] {
            let mut files = Vec::new();
            files_under(&dir.path().join(tree), &mut files);
            files.sort();
            let mut checked = 0;
            for (i, file) in files.iter().enumerate() {
                let bytes = std::fs::read(file).unwrap();
                // Damaged, arithmetic-coded, 12-bit and non-JPEG files are not re-encoded.
                let Ok(restarted) = shard_tool::restart::add_restart_markers(&bytes, 0) else {
                    continue;
                };
                match regions_match(&restarted, 10, i as u64) {
                    Ok(0) => {}
                    Ok(_) => checked += 1,
                    Err(e) => panic!("{}: {e}", file.display()),
                }
            }
            eprintln!("{tree}: {checked} files, 10 regions each, equal to the full decode");
            assert!(checked >= at_least, "{tree}: only {checked} files checked");
        }
    }
}
