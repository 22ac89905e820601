/*!
The client library: attach to a loader daemon and read batches in place.

[`Client::next_batch`] returns a [`Batch`] that holds the ring slot; dropping it releases the
slot to the daemon. A batch owns what it needs (the ring's mapping, the way to the daemon), so
it may be moved to another thread or handed to a device upload that drops it when the copy is
done ([`Batch`] is `Send + 'static`); the caller must hold fewer batches than the ring has
slots, or the daemon has nowhere to put the next one. If the daemon goes away (a crash, `kill -9`, a restart by systemd), the
client reconnects with backoff and asks for the batch it has not yet consumed, so the stream it
sees is exactly the uninterrupted one (docs/design.md invariant 1). Blocking std I/O: the trainer
reads one batch at a time, and the daemon is already working ahead on the other slots.
*/

use std::io::{IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use crate::request::job::{JobSpec, Position};
use crate::wire::frame::FrameReader;
use crate::wire::protocol::{self, ProtocolError, Reply, Request, SplitInfo, Stats};
use crate::wire::ring::{RingError, RingLayout, RingView, SlotRef};

/// How long a daemon has for each step of a handshake (connect, preamble, welcome or reply).
/// The daemon answers at once when it runs; this bounds a stopped or wedged one.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon answered within the reconnect timeout.
    #[error(
        "no loader answered on {socket} for {waited:?} (last error: {last}); is `loader serve` \
         running, and is this the socket it printed?"
    )]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// How long we tried.
        waited: Duration,
        /// The last error seen.
        last: String,
    },
    /// The daemon accepted but did not answer a step of the handshake in time (stopped,
    /// wedged, or out of descriptors).
    #[error(
        "the loader on {socket} did not answer within {waited:?}; is it stopped or overloaded?"
    )]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// How long it had.
        waited: Duration,
    },
    /// After a reconnect the daemon serves another dataset (or another pack of it).
    #[error(
        "the loader on {socket} now serves another split (index XXH3 {now}, was {was}): the \
         positions of this stream would name other batches; restart the daemon on the dataset \
         this run started with"
    )]
    DatasetChanged {
        /// The socket.
        socket: PathBuf,
        /// The identity at first connection.
        was: String,
        /// The identity now.
        now: String,
    },
    /// The daemon refused the request.
    #[error("the loader on {socket} refused: {message}")]
    Refused {
        /// The socket.
        socket: PathBuf,
        /// Its reason.
        message: String,
    },
    /// The daemon broke the protocol, or the connection failed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The ring could not be mapped or does not match.
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// What a client asks for.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Names the job in the daemon's logs and `loader status`.
    pub job_id: String,
    /// What to produce.
    pub job: JobSpec,
    /// First batch wanted.
    pub start: Position,
    /// Stop after this many epochs (`None`: never).
    pub epochs: Option<u32>,
    /// Ring slots (`None`: the daemon's default).
    pub slots: Option<u32>,
    /// How long to keep trying to reach a daemon before giving up.
    pub reconnect_timeout: Duration,
}

/// One open stream.
struct Connection {
    /// Replies are read here.
    stream: UnixStream,
    /// The same socket, for the releases that batches send when dropped (on any thread).
    releases: Arc<Mutex<UnixStream>>,
    /// Replies read past the last one returned stay here.
    frames: FrameReader<Reply>,
    ring: Arc<RingView>,
    steps_per_epoch: u64,
    split: SplitInfo,
}

/// A client of the loader daemon.
pub struct Client {
    options: ClientOptions,
    conn: Option<Connection>,
    /// The split's identity when the client first connected; a reconnect must find the same.
    fingerprint: String,
    /// The next batch the caller will receive.
    next: Position,
    reconnects: u32,
    finished: bool,
}

/// A batch in a ring slot; released to the daemon when dropped.
pub struct Batch {
    ring: Arc<RingView>,
    releases: Arc<Mutex<UnixStream>>,
    slot: u32,
    /// The batch's position.
    pub position: Position,
    /// Samples in it.
    pub count: usize,
    /// Records that failed to decode and were replaced, as (record, replacement).
    pub replaced: Vec<(u32, u32)>,
}

