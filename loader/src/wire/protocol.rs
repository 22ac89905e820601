/*!
The loader's wire protocol on its Unix socket.

A connection starts with a 12-byte preamble from each side: the magic `RSBLOAD\0` and the
protocol version (u32, little-endian); a mismatch ends the connection with an error. After it,
every message is a frame: a u32 little-endian length (at most [`MAX_FRAME`](crate::wire::frame::MAX_FRAME)) and that many bytes
of JSON, one object tagged by `"type"`. The traffic is a few small messages per batch, so JSON
costs nothing measurable and can be read with `socat`.

```text
client                                   daemon
preamble ───────────────────────────────▶
         ◀─────────────────────────────── preamble
hello {job, start, epochs, slots} ──────▶
         ◀─────────────────────────────── welcome {layout, steps_per_epoch, split}  + ring fd (SCM_RIGHTS)
         ◀─────────────────────────────── batch_ready {slot, epoch, step}  (up to `slots` ahead)
release {slot} ─────────────────────────▶
         ◀─────────────────────────────── end_of_epoch {epoch} ... finished
stats ──────────────────────────────────▶ (any time, or instead of hello: `loader status`)
         ◀─────────────────────────────── stats {...}
describe {split} ───────────────────────▶ (instead of hello: what a split holds)
         ◀─────────────────────────────── split {records, classes, labels, unlabelled}
```
The job in a hello is the typed [`JobSpec`]; the daemon checks it with [`JobSpec::validate`]
(the same check its clients ran) and refuses it with the key at fault. The split's class count
and label range come with the welcome, so a trainer can refuse a dataset that does not match
its recipe before it builds a model.
Anything malformed, oversized or out of order gets an `error` frame and the connection is
closed; the daemon never panics on input and keeps serving its other clients.
*/

use serde::{Deserialize, Serialize};

use crate::request::job::{JobSpec, Position};
use crate::wire::ring::RingLayout;

/// First bytes each side sends.
pub const MAGIC: [u8; 8] = *b"RSBLOAD\0";
/// Protocol version; both sides must agree.
pub const VERSION: u32 = 4;

/// Errors reading or writing the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket failed or closed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer does not speak this protocol.
    #[error("peer is not an rsb loader endpoint (bad magic {0:?})")]
    BadMagic([u8; 8]),
    /// The peer speaks another version.
    #[error("protocol version {theirs}, this build speaks {VERSION}; upgrade the older side")]
    Version {
        /// The peer's version.
        theirs: u32,
    },
    /// A frame longer than the limit ([`MAX_FRAME`](crate::wire::frame::MAX_FRAME)).
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    Oversized {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame that is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// The longest job id a hello may carry, in bytes: enough for any scheduler's job name and a
/// rank, short enough for a log line and a metric label.
pub const MAX_JOB_ID_BYTES: usize = 128;

/// Checks a job id as the daemon takes it: at most [`MAX_JOB_ID_BYTES`] bytes of printable
/// text (no control character: a CR, NUL or ESC would forge log lines, split a metric series
/// or drive a terminal that shows `loader status`). Refused whole, never cut: two long ids cut
/// to the same prefix would merge two jobs into one series.
///
/// # Errors
/// What is wrong with it, in words.
pub fn check_job_id(job_id: &str) -> Result<(), String> {
    if job_id.len() > MAX_JOB_ID_BYTES {
        return Err(format!(
            "job id of {} bytes; at most {MAX_JOB_ID_BYTES} are allowed",
            job_id.len()
        ));
    }
    if let Some(c) = job_id.chars().find(|c| c.is_control()) {
        return Err(format!(
            "job id holds the control character {:?}; use printable text",
            c
        ));
    }
    Ok(())
}

/// Client → daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Open a stream of batches.
    Hello {
        /// Names the training job (for `loader status` and the logs).
        job_id: String,
        /// What to produce (boxed: it is much larger than the other requests).
        job: Box<JobSpec>,
        /// First batch wanted (after a restart: the next batch the client has not consumed).
        start: Position,
        /// Stop after this many epochs (`None`: never).
        epochs: Option<u32>,
        /// Ring slots wanted (`None`: the daemon's default).
        slots: Option<u32>,
    },
    /// The client is done with a slot.
    Release {
        /// The slot.
        slot: u32,
    },
    /// Ask for the daemon's statistics.
    Stats,
    /// Ask what a split holds (instead of a hello).
    Describe {
        /// The split's name.
        split: String,
    },
    /// Close the stream.
    Bye,
}

