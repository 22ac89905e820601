//! Helpers shared by the integration tests: the binary, scratch trees, the real data.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The `shard-tool` binary built for these tests.
pub fn shard_tool() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("shard-tool").unwrap()
}

/// The same binary as a plain `std::process::Command` (for spawning and killing).
pub fn shard_tool_std() -> Command {
    Command::new(assert_cmd::cargo::cargo_bin("shard-tool"))
}

/// `../shared/data` (or `$RSB_SHARED_DATA`) when present; tests that need it print why they
/// skip and return.
pub fn shared_data(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("RSB_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let path = dir.join(file);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (set RSB_SHARED_DATA to the shared data folder to run this)",
            path.display()
        );
        None
    }
}

/// Unpacks `tar` into `into`.
pub fn untar(tar: &Path, into: &Path) {
    let status = Command::new("tar")
        .arg("xf")
        .arg(tar)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success(), "tar xf {}", tar.display());
}

/// zune-jpeg's RGB pixels of a JPEG (strict mode, as the packer decodes), or of the JPEG a
/// coefficient record writes back (the same coefficients, so the same pixels).
pub fn pixels(jpeg: &[u8]) -> Vec<u8> {
    let written_back;
    let jpeg = if shard_tool::coefficients::is_coefficients(jpeg) {
        written_back = shard_tool::coefficients::to_jpeg(jpeg).unwrap();
        &written_back[..]
    } else {
        jpeg
    };
    let mut d = zune_jpeg::JpegDecoder::new_with_options(
        shard_tool::slice_reader::SliceReader::new(jpeg),
        shard_tool::image::jpeg_options(),
    );
    d.decode().unwrap()
}

/// SHA-256 of a byte string, hex.
pub fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Every regular file under `dir` as (relative path, sha256), sorted.
pub fn tree_digest(dir: &Path, skip: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // The pack lock holds the last packer's pid, not the dataset.
        if skip.contains(&name.as_str()) || name == shard_tool::LOCK_FILE {
            continue;
        }
        out.push((name, sha256(&std::fs::read(&path).unwrap())));
    }
    out.sort();
    out
}