impl Batch {
    /// The slot's contents ([`Client::next_batch`] checked that the slot exists).
    fn data(&self) -> Option<SlotRef<'_>> {
        self.ring.slot(self.slot)
    }

    /// `count` images, NHWC uint8.
    pub fn images(&self) -> &[u8] {
        self.data().map_or(&[], |d| {
            let per = d.images.len() / d.labels.len().max(1);
            &d.images[..per * self.count]
        })
    }

    /// One label per image.
    pub fn labels(&self) -> &[u32] {
        self.data().map_or(&[], |d| &d.labels[..self.count])
    }

    /// The record each image was made from.
    pub fn ids(&self) -> &[u32] {
        self.data().map_or(&[], |d| &d.ids[..self.count])
    }

    /// The whole ring this batch lies in (every slot): what a GPU runtime registers once as
    /// page-locked memory so that each batch can be copied to the device without staging.
    pub fn ring_memory(&self) -> &[u8] {
        self.ring.memory()
    }

    /// The ring's mapping itself, for a holder that must outlive every batch of it (one that
    /// registered the memory with a GPU runtime unregisters it before the last holder unmaps).
    pub fn ring(&self) -> Arc<RingView> {
        Arc::clone(&self.ring)
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // If the daemon is gone the release is moot: the next call reconnects. A poisoned lock
        // means another release panicked mid-write; the stream is then past saving anyway.
        if let Ok(mut stream) = self.releases.lock() {
            let _ = crate::wire::frame::write_frame(
                &mut *stream,
                &Request::Release { slot: self.slot },
            );
        }
    }
}

impl Client {
    /// Connects (waiting up to the reconnect timeout for a daemon to appear).
    pub fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        let mut client = Client {
            next: options.start,
            options,
            conn: None,
            fingerprint: String::new(),
            reconnects: 0,
            finished: false,
        };
        let conn = client.reconnect()?;
        client.fingerprint = conn.split.fingerprint.clone();
        client.conn = Some(conn);
        Ok(client)
    }

    /// Batches per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.conn.as_ref().map_or(0, |c| c.steps_per_epoch)
    }

    /// What the split holds: records, classes, label range (from the welcome).
    pub fn split(&self) -> Option<&SplitInfo> {
        self.conn.as_ref().map(|c| &c.split)
    }

    /// The ring's layout.
    pub fn layout(&self) -> Option<RingLayout> {
        self.conn.as_ref().map(|c| *c.ring.layout())
    }

    /// How many times the client had to reconnect.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// The position of the next batch.
    pub fn position(&self) -> Position {
        self.next
    }

    /// The next batch, or `None` once the requested epochs are done.
    pub fn next_batch(&mut self) -> Result<Option<Batch>, ClientError> {
        if self.finished {
            return Ok(None);
        }
        let (slot, position, count, replaced) = loop {
            let conn = match &mut self.conn {
                Some(c) => c,
                None => {
                    self.reconnects += 1;
                    let conn = self.reconnect()?;
                    // A daemon restarted on another pack (even of the same size) would serve
                    // other batches under the same positions: refuse, do not train on them.
                    if conn.split.fingerprint != self.fingerprint {
                        return Err(ClientError::DatasetChanged {
                            socket: self.options.socket.clone(),
                            was: self.fingerprint.clone(),
                            now: conn.split.fingerprint.clone(),
                        });
                    }
                    self.conn.insert(conn)
                }
            };
            match conn.frames.read(&mut conn.stream) {
                Ok(Reply::BatchReady {
                    slot,
                    position,
                    count,
                    replaced,
                }) => {
                    if position != self.next || conn.ring.slot(slot).is_none() {
                        return Err(ProtocolError::Malformed(format!(
                            "batch {position:?} in slot {slot}, expected {:?}",
                            self.next
                        ))
                        .into());
                    }
                    break (slot, position, count, replaced);
                }
                Ok(Reply::EndOfEpoch { .. } | Reply::Stats(_) | Reply::Split(_)) => {}
                Ok(Reply::Finished) => {
                    self.finished = true;
                    return Ok(None);
                }
                Ok(Reply::Error { message }) => {
                    return Err(ClientError::Refused {
                        socket: self.options.socket.clone(),
                        message,
                    });
                }
                Ok(Reply::Welcome { .. }) => {
                    return Err(ProtocolError::Malformed("a second welcome".into()).into());
                }
                // The daemon died or restarted: reconnect at `self.next`.
                Err(ProtocolError::Io(_)) => self.conn = None,
                Err(e) => return Err(e.into()),
            }
        };
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| ProtocolError::Malformed("connection lost".into()))?;
        let batch_size = conn.ring.layout().batch_size as usize;
        self.next = position.next(conn.steps_per_epoch);
        Ok(Some(Batch {
            ring: Arc::clone(&conn.ring),
            releases: Arc::clone(&conn.releases),
            slot,
            position,
            count: (count as usize).min(batch_size),
            replaced,
        }))
    }

    /// Tries to connect and open the stream at `self.next`, with backoff, until the timeout.
    fn reconnect(&self) -> Result<Connection, ClientError> {
        let o = &self.options;
        let t0 = Instant::now();
        let mut wait = Duration::from_millis(20);
        loop {
            match open(o, self.next) {
                Ok(c) => return Ok(c),
                Err(
                    e @ (ClientError::Protocol(ProtocolError::Io(_)) | ClientError::Timeout { .. }),
                ) => {
                    if t0.elapsed() >= o.reconnect_timeout {
                        return Err(ClientError::Unreachable {
                            socket: o.socket.clone(),
                            waited: t0.elapsed(),
                            last: e.to_string(),
                        });
                    }
                }
                Err(e) => return Err(e),
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }
}

/// Connects and exchanges preambles.
fn handshake(socket: &Path) -> Result<UnixStream, ClientError> {
    handshake_within(socket, HANDSHAKE_TIMEOUT)
}

/// [`handshake`], each step of it (connect, preamble, and until the caller clears the
/// timeouts, the replies) bounded by `timeout`.
fn handshake_within(socket: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let mut stream = connect_within(socket, timeout).map_err(|e| timed_out(e, socket, timeout))?;
    // The daemon sends its preamble first, even to a peer it then refuses and closes on: ours
    // may fail to go out while its preamble and error frame are there to read.
    let sent = stream.write_all(&protocol::preamble());
    let mut p = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut p)
        .map_err(|e| timed_out(sent.err().unwrap_or(e), socket, timeout))?;
    protocol::check_preamble(&p)?;
    Ok(stream)
}

