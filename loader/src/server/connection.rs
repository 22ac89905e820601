//! One accepted connection: its frames (the shared [`FrameCodec`]), who the peer is, and the
//! typed refusals the daemon sends as `error` frames. What the daemon does with a connection
//! is the handler's ([`super::handler`]).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf, UCred};
use tokio_util::codec::FramedRead;

use crate::request::job::JobError;
use crate::wire::frame::{FrameCodec, encode};
use crate::wire::protocol::{self, ProtocolError, Reply, Request};
use crate::wire::ring::RingError;

/// Why the daemon closed a connection; sent to the peer as an `error` frame.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// The socket failed, or the peer sent something that is not a message.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The peer was too slow.
    #[error("{0} within {1:?}")]
    Timeout(&'static str, Duration),
    /// The kernel gave no credentials.
    #[error("peer credentials unavailable")]
    NoCredentials,
    /// The peer's uid and groups are not allowed.
    #[error(
        "uid {uid} / gid {gid} is not allowed by this loader (allow_uids, allow_gids in its \
         config)"
    )]
    NotAllowed {
        /// The peer's uid.
        uid: u32,
        /// Its primary gid.
        gid: u32,
    },
    /// Every connection permit is taken.
    #[error("the loader serves its maximum of {0} connections (max_clients); try again later")]
    Busy(u32),
    /// The peer's user has its share of connections.
    #[error(
        "uid {uid} has its maximum of {max} connections to this loader (max_clients_per_uid); \
         close some or try again later"
    )]
    UserBusy {
        /// The peer's uid.
        uid: u32,
        /// `max_clients_per_uid`.
        max: u32,
    },
    /// The user makes rings faster than `ring_bytes_per_s_per_uid` allows, by more than a
    /// few seconds' worth.
    #[error(
        "uid {uid} is allocating rings faster than this loader allows ({rate} bytes/s, \
         ring_bytes_per_s_per_uid); try again in a few seconds"
    )]
    RingRate {
        /// The peer's uid.
        uid: u32,
        /// `ring_bytes_per_s_per_uid`.
        rate: u64,
    },
    /// The user starts clients faster than `clients_per_s_per_uid` allows, by more than a
    /// few seconds' worth.
    #[error(
        "uid {uid} is starting clients faster than this loader allows ({rate} per second, \
         clients_per_s_per_uid); try again in a few seconds"
    )]
    ClientRate {
        /// The peer's uid.
        uid: u32,
        /// `clients_per_s_per_uid`.
        rate: u32,
    },
    /// The job is invalid or does not fit its split.
    #[error("job: {0}")]
    Job(#[from] JobError),
    /// The hello's job id is not one the daemon takes ([`protocol::check_job_id`]).
    #[error("{0}")]
    JobId(String),
    /// The split does not exist.
    #[error("no split {split:?} in this dataset (it has {have})")]
    NoSplit {
        /// The split asked for.
        split: String,
        /// The dataset's splits.
        have: String,
    },
    /// The start is at or past the job's last epoch.
    #[error("start epoch {epoch} is not below the job's {epochs} epochs")]
    StartPastEnd {
        /// The epoch asked.
        epoch: u32,
        /// Epochs of the job (or the loader's maximum).
        epochs: u32,
    },
    /// The start is past the epoch.
    #[error("start step {step} is past the epoch's {steps} steps")]
    StartPastEpoch {
        /// The step asked.
        step: u64,
        /// Steps per epoch.
        steps: u64,
    },
    /// Too many or no slots.
    #[error("{asked} slots asked, this loader allows 1 to {max}")]
    Slots {
        /// Slots asked.
        asked: u32,
        /// `max_slots`.
        max: u32,
    },
    /// The ring could not be made.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// A message out of turn.
    #[error("out-of-order message {got} (expected {expected})")]
    OutOfOrder {
        /// What came.
        got: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// A release of a slot the client does not hold.
    #[error("release of slot {0}, which the client does not hold")]
    NotHeld(u32),
    /// The job's producer could not make a batch; the job ends (the client must not retry).
    #[error("{0}")]
    Failed(String),
    /// A broken invariant of the daemon itself.
    #[error("internal: {0}")]
    Internal(&'static str),
}

impl Refusal {
    /// Its name, for the `reason` label of `loader_refused_total`: few values, whatever the
    /// peer sent.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Refusal::Protocol(_) => "protocol",
            Refusal::Timeout(..) => "timeout",
            Refusal::NoCredentials => "no_credentials",
            Refusal::NotAllowed { .. } => "not_allowed",
            Refusal::Busy(_) => "busy",
            Refusal::UserBusy { .. } => "user_busy",
            Refusal::RingRate { .. } => "ring_rate",
            Refusal::ClientRate { .. } => "client_rate",
            Refusal::Job(_) => "job",
            Refusal::JobId(_) => "job_id",
            Refusal::NoSplit { .. } => "no_split",
            Refusal::StartPastEnd { .. } | Refusal::StartPastEpoch { .. } => "start",
            Refusal::Slots { .. } => "slots",
            Refusal::Ring(_) => "ring",
            Refusal::OutOfOrder { .. } => "out_of_order",
            Refusal::NotHeld(_) => "not_held",
            Refusal::Failed(_) => "failed",
            Refusal::Internal(_) => "internal",
        }
    }

    /// `got` where `expected` was due.
    pub(super) fn out_of_order(got: &Request, expected: &'static str) -> Refusal {
        let got = match got {
            Request::Hello { .. } => "hello",
            Request::Release { .. } => "release",
            Request::Stats => "stats",
            Request::Describe { .. } => "describe",
            Request::Bye => "bye",
        };
        Refusal::OutOfOrder { got, expected }
    }
}

