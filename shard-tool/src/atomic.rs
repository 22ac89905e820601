//! Files and directories that appear at their names whole or not at all, built where nobody
//! else can aim them: the one way the three binaries write a file or a directory of files.
//!
//! rsb writes into folders other people can write too: a group-writable run folder, a shared
//! pack output, `/tmp`. A name the writer can be predicted to open (`summary.csv.tmp`,
//! `/tmp/rsb-bench-<pid>`) is a name a neighbour can plant first, as a symlink to a file of
//! ours (which the write would then truncate and fill) or as a FIFO (which would hang it). So
//! nothing here opens a name that existed before: every temporary is created exclusively
//! (`O_CREAT|O_EXCL`, which refuses a symlink, a FIFO or any file already there) under a random
//! name, by the `tempfile` crate, and only then renamed over the final name (`rename` replaces
//! a link itself, never its target).
//!
//! | what | how | used for |
//! |---|---|---|
//! | [`write_atomic`] | a temporary beside the file, synced, renamed | every whole file |
//! | [`write_atomic_open`] | the same, the file left open to append to | `metrics.jsonl` |
//! | [`temporary_beside`] | the temporary alone, to fill and [`commit`] | shards |
//! | [`make_beside`] | a temporary symlink, to [`commit`] | a run's `latest` |
//! | [`StagedDir`] | a private (0700) directory, filled, published by rename | checkpoints |
//! | [`create_new`] | `O_EXCL`: never a file that was there | TensorBoard's event files |
//! | [`write_scratch`] | unlink, then [`create_new`], no sync | synthetic trees |
//! | [`open_lock`] | no symlink, a regular file, one link | lock files |
//!
//! Temporaries are named `.<final name>.<6 random characters>.rsb-tmp` ([`temporary_name_of`]
//! recognizes exactly that), so cleaning up after a killed run removes only what rsb made.
//! A temporary file gets the mode a new file would (0666 less the umask) and a staged
//! directory the mode a new directory would (0777 less the umask), set when it is published:
//! while being filled it is the owner's alone, so nothing can be planted in it either.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Permissions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempDir};

use crate::error::{Error, PathContext, Result};
use crate::user_file::check_write_target;

/// What every temporary's name ends with.
pub const TEMP_SUFFIX: &str = ".rsb-tmp";
/// Random characters in a temporary's name: 62^6 names, so a neighbour cannot plant them all,
/// and `tempfile` tries again on the rare name that is taken.
const RANDOM_CHARS: usize = 6;

/// The directory `path` is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The file name of `path`, refusing a path without one (`/`, `..`).
fn file_name(path: &Path) -> Result<&OsStr> {
    path.file_name()
        .ok_or_else(|| Error::Config("the path has no file name".into()).with_path(path))
}

/// A builder of temporaries named for `name`.
fn builder(prefix: &OsStr) -> tempfile::Builder<'_, 'static> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix)
        .suffix(TEMP_SUFFIX)
        .rand_bytes(RANDOM_CHARS);
    b
}

/// `.<name>.`, the start of a temporary's name.
fn temp_prefix(name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    prefix
}

/// If `name` is a temporary's name (`.<final>.<6 random>.rsb-tmp`), the final name it was
/// made for.
pub fn temporary_name_of(name: &str) -> Option<&str> {
    let inner = name.strip_prefix('.')?.strip_suffix(TEMP_SUFFIX)?;
    let (final_name, random) = inner.rsplit_once('.')?;
    let random_ok =
        random.len() == RANDOM_CHARS && random.bytes().all(|b| b.is_ascii_alphanumeric());
    (random_ok && !final_name.is_empty()).then_some(final_name)
}

/// A new temporary file in `path`'s directory, for `path`: created exclusively under a random
/// name (never a file, link or FIFO that was there), with the mode `File::create` would give
/// (0666 less the umask), removed if dropped before [`commit`].
///
/// # Errors
/// I/O errors with the directory.
pub fn temporary_beside(path: &Path) -> Result<NamedTempFile> {
    let dir = parent_dir(path);
    let prefix = temp_prefix(file_name(path)?);
    builder(&prefix)
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .at(dir)
}

