//! TensorBoard event files in the run directory, so `tensorboard --logdir RUN` (or the folder
//! above several runs: a study, a `compare`'s runs, timm's runs beside ours) shows a run by its
//! folder name.
//!
//! The format is TensorFlow's: a file of TFRecords (little-endian length, its masked CRC-32C,
//! the bytes, their masked CRC-32C), each an `Event` protobuf. The messages below are the
//! fields of `tensorflow/core/util/event.proto` and `framework/summary.proto` that we write,
//! with their field numbers; prost encodes them. The crates that write the format
//! (`tensorboard-rs`, unmaintained since 2022 on protobuf 2; `syntaxdot-summary`, scalars only)
//! do less than these lines.
//!
//! Tags are timm's names (`train_loss`, `lr`, `eval_top1`, ...). A run's steps are counted as
//! in `metrics.jsonl` (1-based; an evaluation at the steps done before it).
//!
//! Resuming: each process start writes a new file, named so that files sort in the order they
//! were written (`events.out.tfevents.<start step>.<unix seconds>.<nanoseconds>.rsb`;
//! TensorBoard reads a folder's files in name order), created exclusively so that a name one
//! could predict and plant is never written through. Files are read back a record at a time,
//! every length checked against the file ([`Records`]). Files of earlier starts are cut back to the steps the
//! checkpoint holds, as `metrics.jsonl` is, so every step appears once. The new file opens with
//! a `SessionLog START` at the first new step, as PyTorch's `SummaryWriter(purge_step=...)`
//! writes: a TensorBoard that read the old file's later steps before the cut purges them.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::metrics::Metric;

/// Errors of an event file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TensorBoardError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub message: String,
}

/// `Event`: one record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The step it belongs to.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What it holds.
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// `Event.what`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The format's version, the first record of a file.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Values.
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// A session starting (after a resume).
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `Summary`: tagged values of one step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// Its tag (the chart's name).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// Which plugin shows it (text).
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    /// The value.
    #[prost(oneof = "Content", tags = "2, 4, 8")]
    pub content: Option<Content>,
}

/// `Summary.Value.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Content {
    /// A scalar.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// An encoded image.
    #[prost(message, tag = "4")]
    Image(Image),
    /// A tensor (text is a string tensor).
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// `Summary.Image`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    /// Rows.
    #[prost(int32, tag = "1")]
    pub height: i32,
    /// Columns.
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 3: RGB.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    /// The PNG file.
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// `SummaryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// The plugin.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// `text` for text.
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// The plugin's own settings (none for text).
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `TensorProto`, the fields of a string tensor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `DataType`: 7 is `DT_STRING`.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// Its shape.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    /// The strings.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShape {
    /// Its dimensions.
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
}

/// `TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    /// Its size.
    #[prost(int64, tag = "1")]
    pub size: i64,
}

/// `SessionLog`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// 1: `START`.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

const FILE_VERSION: &str = "brain.Event:2";
const DT_STRING: i32 = 7;
const RGB: i32 = 3;
const START: i32 = 1;
/// What our files' names start and end with; TensorBoard reads files whose name holds
/// `tfevents`.
const PREFIX: &str = "events.out.tfevents.";
const SUFFIX: &str = ".rsb";
/// The largest record read back: ours are a few scalars, the recipe's text and one PNG of a
/// batch's first images (under 1 MB at 224 px); a length above this is a damaged record.
const MAX_RECORD_BYTES: u64 = 64 << 20;
/// A TFRecord's length and its CRC.
const HEADER_BYTES: u64 = 12;
/// The CRC after a TFRecord's data.
const FOOTER_BYTES: u64 = 4;

/// The masked CRC-32C TFRecords carry (TensorFlow's `crc32c::Mask`).
pub(crate) fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// An event file's records, read one at a time: memory is bounded by one record (at most
/// `MAX_RECORD_BYTES`), never by the file, and every length is checked against what is left
/// of the file before anything is read or allocated. Reading stops at the first record that is
/// torn (a process killed while writing it) or damaged, as TensorBoard's own reader does.
pub struct Records<R> {
    reader: R,
    /// Bytes of the file not read yet.
    left: u64,
    /// The last record read, framing included.
    frame: Vec<u8>,
}

