//! Helpers shared by the unit tests: packed synthetic datasets, the committed Pillow goldens.

use std::path::{Path, PathBuf};

use shard_tool::slice_reader::SliceReader;
use zune_png::PngDecoder;

use crate::image::decode::RgbImage;

/// `classes` × `per_class` synthetic train JPEGs of `size` px, packed into `dir/shards`.
pub fn packed(dir: &Path, classes: u32, per_class: u32, size: u32) -> PathBuf {
    let spec = shard_tool::synth::TreeSpec {
        classes,
        train_per_class: per_class,
        val_per_class: 0,
        size,
        ..shard_tool::synth::TreeSpec::default()
    };
    shard_tool::synth::write_tree(&dir.join("src"), &spec).unwrap();
    let out = dir.join("shards");
    shard_tool::pack(
        &dir.join("src"),
        &shard_tool::PackOptions::new(&out),
        &mut |_| {},
    )
    .unwrap();
    out
}

/// Makes every record of the packed dataset at `shards` undecodable: each JPEG's start-of-image
/// marker is overwritten in the shard files (the index and footers stay intact).
pub fn break_every_record(shards: &Path) {
    for entry in std::fs::read_dir(shards).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rsb") {
            let mut bytes = std::fs::read(&path).unwrap();
            for i in 0..bytes.len().saturating_sub(2) {
                if bytes[i..i + 3] == [0xFF, 0xD8, 0xFF] {
                    bytes[i..i + 3].copy_from_slice(&[0, 0, 0]);
                }
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }
}

/// [`packed`], opened (the directory lives as long as the returned guard).
pub fn opened(classes: u32, per_class: u32, size: u32) -> (tempfile::TempDir, shard_tool::Dataset) {
    let dir = tempfile::tempdir().unwrap();
    let shards = packed(dir.path(), classes, per_class, size);
    // SAFETY: the dataset is not modified while open.
    let ds = unsafe { shard_tool::Dataset::open(&shards) }.unwrap();
    (dir, ds)
}

/// `loader/tests/golden`, where `make_golden.py` writes.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// A committed RGB PNG.
pub fn png(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap();
    let mut d = PngDecoder::new(SliceReader::new(&bytes[..]));
    let pixels = d.decode_raw().unwrap();
    let (w, h) = d.dimensions().unwrap();
    assert_eq!(pixels.len(), w * h * 3, "{} must be RGB", path.display());
    RgbImage {
        width: w as u32,
        height: h as u32,
        pixels,
    }
}

/// Lines of a golden case list, split into fields, comments skipped.
pub fn case_lines(file: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(golden_dir().join(file))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}
