//! Crop-aware decoding against the full decode: random regions of restart-marked JPEGs, decoded
//! by region, hold exactly the full decode's pixels, with zune-jpeg and with the decoder of
//! Pillow's bytes (`loader::image::jpeg`), and so do their coefficient records. Synthetic images always; every
//! imagenet-sample file and the JPEG corpus from `../shared/data` where present (skipped with a
//! message otherwise). A test binary of its own: the real-data pass allocates hundreds of MiB
//! that the library's heap-trim test must not see.

mod common;

use loader::image::decode::{Decoder, RgbImage};
use loader::image::region::RegionDecoder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shard_tool::coefficients;
use shard_tool::restart::add_restart_markers;
use shard_tool::synth;

/// Decodes `draws` random regions of `jpeg` and compares each with the full decode's pixels,
/// with zune-jpeg and (`pillow`) with the decoder of Pillow's bytes; returns how many were
/// compared (0 for a JPEG that is decoded whole).
fn regions_match(jpeg: &[u8], draws: u32, seed: u64, pillow: bool) -> Result<u32, String> {
    let zune = Decoder::default().with_pillow_exact(false);
    let n = regions_match_with(zune, jpeg, draws, seed)?;
    if pillow {
        let exact = regions_match_with(Decoder::default(), jpeg, draws, seed)
            .map_err(|e| format!("the decoder of Pillow's bytes: {e}"))?;
        assert_eq!(n, exact);
        if n == 0 {
            return Ok(0);
        }
        // Its coefficient record, decoded by regions, holds the full decode's pixels too (and
        // those are the JPEG's: `pillow_exact.rs`).
        let record = match coefficients::from_jpeg(jpeg) {
            Ok(record) => record,
            // CMYK and the like stay JPEG records.
            Err(coefficients::CoefficientError::Unsuitable(_)) => return Ok(n),
            Err(e) => return Err(e.to_string()),
        };
        let stored = regions_match_with(Decoder::default(), &record, draws, seed)
            .map_err(|e| format!("the coefficient record: {e}"))?;
        assert_eq!(n, stored);
    }
    Ok(n)
}

fn regions_match_with(decoder: Decoder, jpeg: &[u8], draws: u32, seed: u64) -> Result<u32, String> {
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
        let placed = region
            .decode(&decoder, jpeg, x0..x1, y0..y1, &mut out)
            .map_err(|e| e.to_string())?;
        let (ox, oy) = (placed.x, placed.y);
        let row = |img: &RgbImage, y: u32, top: u32, left: u32| {
            let at = (((y - top) * img.width + (x0 - left)) * 3) as usize;
            at..at + (x1 - x0) as usize * 3
        };
        for y in y0..y1 {
            if out.pixels[row(&out, y, oy, ox)] != full.pixels[row(&full, y, 0, 0)] {
                return Err(format!(
                    "{w}x{h}: region x {x0}..{x1} y {y0}..{y1}, row {y} differs"
                ));
            }
        }
    }
    Ok(draws)
}

#[test]
fn regions_of_synthetic_images_are_the_full_decodes_pixels() {
    for (i, jpeg) in [
        synth::class_image(1, 2, 300, 200),
        synth::class_image(4, 0, 97, 211),
        synth::gray_jpeg(130, 70),
    ]
    .iter()
    .enumerate()
    {
        let restarted = add_restart_markers(jpeg, 2).unwrap();
        assert_eq!(regions_match(&restarted, 50, i as u64, true), Ok(50));
    }
}

/// Every imagenet-sample JPEG and every corpus file libjpeg re-encodes: 10 random regions
/// each, decoded from the re-encode by region, equal the full decode's pixels (zune-jpeg's on
/// every file, the decoder of Pillow's bytes on every fourth).
#[test]
fn every_real_record_decodes_by_region_to_the_full_decodes_pixels() {
    let trees = ["imagenet-sample", "jpeg-corpus"];
    let Some((_dir, files)) = common::shared_trees(&trees) else {
        return;
    };
    for ((tree, files), at_least) in trees.iter().zip(files).zip([1000, 60]) {
        let mut checked = 0;
        for (i, file) in files.iter().enumerate() {
            let bytes = std::fs::read(file).unwrap();
            // Damaged, arithmetic-coded, 12-bit and non-JPEG files are not re-encoded.
            let Ok(restarted) = add_restart_markers(&bytes, 0) else {
                continue;
            };
            // The decoder of Pillow's bytes on every fourth file: unoptimised in `cargo test`,
            // it takes as long as zune-jpeg does on all of them.
            match regions_match(&restarted, 10, i as u64, i % 4 == 0) {
                Ok(0) => {}
                Ok(_) => checked += 1,
                Err(e) => panic!("{}: {e}", file.display()),
            }
        }
        eprintln!("{tree}: {checked} files, 10 regions each, equal to the full decode");
        assert!(checked >= at_least, "{tree}: only {checked} files checked");
    }
}
