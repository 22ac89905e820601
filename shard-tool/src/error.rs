//! Errors of the `shard_tool` library. Every message names the file or record it is about;
//! binaries print the whole chain (`{:#}`), so context variants hold the cause as a source.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading, writing or checking a dataset directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The error happened while working on this file or directory.
    #[error("{}", path.display())]
    WithPath {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
    /// The error is about this record.
    #[error("{split} record {index}")]
    WithRecord {
        /// Split of the record.
        split: String,
        /// Global index of the record in its split.
        index: u64,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
    /// An operating-system I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A file does not start with the magic bytes of its kind.
    #[error("not an rsb {what} file (wrong magic bytes)")]
    BadMagic {
        /// Kind of file expected ("shard", "index", ...).
        what: &'static str,
    },
    /// A file was written by another format version.
    #[error(
        "format version {found} is not supported by this build (it reads version {supported}); \
         repack with this shard-tool or use a matching build"
    )]
    Version {
        /// Version found in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// Bytes on disk do not match their checksum or are structurally inconsistent.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The directory has no manifest: a pack into it never finished.
    #[error(
        "no manifest.json: this pack did not finish; rerun the same `shard-tool pack` command to \
         complete it"
    )]
    Incomplete,
    /// A JSON manifest or footer could not be parsed or written.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The source tree does not have a layout `pack` understands.
    #[error("{0}")]
    Layout(String),
    /// The output directory holds work from a different pack.
    #[error("{0}")]
    Mismatch(String),
    /// Another `pack` holds the output directory's lock.
    #[error(
        "another `shard-tool pack` ({holder}) is writing this directory; wait for it to \
         finish, or stop it (a stopped pack resumes where it was)"
    )]
    Locked {
        /// Who holds it, as it wrote itself into the lock file (`pid 1234`).
        holder: String,
    },
    /// A record index past the end of its split.
    #[error("record index {index} is out of range: split `{split}` has {len} records")]
    OutOfRange {
        /// Split asked for.
        split: String,
        /// Index asked for.
        index: u64,
        /// Records in the split.
        len: u64,
    },
    /// A split name that the dataset does not have.
    #[error("no split `{split}` in this dataset (it has: {available})")]
    NoSplit {
        /// Split asked for.
        split: String,
        /// Comma-separated splits present.
        available: String,
    },
    /// Invalid options (from a builder or a command line).
    #[error("{0}")]
    Config(String),
    /// A path that had to be a regular file (to read, or to replace) is something else.
    #[error("is {kind}, not a regular file")]
    NotRegular {
        /// What it is: "a directory", "a FIFO", "a character device", ...
        kind: &'static str,
    },
    /// A name rsb writes (a checkpoint's directory) is taken by something rsb did not write
    /// there, which it leaves alone.
    #[error("is taken by {kind} that rsb did not write; move it away and run again")]
    Occupied {
        /// What is there: "a symlink", "a file", "a directory", ...
        kind: &'static str,
    },
    /// A file larger than its kind allows.
    #[error("{what} of {size} bytes is over the limit of {cap} bytes")]
    TooLarge {
        /// The kind of file ("a recipe", "a labels file", ...).
        what: &'static str,
        /// Its size, or what was read of it before the limit stopped the read.
        size: u64,
        /// The limit for its kind.
        cap: u64,
    },
}

impl Error {
    /// Whether this error (through the path or record it is wrapped in, not its causes) is about what the user handed the command: a tree
    /// `pack` cannot read as a dataset, a directory that is not a finished pack of this
    /// format, a split or record that does not exist, a bad option. Damage found in a
    /// dataset and I/O failures are not.
    pub fn is_bad_input(&self) -> bool {
        // A path or record is context: the error inside decides (its box hides it from a
        // downcast of the chain).
        if let Error::WithPath { source, .. } | Error::WithRecord { source, .. } = self {
            return source.is_bad_input();
        }
        matches!(
            self,
            Error::BadMagic { .. }
                | Error::Version { .. }
                | Error::Incomplete
                | Error::Layout(_)
                | Error::Mismatch(_)
                | Error::Locked { .. }
                | Error::OutOfRange { .. }
                | Error::NoSplit { .. }
                | Error::Config(_)
                | Error::NotRegular { .. }
                | Error::Occupied { .. }
                | Error::TooLarge { .. }
        )
    }

    /// The message with every cause after it (`path: cause: cause`), for one line of a report:
    /// `Display` alone shows only the outermost context.
    pub fn chain(&self) -> String {
        one_line(std::iter::successors(
            Some(self as &(dyn std::error::Error + 'static)),
            |e| e.source(),
        ))
    }

    /// The chain without the path it is about (for a caller whose own message names the
    /// path already).
    pub fn reason(&self) -> String {
        match self {
            Error::WithPath { source, .. } => source.chain(),
            e => e.chain(),
        }
    }

    /// Wraps `self` with the path it concerns.
    pub(crate) fn with_path(self, path: impl Into<PathBuf>) -> Error {
        Error::WithPath {
            path: path.into(),
            source: Box::new(self),
        }
    }

    /// Wraps `self` with the record it concerns.
    pub(crate) fn with_record(self, split: &str, index: u64) -> Error {
        Error::WithRecord {
            split: split.to_owned(),
            index,
            source: Box::new(self),
        }
    }
}

/// An error and its causes (`anyhow::Error::chain`, or `source()` followed) on one line,
/// `context: cause: cause`, each said once. Both styles of error meet in one chain: those whose
/// message is only their context (the cause follows), and those that end their message with
/// their cause (`"{path}: {source}"`); after the latter the cause is not repeated.
pub fn one_line<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut text = String::new();
    for e in chain {
        let msg = e.to_string();
        if text.is_empty() {
            text = msg;
        } else if !text.ends_with(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
    }
    text
}

/// Adds a path to the error of an I/O result.
pub(crate) trait PathContext<T> {
    /// Wraps the error with `path`.
    fn at(self, path: &std::path::Path) -> Result<T, Error>;
}

impl<T, E: Into<Error>> PathContext<T> for Result<T, E> {
    fn at(self, path: &std::path::Path) -> Result<T, Error> {
        self.map_err(|e| e.into().with_path(path))
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that ends its message with its cause, as `"{path}: {source}"` does.
    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Quoting {
        path: String,
        source: Error,
    }

    #[test]
    fn a_cause_is_said_once_whichever_style_the_errors_use() {
        let inner = Error::Config("no split `val`".into()).with_path("/data/x");
        assert_eq!(inner.chain(), "/data/x: no split `val`");
        let outer = Quoting {
            path: "bench".into(),
            source: inner,
        };
        let chain =
            std::iter::successors(Some(&outer as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            });
        assert_eq!(one_line(chain), "bench: /data/x: no split `val`");
    }
}
