//! ImageNet-ReaL labels (Beyer et al. 2020, "Are we done with ImageNet?"): `real.json`, a list
//! of 50,000 lists, entry i holding the classes that are correct for
//! `ILSVRC2012_val_{i+1:08d}.JPEG` (several, one, or none). timm's `RealLabelsImagenet` counts
//! a prediction correct when its top-1 (top-k: any of its first k) is in the image's list, over
//! the images whose list is not empty; `RealScore` does the same.

use std::path::{Path, PathBuf};

/// Images in ImageNet's validation set, and so entries in `real.json`.
pub const VAL_IMAGES: usize = 50_000;

/// Errors reading a ReaL file.
#[derive(Debug, thiserror::Error)]
pub enum RealError {
    /// The file could not be read (missing, not a regular file, over 64 MiB: ReaL's is 1.3 MB).
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Not a JSON list of lists of class indices.
    #[error("{path}: not ReaL's real.json (a JSON list of lists of class indices): {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// serde's message.
        message: String,
    },
    /// Not one entry per validation image.
    #[error(
        "{path} has {found} entries; ImageNet-ReaL has one per validation image ({expected}): \
         is this the real.json of github.com/google-research/reassessed-imagenet?"
    )]
    Length {
        /// The file.
        path: PathBuf,
        /// Entries found.
        found: usize,
        /// Entries needed.
        expected: usize,
    },
    /// A class index the model does not have.
    #[error("{path}: entry {entry} (ILSVRC2012_val_{:08}.JPEG) names class {class}, not below {classes}", entry + 1)]
    Class {
        /// The file.
        path: PathBuf,
        /// The entry (0-based).
        entry: usize,
        /// The class.
        class: u32,
        /// Classes of the model.
        classes: usize,
    },
}

/// The ReaL labels of every validation image.
#[derive(Debug, Clone)]
pub struct RealLabels {
    per_image: Vec<Vec<u32>>,
}

impl RealLabels {
    /// Reads `path`, checking it has `expected` entries (ImageNet: [`VAL_IMAGES`]) and that
    /// every class is below `classes`.
    ///
    /// # Errors
    /// [`RealError`] naming the file and what is wrong.
    pub fn load(path: &Path, expected: usize, classes: usize) -> Result<RealLabels, RealError> {
        let text = shard_tool::user_file::read_string_capped(
            path,
            64 * shard_tool::user_file::MIB,
            "a ReaL labels file",
        )
        .map_err(|e| RealError::Read {
            path: path.to_path_buf(),
            message: e.reason(),
        })?;
        let per_image: Vec<Vec<u32>> =
            serde_json::from_str(&text).map_err(|e| RealError::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if per_image.len() != expected {
            return Err(RealError::Length {
                path: path.to_path_buf(),
                found: per_image.len(),
                expected,
            });
        }
        for (entry, labels) in per_image.iter().enumerate() {
            if let Some(&class) = labels.iter().find(|&&c| c as usize >= classes) {
                return Err(RealError::Class {
                    path: path.to_path_buf(),
                    entry,
                    class,
                    classes,
                });
            }
        }
        Ok(RealLabels { per_image })
    }

    /// The labels of the validation image a record was packed from, by its file name
    /// (`ILSVRC2012_val_00000001.JPEG`, in any folder); `None` for another name.
    pub(crate) fn of_file(&self, path: &str) -> Option<&[u32]> {
        let name = path.rsplit('/').next()?;
        let number: usize = name
            .strip_prefix("ILSVRC2012_val_")?
            .split('.')
            .next()?
            .parse()
            .ok()?;
        self.per_image
            .get(number.checked_sub(1)?)
            .map(Vec::as_slice)
    }
}

/// ReaL accuracy as timm counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RealScore {
    /// Images with a non-empty ReaL list.
    pub counted: u64,
    /// Of those, how many have their top-1 prediction in the list.
    pub top1: u64,
    /// Of those, how many have one of their top-5 predictions in the list.
    pub top5: u64,
}