/// A new temporary beside `path` made by `make` (a symlink, a socket) under a random name,
/// tried again under another where the name is taken; removed if dropped before [`commit`].
///
/// # Errors
/// I/O errors with the directory.
pub fn make_beside<R>(
    path: &Path,
    make: impl FnMut(&Path) -> std::io::Result<R>,
) -> Result<NamedTempFile<R>> {
    let dir = parent_dir(path);
    builder(&temp_prefix(file_name(path)?))
        .make_in(dir, make)
        .at(dir)
}

/// Renames the synced temporary `tmp` to `path` and syncs the directory, so the rename
/// survives a power cut; returns what `tmp` held (the file, still open).
///
/// # Errors
/// I/O errors with the path.
pub fn commit<F>(tmp: NamedTempFile<F>, path: &Path) -> Result<F> {
    let file = tmp.persist(path).map_err(|e| e.error).at(path)?;
    sync_dir(parent_dir(path))?;
    Ok(file)
}

/// Syncs directory `dir`, making the renames in it durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Writes `path` through a temporary file ([`temporary_beside`]), synced, renamed into place,
/// the directory synced: the one way rsb writes a whole file. `path` must be absent, a regular
/// file or a symlink (which the new file replaces, its target untouched); a directory, device,
/// FIFO or socket is refused before anything is written. On any error the temporary is
/// removed and `path` is as it was.
///
/// # Errors
/// [`Error::NotRegular`] and I/O errors, with the path.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    write_atomic_open(path, fill).map(drop)
}

/// [`write_atomic`], returning the new file open for writing at its end: what is appended to
/// it later goes to the file at `path`, never to whatever a name lookup would find there.
///
/// # Errors
/// As [`write_atomic`].
pub fn write_atomic_open(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<File> {
    check_write_target(path)?;
    let mut tmp = temporary_beside(path)?;
    let tmp_path = tmp.path().to_path_buf();
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        fill(&mut w).and_then(|()| w.flush()).at(&tmp_path)?;
    }
    tmp.as_file().sync_all().at(&tmp_path)?;
    commit(tmp, path)
}

/// Creates `path` as a new empty file, exclusively: a name that exists in any form (a symlink,
/// a FIFO, a file) is refused with [`std::io::ErrorKind::AlreadyExists`], never opened.
///
/// # Errors
/// I/O errors with the path.
pub fn create_new(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .at(path)
}

/// Writes scratch `bytes` (a synthetic tree, made again at will) to `path` without the cost
/// of a sync: what is at the name is unlinked (a directory is refused) and a new file created
/// exclusively, so a link planted there is removed, never written through.
///
/// # Errors
/// [`Error::NotRegular`] for a directory and I/O errors, with the path.
pub fn write_scratch(path: &Path, bytes: &[u8]) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(Error::NotRegular {
                kind: "a directory",
            }
            .with_path(path));
        }
        Ok(_) => fs::remove_file(path).at(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io(e).with_path(path)),
    }
    create_new(path)?.write_all(bytes).at(path)
}

/// Opens (creating it if absent) the lock file `path` for reading and writing: never through a
/// symlink, and only when it is a regular file with one link, so a lock file planted as a
/// link to another file cannot have a pid written into that file.
///
/// # Errors
/// [`Error::NotRegular`] (for a symlink, a FIFO, a file with several links too) and I/O
/// errors, with the path.
pub fn open_lock(path: &Path) -> Result<File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        // O_NONBLOCK: a FIFO at the name is opened (then refused) instead of waited on.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::NotRegular { kind: "a symlink" }.with_path(path));
        }
        other => other.at(path)?,
    };
    let meta = file.metadata().at(path)?;
    if !meta.is_file() {
        return Err(Error::NotRegular {
            kind: "not a regular file",
        }
        .with_path(path));
    }
    if meta.nlink() != 1 {
        return Err(Error::NotRegular {
            kind: "a file with several hard links",
        }
        .with_path(path));
    }
    Ok(file)
}

