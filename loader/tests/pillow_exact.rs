//! The decoder of Pillow's bytes (`loader::image::jpeg`): the same bytes as Pillow's
//! `convert("RGB")` on synthetic JPEGs (4:2:0, grayscale, odd sizes, restart intervals) and on
//! every imagenet-sample file from `../shared/data` (where zune-jpeg's matches are counted too);
//! the same bytes with and without AVX2; coefficient records (`shard_tool::coefficients`) the same
//! pixels as their JPEGs and the JPEGs back byte for byte; and no panic on damaged input. The Pillow comparisons need python3 with Pillow and are skipped,
//! with a message, without it (`.ci/run` has both).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

mod common;

use loader::image::decode::RgbImage;
use loader::image::jpeg::decode_into;
use sha2::{Digest, Sha256};
use shard_tool::coefficients;
use shard_tool::restart::add_restart_markers;
use shard_tool::synth;

/// Pillow's `convert("RGB")` of each file as SHA-256 hex, or `None` without python3 and Pillow.
fn pillow_hashes(files: &[PathBuf]) -> Option<Vec<String>> {
    // A file Pillow cannot open hashes to `-`.
    const SCRIPT: &str = "import sys, hashlib\nfrom PIL import Image\nfor p in sys.stdin.read().splitlines():\n    try:\n        print(hashlib.sha256(Image.open(p).convert('RGB').tobytes()).hexdigest())\n    except Exception:\n        print('-')\n";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let list: String = files.iter().map(|p| format!("{}\n", p.display())).collect();
    child.stdin.take()?.write_all(list.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (out.status.success() && lines.len() == files.len()).then_some(lines)
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Ours, with AVX2 (where the CPU has it) and without: the same bytes, or a panic.
fn ours(jpeg: &[u8]) -> Option<RgbImage> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let with = decode_into(jpeg, &mut a, u64::MAX, true);
    let without = decode_into(jpeg, &mut b, u64::MAX, false);
    assert_eq!(with, without, "AVX2 and portable disagree on decoding");
    let (width, height) = with?;
    assert!(a == b, "AVX2 and portable give different bytes");
    Some(RgbImage {
        width,
        height,
        pixels: a,
    })
}

#[test]
fn synthetic_jpegs_decode_to_pillows_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut decoded = Vec::new();
    for (i, jpeg) in [
        synth::class_image(1, 2, 300, 200),
        synth::class_image(4, 0, 97, 211),
        synth::class_image(2, 5, 17, 9),
        synth::gray_jpeg(130, 70),
    ]
    .into_iter()
    .enumerate()
    {
        for (j, bytes) in [add_restart_markers(&jpeg, 2).unwrap(), jpeg]
            .iter()
            .enumerate()
        {
            let image = ours(bytes).unwrap_or_else(|| panic!("image {i}.{j} not decoded"));
            if j == 0 {
                // The restart-marked JPEG's coefficient record: the same pixels.
                let record = coefficients::from_jpeg(bytes).unwrap();
                assert_eq!(ours(&record).map(|r| r.pixels), Some(image.pixels.clone()));
            }
            let path = dir.path().join(format!("{i}-{j}.jpg"));
            std::fs::write(&path, bytes).unwrap();
            files.push(path);
            decoded.push(image);
        }
    }
    let Some(pillow) = pillow_hashes(&files) else {
        eprintln!("SKIPPED the comparison with Pillow: no python3 with Pillow");
        return;
    };
    for ((file, image), want) in files.iter().zip(&decoded).zip(&pillow) {
        assert_eq!(&sha256(&image.pixels), want, "{}", file.display());
    }
}

#[test]
fn damaged_input_is_refused_or_decoded_never_a_panic() {
    let jpeg = add_restart_markers(&synth::class_image(3, 1, 120, 90), 2).unwrap();
    for cut in (0..jpeg.len()).step_by(37) {
        let _ = ours(&jpeg[..cut]);
    }
    for at in (0..jpeg.len()).step_by(13) {
        for bit in [0x01, 0x10, 0x80] {
            let mut damaged = jpeg.clone();
            damaged[at] ^= bit;
            let _ = ours(&damaged);
        }
    }
    // A coefficient record's damage: refused (its offsets, its values' ranges, where each chunk
    // ends) or decoded, never a panic.
    let record = coefficients::from_jpeg(&jpeg).unwrap();
    let mut refused = 0;
    for cut in (0..record.len()).step_by(37) {
        refused += usize::from(ours(&record[..cut]).is_none());
    }
    assert_eq!(refused, record.len().div_ceil(37), "a cut record decoded");
    for at in (0..record.len()).step_by(13) {
        let mut damaged = record.clone();
        damaged[at] ^= 0x10;
        let _ = ours(&damaged);
    }
    assert!(ours(b"not a jpeg").is_none());
    // Components named 'R', 'G', 'B' without a JFIF marker: RGB to libjpeg, so not ours.
    let ycbcr = synth::class_image(1, 1, 16, 16);
    assert!(ours(&ycbcr).is_some());
    assert!(
        ours(&named_rgb(&ycbcr, false)).is_some(),
        "with JFIF, YCbCr whatever the names"
    );
    assert!(ours(&named_rgb(&ycbcr, true)).is_none());
    assert!(ours(&synth::cmyk_jpeg(16, 16, [1, 2, 3, 4])).is_none());
    let mut out = Vec::new();
    let huge = synth::huge_declared_jpeg(50_000, 50_000);
    assert!(decode_into(&huge, &mut out, 1 << 26, true).is_none());
    // With no pixel limit, a header declaring 50,000² over a few bytes of data is refused
    // before any buffer is sized from it.
    assert!(decode_into(&huge, &mut out, u64::MAX, true).is_none());
    assert!(
        out.capacity() < 1 << 20,
        "{} bytes allocated",
        out.capacity()
    );
}