/// An I/O error of a handshake step, as [`ClientError::Timeout`] where the step ran out of
/// time.
fn timed_out(e: std::io::Error, socket: &Path, timeout: Duration) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout {
            socket: socket.to_path_buf(),
            waited: timeout,
        },
        _ => ProtocolError::from(e).into(),
    }
}

/// A connection to `socket` whose connect, reads and writes give up after `timeout`: a
/// stopped daemon (its backlog full, or nobody reading) is an error, not a hang.
fn connect_within(socket: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
    let fd = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let tv = nix::sys::time::TimeVal::new(
        timeout.as_secs() as nix::sys::time::time_t,
        timeout.subsec_micros() as nix::sys::time::suseconds_t,
    );
    // Linux bounds a blocking connect to a full backlog by the send timeout.
    sock::setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    sock::setsockopt(&fd, sockopt::ReceiveTimeout, &tv)?;
    let addr = UnixAddr::new(socket)?;
    sock::connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// One connection attempt: handshake, hello, welcome with the ring's descriptor.
fn open(o: &ClientOptions, start: Position) -> Result<Connection, ClientError> {
    let mut stream = handshake(&o.socket)?;
    // As in `ask`: a refusal may already be waiting when the write fails.
    let sent = crate::wire::frame::write_frame(
        &mut stream,
        &Request::Hello {
            job_id: o.job_id.clone(),
            job: Box::new(o.job.clone()),
            start,
            epochs: o.epochs,
            slots: o.slots,
        },
    );
    let mut frames = FrameReader::default();
    let (reply, fd) = match read_with_fd(&mut stream, &mut frames) {
        Ok(read) => read,
        Err(ClientError::Protocol(ProtocolError::Io(e))) if sent.is_ok() => {
            return Err(timed_out(e, &o.socket, HANDSHAKE_TIMEOUT));
        }
        Err(e) => return Err(sent.err().map_or(e, ClientError::from)),
    };
    // Batches may take long to come (a slow producer, a group waiting for its ranks): the
    // stream itself has no timeout.
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(ProtocolError::from)?;
    match (reply, fd) {
        (
            Reply::Welcome {
                layout,
                steps_per_epoch,
                split,
            },
            Some(fd),
        ) => Ok(Connection {
            ring: Arc::new(RingView::attach(fd, layout)?),
            releases: Arc::new(Mutex::new(stream.try_clone().map_err(ProtocolError::from)?)),
            stream,
            frames,
            steps_per_epoch,
            split,
        }),
        (Reply::Error { message }, _) => Err(ClientError::Refused {
            socket: o.socket.clone(),
            message,
        }),
        (other, fd) => Err(ProtocolError::Malformed(format!(
            "expected a welcome with a descriptor, got {other:?} (descriptor: {})",
            fd.is_some()
        ))
        .into()),
    }
}

/// Reads one reply, taking the descriptor that rides on its first bytes: `recvmsg` brings in
/// the first bytes (the kernel ends that read with the message that carried the descriptor),
/// the frame codec the rest.
fn read_with_fd(
    stream: &mut UnixStream,
    frames: &mut FrameReader<Reply>,
) -> Result<(Reply, Option<OwnedFd>), ClientError> {
    let mut first = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut first)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| ProtocolError::Io(e.into()))?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| ProtocolError::Io(e.into()))? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just installed these descriptors in this process for
                // us; nothing else owns them.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Err(ProtocolError::Io(std::io::ErrorKind::UnexpectedEof.into()).into());
    }
    frames.buffer().extend_from_slice(&first[..got]);
    let reply = frames.read(stream)?;
    // Extra descriptors (there should be none) are closed on drop.
    Ok((reply, fds.into_iter().next()))
}

