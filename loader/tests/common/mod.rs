//! What the loader's integration tests share: the real data of `../shared/data`.

use std::path::{Path, PathBuf};

/// The `trees` (imagenet-sample, jpeg-corpus) of the shared data folder (`RSB_SHARED_DATA`, or
/// `../shared/data` beside the repository), unpacked into a temporary folder, each tree's files
/// sorted; `None`, with a SKIPPED message, where a tree's tar is absent.
pub fn shared_trees(trees: &[&str]) -> Option<(tempfile::TempDir, Vec<Vec<PathBuf>>)> {
    let data = std::env::var_os("RSB_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let tars: Vec<PathBuf> = trees
        .iter()
        .map(|t| data.join(format!("{t}.tar")))
        .collect();
    if !tars.iter().all(|t| t.is_file()) {
        eprintln!(
            "SKIPPED: {} is absent (set RSB_SHARED_DATA to the shared data folder)",
            data.display()
        );
        return None;
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
    let files = trees
        .iter()
        .map(|t| {
            let mut files = Vec::new();
            files_under(&dir.path().join(t), &mut files);
            files.sort();
            files
        })
        .collect();
    Some((dir, files))
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