/// Every imagenet-sample file decodes to Pillow's bytes. zune-jpeg's matches, and ours on the
/// JPEG corpus (damaged and odd files among them), are counted and printed, not asserted.
#[test]
fn every_imagenet_sample_file_decodes_to_pillows_bytes() {
    let Some((_dir, trees)) = common::shared_trees(&["imagenet-sample", "jpeg-corpus"]) else {
        return;
    };
    let (sample, corpus) = (&trees[0], &trees[1]);
    assert!(sample.len() >= 1000, "{} files", sample.len());
    let Some(pillow) = pillow_hashes(sample) else {
        eprintln!("SKIPPED: no python3 with Pillow");
        return;
    };
    let zune = loader::image::decode::Decoder::default().with_pillow_exact(false);
    let mut zune_same = 0;
    for (file, want) in sample.iter().zip(&pillow) {
        let bytes = std::fs::read(file).unwrap();
        let image = ours(&bytes).unwrap_or_else(|| panic!("{}: not decoded", file.display()));
        assert_eq!(&sha256(&image.pixels), want, "{}", file.display());
        // Its coefficient record, as `shard-tool pack` stores it: the same pixels, and the
        // restart-marked JPEG back byte for byte.
        let restarted = add_restart_markers(&bytes, 0).unwrap();
        let record = coefficients::from_jpeg(&restarted).unwrap();
        assert_eq!(coefficients::to_jpeg(&record).unwrap(), restarted);
        let stored = ours(&record).unwrap_or_else(|| panic!("{}: record", file.display()));
        assert_eq!(&sha256(&stored.pixels), want, "{}: record", file.display());
        let mut z = RgbImage::default();
        if zune.decode_into(&bytes, &mut z).is_ok() && sha256(&z.pixels) == *want {
            zune_same += 1;
        }
    }
    eprintln!(
        "imagenet-sample: ours {} of {} the same bytes as Pillow's, zune-jpeg {zune_same}",
        sample.len(),
        sample.len()
    );
    let (mut handled, mut same, mut records) = (0, 0, 0);
    let hashes = pillow_hashes(corpus).unwrap_or_default();
    for (file, want) in corpus.iter().zip(&hashes) {
        let bytes = std::fs::read(file).unwrap();
        if let Some(image) = ours(&bytes) {
            handled += 1;
            same += usize::from(sha256(&image.pixels) == *want);
        }
        // Every file libjpeg re-encodes makes a coefficient record (or is refused, never
        // stored wrong): the restart-marked JPEG back byte for byte, and its pixels as ours
        // from that JPEG (Pillow's, where ours are).
        let Ok(restarted) = add_restart_markers(&bytes, 0) else {
            continue;
        };
        let Ok(record) = coefficients::from_jpeg(&restarted) else {
            continue;
        };
        records += 1;
        assert_eq!(coefficients::to_jpeg(&record).unwrap(), restarted);
        let from_jpeg = ours(&restarted).map(|i| i.pixels);
        assert_eq!(
            ours(&record).map(|i| i.pixels),
            from_jpeg,
            "{}",
            file.display()
        );
    }
    eprintln!(
        "jpeg-corpus: ours decodes {handled} of {} files, {same} of them Pillow's bytes; \
         {records} coefficient records decode to their JPEG's pixels",
        corpus.len()
    );
    assert!(records >= 40, "only {records} coefficient records");
}

/// `jpeg` with its components renamed 'R', 'G', 'B' (in the frame and the scan header), and its
/// JFIF marker dropped (`drop_jfif`).
fn named_rgb(jpeg: &[u8], drop_jfif: bool) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut p = 2;
    while p + 4 <= jpeg.len() && jpeg[p] == 0xFF {
        let marker = jpeg[p + 1];
        let len = usize::from(u16::from_be_bytes([jpeg[p + 2], jpeg[p + 3]]));
        let mut seg = jpeg[p..p + 2 + len].to_vec();
        match marker {
            0xE0 if drop_jfif => {
                p += 2 + len;
                continue;
            }
            0xC0 => (0..3).for_each(|c| seg[10 + 3 * c] = b"RGB"[c]),
            0xDA => {
                (0..3).for_each(|c| seg[5 + 2 * c] = b"RGB"[c]);
                out.extend_from_slice(&seg);
                out.extend_from_slice(&jpeg[p + 2 + len..]);
                return out;
            }
            _ => {}
        }
        out.extend_from_slice(&seg);
        p += 2 + len;
    }
    out
}