/// Daemon → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// The stream is open; the ring's descriptor comes with this frame.
    Welcome {
        /// Geometry of the ring.
        layout: RingLayout,
        /// Batches per epoch.
        steps_per_epoch: u64,
        /// What the split holds.
        split: SplitInfo,
    },
    /// A slot holds the batch at (epoch, step).
    BatchReady {
        /// The slot.
        slot: u32,
        /// Its position.
        position: Position,
        /// Samples in it.
        count: u32,
        /// Records that failed to decode, as (record, replacement).
        replaced: Vec<(u32, u32)>,
    },
    /// Every batch of `epoch` has been sent.
    EndOfEpoch {
        /// The epoch.
        epoch: u32,
    },
    /// Every requested epoch has been sent.
    Finished,
    /// Statistics.
    Stats(Stats),
    /// What a split holds (the answer to `describe`).
    Split(SplitInfo),
    /// The request was refused; the connection closes.
    Error {
        /// Why, for a person.
        message: String,
    },
}

/// What a split holds: its size and its labels, for a client to check against its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInfo {
    /// The split's name.
    pub name: String,
    /// Records in the split.
    pub records: u64,
    /// Classes of the dataset (its manifest's class list).
    pub classes: u32,
    /// Smallest and largest label of the labelled records (`None`: no record has one).
    pub labels: Option<[u32; 2]>,
    /// Records without a label (a flat `test/` folder).
    pub unlabelled: u64,
    /// The split's identity: the XXH3 of its index (every record's order, place, label and
    /// CRC), from the manifest. A client that reconnects, or a run that resumes, refuses a
    /// split whose identity changed: its positions would name other batches.
    pub fingerprint: String,
}

impl SplitInfo {
    /// Reads the labels of every record of `split` from its index (24 bytes a record: a few
    /// milliseconds for ImageNet's 1.28 M).
    pub fn of(dataset: &shard_tool::Dataset, split: &shard_tool::Split) -> SplitInfo {
        let mut info = SplitInfo {
            name: split.name().to_owned(),
            records: split.len(),
            classes: u32::try_from(dataset.manifest().classes.len()).unwrap_or(u32::MAX),
            labels: None,
            unlabelled: 0,
            fingerprint: dataset
                .manifest()
                .split(split.name())
                .map(|m| m.index.xxh3.clone())
                .unwrap_or_default(),
        };
        for i in 0..split.len() {
            match split.label(i) {
                Ok(label) if label != shard_tool::NO_LABEL => {
                    info.labels = Some(match info.labels {
                        None => [label, label],
                        Some([lo, hi]) => [lo.min(label), hi.max(label)],
                    });
                }
                _ => info.unlabelled += 1,
            }
        }
        info
    }
}

/// The daemon's statistics (`loader status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// Daemon's process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Worker threads per client.
    pub workers: u32,
    /// Samples written into rings since start.
    pub samples: u64,
    /// Samples per second over the last few seconds.
    pub samples_per_s: f64,
    /// Images decoded since start: `samples / decoded` is what repeats sharing a decode saved.
    pub decoded: u64,
    /// Records replaced after a decode error since start.
    pub decode_errors: u64,
    /// Milliseconds per sample, summed over threads: decode, crop+resize, flip, RandAugment,
    /// write.
    pub stage_ms: [f64; 5],
    /// Connections refused (peer not allowed, malformed or out-of-order messages).
    pub refused: u64,
    /// The daemon's resident memory.
    pub memory: MemoryUse,
    /// Bytes all rings together may take (`memory_budget_bytes`, or half of the machine's
    /// memory).
    pub memory_budget: u64,
    /// The clients being served.
    pub clients: Vec<ClientStats>,
}

/// Resident memory of the daemon, from `/proc/self/status` (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryUse {
    /// Heap, stacks, decode buffers (`RssAnon`).
    pub anon: u64,
    /// The clients' rings as far as the workers have written them (`RssShmem`): a ring's
    /// memory is allocated whole when its client connects, and its pages enter this figure as
    /// its slots are first filled.
    pub shmem: u64,
    /// Mapped files: the binary and the shard pages read so far, which are the kernel's page
    /// cache, shared and reclaimable (`RssFile`).
    pub file: u64,
}