impl<R: Read> Records<R> {
    /// The records of `reader`, which holds `len` bytes.
    pub fn new(reader: R, len: u64) -> Records<R> {
        Records {
            reader,
            left: len,
            frame: Vec::new(),
        }
    }

    /// The next whole record's event and its bytes as framed in the file; `None` at the end
    /// or at the first torn or damaged record.
    pub fn next_record(&mut self) -> Option<(Event, &[u8])> {
        if self.left < HEADER_BYTES {
            return None;
        }
        let mut header = [0u8; HEADER_BYTES as usize];
        self.reader.read_exact(&mut header).ok()?;
        let (len_bytes, crc) = header.split_at(8);
        if crc != masked_crc(len_bytes).to_le_bytes() {
            return None;
        }
        let len = u64::from_le_bytes(len_bytes.try_into().ok()?);
        let framed = HEADER_BYTES.checked_add(len)?.checked_add(FOOTER_BYTES)?;
        if len > MAX_RECORD_BYTES || framed > self.left {
            return None;
        }
        self.left -= framed;
        // Both bounds hold: `framed` is at most 64 MiB and 16 bytes.
        let framed = usize::try_from(framed).ok()?;
        self.frame.clear();
        self.frame.extend_from_slice(&header);
        self.frame.resize(framed, 0);
        self.reader
            .read_exact(&mut self.frame[HEADER_BYTES as usize..])
            .ok()?;
        let (data, data_crc) = self.frame[HEADER_BYTES as usize..].split_at(framed - 16);
        if data_crc != masked_crc(data).to_le_bytes() {
            return None;
        }
        let event = <Event as prost::Message>::decode(data).ok()?;
        Some((event, &self.frame))
    }
}

/// The records of the event file `path`: a regular file (never a FIFO or device), read
/// through a buffer.
///
/// # Errors
/// [`TensorBoardError`] naming the file that cannot be opened.
fn open_records(path: &Path) -> Result<Records<BufReader<File>>, TensorBoardError> {
    let file = shard_tool::user_file::open_regular(path).map_err(|e| TensorBoardError {
        path: path.to_path_buf(),
        message: e.reason(),
    })?;
    let len = file
        .metadata()
        .map_err(|e| TensorBoardError {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .len();
    Ok(Records::new(BufReader::new(file), len))
}

/// Reads an event file: its events up to the first torn or damaged record.
///
/// # Errors
/// [`TensorBoardError`] naming the file that cannot be read.
pub fn read_events(path: &Path) -> Result<Vec<Event>, TensorBoardError> {
    let mut records = open_records(path)?;
    let mut events = Vec::new();
    while let Some((event, _)) = records.next_record() {
        events.push(event);
    }
    Ok(events)
}

/// Whether `name` is one of our event files' names.
pub(crate) fn is_event_file_name(name: &str) -> bool {
    name.starts_with(PREFIX) && name.ends_with(SUFFIX)
}

/// The event files of ours in `dir`, in the order they were written.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, TensorBoardError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| TensorBoardError {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            is_event_file_name(&name).then(|| dir.join(name))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every scalar of the event files in `dir` as (step, tag, value), in the order written.
///
/// # Errors
/// [`TensorBoardError`] naming the folder or file that cannot be read.
pub fn scalars(dir: &Path) -> Result<Vec<(i64, String, f32)>, TensorBoardError> {
    let mut out = Vec::new();
    for path in event_files(dir)? {
        let mut records = open_records(&path)?;
        while let Some((event, _)) = records.next_record() {
            let Some(What::Summary(summary)) = event.what else {
                continue;
            };
            for value in summary.value {
                if let Some(Content::SimpleValue(x)) = value.content {
                    out.push((event.step, value.tag, x));
                }
            }
        }
    }
    Ok(out)
}

/// Creates this start's event file in `dir`, exclusively ([`shard_tool::atomic::create_new`]):
/// a name someone planted (a link to a file of ours, a FIFO) is never opened, and the next
/// name is tried. Names sort in the order files were made: the start's steps, then the time
/// to the nanosecond.
fn new_file(dir: &Path, steps_done: u64) -> Result<(PathBuf, File), TensorBoardError> {
    let mut last = None;
    for attempt in 0..64u64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (seconds, nanos) = (since.as_secs(), u64::from(since.subsec_nanos()) + attempt);
        let path = dir.join(format!(
            "{PREFIX}{steps_done:012}.{seconds:010}.{nanos:010}{SUFFIX}"
        ));
        match shard_tool::atomic::create_new(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) => last = Some(e.chain()),
        }
    }
    Err(TensorBoardError {
        path: dir.to_path_buf(),
        message: format!(
            "no new event file could be made: {}",
            last.unwrap_or_default()
        ),
    })
}

