/*!
The rsb record format: an ImageNet-style folder tree packed into checked, memory-mapped shard
files, and the reader every other part of rsb uses to get at the images.

- [`pack()`] turns a source tree (see [`layout`]) into a dataset directory: shard files,
  one index per split and a `manifest.json` written last. Every image is decoded once in strict
  mode; train JPEGs are re-encoded losslessly with restart markers ([`restart`]; the same
  pixels) and stored as their coefficients ([`coefficients`]), other JPEGs kept byte for byte; PNGs and CMYK JPEGs become RGB JPEGs; what cannot be
  read is listed with the reason. A killed pack leaves no manifest, and rerunning it finishes the job.
- [`Dataset`] maps a finished dataset and returns record `i` of a split in O(1), zero-copy.
- [`verify()`] checks every byte against its checksum and names what does not match.

The byte layout is defined in one place, [`record`].

# Example
```
use shard_tool::{Dataset, PackOptions, pack, synth};

let src = tempfile::tempdir()?;
let spec = synth::TreeSpec { classes: 2, train_per_class: 3, val_per_class: 1, size: 16, odd_files: false };
synth::write_tree(src.path(), &spec)?;

let out = tempfile::tempdir()?;
let summary = pack(src.path(), &PackOptions::new(out.path()), &mut |_| {})?;
assert_eq!(summary.rejected(), 0);

// SAFETY: nothing modifies the dataset while it is open.
let dataset = unsafe { Dataset::open(out.path()) }?;
let train = dataset.split("train")?;
assert_eq!(train.len(), 6);
let record = train.get(0)?;
assert!(record.checksum_ok());
// Train records hold the JPEG's coefficients (`coefficients`), val records the JPEG.
assert!(shard_tool::coefficients::is_coefficients(record.data));
let val = dataset.split("val")?.get(0)?;
assert!(val.data.starts_with(&[0xFF, 0xD8]));
# Ok::<(), Box<dyn std::error::Error>>(())
```
*/
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod atomic;
pub mod bench;
pub mod coefficients;
pub mod console;
mod error;
pub mod fuzzing;
pub mod image;
pub mod layout;
mod libjpeg;
pub mod manifest;
mod open;
mod pack;
pub mod reader;
pub mod record;
mod report;
pub mod restart;
mod resume;
pub mod slice_reader;
pub mod synth;
pub mod user_file;
mod verify;
pub mod writer;

pub use error::{Error, Result, one_line};
pub use layout::LayoutOptions;
pub use manifest::Manifest;
pub use pack::{
    DEFAULT_MAX_FILE_BYTES, DEFAULT_SHARD_SIZE, IN_FLIGHT_BYTES, LOCK_FILE, PackEvent, PackOptions,
    PackSummary, pack, shuffled_order,
};
pub use reader::{Dataset, Record, Split};
pub use record::NO_LABEL;
pub use report::report;
pub use verify::{Problem, VerifyReport, total_bytes, verify};
