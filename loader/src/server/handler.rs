//! What the daemon does with one accepted connection, as mini-redis's `Handler`: the peer
//! check, the handshake (preambles, the first request), then a status connection answered, a
//! split described, or a client's [`Session`] served to its end.

use std::sync::Arc;

use tokio::net::UnixStream;
use tokio::net::unix::UCred;

use super::Shared;
use super::config::ServeConfig;
use super::connection::{Connection, Peer, Refusal};
use super::session::Session;
use crate::wire::protocol::{ProtocolError, Reply, Request};

/// Serves one accepted connection to its end.
pub(super) async fn serve(shared: Arc<Shared>, stream: UnixStream) {
    let id = shared.next_id();
    let (mut conn, peer) = Connection::new(stream);
    let refusal = match handshake(&shared, &mut conn, &peer, id).await {
        // The session has sent its own error frame, if any.
        Ok(Some(session)) => session.serve(&mut conn).await.err(),
        Ok(None) => None,
        Err(refusal) => {
            conn.refuse(&refusal).await;
            Some(refusal)
        }
    };
    shared.counters.remove_client(id);
    if let Some(refusal) = refusal {
        shared.counters.add_refused(refusal.reason());
        tracing::debug!("connection {id} ({peer:?}) refused: {refusal}");
    }
}

/// Refuses a connection accepted while every permit is taken: our preamble, so that the peer
/// can read the error frame, then the error.
pub(super) async fn refuse_busy(shared: Arc<Shared>, stream: UnixStream, refusal: Refusal) {
    let (mut conn, _) = Connection::new(stream);
    let timeout = shared.handshake_timeout();
    let _ = tokio::time::timeout(timeout, async {
        if conn.write_preamble().await.is_ok() {
            conn.refuse(&refusal).await;
        }
    })
    .await;
    shared.counters.add_refused(refusal.reason());
}

/// Checks the peer, exchanges preambles and reads the first message. Returns the session to
/// run, or `None` for a stats or describe connection that has been answered.
async fn handshake(
    shared: &Arc<Shared>,
    conn: &mut Connection,
    peer: &Peer,
    id: u64,
) -> Result<Option<Session>, Refusal> {
    let config = &shared.config;
    let timeout = shared.handshake_timeout();
    // Our preamble first, so that even a refused peer can read the error frame that follows.
    tokio::time::timeout(timeout, conn.write_preamble())
        .await
        .map_err(|_| Refusal::Timeout("the peer reading our preamble", timeout))??;
    let cred = peer.cred.ok_or(Refusal::NoCredentials)?;
    if !peer_allowed(config, cred.uid(), cred.gid(), peer.groups.as_deref()) {
        tracing::warn!(
            "refused pid {:?} uid {} gid {}: not in allow_uids {:?} or allow_gids {:?}",
            cred.pid(),
            cred.uid(),
            cred.gid(),
            config.allow_uids,
            config.allow_gids
        );
        return Err(Refusal::NotAllowed {
            uid: cred.uid(),
            gid: cred.gid(),
        });
    }
    let first = tokio::time::timeout(timeout, conn.read_preamble())
        .await
        .map_err(|_| Refusal::Timeout("no hello", timeout))??;
    let Some(first) = first else {
        return Ok(None);
    };
    match first {
        Request::Stats => status(shared, conn, cred).await.map(|()| None),
        Request::Hello {
            job_id,
            job,
            start,
            epochs,
            slots,
        } => {
            // Making the ring allocates its pages (gigabytes for large batches): off the async
            // runtime, so that the daemon's other connections are answered meanwhile.
            let opener = Arc::clone(shared);
            let mut session = tokio::task::spawn_blocking(move || {
                Session::open(&opener, id, cred, job_id, *job, start, epochs, slots)
            })
            .await
            .map_err(|_| Refusal::Internal("opening the session failed"))??;
            session.welcome(conn).await?;
            Ok(Some(session))
        }
        Request::Describe { split } => {
            let info = shared.splits.get(&split).ok_or_else(|| Refusal::NoSplit {
                split,
                have: shared.split_names(),
            })?;
            conn.write(&Reply::Split(info.clone())).await?;
            Ok(None)
        }
        Request::Bye => Ok(None),
        other => Err(Refusal::out_of_order(&other, "hello")),
    }
}

/// A status connection: stats answered until bye or close.
async fn status(shared: &Arc<Shared>, conn: &mut Connection, cred: UCred) -> Result<(), Refusal> {
    let mut request = Request::Stats;
    loop {
        match request {
            Request::Stats => {
                conn.write(&Reply::Stats(shared.stats_for(cred.uid())))
                    .await?
            }
            Request::Bye => return Ok(()),
            other => return Err(Refusal::out_of_order(&other, "a status connection")),
        }
        let idle = shared.idle_timeout();
        request = match tokio::time::timeout(idle, conn.read()).await {
            Err(_) => return Err(Refusal::Timeout("no request on a status connection", idle)),
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None) | Err(ProtocolError::Io(_))) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
        };
    }
}

/// Whether the peer's uid, primary gid or one of its supplementary groups is allowed.
fn peer_allowed(config: &ServeConfig, uid: u32, gid: u32, groups: Option<&[u32]>) -> bool {
    if config.allow_uids.contains(&uid) || config.allow_gids.contains(&gid) {
        return true;
    }
    // SO_PEERCRED carries only the primary group; trainers are often in `rsb` as a
    // supplementary group. The process's own groups (SO_PEERGROUPS) decide: a user removed
    // from the group in /etc/group but whose process still holds it is still in it, as for
    // files, and one added after logging in is not yet.
    if let Some(groups) = groups {
        return groups.iter().any(|g| config.allow_gids.contains(g));
    }
    // Kernels before 4.13: the user database is the best there is.
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid).is_ok_and(|groups| {
        groups
            .iter()
            .any(|g| config.allow_gids.contains(&g.as_raw()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_supplementary_group_admits_only_when_the_process_holds_it() {
        let config = ServeConfig {
            allow_gids: vec![4242],
            ..ServeConfig::default()
        };
        let (uid, gid) = (5000, 5000);
        assert!(peer_allowed(&config, uid, gid, Some(&[7, 4242])));
        assert!(!peer_allowed(&config, uid, gid, Some(&[7])));
        assert!(peer_allowed(&config, uid, 4242, Some(&[])));
        let by_uid = ServeConfig {
            allow_uids: vec![uid],
            ..ServeConfig::default()
        };
        assert!(peer_allowed(&by_uid, uid, gid, Some(&[])));
    }
}
