//! Helpers shared by the unit tests: the committed Pillow goldens.

use std::path::{Path, PathBuf};

use zune_core::bytestream::ZCursor;
use zune_png::PngDecoder;

use crate::decode::RgbImage;

/// `loader/tests/golden`, where `make_golden.py` writes.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// A committed RGB PNG.
pub fn png(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap();
    let mut d = PngDecoder::new(ZCursor::new(&bytes[..]));
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
