//! Crop-aware decoding against the full decode: random regions of restart-marked JPEGs, decoded
//! by region, hold exactly the full decode's pixels. Synthetic images always; every
//! imagenet-sample file and the JPEG corpus from `../shared/data` where present (skipped with a
//! message otherwise). A test binary of its own: the real-data pass allocates hundreds of MiB
//! that the library's heap-trim test must not see.

use std::path::{Path, PathBuf};

use loader::image::decode::{Decoder, RgbImage};
use loader::image::region::RegionDecoder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shard_tool::restart::add_restart_markers;
use shard_tool::synth;

/// Decodes `draws` random regions of `jpeg` and compares each with the full decode's pixels;
/// returns how many were compared (0 for a JPEG that is decoded whole).
fn regions_match(jpeg: &[u8], draws: u32, seed: u64) -> Result<u32, String> {
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
        assert_eq!(regions_match(&restarted, 50, i as u64), Ok(50));
    }
}

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
            let Ok(restarted) = add_restart_markers(&bytes, 0) else {
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