/// One request on a connection of its own, and the daemon's one reply (`stats`, `describe`).
fn ask(socket: &Path, request: &Request) -> Result<Reply, ClientError> {
    let mut stream = handshake(socket)?;
    // A daemon that refuses us may have closed already, its error frame waiting in our
    // receive buffer: a failed write is the error only if no reply can be read.
    let sent = crate::wire::frame::write_frame(&mut stream, request);
    let reply = match FrameReader::<Reply>::default().read(&mut stream) {
        Ok(reply) => reply,
        Err(ProtocolError::Io(e)) if sent.is_ok() => {
            return Err(timed_out(e, socket, HANDSHAKE_TIMEOUT));
        }
        Err(e) => return Err(sent.err().unwrap_or(e).into()),
    };
    let _ = crate::wire::frame::write_frame(&mut stream, &Request::Bye);
    match reply {
        Reply::Error { message } => Err(ClientError::Refused {
            socket: socket.to_path_buf(),
            message,
        }),
        reply => Ok(reply),
    }
}

/// Asks the daemon at `socket` for its statistics (`loader status`).
pub fn stats(socket: &Path) -> Result<Stats, ClientError> {
    match ask(socket, &Request::Stats)? {
        Reply::Stats(s) => Ok(s),
        other => Err(ProtocolError::Malformed(format!("expected stats, got {other:?}")).into()),
    }
}

/// Asks the daemon at `socket` what split `split` holds (records, classes, labels), without
/// opening a stream: a trainer checks its recipe against it before building a model.
pub fn describe(socket: &Path, split: &str) -> Result<SplitInfo, ClientError> {
    let request = Request::Describe {
        split: split.to_owned(),
    };
    match ask(socket, &request)? {
        Reply::Split(info) => Ok(info),
        other => Err(ProtocolError::Malformed(format!("expected a split, got {other:?}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_to_a_daemon_serving_another_pack_is_refused() {
        use crate::server::{LocalServer, ServeConfig};
        let dir = tempfile::tempdir().unwrap();
        // The same record count, other pixels.
        let first = crate::testutil::packed(&dir.path().join("a"), 2, 10, 24);
        let second = crate::testutil::packed(&dir.path().join("b"), 2, 10, 32);
        let socket = dir.path().join("loader.sock");
        let serve = |shards: &Path| {
            LocalServer::start(ServeConfig {
                shards: Some(shards.to_path_buf()),
                socket: Some(socket.clone()),
                workers: 1,
                ..ServeConfig::default()
            })
            .unwrap()
        };
        let daemon = serve(&first);
        let mut client = Client::connect(ClientOptions {
            socket: socket.clone(),
            job_id: "j".into(),
            job: JobSpec::single(
                "train",
                crate::request::transform::TransformSpec::preset("eval").unwrap(),
                0,
                4,
            ),
            start: Position::default(),
            epochs: None,
            slots: Some(2),
            reconnect_timeout: Duration::from_secs(20),
        })
        .unwrap();
        drop(client.next_batch().unwrap());
        drop(daemon);
        let _daemon = serve(&second);
        // Batches the first daemon announced before it stopped are still good to read; the
        // reconnect that follows them is refused.
        let e = (0..10)
            .find_map(|_| client.next_batch().err())
            .expect("refused");
        assert!(matches!(e, ClientError::DatasetChanged { .. }), "{e}");
    }

    #[test]
    fn a_daemon_that_never_answers_is_a_timeout_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("stopped.sock");
        // Bound and listening, never accepting: what a stopped daemon looks like.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let t0 = Instant::now();
        let e = handshake_within(&socket, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("did not answer within"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        // The reconnecting client gives up after its own timeout, naming the socket.
        let options = ClientOptions {
            socket: socket.clone(),
            job_id: "t".into(),
            job: JobSpec::single(
                "train",
                crate::request::transform::TransformSpec::preset("a3").unwrap(),
                0,
                8,
            ),
            start: Position::default(),
            epochs: None,
            slots: None,
            reconnect_timeout: Duration::from_millis(100),
        };
        let t0 = Instant::now();
        let e = Client::connect(options).err().unwrap();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(30));
    }
}
