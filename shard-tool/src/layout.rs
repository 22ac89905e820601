/*!
Finding the images and labels of a source tree.

ImageNet arrives in several shapes; this module turns each into one list of (path, label) per
split, so that packing never has to care which shape it was:

- `train/<class>/**/*`, `val/<class>/**/*`, `test/<class>/**/*`: ImageFolder, as torchvision and
  timm read it (CIFAR-10 in this layout works the same way).
- a flat `val/` plus Kaggle's `LOC_val_solution.csv` (`ImageId,PredictionString`; the first
  token of the string is the wnid).
- a flat `val/` plus the devkit's `ILSVRC2012_validation_ground_truth.txt`: line *k* holds the
  ILSVRC2012_ID of `ILSVRC2012_val_<k, 8 digits>.JPEG`. Those IDs (1..=1000) are **not** sorted-wnid
  order; they index the `synsets` table of the devkit's `meta.mat`. Pass that table as a text
  file with one wnid per line in ILSVRC2012_ID order (`--devkit-synsets`); see docs/packing.md for
  the one-line export from `meta.mat`.
- a flat `test/` with no labels: stored with [`NO_LABEL`].

Class index = position of the class folder name in the sorted list of `train/`'s class folders
(of the first split with class folders if there is no `train/`), as torchvision's ImageFolder
does. Image files are those whose extension timm accepts (`.jpg`, `.jpeg`, `.png`, any case);
everything else is listed as ignored, never dropped silently.
*/

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, PathContext, Result};
use crate::manifest::Skipped;
use crate::record::NO_LABEL;

/// The largest validation labels or synsets file read (ImageNet's are 2 MB at most).
const LABELS_MAX_BYTES: u64 = 64 * crate::user_file::MIB;

/// Split folder names `pack` looks for, in the order they are packed.
pub const SPLIT_NAMES: [&str; 3] = ["train", "val", "test"];

/// File extensions (lower case) that count as images, as timm's `IMG_EXTENSIONS`.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Where to find labels for a flat validation folder, and which symbolic links to follow.
#[derive(Debug, Clone, Default)]
pub struct LayoutOptions {
    /// Kaggle `LOC_val_solution.csv` or devkit `ILSVRC2012_validation_ground_truth.txt`; found
    /// automatically in the root or in `val/` when not given.
    pub val_labels: Option<PathBuf>,
    /// The devkit's synset table as text: one wnid per line, line *k* = ILSVRC2012_ID *k*.
    pub devkit_synsets: Option<PathBuf>,
    /// Follow symbolic links that lead out of the root. Off by default: a link planted in a
    /// shared dataset folder would otherwise copy any file the packing user can read into
    /// shards that everyone who trains on them can read.
    pub follow_external_symlinks: bool,
    /// How class folders map to class indices.
    pub class_order: ClassOrder,
    /// Another dataset's classes: class folders are looked up in its list (numbered folders
    /// index it), so a dataset whose classes are a subset of ImageNet's keeps ImageNet's
    /// indices (`--classes-from`).
    pub classes_from: Option<ClassList>,
}

/// Class names in index order, taken from a packed dataset's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassList {
    /// The names; index *k* is class *k*.
    pub names: Vec<String>,
    /// Where they come from, for messages and the manifest.
    pub origin: String,
}

impl ClassList {
    /// The classes of the dataset packed in `path` (its directory, or its `manifest.json`).
    ///
    /// # Errors
    /// The manifest's errors, naming the file.
    pub fn from_dataset(path: &Path) -> Result<ClassList> {
        let dir = if path.is_file() {
            path.parent().unwrap_or(path)
        } else {
            path
        };
        if !dir.join(crate::manifest::MANIFEST_FILE).is_file() {
            return Err(Error::Layout(format!(
                "{} is not a packed dataset (no {}): give the --out directory of a finished \
                 `shard-tool pack`",
                dir.display(),
                crate::manifest::MANIFEST_FILE
            )));
        }
        let manifest = crate::manifest::Manifest::load(dir)?;
        if manifest.classes.is_empty() {
            return Err(Error::Layout(format!(
                "{}: that dataset has no classes to take",
                path.display()
            )));
        }
        Ok(ClassList {
            names: manifest.classes,
            origin: dir.display().to_string(),
        })
    }
}

/// How class folder names become class indices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClassOrder {
    /// `numbers` when every class folder is a number written without leading zeros (ImageNet-V2's
    /// `0` … `999`), else `names`.
    #[default]
    Auto,
    /// The folder names sorted as strings, as torchvision's ImageFolder and timm (`n01440764`
    /// … for ImageNet). For numbered folders this gives `0, 1, 10, 100, …`: wrong labels.
    Names,
    /// Folder `N` is class `N` (ImageNet-V2: the number is the class's index in ImageNet's
    /// sorted-wnid order); a missing number keeps its index, empty.
    Numbers,
}

/// A source tree, resolved into splits of labelled files.
#[derive(Debug, Clone)]
pub struct SourceTree {
    /// Root that was scanned; file paths are relative to it.
    pub root: PathBuf,
    /// The root's canonical path when every file read must resolve inside it (`None` when
    /// [`LayoutOptions::follow_external_symlinks`] is set).
    pub confine: Option<PathBuf>,
    /// Class names in class-index order.
    pub classes: Vec<String>,
    /// Whether class folders were read as numbers ([`ClassOrder::Numbers`]).
    pub numbered_classes: bool,
    /// The dataset whose class list was used ([`LayoutOptions::classes_from`]).
    pub classes_from: Option<String>,
    /// Splits found, in [`SPLIT_NAMES`] order.
    pub splits: Vec<SourceSplit>,
    /// Things worth telling the user that are not errors (e.g. an empty class folder).
    pub warnings: Vec<String>,
}

/// How a split's labels were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitLayout {
    /// One folder per class.
    ClassFolders,
    /// Flat folder, labels from a Kaggle CSV at this path.
    KaggleCsv(PathBuf),
    /// Flat folder, labels from the devkit ground truth and synset table at these paths.
    Devkit {
        /// `ILSVRC2012_validation_ground_truth.txt`.
        ground_truth: PathBuf,
        /// Synset table, one wnid per line in ILSVRC2012_ID order.
        synsets: PathBuf,
    },
    /// Flat folder without labels.
    Unlabelled,
}

impl std::fmt::Display for SplitLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitLayout::ClassFolders => f.write_str("class folders"),
            SplitLayout::KaggleCsv(p) => write!(f, "flat, labels from {}", p.display()),
            SplitLayout::Devkit {
                ground_truth,
                synsets,
            } => write!(
                f,
                "flat, labels from {} through {}",
                ground_truth.display(),
                synsets.display()
            ),
            SplitLayout::Unlabelled => f.write_str("flat, unlabelled"),
        }
    }
}

/// One split of a source tree.
#[derive(Debug, Clone)]
pub struct SourceSplit {
    /// `train`, `val` or `test`.
    pub name: String,
    /// How labels were found.
    pub layout: SplitLayout,
    /// Image files to pack, sorted by path.
    pub files: Vec<SourceFile>,
    /// Image files that cannot be packed (e.g. no label), with the reason.
    pub rejected: Vec<Skipped>,
    /// Files that are not images by extension, with the reason.
    pub ignored: Vec<Skipped>,
}

/// A file to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the root, `/`-separated.
    pub path: String,
    /// Class index, or [`NO_LABEL`].
    pub label: u32,
    /// Size in bytes when scanned.
    pub size: u64,
}

/// Scans `root` and resolves its splits and labels.
///
/// # Errors
/// [`Error::Layout`] when the tree has no split folder, a `train/` without class folders, a
/// `val/` class that `train/` lacks, or a flat `val/` without a usable label file; I/O errors
/// with the path they happened on.
pub fn discover(root: &Path, options: &LayoutOptions) -> Result<SourceTree> {
    if !root.is_dir() {
        return Err(Error::Layout(format!(
            "{} does not exist or is not a directory",
            root.display()
        )));
    }
    let present: Vec<&str> = SPLIT_NAMES
        .iter()
        .copied()
        .filter(|s| root.join(s).is_dir())
        .collect();
    if present.is_empty() {
        return Err(Error::Layout(format!(
            "{} has no train/, val/ or test/ folder; expected an ImageFolder tree such as \
             {0}/train/<class>/<image>.JPEG",
            root.display()
        )));
    }

    let confine = if options.follow_external_symlinks {
        None
    } else {
        Some(fs::canonicalize(root).at(root)?)
    };
    let mut listings = Vec::new();
    for name in &present {
        listings.push((*name, list_split(root, name, confine.as_deref())?));
    }

    // Class list: the train split's folders, else the first split that has folders.
    let class_source = listings
        .iter()
        .find(|(n, _)| *n == "train")
        .or_else(|| listings.iter().find(|(_, l)| !l.class_dirs.is_empty()));
    let names: Vec<String> = match class_source {
        Some((_, l)) => l.class_dirs.keys().cloned().collect(),
        None => Vec::new(),
    };
    let mut warnings = Vec::new();
    let (classes, numbered_classes) = match &options.classes_from {
        Some(list) => classes_from(&names, options.class_order, list, &mut warnings)?,
        None => class_list(names.clone(), options.class_order, &mut warnings)?,
    };
    // Numbered folders under another dataset's names: folder `N` is that list's class N.
    let numbered_folders: Vec<String> = if numbered_classes && options.classes_from.is_some() {
        names.clone()
    } else {
        Vec::new()
    };
    let class_index: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .chain(
            numbered_folders
                .iter()
                .filter_map(|n| Some((n.as_str(), folder_number(n)?))),
        )
        .collect();

    let mut splits = Vec::new();
    for (name, listing) in &listings {
        let split = resolve_split(root, name, listing, &class_index, options, &mut warnings)?;
        splits.push(split);
    }
    Ok(SourceTree {
        root: root.to_path_buf(),
        confine,
        classes,
        numbered_classes,
        classes_from: options.classes_from.as_ref().map(|l| l.origin.clone()),
        splits,
        warnings,
    })
}

/// The class list of `list` with every class folder checked against it: a name must be one
/// of its classes, a number (numbered folders, as ImageNet-V2's) one of its indices.
fn classes_from(
    names: &[String],
    order: ClassOrder,
    list: &ClassList,
    warnings: &mut Vec<String>,
) -> Result<(Vec<String>, bool)> {
    let numbers: Option<Vec<u32>> = names.iter().map(|n| folder_number(n)).collect();
    let numbered = match (order, &numbers) {
        (ClassOrder::Names, _) => false,
        (ClassOrder::Numbers, None) => {
            return Err(Error::Layout(
                "--class-order numbers: some class folders are not numbers".into(),
            ));
        }
        (_, Some(n)) => !n.is_empty(),
        (ClassOrder::Auto, None) => false,
    };
    let unknown: Vec<&str> = match (&numbers, numbered) {
        (Some(numbers), true) => names
            .iter()
            .zip(numbers)
            .filter(|(_, n)| **n as usize >= list.names.len())
            .map(|(name, _)| name.as_str())
            .collect(),
        _ => {
            let known: HashSet<&str> = list.names.iter().map(String::as_str).collect();
            names
                .iter()
                .map(String::as_str)
                .filter(|n| !known.contains(n))
                .collect()
        }
    };
    if !unknown.is_empty() {
        let what = if numbered {
            format!("beyond its {} class indices", list.names.len())
        } else {
            format!("not among its {} classes", list.names.len())
        };
        return Err(Error::Layout(format!(
            "--classes-from {}: {} class folder(s) {what}: {}{} (the classes keep that \
             dataset's indices, so each folder must be one of them)",
            list.origin,
            unknown.len(),
            unknown
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
            if unknown.len() > 5 { ", ..." } else { "" }
        )));
    }
    if names.len() < list.names.len() {
        warnings.push(format!(
            "--classes-from {}: {} of its {} classes have a folder here; the others keep \
             their indices, empty",
            list.origin,
            names.len(),
            list.names.len()
        ));
    }
    Ok((list.names.clone(), numbered))
}

/// Folder `N`'s number, when its name is a number written the one way (no sign, no leading zero).
fn folder_number(name: &str) -> Option<u32> {
    name.parse::<u32>().ok().filter(|n| n.to_string() == name)
}

/// The class list in index order from the class folder names (sorted as strings), and whether
/// they were read as numbers.
fn class_list(
    names: Vec<String>,
    order: ClassOrder,
    warnings: &mut Vec<String>,
) -> Result<(Vec<String>, bool)> {
    let numbers: Option<Vec<u32>> = names.iter().map(|n| folder_number(n)).collect();
    let numbers = match (order, numbers) {
        (ClassOrder::Names, _) => return Ok((names, false)),
        (ClassOrder::Auto, None) => return Ok((names, false)),
        (_, Some(n)) if n.is_empty() => return Ok((names, false)),
        (ClassOrder::Numbers, None) => {
            let odd = names.iter().find(|n| folder_number(n).is_none());
            return Err(Error::Layout(format!(
                "--class-order numbers: class folder {:?} is not a number (0, 1, 2, ... without \
                 leading zeros)",
                odd.map_or("", |s| s.as_str())
            )));
        }
        (_, Some(n)) => n,
    };
    // Folder names are bounded by what a directory holds; a class count is not unbounded.
    let max = numbers.iter().copied().max().unwrap_or(0);
    if max >= 1_000_000 {
        return Err(Error::Layout(format!(
            "class folder {max}: numbered class folders must be below 1000000 (pass \
             --class-order names to sort them as names instead)"
        )));
    }
    let mut present = vec![false; max as usize + 1];
    for &n in &numbers {
        present[n as usize] = true;
    }
    let missing: Vec<u32> = (0..=max).filter(|&i| !present[i as usize]).collect();
    if !missing.is_empty() {
        warnings.push(format!(
            "numbered class folders: {} of 0..={max} missing ({}{}); their indices stay, empty",
            missing.len(),
            missing
                .iter()
                .take(10)
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if missing.len() > 10 { ", ..." } else { "" }
        ));
    }
    Ok(((0..=max).map(|i| i.to_string()).collect(), true))
}

/// What a split folder holds before labels are resolved.
struct Listing {
    /// Class folder name → image files (relative paths) under it, recursively.
    class_dirs: BTreeMap<String, Vec<(String, u64)>>,
    /// Image files directly in the split folder.
    flat: Vec<(String, u64)>,
    /// Non-image files.
    ignored: Vec<Skipped>,
}

fn list_split(root: &Path, split: &str, confine: Option<&Path>) -> Result<Listing> {
    let dir = root.join(split);
    if let Some(inside) = confine {
        check_inside(&dir, inside)?;
    }
    let mut listing = Listing {
        class_dirs: BTreeMap::new(),
        flat: Vec::new(),
        ignored: Vec::new(),
    };
    let mut class_dirs = Vec::new();
    for (name, path, kind) in sorted_entries(&dir, confine)? {
        let rel = format!("{split}/{name}");
        match kind {
            Kind::Dir => class_dirs.push((name, path, rel)),
            Kind::File(size) => classify_file(rel, size, &mut listing.flat, &mut listing.ignored),
        }
    }
    // Class folders are walked in parallel: ImageNet's train/ is 1000 folders and 1.28 M
    // files, and each directory read and stat is a system call that waits on the filesystem.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    type Walked = Result<(Vec<(String, u64)>, Vec<Skipped>)>;
    let results: Vec<std::sync::Mutex<Option<Walked>>> = class_dirs
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(class_dirs.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((_, path, rel)) = class_dirs.get(i) else {
                        return;
                    };
                    let mut files = Vec::new();
                    let mut ignored = Vec::new();
                    let walked = walk_images(path, rel, confine, &mut files, &mut ignored);
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(walked.map(|()| (files, ignored)));
                    }
                }
            });
        }
    });
    for ((name, path, _), slot) in class_dirs.into_iter().zip(results) {
        let walked = slot.into_inner().ok().flatten().ok_or_else(|| {
            Error::Layout("a directory-walking thread stopped early".into()).with_path(&path)
        })?;
        let (files, ignored) = walked?;
        listing.ignored.extend(ignored);
        listing.class_dirs.insert(name, files);
    }
    Ok(listing)
}

/// What a directory entry is, symlinks followed.
enum Kind {
    Dir,
    /// A file (or anything that is not a directory) and its size.
    File(u64),
}

/// Whether `path` (a symlink, or a directory reached through one) resolves inside `root`
/// (canonical); the error names the link, where it leads, and the flag that accepts it.
pub(crate) fn check_inside(path: &Path, root: &Path) -> Result<()> {
    let real = fs::canonicalize(path).at(path)?;
    if real.starts_with(root) {
        return Ok(());
    }
    Err(Error::Layout(format!(
        "a symbolic link to {}, outside the tree being packed ({}): pack reads only files \
         inside its root, so that a link planted in a dataset folder cannot copy another file \
         into the shards; replace the link by what it points to, or pass \
         --follow-external-symlinks if you trust every link in this tree",
        real.display(),
        root.display()
    ))
    .with_path(path))
}

/// Directory entries sorted by name (byte order, as Python's `sorted` on names), with
/// symlinks followed (those that leave `confine`, when given, are an error). Names that are
/// not UTF-8 are reported as an error naming the directory. Costs one `stat` per file and none
/// per directory (the entry type comes from `readdir`).
fn sorted_entries(dir: &Path, confine: Option<&Path>) -> Result<Vec<(String, PathBuf, Kind)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let path = entry.path();
        let name = entry.file_name().into_string().map_err(|raw| {
            Error::Layout(format!(
                "file name {raw:?} is not UTF-8; rename it (record paths are stored as UTF-8)"
            ))
            .with_path(dir)
        })?;
        let file_type = entry.file_type().at(&path)?;
        // Symlinks are followed, as os.walk(followlinks=True) in torchvision does.
        let meta = if file_type.is_symlink() {
            if let Some(root) = confine {
                check_inside(&path, root)?;
            }
            Some(fs::metadata(&path).at(&path)?)
        } else if file_type.is_dir() {
            None
        } else {
            Some(entry.metadata().at(&path)?)
        };
        let kind = match meta {
            Some(m) if !m.is_dir() => Kind::File(m.len()),
            _ => Kind::Dir,
        };
        out.push((name, path, kind));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn walk_images(
    dir: &Path,
    rel: &str,
    confine: Option<&Path>,
    files: &mut Vec<(String, u64)>,
    ignored: &mut Vec<Skipped>,
) -> Result<()> {
    for (name, path, kind) in sorted_entries(dir, confine)? {
        let child = format!("{rel}/{name}");
        match kind {
            Kind::Dir => walk_images(&path, &child, confine, files, ignored)?,
            Kind::File(size) => classify_file(child, size, files, ignored),
        }
    }
    Ok(())
}

fn classify_file(
    rel: String,
    size: u64,
    files: &mut Vec<(String, u64)>,
    ignored: &mut Vec<Skipped>,
) {
    let ext = Path::new(&rel)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext {
        Some(e) if IMAGE_EXTENSIONS.contains(&e.as_str()) => files.push((rel, size)),
        _ => ignored.push(Skipped {
            path: rel,
            reason: "not an image file by extension (timm reads .jpg, .jpeg, .png)".into(),
        }),
    }
}

fn resolve_split(
    root: &Path,
    name: &str,
    listing: &Listing,
    class_index: &HashMap<&str, u32>,
    options: &LayoutOptions,
    warnings: &mut Vec<String>,
) -> Result<SourceSplit> {
    let mut split = SourceSplit {
        name: name.to_owned(),
        layout: SplitLayout::ClassFolders,
        files: Vec::new(),
        rejected: Vec::new(),
        ignored: listing.ignored.clone(),
    };
    if !listing.class_dirs.is_empty() {
        for (class, files) in &listing.class_dirs {
            let Some(&label) = class_index.get(class.as_str()) else {
                return Err(Error::Layout(format!(
                    "{name}/{class} is a class folder that train/ does not have; class indices \
                     come from train/'s folders, so every {name}/ class must be one of them"
                )));
            };
            if files.is_empty() {
                warnings.push(format!(
                    "{name}/{class} holds no images: class {label} keeps its index (torchvision's \
                     ImageFolder would refuse this tree, timm's ImageDataset would drop the class \
                     and shift the indices after it)"
                ));
            }
            split
                .files
                .extend(files.iter().map(|(path, size)| SourceFile {
                    path: path.clone(),
                    label,
                    size: *size,
                }));
        }
        for (path, _) in &listing.flat {
            split.ignored.push(Skipped {
                path: path.clone(),
                reason: format!("image directly in {name}/ next to class folders has no class"),
            });
        }
    } else if name == "train" {
        if !listing.flat.is_empty() {
            return Err(Error::Layout(format!(
                "{}/train holds images but no class folders; expected train/<class>/<image>",
                root.display()
            )));
        }
    } else if name == "val" && !listing.flat.is_empty() {
        resolve_flat_val(root, listing, class_index, options, &mut split)?;
    } else {
        split.layout = SplitLayout::Unlabelled;
        split
            .files
            .extend(listing.flat.iter().map(|(path, size)| SourceFile {
                path: path.clone(),
                label: NO_LABEL,
                size: *size,
            }));
    }
    split.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(split)
}

fn resolve_flat_val(
    root: &Path,
    listing: &Listing,
    class_index: &HashMap<&str, u32>,
    options: &LayoutOptions,
    split: &mut SourceSplit,
) -> Result<()> {
    let candidates = [
        "LOC_val_solution.csv",
        "ILSVRC2012_validation_ground_truth.txt",
    ];
    let labels_path = match &options.val_labels {
        Some(p) => p.clone(),
        None => candidates
            .iter()
            .flat_map(|c| [root.join(c), root.join("val").join(c)])
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::Layout(format!(
                    "{}/val is a flat folder and no label file was found; put Kaggle's \
                     LOC_val_solution.csv or the devkit's ILSVRC2012_validation_ground_truth.txt \
                     in the root, or pass --val-labels FILE",
                    root.display()
                ))
            })?,
    };
    // ImageNet's are 2 MB (LOC_val_solution.csv) and 0.3 MB (the devkit's ground truth).
    let text =
        crate::user_file::read_string_capped(&labels_path, LABELS_MAX_BYTES, "a labels file")?;
    // Image stem (e.g. ILSVRC2012_val_00000001) → wnid.
    let by_stem: HashMap<String, String> = if text.starts_with("ImageId") {
        split.layout = SplitLayout::KaggleCsv(labels_path.clone());
        parse_kaggle_csv(&text).map_err(|e| Error::Layout(e).with_path(&labels_path))?
    } else {
        let synsets_path = options.devkit_synsets.clone().ok_or_else(|| {
            Error::Layout(format!(
                "{} holds devkit ILSVRC2012_IDs, which are not class indices; pass \
                 --devkit-synsets FILE (one wnid per line in ILSVRC2012_ID order, exported from \
                 the devkit's meta.mat as docs/packing.md shows)",
                labels_path.display()
            ))
        })?;
        let synsets = crate::user_file::read_string_capped(
            &synsets_path,
            LABELS_MAX_BYTES,
            "a synsets file",
        )?;
        split.layout = SplitLayout::Devkit {
            ground_truth: labels_path.clone(),
            synsets: synsets_path.clone(),
        };
        parse_devkit(&text, &synsets).map_err(|e| Error::Layout(e).with_path(&labels_path))?
    };
    for (path, size) in &listing.flat {
        let stem = Path::new(path)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let label = by_stem
            .get(stem)
            .ok_or_else(|| format!("no label for {stem} in {}", labels_path.display()))
            .and_then(|wnid| {
                class_index.get(wnid.as_str()).copied().ok_or_else(|| {
                    format!("label {wnid} of {stem} is not one of train/'s class folders")
                })
            });
        match label {
            Ok(label) => split.files.push(SourceFile {
                path: path.clone(),
                label,
                size: *size,
            }),
            Err(reason) => split.rejected.push(Skipped {
                path: path.clone(),
                reason,
            }),
        }
    }
    Ok(())
}

/// Parses Kaggle's `LOC_val_solution.csv` into image stem → wnid.
fn parse_kaggle_csv(text: &str) -> std::result::Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let (id, prediction) = line
            .split_once(',')
            .ok_or_else(|| format!("line {}: expected `ImageId,PredictionString`", n + 1))?;
        let wnid = prediction
            .split_whitespace()
            .next()
            .ok_or_else(|| format!("line {}: empty PredictionString", n + 1))?;
        out.insert(id.trim().to_owned(), wnid.to_owned());
    }
    Ok(out)
}

/// Parses the devkit ground truth (line k = ILSVRC2012_ID of `ILSVRC2012_val_<k>`) through the
/// synset table (line k = wnid of ILSVRC2012_ID k) into image stem → wnid.
fn parse_devkit(
    ground_truth: &str,
    synsets: &str,
) -> std::result::Result<HashMap<String, String>, String> {
    let table: Vec<&str> = synsets
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = HashMap::new();
    for (n, line) in ground_truth.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let id: usize = line
            .parse()
            .map_err(|_| format!("line {}: `{line}` is not an ILSVRC2012_ID", n + 1))?;
        let wnid = id
            .checked_sub(1)
            .and_then(|i| table.get(i))
            .ok_or_else(|| {
                format!(
                    "line {}: ILSVRC2012_ID {id} is outside the synset table ({} entries)",
                    n + 1,
                    table.len()
                )
            })?;
        out.insert(format!("ILSVRC2012_val_{:08}", n + 1), (*wnid).to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    #[test]
    fn numbered_class_folders_are_indexed_by_number_as_imagenet_v2_needs() {
        let dir = tempfile::tempdir().unwrap();
        // As ImageNet-V2: folders 0 … 11 (string order would be 0, 1, 10, 11, 2, …).
        for class in 0..12 {
            touch(dir.path(), &format!("test/{class}/a.jpeg"));
        }
        let label_of = |tree: &SourceTree, folder: u32| {
            let path = format!("test/{folder}/a.jpeg");
            tree.splits[0]
                .files
                .iter()
                .find(|f| f.path == path)
                .unwrap()
                .label
        };
        let tree = discover(dir.path(), &LayoutOptions::default()).unwrap();
        assert!(tree.numbered_classes);
        for folder in 0..12 {
            assert_eq!(label_of(&tree, folder), folder);
        }
        // What ImageFolder's string sort gives, and why it is wrong here.
        let names = LayoutOptions {
            class_order: ClassOrder::Names,
            ..LayoutOptions::default()
        };
        let tree = discover(dir.path(), &names).unwrap();
        assert!(!tree.numbered_classes);
        assert_eq!(label_of(&tree, 2), 4);
        assert_eq!(label_of(&tree, 10), 2);

        // A missing number keeps its index; a name that is not a number is an error when
        // numbers are asked for, and names otherwise.
        fs::remove_dir_all(dir.path().join("test/5")).unwrap();
        let tree = discover(dir.path(), &LayoutOptions::default()).unwrap();
        assert_eq!(tree.classes.len(), 12);
        assert_eq!(label_of(&tree, 11), 11);
        assert!(
            tree.warnings
                .iter()
                .any(|w| w.contains("1 of 0..=11 missing (5)"))
        );
        touch(dir.path(), "test/07/a.jpeg");
        let numbers = LayoutOptions {
            class_order: ClassOrder::Numbers,
            ..LayoutOptions::default()
        };
        let err = discover(dir.path(), &numbers).unwrap_err().chain();
        assert!(err.contains("\"07\" is not a number"), "{err}");
        assert!(
            !discover(dir.path(), &LayoutOptions::default())
                .unwrap()
                .numbered_classes
        );
    }

    #[test]
    fn classes_from_another_dataset_keep_its_indices() {
        let dir = tempfile::tempdir().unwrap();
        let list = ClassList {
            names: ["n0", "n1", "n2", "n3"].map(String::from).to_vec(),
            origin: "imagenet-rsb".into(),
        };
        let from = LayoutOptions {
            classes_from: Some(list.clone()),
            ..LayoutOptions::default()
        };
        // A subset, with a flat val/ labelled by wnid through a Kaggle CSV.
        touch(dir.path(), "train/n3/a.jpg");
        touch(dir.path(), "train/n1/b.jpg");
        touch(dir.path(), "val/v1.JPEG");
        fs::write(
            dir.path().join("LOC_val_solution.csv"),
            "ImageId,PredictionString\nv1,n3 1 2 3 4\n",
        )
        .unwrap();
        let tree = discover(dir.path(), &from).unwrap();
        assert_eq!(tree.classes, list.names);
        let labels: Vec<(&str, u32)> = tree
            .splits
            .iter()
            .flat_map(|s| s.files.iter().map(|f| (f.path.as_str(), f.label)))
            .collect();
        assert_eq!(
            labels,
            [
                ("train/n1/b.jpg", 1),
                ("train/n3/a.jpg", 3),
                ("val/v1.JPEG", 3)
            ]
        );
        assert!(
            tree.warnings
                .iter()
                .any(|w| w.contains("2 of its 4 classes have a folder here")),
            "{:?}",
            tree.warnings
        );
        // Without the list the same folders would be classes 0 and 1.
        let own = discover(dir.path(), &LayoutOptions::default()).unwrap();
        assert_eq!(own.classes, ["n1", "n3"]);
        // A folder that is not one of its classes is named.
        touch(dir.path(), "train/cat/c.jpg");
        let err = discover(dir.path(), &from).unwrap_err().chain();
        assert!(
            err.contains("imagenet-rsb: 1 class folder(s) not among its 4 classes: cat"),
            "{err}"
        );

        // Numbered folders (ImageNet-V2) index the list.
        let v2 = tempfile::tempdir().unwrap();
        touch(v2.path(), "test/2/a.jpeg");
        touch(v2.path(), "test/0/b.jpeg");
        let tree = discover(v2.path(), &from).unwrap();
        assert!(tree.numbered_classes);
        assert_eq!(tree.classes, list.names);
        let labels: Vec<(&str, u32)> = tree.splits[0]
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.label))
            .collect();
        assert_eq!(labels, [("test/0/b.jpeg", 0), ("test/2/a.jpeg", 2)]);
        touch(v2.path(), "test/4/c.jpeg");
        let err = discover(v2.path(), &from).unwrap_err().chain();
        assert!(err.contains("beyond its 4 class indices: 4"), "{err}");
    }

    #[test]
    fn a_symlink_out_of_the_tree_is_refused_unless_asked_for_and_one_inside_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("data"), dir.path().join("secret"));
        touch(&root, "train/a/1.jpg");
        touch(&root, "train/b/1.jpg");
        touch(&outside, "key.jpg");
        // Inside the tree: a file and a class folder reached through links.
        std::os::unix::fs::symlink(root.join("train/a/1.jpg"), root.join("train/a/2.jpg")).unwrap();
        std::os::unix::fs::symlink(root.join("train/b"), root.join("train/c")).unwrap();
        let tree = discover(&root, &LayoutOptions::default()).unwrap();
        assert_eq!(tree.splits[0].files.len(), 4);

        for (link, target) in [
            ("train/a/3.jpg", outside.join("key.jpg")),
            ("train/d", outside.clone()),
        ] {
            std::os::unix::fs::symlink(&target, root.join(link)).unwrap();
            let err = discover(&root, &LayoutOptions::default()).unwrap_err();
            let text = err.chain();
            assert!(text.contains(link), "{text}");
            assert!(text.contains("--follow-external-symlinks"), "{text}");
            let followed = LayoutOptions {
                follow_external_symlinks: true,
                ..LayoutOptions::default()
            };
            let tree = discover(&root, &followed).unwrap();
            assert!(tree.confine.is_none());
            fs::remove_file(root.join(link)).unwrap();
        }
    }

    #[test]
    fn class_folders_sorted_and_labelled_by_train() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for rel in [
            "train/b/1.JPEG",
            "train/a/2.jpg",
            "train/c/x.png",
            "val/b/v.JPEG",
        ] {
            touch(r, rel);
        }
        touch(r, "train/a/notes.txt");
        fs::create_dir_all(r.join("train/d")).unwrap();
        let tree = discover(r, &LayoutOptions::default()).unwrap();
        assert_eq!(tree.classes, ["a", "b", "c", "d"]);
        let train = &tree.splits[0];
        let got: Vec<_> = train
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.label))
            .collect();
        assert_eq!(
            got,
            [
                ("train/a/2.jpg", 0),
                ("train/b/1.JPEG", 1),
                ("train/c/x.png", 2)
            ]
        );
        assert_eq!(train.ignored.len(), 1);
        assert_eq!(tree.splits[1].files[0].label, 1);
        assert!(tree.warnings.iter().any(|w| w.contains("train/d")));
    }

    #[test]
    fn unknown_val_class_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "train/a/1.jpg");
        touch(dir.path(), "val/z/1.jpg");
        let err = discover(dir.path(), &LayoutOptions::default()).unwrap_err();
        assert!(err.to_string().contains("val/z"), "{err}");
    }

    /// Class folders `n01` and `n02` in `train/`, and `val_images` images in a flat `val/`
    /// named as ImageNet's validation images are.
    fn flat_val_tree(val_images: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "train/n01/1.JPEG");
        touch(dir.path(), "train/n02/1.JPEG");
        for i in 1..=val_images {
            touch(dir.path(), &format!("val/ILSVRC2012_val_{i:08}.JPEG"));
        }
        dir
    }

    #[test]
    fn flat_val_with_kaggle_csv() {
        let dir = flat_val_tree(3);
        let r = dir.path();
        fs::write(
            r.join("LOC_val_solution.csv"),
            "ImageId,PredictionString\nILSVRC2012_val_00000002,n01 1 2 3 4 n01 5 6 7 8\n\
             ILSVRC2012_val_00000001,n02 1 2 3 4\n",
        )
        .unwrap();
        let tree = discover(r, &LayoutOptions::default()).unwrap();
        let val = &tree.splits[1];
        assert!(matches!(val.layout, SplitLayout::KaggleCsv(_)));
        let labels: Vec<_> = val.files.iter().map(|f| f.label).collect();
        assert_eq!(labels, [1, 0]);
        assert_eq!(val.rejected.len(), 1);
        assert!(val.rejected[0].path.ends_with("00000003.JPEG"));
    }

    #[test]
    fn flat_val_with_devkit_ids_maps_through_synsets() {
        let dir = flat_val_tree(2);
        let r = dir.path();
        // ID 1 is n02 (not sorted order), ID 2 is n01.
        fs::write(r.join("ILSVRC2012_validation_ground_truth.txt"), "1\n2\n").unwrap();
        let no_synsets = discover(r, &LayoutOptions::default()).unwrap_err();
        assert!(no_synsets.to_string().contains("--devkit-synsets"));
        fs::write(r.join("synsets.txt"), "n02\nn01\n").unwrap();
        let opts = LayoutOptions {
            devkit_synsets: Some(r.join("synsets.txt")),
            ..Default::default()
        };
        let tree = discover(r, &opts).unwrap();
        let labels: Vec<_> = tree.splits[1].files.iter().map(|f| f.label).collect();
        assert_eq!(labels, [1, 0]);
    }

    #[test]
    fn missing_splits_and_flat_train_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(discover(dir.path(), &LayoutOptions::default()).is_err());
        touch(dir.path(), "train/1.jpg");
        let err = discover(dir.path(), &LayoutOptions::default()).unwrap_err();
        assert!(err.to_string().contains("no class folders"), "{err}");
    }
}