impl MemoryUse {
    /// This process's resident memory (zeros where /proc is unavailable).
    pub fn of_this_process() -> MemoryUse {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        MemoryUse {
            anon: field("RssAnon:"),
            shmem: field("RssShmem:"),
            file: field("RssFile:"),
        }
    }
}

/// One client in [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientStats {
    /// Job id from its hello.
    pub job_id: String,
    /// Rank.
    pub rank: u32,
    /// Peer's process id and user id.
    pub pid: i32,
    /// Peer's user id.
    pub uid: u32,
    /// Next batch the daemon will write.
    pub next: Position,
    /// Slots holding batches the client has not released.
    pub slots_full: u32,
    /// Slots in its ring.
    pub slots: u32,
    /// Samples written for it.
    pub samples: u64,
    /// Clients served by its producer, itself included (the ranks of its job that share
    /// decodes); 0 while it waits for them.
    pub group: u32,
    /// Batches that arrived while the client held none: it had read every batch and was
    /// waiting for the loader (a trainer the loader does not keep fed).
    #[serde(default)]
    pub waits: u64,
}

/// The 12 bytes each side sends first.
pub fn preamble() -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..8].copy_from_slice(&MAGIC);
    p[8..].copy_from_slice(&VERSION.to_le_bytes());
    p
}

/// Checks the peer's preamble.
pub fn check_preamble(p: &[u8; 12]) -> Result<(), ProtocolError> {
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&p[..8]);
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let theirs = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
    if theirs != VERSION {
        return Err(ProtocolError::Version { theirs });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{FrameReader, MAX_FRAME, encode};

    fn read_frame<T: serde::de::DeserializeOwned>(mut bytes: &[u8]) -> Result<T, ProtocolError> {
        FrameReader::default().read(&mut bytes)
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let msgs = [
            Request::Hello {
                job_id: "j".into(),
                job: Box::new(JobSpec::single(
                    "train",
                    crate::request::transform::TransformSpec::preset("a1").unwrap(),
                    3,
                    64,
                )),
                start: Position { epoch: 2, step: 9 },
                epochs: Some(600),
                slots: None,
            },
            Request::Release { slot: 3 },
            Request::Stats,
            Request::Describe {
                split: "val".into(),
            },
            Request::Bye,
        ];
        for m in msgs {
            let frame = encode(&m);
            let back: Request = read_frame(&frame[..]).unwrap();
            assert_eq!(back, m);
        }
        let r = Reply::BatchReady {
            slot: 1,
            position: Position { epoch: 0, step: 5 },
            count: 64,
            replaced: vec![(3, 4)],
        };
        assert_eq!(read_frame::<Reply>(&encode(&r)[..]).unwrap(), r);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut big = (MAX_FRAME as u32 + 1).to_le_bytes().to_vec();
        big.extend_from_slice(&[b'x'; 16]);
        assert!(matches!(
            read_frame::<Request>(&big[..]),
            Err(ProtocolError::Oversized { .. })
        ));
        for body in [
            &b"{}"[..],
            b"{\"type\":\"release\"}",
            b"{\"type\":\"release\",\"slot\":-1}",
            b"{\"type\":\"release\",\"slot\":1,\"extra\":0}",
            b"{\"type\":\"launch\"}",
            b"\xff\xfe",
        ] {
            let mut frame = (body.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(body);
            assert!(
                matches!(
                    read_frame::<Request>(&frame[..]),
                    Err(ProtocolError::Malformed(_))
                ),
                "{body:?}"
            );
        }
        // A short frame is an I/O error (end of stream).
        assert!(matches!(
            read_frame::<Request>(&[5u8, 0, 0, 0, b'{'][..]),
            Err(ProtocolError::Io(_))
        ));
        let mut p = preamble();
        assert!(check_preamble(&p).is_ok());
        p[8] = 9;
        assert!(matches!(
            check_preamble(&p),
            Err(ProtocolError::Version { theirs: 9 })
        ));
        p[0] = b'X';
        assert!(matches!(
            check_preamble(&p),
            Err(ProtocolError::BadMagic(_))
        ));
    }
}
