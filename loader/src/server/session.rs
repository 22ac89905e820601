//! One client's stream: its job checked and planned, its ring made, the welcome, and the relay
//! between its producer and its connection (batches out, releases in).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::UCred;
use tokio::sync::mpsc;

use super::Shared;
use super::connection::{Connection, Refusal};
use super::producer::{self, Event, Member};
use crate::request::job::{JobError, JobPlan, JobSpec, MAX_EPOCHS, Position};
use crate::wire::protocol::{ClientStats, ProtocolError, Reply, Request, SplitInfo};
use crate::wire::ring::{Ring, RingLayout};

/// One client's stream of batches.
pub(super) struct Session {
    shared: Arc<Shared>,
    id: u64,
    /// The peer's uid: only its own jobs' groups can it join.
    uid: u32,
    job_id: String,
    plan: JobPlan,
    layout: RingLayout,
    split: SplitInfo,
    start: Position,
    epochs: Option<u32>,
    ring: Option<Ring>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        shared: &Arc<Shared>,
        id: u64,
        cred: UCred,
        job_id: String,
        job: JobSpec,
        start: Position,
        epochs: Option<u32>,
        slots: Option<u32>,
    ) -> Result<Session, Refusal> {
        crate::wire::protocol::check_job_id(&job_id).map_err(Refusal::JobId)?;
        let (split, plan, layout) = check(shared, &job, start, epochs, slots)?;
        // This user's share of the rate at which rings are made, then one ring at a time.
        std::thread::sleep(shared.ring_wait(cred.uid(), layout.total_bytes())?);
        let ring = {
            let _one = shared
                .ring_builds
                .lock()
                .map_err(|_| Refusal::Internal("ring builds poisoned"))?;
            Ring::create(layout, shared.config.max_ring_bytes)?
        };
        // Given back when the session drops.
        shared
            .counters
            .ring_bytes
            .inc_by(bytes_gauge(layout.total_bytes()));
        shared.counters.add_client(
            id,
            ClientStats {
                job_id: job_id.clone(),
                rank: job.rank,
                pid: cred.pid().unwrap_or(0),
                uid: cred.uid(),
                next: start,
                slots_full: 0,
                slots: layout.slots,
                samples: 0,
                group: 0,
                waits: 0,
            },
        );
        tracing::info!(
            "client {id}: job {job_id:?} rank {}/{} {} {} batch {} from epoch {} step {}, {} \
             slots ({} MB)",
            job.rank,
            job.world_size,
            job.split,
            job.transform,
            job.batch_size,
            start.epoch,
            start.step,
            layout.slots,
            layout.total_bytes() >> 20
        );
        Ok(Session {
            shared: Arc::clone(shared),
            id,
            uid: cred.uid(),
            job_id,
            plan,
            layout,
            split,
            start,
            epochs,
            ring: Some(ring),
        })
    }

    /// Sends the welcome, with the ring's descriptor.
    pub(super) async fn welcome(&mut self, conn: &mut Connection) -> Result<(), Refusal> {
        let reply = Reply::Welcome {
            layout: self.layout,
            steps_per_epoch: self.plan.steps_per_epoch(),
            split: self.split.clone(),
        };
        let ring = self
            .ring
            .as_ref()
            .ok_or(Refusal::Internal("ring already handed over"))?;
        conn.write_with_fd(&reply, ring.fd()).await?;
        Ok(())
    }

    /// Runs the producer and relays its batches until the client leaves or misbehaves.
    pub(super) async fn serve(mut self, conn: &mut Connection) -> Result<(), Refusal> {
        let slots = self.layout.slots;
        let (free_tx, free_rx) = crossbeam_channel::bounded::<u32>(slots as usize);
        for s in 0..slots {
            // Cannot fail: the channel holds exactly `slots`.
            let _ = free_tx.send(s);
        }
        let (event_tx, mut events) = mpsc::channel::<Event>(slots as usize + 2);
        let ring = self
            .ring
            .take()
            .ok_or(Refusal::Internal("ring already handed over"))?;
        let member = Member {
            id: self.id,
            uid: self.uid,
            plan: self.plan.clone(),
            start: self.start,
            ring,
            free: free_rx,
            events: event_tx,
        };
        let key = producer::group_key(self.uid, &self.job_id, &self.plan, self.epochs);
        let wait = Duration::from_secs_f64(self.shared.config.group_wait_s.max(0.0));
        producer::join(&self.shared, key, self.epochs, member, wait);

        let mut relay = Relay {
            session: &self,
            held: vec![false; slots as usize],
            finished: false,
            stalled_since: None,
            free: free_tx,
        };
        let stall = self.shared.stall_timeout();
        let result = loop {
            let deadline = relay.stalled_since.map(|t| t + stall);
            let flow = tokio::select! {
                () = sleep_until_some(deadline) => {
                    // No error frame: the client library reconnects on a closed stream and asks
                    // for its next batch, so a slow trainer only pays a reconnect.
                    tracing::info!(
                        "client {}: held all {slots} slots for {stall:?} without releasing one; \
                         closing its stream (stall_timeout_s)",
                        self.id
                    );
                    self.shared.counters.stall_closes.inc();
                    ControlFlow::Break(Ok(()))
                }
                event = events.recv() => relay.event(event, conn).await,
                // Cancel-safe: a partial frame stays in the codec's buffer.
                request = conn.read() => relay.request(request, conn).await,
            };
            if let ControlFlow::Break(result) = flow {
                break result;
            }
        };
        if let Err(refusal) = &result {
            conn.refuse(refusal).await;
        }
        // Dropping the channels stops the producer after its current batch.
        tracing::info!("client {} closed", self.id);
        result
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Its ring and buffers go now: the heap they leave is given back (`server::trim`).
        self.shared.trim.released();
        self.shared
            .counters
            .ring_bytes
            .dec_by(bytes_gauge(self.layout.total_bytes()));
    }
}