/// Removes what rsb left in `dir` when it was killed mid-write: the temporaries (files, and a
/// staged directory with all it holds) made for a final name `made_for` accepts, by their exact
/// pattern ([`temporary_name_of`]) and only those this user owns; returns how many.
///
/// # Errors
/// I/O errors with the path.
pub fn remove_stale_temporaries(dir: &Path, made_for: impl Fn(&str) -> bool) -> Result<usize> {
    let uid = current_uid();
    let mut removed = 0;
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        if !name
            .to_str()
            .and_then(temporary_name_of)
            .is_some_and(&made_for)
        {
            continue;
        }
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).at(&path)?;
        if meta.uid() != uid {
            continue;
        }
        if meta.is_dir() {
            fs::remove_dir_all(&path).at(&path)?;
        } else {
            fs::remove_file(&path).at(&path)?;
        }
        removed += 1;
    }
    Ok(removed)
}

/// This process's effective user id: the owner of what it creates.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The process's umask, read from `/proc/self/status` (reading it with `umask(2)` would set it
/// for a moment under the other threads); 0o022 where that line is missing.
pub fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// A directory built in private and published whole under its final name: a checkpoint.
/// Until [`StagedDir::publish`] it is `.<name>.<random>.rsb-tmp`, mode 0700 (nothing can be
/// planted in it, so the libraries that write files into it by path, as burn's recorders do,
/// cannot be aimed elsewhere); a run killed while filling it leaves no directory under the
/// final name. Dropped unpublished, it is removed.
pub struct StagedDir {
    dir: TempDir,
    /// The staged directory, opened when it was made: its mode is set through this, not
    /// through a name another user could point elsewhere.
    handle: File,
    target: PathBuf,
}

impl StagedDir {
    /// Starts a directory that will be `target`.
    ///
    /// # Errors
    /// I/O errors with the parent directory.
    pub fn new(target: &Path) -> Result<StagedDir> {
        let parent = parent_dir(target);
        let prefix = temp_prefix(file_name(target)?);
        let dir = builder(&prefix)
            .permissions(Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .at(parent)?;
        let handle = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir.path())
            .at(dir.path())?;
        Ok(StagedDir {
            dir,
            handle,
            target: target.to_path_buf(),
        })
    }

    /// Where to write its files.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the directory its final mode (0777 less the umask) and name, synced. What is
    /// already at the name is replaced only when `replaceable` says it is ours to replace
    /// (a directory rsb wrote, checked by the caller's marker); anything else there is left
    /// alone and refused with [`Error::Occupied`].
    ///
    /// # Errors
    /// [`Error::Occupied`] and I/O errors, with the path.
    pub fn publish(self, replaceable: impl FnOnce(&Path) -> bool) -> Result<PathBuf> {
        let staged = self.dir.path().to_path_buf();
        self.handle.sync_all().at(&staged)?;
        self.handle
            .set_permissions(Permissions::from_mode(0o777 & !umask()))
            .at(&staged)?;
        let target = &self.target;
        let parent = parent_dir(target);
        let staged = self.dir.keep();
        let result = match fs::symlink_metadata(target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::rename(&staged, target).at(target)
            }
            Err(e) => Err(Error::Io(e).with_path(target)),
            Ok(meta) if meta.is_dir() && replaceable(target) => replace(&staged, target),
            Ok(meta) => Err(Error::Occupied {
                kind: occupant(&meta),
            }
            .with_path(target)),
        };
        if result.is_err() {
            let _ = fs::remove_dir_all(&staged);
        }
        result?;
        sync_dir(parent)?;
        Ok(target.clone())
    }
}

