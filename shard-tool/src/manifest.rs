/*!
`manifest.json`: the description of a finished dataset, written last by `pack`.

Its presence is what makes a directory a dataset: a pack killed at any point leaves no manifest,
so nothing can open a half-written dataset by mistake. It records everything needed to trust and
reproduce the data: class names in index order, counts, the options and seed used, and an
XXH3-64 of every shard and index file.
*/

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, PathContext, Result};
use crate::image::ImageOptions;
use crate::record::FORMAT_VERSION;

/// A file that is not packed, and why (the manifest's lists of transcoded, rejected and
/// ignored files).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// Path relative to the root.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// File name of the manifest inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the human-readable pack report.
pub const REPORT_FILE: &str = "report.txt";
/// Value of [`Manifest::format`].
pub const FORMAT_NAME: &str = "rsb-shards";

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the files.
    pub version: u32,
    /// Tool and version that wrote it.
    pub created_by: String,
    /// Unix time the pack finished.
    pub created_unix: u64,
    /// The source root as given to `pack`.
    pub source_root: String,
    /// Hash of the source file list and options; a resumed pack must match it.
    pub fingerprint: String,
    /// Options the pack ran with.
    pub options: PackedWith,
    /// Class names in class-index order.
    pub classes: Vec<String>,
    /// Splits in pack order.
    pub splits: Vec<SplitManifest>,
}

/// Options recorded so that the loader and users can see what was done to the images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedWith {
    /// Shuffle seed.
    pub seed: u64,
    /// How the seed is used.
    pub shuffle: String,
    /// Target shard size in bytes.
    pub shard_size: u64,
    /// Image acceptance and re-encoding options.
    pub image: ImageOptions,
    /// Filter used when `max_side` downscales.
    pub resize_filter: String,
    /// How class folders became class indices (`names`, or `numbers` for ImageNet-V2's
    /// numbered folders); absent in manifests written before it was recorded: `names`.
    #[serde(default = "names")]
    pub class_order: String,
}

fn names() -> String {
    "names".into()
}

/// One split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitManifest {
    /// `train`, `val` or `test`.
    pub name: String,
    /// How labels were found (see [`crate::layout::SplitLayout`]).
    pub layout: String,
    /// Whether records carry class labels.
    pub labelled: bool,
    /// Image files found in the source.
    pub source_files: u64,
    /// Records stored.
    pub records: u64,
    /// Records whose bytes are the source file's, unchanged.
    pub kept_as_is: u64,
    /// PNG sources converted to JPEG.
    pub transcoded_png: u64,
    /// CMYK/YCCK JPEGs converted to RGB JPEG.
    pub transcoded_cmyk: u64,
    /// Images downscaled because of `max_side`.
    pub resized: u64,
    /// Grayscale JPEGs (kept single-channel).
    pub grayscale: u64,
    /// Records re-encoded losslessly with restart markers (same pixels; see
    /// [`crate::restart`]). Absent in manifests written before they existed.
    #[serde(default)]
    pub restart_markers: u64,
    /// Of those, records stored as their coefficients ([`crate::coefficients`]). Absent in
    /// manifests written before they existed.
    #[serde(default)]
    pub coefficients: u64,
    /// Image bytes stored (excluding record headers and paths).
    pub image_bytes: u64,
    /// Records per class index (empty for an unlabelled split).
    pub per_class: Vec<u64>,
    /// Grayscale JPEGs, stored as is (listed because timm's pipeline sees them as RGB only
    /// after conversion, and users ask which ones they are).
    pub grayscale_files: Vec<String>,
    /// Converted files (PNG, CMYK), with what was done.
    pub transcoded: Vec<Skipped>,
    /// Image files not stored, with the reason.
    pub rejected: Vec<Skipped>,
    /// Non-image files that were not looked at.
    pub ignored: Vec<Skipped>,
    /// The index file.
    pub index: FileSum,
    /// The shard files, in shard order.
    pub shards: Vec<ShardSum>,
}

/// Size and checksum of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// File name inside the dataset directory.
    pub file: String,
    /// Length in bytes.
    pub bytes: u64,
    /// XXH3-64 of the whole file, 16 hex digits.
    pub xxh3: String,
}

/// A shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSum {
    /// Name, length, checksum.
    #[serde(flatten)]
    pub sum: FileSum,
    /// Records in it.
    pub records: u64,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    ///
    /// # Errors
    /// [`Error::Incomplete`] when the file is missing, a JSON or version error otherwise.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        if !path.exists() && dir.is_dir() {
            return Err(Error::Incomplete.with_path(dir));
        }
        let mut text = String::new();
        crate::open::open_regular(&path)?
            .read_to_string(&mut text)
            .at(&path)?;
        let manifest: Manifest = serde_json::from_str(&text).at(&path)?;
        if manifest.format != FORMAT_NAME {
            return Err(Error::BadMagic { what: "manifest" }.with_path(&path));
        }
        if manifest.version != FORMAT_VERSION {
            return Err(Error::Version {
                found: manifest.version,
                supported: FORMAT_VERSION,
            }
            .with_path(&path));
        }
        manifest.check_files().at(&path)?;
        Ok(manifest)
    }

    /// Every file the manifest names is a plain name inside the dataset directory (no `/`,
    /// no `..`: a manifest must not make a reader open `../../etc/passwd`), and none is named
    /// twice (a manifest listing every shard twice would verify, and serve, each record twice).
    fn check_files(&self) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        let files = self.splits.iter().flat_map(|s| {
            std::iter::once(&s.index.file).chain(s.shards.iter().map(|h| &h.sum.file))
        });
        for name in files {
            let plain = !name.is_empty()
                && name != "."
                && name != ".."
                && !name.contains('/')
                && !name.contains('\0');
            if !plain {
                return Err(Error::Corrupt(format!(
                    "the manifest names {name:?}, which is not a file of the dataset directory"
                )));
            }
            if !seen.insert(name.as_str()) {
                return Err(Error::Corrupt(format!("the manifest names {name:?} twice")));
            }
        }
        Ok(())
    }

    /// The split called `name`.
    ///
    /// # Errors
    /// [`Error::NoSplit`] naming the splits that exist.
    pub fn split(&self, name: &str) -> Result<&SplitManifest> {
        self.splits
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::NoSplit {
                split: name.to_owned(),
                available: self.split_names(),
            })
    }

    /// Comma-separated split names.
    pub fn split_names(&self) -> String {
        let names: Vec<&str> = self.splits.iter().map(|s| s.name.as_str()).collect();
        names.join(", ")
    }
}

/// Length and XXH3-64 of a file, read in streaming fashion.
///
/// # Errors
/// I/O errors with the path.
pub fn file_sum(path: &Path) -> Result<FileSum> {
    let mut file = crate::open::open_regular(path)?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(FileSum {
        file: name,
        bytes,
        xxh3: format!("{:016x}", hasher.digest()),
    })
}