/// Checks a hello against the daemon's splits and limits, before anything is allocated: the
/// split, the job's plan and the ring it needs.
fn check(
    shared: &Shared,
    job: &JobSpec,
    start: Position,
    epochs: Option<u32>,
    slots: Option<u32>,
) -> Result<(SplitInfo, JobPlan, RingLayout), Refusal> {
    let config = &shared.config;
    // The same check the client ran, before anything is looked up or allocated. (The
    // connection already holds one of the `max_clients` permits, taken at accept.)
    job.validate().map_err(JobError::from)?;
    let split = shared
        .splits
        .get(&job.split)
        .cloned()
        .ok_or_else(|| Refusal::NoSplit {
            split: job.split.clone(),
            have: shared.split_names(),
        })?;
    let plan = job.plan(split.records)?;
    let last = epochs.unwrap_or(MAX_EPOCHS).min(MAX_EPOCHS);
    if start.epoch >= last {
        return Err(Refusal::StartPastEnd {
            epoch: start.epoch,
            epochs: last,
        });
    }
    if start.step >= plan.steps_per_epoch() {
        return Err(Refusal::StartPastEpoch {
            step: start.step,
            steps: plan.steps_per_epoch(),
        });
    }
    let slots = slots.unwrap_or(config.slots);
    if slots == 0 || slots > config.max_slots {
        return Err(Refusal::Slots {
            asked: slots,
            max: config.max_slots,
        });
    }
    let side = plan.transform().img_size();
    let layout = RingLayout {
        slots,
        batch_size: job.batch_size,
        height: side,
        width: side,
        channels: 3,
    };
    layout.check(config.max_ring_bytes)?;
    Ok((split, plan, layout))
}

/// What happens next in a relay: go on, or end the session with this result.
type Flow = ControlFlow<Result<(), Refusal>>;

/// A session's relay between its producer and its connection: which slots the client holds.
struct Relay<'a> {
    session: &'a Session,
    held: Vec<bool>,
    finished: bool,
    /// Since when the client has held every slot and released none.
    stalled_since: Option<tokio::time::Instant>,
    /// Slots back to the producer.
    free: crossbeam_channel::Sender<u32>,
}

impl Relay<'_> {
    /// The producer's `event` to the client.
    async fn event(&mut self, event: Option<Event>, conn: &mut Connection) -> Flow {
        let reply = match event {
            Some(Event::Ready {
                slot,
                position,
                count,
                replaced,
            }) => {
                // A batch that arrives while the client holds none: it had read everything
                // and was (or soon would be) waiting for the loader.
                if !self.held.iter().any(|h| *h) {
                    self.session
                        .shared
                        .counters
                        .update_client(self.session.id, |c| c.waits += 1);
                }
                self.held[slot as usize] = true;
                if self.stalled_since.is_none() && self.held.iter().all(|h| *h) {
                    self.stalled_since = Some(tokio::time::Instant::now());
                }
                self.count_full();
                Reply::BatchReady {
                    slot,
                    position,
                    count,
                    replaced,
                }
            }
            Some(Event::EndOfEpoch(epoch)) => Reply::EndOfEpoch { epoch },
            Some(Event::Finished) => {
                self.finished = true;
                Reply::Finished
            }
            Some(Event::Failed(message)) => {
                return ControlFlow::Break(Err(Refusal::Failed(message)));
            }
            // After `finished` the producer has nothing more to do: a normal end.
            None if self.finished => return ControlFlow::Break(Ok(())),
            // Another client of its group left: close without an error, so that this client
            // reconnects at its next batch and a new group forms.
            None => {
                tracing::info!(
                    "client {}: its group ended; closing so it reconnects",
                    self.session.id
                );
                return ControlFlow::Break(Ok(()));
            }
        };
        match conn.write(&reply).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(Err(e.into())),
        }
    }

    /// The client's `request`.
    async fn request(
        &mut self,
        request: Result<Option<Request>, ProtocolError>,
        conn: &mut Connection,
    ) -> Flow {
        match request {
            Ok(Some(Request::Release { slot })) => match self.held.get_mut(slot as usize) {
                Some(h) if *h => {
                    *h = false;
                    self.stalled_since = None;
                    self.count_full();
                    // The producer may have ended (finished); nothing waits then.
                    let _ = self.free.send(slot);
                    ControlFlow::Continue(())
                }
                _ => ControlFlow::Break(Err(Refusal::NotHeld(slot))),
            },
            Ok(Some(Request::Stats)) => {
                let stats = self.session.shared.stats_for(self.session.uid);
                match conn.write(&Reply::Stats(stats)).await {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(e) => ControlFlow::Break(Err(e.into())),
                }
            }
            Ok(Some(Request::Bye)) => ControlFlow::Break(Ok(())),
            Ok(Some(other)) => {
                ControlFlow::Break(Err(Refusal::out_of_order(&other, "release, stats or bye")))
            }
            // The client went away (a restart, or done): not an error.
            Err(ProtocolError::Io(_)) | Ok(None) => ControlFlow::Break(Ok(())),
            Err(e) => ControlFlow::Break(Err(e.into())),
        }
    }

    /// `loader status`'s count of the slots the client holds.
    fn count_full(&self) {
        let full = self.held.iter().filter(|h| **h).count() as u32;
        self.session
            .shared
            .counters
            .update_client(self.session.id, |c| c.slots_full = full);
    }
}

/// Ring bytes as the gauge's integer (a ring is at most `max_ring_bytes`, 1 TiB).
fn bytes_gauge(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