/// Seconds since the Unix epoch, now.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An event file being written: each call writes its records and flushes them, so a
/// TensorBoard watching the folder sees every step as it is taken.
pub struct EventFile {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventFile {
    /// Starts this process's event file in `dir` for a run that has `steps_done` steps, first
    /// cutting the files of earlier starts back to those steps (each rewritten atomically).
    ///
    /// # Errors
    /// [`TensorBoardError`] naming the file that cannot be read, cut or created.
    pub fn create(dir: &Path, steps_done: u64) -> Result<EventFile, TensorBoardError> {
        let kept = |e: &Event| u64::try_from(e.step).is_ok_and(|s| s <= steps_done);
        for path in event_files(dir)? {
            // A first pass finds whether anything is past the checkpoint; only then is the file
            // rewritten, record by record, into its temporary.
            let mut records = open_records(&path)?;
            let mut whole = true;
            while let Some((event, _)) = records.next_record() {
                whole &= kept(&event);
            }
            if whole {
                continue;
            }
            let mut records = open_records(&path)?;
            shard_tool::atomic::write_atomic(&path, |w| {
                while let Some((event, frame)) = records.next_record() {
                    if kept(&event) {
                        w.write_all(frame)?;
                    }
                }
                Ok(())
            })
            .map_err(|e| TensorBoardError {
                path: path.clone(),
                message: e.reason(),
            })?;
        }
        let (path, file) = new_file(dir, steps_done)?;
        let mut events = EventFile {
            path,
            file: BufWriter::new(file),
        };
        let mut first = vec![(0, What::FileVersion(FILE_VERSION.to_string()))];
        if steps_done > 0 {
            first.push((
                steps_done + 1,
                What::SessionLog(SessionLog { status: START }),
            ));
        }
        events.write(first)?;
        Ok(events)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes events of (step, content), then flushes.
    fn write(&mut self, events: Vec<(u64, What)>) -> Result<(), TensorBoardError> {
        let wall_time = now();
        let mut bytes = Vec::new();
        for (step, what) in events {
            let event = Event {
                wall_time,
                step: i64::try_from(step).unwrap_or(i64::MAX),
                what: Some(what),
            };
            bytes.extend(record(&prost::Message::encode_to_vec(&event)));
        }
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.flush())
            .map_err(|e| TensorBoardError {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Writes `values` at `step`, each a scalar chart.
    ///
    /// # Errors
    /// [`TensorBoardError`] naming the file.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<(), TensorBoardError> {
        let value = values
            .iter()
            .map(|&(tag, v)| Value {
                tag: tag.to_string(),
                metadata: None,
                // TensorBoard's scalars are f32.
                content: Some(Content::SimpleValue(v as f32)),
            })
            .collect();
        self.write(vec![(step, What::Summary(Summary { value }))])
    }

    /// Writes a metric line's values under timm's names.
    ///
    /// # Errors
    /// [`TensorBoardError`] naming the file.
    pub fn metric(&mut self, m: &Metric) -> Result<(), TensorBoardError> {
        match *m {
            Metric::Step {
                step,
                loss,
                lr,
                samples_per_s,
                data_wait_s,
                upload_s,
                ..
            } => self.scalars(
                step,
                &[
                    ("train_loss", loss),
                    ("lr", lr),
                    ("train_samples_per_s", samples_per_s),
                    ("train_data_wait_s", data_wait_s),
                    ("train_upload_s", upload_s),
                ],
            ),
            Metric::Eval {
                step,
                top1,
                top5,
                loss,
                ..
            } => {
                let mut values = vec![("eval_top1", top1), ("eval_top5", top5)];
                values.extend(loss.map(|l| ("eval_loss", l)));
                self.scalars(step, &values)
            }
        }
    }

    /// Writes `markdown` as text under `tag` (TensorBoard's Text tab).
    ///
    /// # Errors
    /// [`TensorBoardError`] naming the file.
    pub fn text(&mut self, step: u64, tag: &str, markdown: &str) -> Result<(), TensorBoardError> {
        let value = Value {
            tag: tag.to_string(),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "text".to_string(),
                    content: Vec::new(),
                }),
            }),
            content: Some(Content::Tensor(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShape {
                    dim: vec![Dim { size: 1 }],
                }),
                string_val: vec![markdown.as_bytes().to_vec()],
            })),
        };
        self.write(vec![(step, What::Summary(Summary { value: vec![value] }))])
    }

    /// Writes an RGB PNG of `width × height` under `tag` (TensorBoard's Images tab).
    ///
    /// # Errors
    /// [`TensorBoardError`] naming the file.
    pub fn image(
        &mut self,
        step: u64,
        tag: &str,
        png: Vec<u8>,
        (width, height): (u32, u32),
    ) -> Result<(), TensorBoardError> {
        let value = Value {
            tag: tag.to_string(),
            metadata: None,
            content: Some(Content::Image(Image {
                height: i32::try_from(height).unwrap_or(i32::MAX),
                width: i32::try_from(width).unwrap_or(i32::MAX),
                colorspace: RGB,
                encoded_image_string: png,
            })),
        };
        self.write(vec![(step, What::Summary(Summary { value: vec![value] }))])
    }
}

