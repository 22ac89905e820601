//! One client's stream: its job checked and planned, its ring made, the welcome, and the relay
//! between its producer and its connection (batches out, releases in).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::UCred;
use tokio::sync::mpsc;

use super::Shared;
use super::connection::{Connection, Refusal};
use super::producer::{self, Event, Member};
use crate::job::{JobError, JobPlan, JobSpec, MAX_EPOCHS, Position};
use crate::protocol::{ClientStats, ProtocolError, Reply, Request, SplitInfo};
use crate::ring::{Ring, RingLayout};

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
        // This user's share of the rate at which rings are made, then one ring at a time.
        std::thread::sleep(shared.ring_wait(cred.uid(), layout.total_bytes())?);
        let ring = {
            let _one = shared
                .ring_builds
                .lock()
                .map_err(|_| Refusal::Internal("ring builds poisoned"))?;
            Ring::create(layout, config.max_ring_bytes)?
        };
        shared.counters.add_client(
            id,
            ClientStats {
                job_id: job_id.chars().take(128).collect(),
                rank: job.rank,
                pid: cred.pid().unwrap_or(0),
                uid: cred.uid(),
                next: start,
                slots_full: 0,
                slots,
                samples: 0,
                group: 0,
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
            slots,
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
            plan: self.plan.clone(),
            start: self.start,
            ring,
            free: free_rx,
            events: event_tx,
        };
        let key = producer::group_key(self.uid, &self.job_id, &self.plan, self.epochs);
        let wait = Duration::from_secs_f64(self.shared.config.group_wait_s.max(0.0));
        producer::join(&self.shared, key, self.epochs, member, wait);

        let counters = &self.shared.counters;
        let mut held = vec![false; slots as usize];
        let mut finished = false;
        let stall = self.shared.stall_timeout();
        // Since when the client has held every slot and released none.
        let mut stalled_since: Option<tokio::time::Instant> = None;
        let result = loop {
            let deadline = stalled_since.map(|t| t + stall);
            tokio::select! {
                () = sleep_until_some(deadline) => {
                    // No error frame: the client library reconnects on a closed stream and asks
                    // for its next batch, so a slow trainer only pays a reconnect.
                    tracing::info!(
                        "client {}: held all {slots} slots for {stall:?} without releasing one; \
                         closing its stream (stall_timeout_s)",
                        self.id
                    );
                    break Ok(());
                }
                event = events.recv() => match event {
                    Some(Event::Ready { slot, position, count, replaced }) => {
                        held[slot as usize] = true;
                        if stalled_since.is_none() && held.iter().all(|h| *h) {
                            stalled_since = Some(tokio::time::Instant::now());
                        }
                        let full = held.iter().filter(|h| **h).count() as u32;
                        counters.update_client(self.id, |c| c.slots_full = full);
                        let r = Reply::BatchReady { slot, position, count, replaced };
                        if let Err(e) = conn.write(&r).await { break Err(e.into()); }
                    }
                    Some(Event::EndOfEpoch(epoch)) => {
                        if let Err(e) = conn.write(&Reply::EndOfEpoch { epoch }).await {
                            break Err(e.into());
                        }
                    }
                    Some(Event::Finished) => {
                        finished = true;
                        if let Err(e) = conn.write(&Reply::Finished).await { break Err(e.into()); }
                    }
                    Some(Event::Failed(message)) => break Err(Refusal::Failed(message)),
                    // After `finished` the producer has nothing more to do: a normal end.
                    None if finished => break Ok(()),
                    // Another client of its group left: close without an error, so that this
                    // client reconnects at its next batch and a new group forms.
                    None => {
                        tracing::info!("client {}: its group ended; closing so it reconnects", self.id);
                        break Ok(());
                    }
                },
                // Cancel-safe: a partial frame stays in the codec's buffer.
                request = conn.read() => match request {
                    Ok(Some(Request::Release { slot })) => {
                        match held.get_mut(slot as usize) {
                            Some(h) if *h => {
                                *h = false;
                                stalled_since = None;
                                let full = held.iter().filter(|h| **h).count() as u32;
                                counters.update_client(self.id, |c| c.slots_full = full);
                                // The producer may have ended (finished); nothing waits then.
                                let _ = free_tx.send(slot);
                            }
                            _ => break Err(Refusal::NotHeld(slot)),
                        }
                    }
                    Ok(Some(Request::Stats)) => {
                        let stats = self.shared.stats_for(self.uid);
                        if let Err(e) = conn.write(&Reply::Stats(stats)).await {
                            break Err(e.into());
                        }
                    }
                    Ok(Some(Request::Bye)) => break Ok(()),
                    Ok(Some(other)) => {
                        break Err(Refusal::out_of_order(&other, "release, stats or bye"))
                    }
                    // The client went away (a restart, or done): not an error.
                    Err(ProtocolError::Io(_)) | Ok(None) => break Ok(()),
                    Err(e) => break Err(e.into()),
                },
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

/// Waits until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