/// Puts the directory `staged` at `target`, which holds an older directory of ours: the old
/// one is moved aside under a temporary name first (a directory cannot be renamed over a
/// directory that is not empty), then removed.
fn replace(staged: &Path, target: &Path) -> Result<()> {
    let aside = make_beside(target, |p| fs::rename(target, p))?
        .into_parts()
        .1;
    fs::rename(staged, target).at(target)?;
    let aside = aside.keep().map_err(|e| e.error).at(target)?;
    fs::remove_dir_all(&aside).at(&aside)
}

/// What a file that is in the way is, in words.
fn occupant(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a file"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn temporary_names_are_recognized_exactly() {
        assert_eq!(
            temporary_name_of(".summary.csv.a1B2c3.rsb-tmp"),
            Some("summary.csv")
        );
        for not_ours in [
            "summary.csv.tmp",
            ".summary.csv.a1B2c.rsb-tmp",
            ".summary.csv.a1B2c-.rsb-tmp",
            "summary.csv.a1B2c3.rsb-tmp",
            "..a1B2c3.rsb-tmp",
            ".x.a1B2c3.rsb-tmp.bak",
        ] {
            assert_eq!(temporary_name_of(not_ours), None, "{not_ours}");
        }
        let dir = tempfile::tempdir().unwrap();
        let tmp = temporary_beside(&dir.path().join("summary.csv")).unwrap();
        let name = tmp.path().file_name().unwrap().to_str().unwrap();
        assert_eq!(temporary_name_of(name), Some("summary.csv"), "{name}");
    }

    #[test]
    fn a_planted_link_at_any_old_temporary_name_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("summary.csv");
        // The name earlier builds wrote through, planted.
        std::os::unix::fs::symlink(&victim, dir.path().join("summary.csv.tmp")).unwrap();
        write_atomic(&path, |w| w.write_all(b"new")).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
        // A link at the final name is replaced itself, its target untouched.
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomic(&path, |w| w.write_all(b"newer")).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&path).unwrap(), b"newer");
        // No temporary is left behind.
        assert_eq!(
            names(dir.path()),
            ["summary.csv", "summary.csv.tmp", "victim"]
        );
    }

    #[test]
    fn a_planted_fifo_at_the_old_temporary_name_does_not_hang_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipe.toml");
        mkfifo(&dir.path().join("recipe.toml.tmp"));
        let (done, wait) = std::sync::mpsc::channel();
        let target = path.clone();
        std::thread::spawn(move || {
            let _ =
                done.send(write_atomic(&target, |w| w.write_all(b"lr = 1")).map_err(|e| e.chain()));
        });
        let result = wait
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the write hung on the FIFO");
        result.unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"lr = 1");
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"old").unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.chain().contains("disk full"), "{}", err.chain());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn the_new_file_has_the_mode_a_created_file_would_have() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        write_atomic(&path, |w| w.write_all(b"{}")).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask());
    }

    #[test]
    fn write_atomic_open_appends_to_the_new_file_whatever_is_planted_at_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut file = write_atomic_open(&path, |w| w.write_all(b"1\n")).unwrap();
        // A neighbour swaps a link in after the rename: the open file is still ours.
        fs::rename(&path, dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        file.write_all(b"2\n").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(dir.path().join("moved")).unwrap(), b"1\n2\n");
    }

    #[test]
    fn create_new_refuses_any_name_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let link = dir.path().join("events");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        for p in [&link, &dangling, &fifo, &victim] {
            let err = create_new(p).unwrap_err();
            assert!(err.chain().contains("exists"), "{}", err.chain());
        }
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!dir.path().join("nowhere").exists());
        create_new(&dir.path().join("fresh")).unwrap();
    }

    #[test]
    fn scratch_writes_replace_a_planted_link_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("a.jpg");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_scratch(&path, b"jpeg").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&path).unwrap(), b"jpeg");
        write_scratch(&path, b"again").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"again");
        let err = write_scratch(dir.path(), b"x").unwrap_err().chain();
        assert!(err.contains("a directory"), "{err}");
    }

    #[test]
    fn a_lock_file_is_never_opened_through_a_link_a_fifo_or_a_second_name() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let link = dir.path().join("link.lock");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let hard = dir.path().join("hard.lock");
        fs::hard_link(&victim, &hard).unwrap();
        let fifo = dir.path().join("fifo.lock");
        mkfifo(&fifo);
        for (p, want) in [
            (&link, "a symlink"),
            (&hard, "several hard links"),
            (&fifo, "not a regular file"),
        ] {
            let err = open_lock(p).unwrap_err().chain();
            assert!(err.contains(want), "{err}");
        }
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        open_lock(&dir.path().join("fresh.lock")).unwrap();
        open_lock(&dir.path().join("fresh.lock")).unwrap();
    }

    #[test]
    fn only_this_users_temporaries_of_the_exact_pattern_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let ours = temporary_beside(&dir.path().join("train-00000.rsb"))
            .unwrap()
            .keep()
            .unwrap()
            .1;
        for keep in [
            "notes.tmp",
            "x.tmp",
            ".x.rsb-tmp",
            ".plot.png.abcdef.rsb-tmp",
        ] {
            fs::write(dir.path().join(keep), b"user's").unwrap();
        }
        // A staged directory of ours goes with what it holds; a folder named otherwise stays.
        fs::create_dir(dir.path().join(".ckpt-1.abcdef.rsb-tmp")).unwrap();
        fs::write(dir.path().join(".ckpt-1.abcdef.rsb-tmp/model.bpk"), b"half").unwrap();
        fs::create_dir(dir.path().join(".d.rsb-tmp")).unwrap();
        let removed =
            remove_stale_temporaries(dir.path(), |made_for| made_for != "plot.png").unwrap();
        assert_eq!(removed, 2);
        assert!(!ours.exists());
        assert_eq!(
            names(dir.path()),
            [
                ".d.rsb-tmp",
                ".plot.png.abcdef.rsb-tmp",
                ".x.rsb-tmp",
                "notes.tmp",
                "x.tmp"
            ]
        );
    }

    #[test]
    fn a_staged_directory_is_private_until_published_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ckpt-0000000004");
        let staged = StagedDir::new(&target).unwrap();
        let mode = fs::metadata(staged.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::write(staged.path().join("state.json"), b"{}").unwrap();
        assert!(!target.exists());
        staged.publish(|_| false).unwrap();
        assert_eq!(fs::read(target.join("state.json")).unwrap(), b"{}");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777 & !umask());
        assert_eq!(names(dir.path()), ["ckpt-0000000004"]);

        // An older one of ours is replaced; anything else at the name is refused, left as it
        // was, and the staged directory removed.
        let staged = StagedDir::new(&target).unwrap();
        fs::write(staged.path().join("state.json"), b"new").unwrap();
        staged.publish(|p| p.join("state.json").is_file()).unwrap();
        assert_eq!(fs::read(target.join("state.json")).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["ckpt-0000000004"]);

        let victim = dir.path().join("victim");
        fs::create_dir(&victim).unwrap();
        let planted = dir.path().join("ckpt-0000000008");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let staged = StagedDir::new(&planted).unwrap();
        fs::write(staged.path().join("state.json"), b"{}").unwrap();
        let err = staged.publish(|_| true).unwrap_err().chain();
        assert!(err.contains("taken by a symlink"), "{err}");
        assert!(fs::symlink_metadata(&planted).unwrap().is_symlink());
        assert_eq!(names(&victim), Vec::<String>::new());
        assert_eq!(
            names(dir.path()),
            ["ckpt-0000000004", "ckpt-0000000008", "victim"]
        );
    }

    #[test]
    fn a_staged_directory_dropped_unpublished_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let staged = StagedDir::new(&dir.path().join("ckpt-0000000001")).unwrap();
        fs::write(staged.path().join("model.bpk"), b"half").unwrap();
        drop(staged);
        assert_eq!(names(dir.path()), Vec::<String>::new());
    }
}
