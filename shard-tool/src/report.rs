//! `report.txt` and the summary `pack` prints: counts per split, then every file that was not
//! stored as a plain RGB JPEG (as is or with restart markers), with the reason.

use crate::console::escaped;
use crate::manifest::Manifest;
use crate::manifest::Skipped;

/// The human-readable report: counts per split, then every file that was not stored as a plain
/// RGB JPEG (as is or with restart markers). `limit` caps each list (for a terminal); `None` lists everything (for
/// `report.txt`).
pub fn report(manifest: &Manifest, limit: Option<usize>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "rsb pack report: {} ({} classes)\n",
        manifest.source_root,
        manifest.classes.len()
    );
    for split in &manifest.splits {
        let _ = writeln!(
            s,
            "{}: {} image files, {} stored ({} as is, {} PNG converted, {} CMYK converted, \
             {} downscaled, {} re-encoded with restart markers; {} grayscale), {} rejected, {} \
             non-image files ignored",
            split.name,
            split.source_files,
            split.records,
            split.kept_as_is,
            split.transcoded_png,
            split.transcoded_cmyk,
            split.resized,
            split.restart_markers,
            split.grayscale,
            split.rejected.len(),
            split.ignored.len()
        );
        let gray: Vec<(&str, &str)> = split
            .grayscale_files
            .iter()
            .map(|p| {
                (
                    p.as_str(),
                    "grayscale JPEG kept single-channel (readers expand it to RGB)",
                )
            })
            .collect();
        let lists = [
            ("kept", gray),
            ("converted", pairs(&split.transcoded)),
            ("REJECTED", pairs(&split.rejected)),
            ("ignored", pairs(&split.ignored)),
        ];
        for (what, list) in lists {
            let shown = limit.unwrap_or(usize::MAX);
            for (path, reason) in list.iter().take(shown) {
                let _ = writeln!(s, "  {what}: {}: {}", escaped(path), escaped(reason));
            }
            if list.len() > shown {
                let _ = writeln!(
                    s,
                    "  ... {} more {what} (see report.txt)",
                    list.len() - shown
                );
            }
        }
    }
    let quality = manifest.options.image.transcode_quality;
    let _ = writeln!(
        s,
        "\nConverted files are baseline 4:4:4 RGB JPEGs at quality {quality}; every other stored \
         record holds the source file's bytes unchanged."
    );
    s
}

/// (path, reason) of each skipped file.
fn pairs(list: &[Skipped]) -> Vec<(&str, &str)> {
    list.iter()
        .map(|i| (i.path.as_str(), i.reason.as_str()))
        .collect()
}