/// A connection's two halves: requests in through the frame codec, replies out.
pub(super) struct Connection {
    requests: FramedRead<OwnedReadHalf, FrameCodec<Request>>,
    replies: OwnedWriteHalf,
}

impl Connection {
    /// The connection over `stream`, and its peer.
    pub(super) fn new(stream: UnixStream) -> (Connection, Peer) {
        let peer = Peer {
            cred: stream.peer_cred().ok(),
            groups: peer_groups(&stream),
        };
        let (rd, wr) = stream.into_split();
        let conn = Connection {
            requests: FramedRead::new(rd, FrameCodec::default()),
            replies: wr,
        };
        (conn, peer)
    }

    /// Sends our preamble (magic and version), before any frame.
    pub(super) async fn write_preamble(&mut self) -> Result<(), ProtocolError> {
        self.replies.write_all(&protocol::preamble()).await?;
        Ok(())
    }

    /// Reads and checks the peer's preamble, then its first request.
    pub(super) async fn read_preamble(&mut self) -> Result<Option<Request>, ProtocolError> {
        let mut p = [0u8; 12];
        // Nothing is buffered before the preamble: read it from the socket itself.
        self.requests.get_mut().read_exact(&mut p).await?;
        protocol::check_preamble(&p)?;
        self.read().await
    }

    /// The next request; `None` when the peer closed between frames. Cancel-safe (the codec
    /// keeps a partial frame for the next call), so it can wait inside `select!`.
    pub(super) async fn read(&mut self) -> Result<Option<Request>, ProtocolError> {
        self.requests.next().await.transpose()
    }

    /// Sends `reply`.
    pub(super) async fn write(&mut self, reply: &Reply) -> Result<(), ProtocolError> {
        self.replies.write_all(&encode(reply)).await?;
        Ok(())
    }

    /// Sends `reply` with `fd` as SCM_RIGHTS on its first byte (the welcome and its ring).
    pub(super) async fn write_with_fd(
        &mut self,
        reply: &Reply,
        fd: BorrowedFd<'_>,
    ) -> Result<(), ProtocolError> {
        let frame = encode(reply);
        let stream: &UnixStream = self.replies.as_ref();
        let raw = stream.as_raw_fd();
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                let fds = [fd.as_raw_fd()];
                let cmsgs = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(
                    raw,
                    &[IoSlice::new(&frame)],
                    &cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            })
            .await?;
        self.replies.write_all(&frame[sent..]).await?;
        Ok(())
    }

    /// Sends `refusal` as an error frame; the peer may be gone already, which changes nothing.
    pub(super) async fn refuse(&mut self, refusal: &Refusal) {
        let _ = self
            .write(&Reply::Error {
                message: refusal.to_string(),
            })
            .await;
    }
}

/// Who is at the other end of a connection, as the kernel says.
#[derive(Debug)]
pub(super) struct Peer {
    /// SO_PEERCRED: pid, uid and primary gid.
    pub(super) cred: Option<UCred>,
    /// SO_PEERGROUPS: the peer process's supplementary groups (`None` before Linux 4.13).
    pub(super) groups: Option<Vec<u32>>,
}

/// `SO_PEERGROUPS` (asm-generic value, as on x86-64 and aarch64; libc does not export it).
const SO_PEERGROUPS: libc::c_int = 59;

/// The supplementary groups of the process at the other end of `stream`, as the kernel
/// recorded them at connect: what the process holds, not what the user database says now.
fn peer_groups(stream: &UnixStream) -> Option<Vec<u32>> {
    use std::os::fd::AsRawFd;
    // NGROUPS_MAX is 65536; start small and grow once if the kernel says it needs more.
    let mut groups = vec![0 as libc::gid_t; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for `len` bytes and outlives the call; the kernel writes at
        // most `len` bytes and sets `len` to what it wrote (or needs, with ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Some(groups);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            return None;
        }
        groups.resize(n.max(groups.len() + 1), 0);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_peers_groups_are_those_its_process_holds() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut theirs = peer_groups(&a).expect("SO_PEERGROUPS (Linux 4.13+)");
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
    }
}