impl RealScore {
    /// Adds one image: its predictions, best first, and its ReaL labels. An empty list (no
    /// label fits the image) is not counted.
    pub(crate) fn add(&mut self, predictions: &[u32], labels: &[u32]) {
        if labels.is_empty() {
            return;
        }
        self.counted += 1;
        let hit = |k: usize| predictions.iter().take(k).any(|p| labels.contains(p));
        self.top1 += u64::from(hit(1));
        self.top5 += u64::from(hit(5));
    }

    /// Top-1 in percent (NaN before any image is counted).
    pub(crate) fn top1_percent(&self) -> f64 {
        100.0 * self.top1 as f64 / self.counted as f64
    }

    /// Top-5 in percent.
    pub(crate) fn top5_percent(&self) -> f64 {
        100.0 * self.top5 as f64 / self.counted as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("real.json");
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn a_device_is_refused_not_read_forever() {
        // The drill's example: `trainer eval --real-labels /dev/zero` reached 9 GB in 6 s.
        let err = RealLabels::load(Path::new("/dev/zero"), 4, 10).expect_err("a device");
        assert_eq!(
            err.to_string(),
            "/dev/zero: is a character device, not a regular file"
        );
        let dir = tempfile::tempdir().expect("dir");
        let big = file(dir.path(), &" ".repeat(65 << 20));
        let err = RealLabels::load(&big, 4, 10).expect_err("too big");
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    #[test]
    fn empty_single_and_multiple_labels_score_as_timm_counts_them() {
        let dir = tempfile::tempdir().expect("dir");
        // Images 1..=5: no label, one, two, one, three.
        let real = file(dir.path(), "[[], [3], [1, 7], [0], [2, 4, 9]]");
        let labels = RealLabels::load(&real, 5, 10).expect("load");
        assert_eq!(
            labels.of_file("val/n01/ILSVRC2012_val_00000003.JPEG"),
            Some(&[1, 7][..])
        );
        assert_eq!(labels.of_file("ILSVRC2012_val_00000006.JPEG"), None);
        assert_eq!(labels.of_file("n01440764_10026.JPEG"), None);
        let predictions: [&[u32]; 5] = [
            &[3, 1, 2, 5, 6], // no label: not counted, whatever it says
            &[3, 0, 1, 2, 4], // top-1 right
            &[0, 2, 5, 7, 9], // top-1 wrong, 7 in the top 5
            &[5, 6, 8, 9, 1], // wrong, 0 not in the top 5
            &[4, 0, 1, 3, 5], // top-1 is one of three
        ];
        let mut score = RealScore::default();
        for (i, p) in predictions.iter().enumerate() {
            let name = format!("ILSVRC2012_val_{:08}.JPEG", i + 1);
            score.add(p, labels.of_file(&name).expect("labels"));
        }
        // By hand: 4 images counted, top-1 right for images 2 and 5, top-5 for 2, 3 and 5.
        assert_eq!(
            score,
            RealScore {
                counted: 4,
                top1: 2,
                top5: 3
            }
        );
        assert_eq!(score.top1_percent(), 50.0);
        assert_eq!(score.top5_percent(), 75.0);
    }

    #[test]
    fn a_file_of_the_wrong_length_or_with_a_foreign_class_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let real = file(dir.path(), "[[1], [2]]");
        let e = RealLabels::load(&real, VAL_IMAGES, 1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has 2 entries") && e.contains("50000"), "{e}");
        let real = file(dir.path(), "[[1], [2, 1000]]");
        let e = RealLabels::load(&real, 2, 1000).unwrap_err().to_string();
        assert!(
            e.contains("ILSVRC2012_val_00000002.JPEG") && e.contains("class 1000"),
            "{e}"
        );
        let real = file(dir.path(), "{\"a\": 1}");
        let e = RealLabels::load(&real, 2, 1000).unwrap_err().to_string();
        assert!(e.contains("not ReaL's real.json"), "{e}");
    }
}