/// A recipe's TOML as markdown TensorBoard shows as it is (a code block keeps its lines).
pub fn recipe_markdown(toml: &str) -> String {
    toml.lines().map(|l| format!("    {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalars(dir: &Path) -> Vec<(i64, String, f32)> {
        super::scalars(dir).unwrap()
    }

    fn decode_records(bytes: &[u8]) -> Vec<Event> {
        let mut records = Records::new(bytes, bytes.len() as u64);
        std::iter::from_fn(|| records.next_record().map(|(e, _)| e)).collect()
    }

    /// A record header declaring `len` bytes, with a valid length CRC.
    fn header(len: u64) -> Vec<u8> {
        let len = len.to_le_bytes();
        let mut out = len.to_vec();
        out.extend_from_slice(&masked_crc(&len).to_le_bytes());
        out
    }

    #[test]
    fn a_declared_length_past_the_file_or_the_bound_ends_the_reading_without_reading_it() {
        let good = record(&prost::Message::encode_to_vec(&Event {
            wall_time: 1.0,
            step: 1,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        }));
        for len in [
            u64::MAX,
            u64::MAX - 11,
            u64::MAX - 15,
            MAX_RECORD_BYTES + 1,
            1 << 40,
            100,
        ] {
            let mut bytes = good.clone();
            bytes.extend(header(len));
            bytes.extend([0u8; 40]);
            assert_eq!(decode_records(&bytes).len(), 1, "declared length {len}");
        }
    }

    #[test]
    fn reading_holds_one_record_never_the_file() {
        // A "file" of 2^40 bytes of empty records (the 64 MB file that took 4.2 GB when it
        // was decoded whole, and far more): each record is pulled from the reader only when
        // it is asked for.
        struct Endless {
            record: Vec<u8>,
            at: usize,
            pulled: u64,
        }
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.record.len() - self.at);
                buf[..n].copy_from_slice(&self.record[self.at..self.at + n]);
                self.at = (self.at + n) % self.record.len();
                self.pulled += n as u64;
                Ok(n)
            }
        }
        let empty = record(&[]);
        let mut records = Records::new(
            Endless {
                record: empty.clone(),
                at: 0,
                pulled: 0,
            },
            1 << 40,
        );
        for k in 1..=1000u64 {
            let (event, frame) = records.next_record().unwrap();
            assert_eq!((event.step, frame), (0, &empty[..]));
            assert_eq!(records.reader.pulled, k * empty.len() as u64);
        }
    }

    #[test]
    fn a_planted_link_or_fifo_at_the_next_event_files_name_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        // Every name of the coming seconds, as the earlier naming made them, planted.
        let now = now() as u64;
        for s in now..now + 5 {
            let name = format!("{PREFIX}{:012}.{s:010}{SUFFIX}", 0);
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        let mut file = EventFile::create(dir.path(), 0).unwrap();
        file.scalars(1, &[("lr", 0.1)]).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(file.path()).unwrap().is_symlink());
        // A resume reads the planted links as event files it cannot parse: none is
        // rewritten through, and the victim is untouched.
        drop(file);
        EventFile::create(dir.path(), 0).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn records_are_framed_as_tensorboards_own_writer_frames_them() {
        // The first record of every event file, an Event holding only file_version. The
        // checksums are what TensorBoard's Python writer computes
        // (`tensorboard.summary.writer.record_writer.masked_crc32c`) for these bytes.
        let event = Event {
            wall_time: 0.0,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.to_string())),
        };
        let data = prost::Message::encode_to_vec(&event);
        assert_eq!(data, b"\x1a\x0dbrain.Event:2");
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
        let framed = record(&data);
        assert_eq!(&framed[..8], &15u64.to_le_bytes());
        assert_eq!(&framed[8..12], &0x092b_536du32.to_le_bytes());
        assert_eq!(&framed[12..27], &data[..]);
        assert_eq!(&framed[27..], &0x2951_98fcu32.to_le_bytes());
        assert_eq!(decode_records(&framed), [event]);
    }

    #[test]
    fn a_torn_or_damaged_tail_is_where_reading_stops() {
        let events: Vec<Event> = (0..3)
            .map(|i| Event {
                wall_time: 1.0,
                step: i,
                what: Some(What::FileVersion(FILE_VERSION.into())),
            })
            .collect();
        let bytes: Vec<u8> = events
            .iter()
            .flat_map(|e| record(&prost::Message::encode_to_vec(e)))
            .collect();
        assert_eq!(decode_records(&bytes).len(), 3);
        assert_eq!(decode_records(&bytes[..bytes.len() - 1]).len(), 2);
        let mut damaged = bytes.clone();
        let at = bytes.len() - 6;
        damaged[at] ^= 1;
        assert_eq!(decode_records(&damaged).len(), 2);
    }

    #[test]
    fn a_resume_cuts_earlier_files_back_to_its_checkpoint_and_appends_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = EventFile::create(dir.path(), 0).unwrap();
        for step in 1..=5 {
            first.scalars(step, &[("train_loss", step as f64)]).unwrap();
        }
        drop(first);
        // The run died after step 5; its checkpoint holds 3 steps.
        let mut second = EventFile::create(dir.path(), 3).unwrap();
        for step in 4..=6 {
            second
                .scalars(step, &[("train_loss", 10.0 + step as f64)])
                .unwrap();
        }
        let got = scalars(dir.path());
        let steps: Vec<i64> = got.iter().map(|s| s.0).collect();
        assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
        assert_eq!(got[3].2, 14.0);
        // The new file starts with its version and a session start at the first new step.
        let events = read_events(second.path()).unwrap();
        assert_eq!(events[1].step, 4);
        assert_eq!(
            events[1].what,
            Some(What::SessionLog(SessionLog { status: START }))
        );
        assert_eq!(event_files(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_write_that_fails_names_the_file() {
        let mut events = EventFile {
            path: PathBuf::from("/dev/full"),
            file: BufWriter::new(File::options().write(true).open("/dev/full").unwrap()),
        };
        let err = events.scalars(1, &[("lr", 0.1)]).unwrap_err();
        assert_eq!(err.path, Path::new("/dev/full"));
        assert!(err.to_string().contains("No space left"), "{err}");
    }

    #[test]
    fn metric_lines_become_timms_tags() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = EventFile::create(dir.path(), 0).unwrap();
        file.metric(&Metric::test_step(1, 0, 0.5, 0.25, 100.0))
            .unwrap();
        file.metric(&Metric::Eval {
            step: 1,
            epoch: 1,
            top1: 12.5,
            top5: 50.0,
            samples: 8,
            loss: Some(2.0),
        })
        .unwrap();
        file.text(0, "recipe", &recipe_markdown("lr = 0.008\n"))
            .unwrap();
        let tags: Vec<String> = scalars(dir.path()).into_iter().map(|s| s.1).collect();
        assert_eq!(
            tags,
            [
                "train_loss",
                "lr",
                "train_samples_per_s",
                "train_data_wait_s",
                "train_upload_s",
                "eval_top1",
                "eval_top5",
                "eval_loss"
            ]
        );
    }
}
