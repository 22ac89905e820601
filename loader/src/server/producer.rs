/*!
Producers: the threads that fill rings, and the job groups they serve.

The ranks of one job that attach to this daemon (same job id, same job but for the rank, same
epochs) are served by one producer: at each step it fills the slot of every rank together, so
the copies of an image that timm's repeated augmentation sends to neighbouring ranks come from
one decode. The group starts when all `world_size` ranks are there, or `group_wait_s` after the
first one came (ranks on other machines never come); a client on its own is a group of one.
Which batches are filled together changes no byte of them (docs/design.md invariant 1).

A group lives as long as all its clients: when one leaves, the producer stops and the others'
connections close without an error, so that their clients reconnect, each asking for its next
batch, and form a new group (or go on alone).
*/

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shard_tool::Split;
use tokio::sync::mpsc;

use super::Shared;
use crate::batches::batch::STEPS_PER_FILL;
use crate::batches::stream::{BatchStream, Target, Written};
use crate::request::job::{JobPlan, Position};
use crate::wire::ring::{Ring, SlotMeta};

/// What the producer tells a connection.
pub(super) enum Event {
    /// A slot holds the batch at `position`.
    Ready {
        slot: u32,
        position: Position,
        count: u32,
        replaced: Vec<(u32, u32)>,
    },
    /// The last batch of this epoch has been announced.
    EndOfEpoch(u32),
    /// Every epoch asked for has been produced.
    Finished,
    /// A batch could not be made: the job ends with this message.
    Failed(String),
}

/// One client's part of a producer.
pub(super) struct Member {
    /// The connection's id (its line in `loader status`).
    pub id: u64,
    /// The peer's uid, whose share of the decode turns the producer takes.
    pub uid: u32,
    /// The job, for this client's rank.
    pub plan: JobPlan,
    /// First batch the client wants.
    pub start: Position,
    /// Its ring.
    pub ring: Ring,
    /// Slots the client has released.
    pub free: crossbeam_channel::Receiver<u32>,
    /// To the connection.
    pub events: mpsc::Sender<Event>,
}

/// Ranks of one job waiting for the others.
struct Pending {
    members: Vec<Member>,
    /// Tells this wait from a later one under the same key.
    generation: u64,
}

/// The job groups still gathering their ranks.
#[derive(Default)]
pub(super) struct Groups {
    pending: HashMap<String, Pending>,
    generation: u64,
}

/// The clients of one group share this key: their uid (a user cannot join, and stall, another
/// user's job), job id, job without the rank, epochs.
pub(super) fn group_key(uid: u32, job_id: &str, plan: &JobPlan, epochs: Option<u32>) -> String {
    let mut spec = plan.spec().clone();
    spec.rank = 0;
    let spec = serde_json::to_string(&spec).unwrap_or_default();
    format!("{uid}\u{0}{job_id}\u{0}{spec}\u{0}{epochs:?}")
}

/// Adds `member` to its job's group, and starts the group's producer once all `world_size`
/// ranks are there or `wait` after the first came. Must run inside the tokio runtime.
pub(super) fn join(
    shared: &Arc<Shared>,
    key: String,
    epochs: Option<u32>,
    member: Member,
    wait: Duration,
) {
    let spec = member.plan.spec();
    let (world_size, rank) = (spec.world_size as usize, spec.rank);
    if world_size <= 1 {
        start(shared, epochs, vec![member]);
        return;
    }
    let Ok(mut groups) = shared.groups.lock() else {
        // Dropping the member closes its connection; the client reconnects.
        return;
    };
    // The same rank again (its client reconnected while the group waited): the waiting ranks
    // go ahead without it, and it starts a new wait.
    let again = groups
        .pending
        .get(&key)
        .is_some_and(|p| p.members.iter().any(|m| m.plan.spec().rank == rank));
    if again && let Some(p) = groups.pending.remove(&key) {
        start(shared, epochs, p.members);
    }
    let first = !groups.pending.contains_key(&key);
    if first {
        groups.generation += 1;
    }
    let generation = groups.generation;
    let pending = groups.pending.entry(key.clone()).or_insert(Pending {
        members: Vec::new(),
        generation,
    });
    pending.members.push(member);
    if pending.members.len() >= world_size {
        if let Some(p) = groups.pending.remove(&key) {
            start(shared, epochs, p.members);
        }
    } else if first {
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let ready = shared.groups.lock().ok().and_then(|mut g| {
                let same = g
                    .pending
                    .get(&key)
                    .is_some_and(|p| p.generation == generation);
                if same { g.pending.remove(&key) } else { None }
            });
            if let Some(p) = ready {
                start(&shared, epochs, p.members);
            }
        });
    }
}

/// Starts the producer thread of `members` (clients already gone are left out).
fn start(shared: &Arc<Shared>, epochs: Option<u32>, mut members: Vec<Member>) {
    members.retain(|m| !m.events.is_closed());
    let Some(first) = members.first() else {
        return;
    };
    let n = members.len() as u32;
    let spec = first.plan.spec();
    let ranks: Vec<u32> = members.iter().map(|m| m.plan.spec().rank).collect();
    tracing::info!(
        "producer for ranks {ranks:?} of {} ({} {}): {} worker threads",
        spec.world_size,
        spec.split,
        spec.transform,
        shared.workers * n
    );
    for m in &members {
        shared.counters.update_client(m.id, |c| c.group = n);
    }
    let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
    // The members of a group share a uid (it is part of the group key).
    let tenant = shared.shares.tenant(first.id, first.uid);
    let producer = Producer {
        shared: Arc::clone(shared),
        members,
        epochs,
        tenant,
    };
    if let Err(e) = std::thread::Builder::new()
        .name(format!("producer-{}", ids.join("-")))
        .spawn(move || {
            let shared = Arc::clone(&producer.shared);
            producer.run();
            shared.trim.released();
        })
    {
        // The members went with the closure: their connections close, their clients retry.
        tracing::error!("starting a producer: {e}");
    }
}

/// Fills the rings of a group's clients, on its own thread (plus the stream's workers).
struct Producer {
    shared: Arc<Shared>,
    members: Vec<Member>,
    epochs: Option<u32>,
    /// Its claim on the daemon's decode turns.
    tenant: super::share::Tenant,
}

/// The steps of one fill: each with a slot of every client that wants it (`None` for the
/// others).
type Steps = Vec<(Position, Vec<Option<u32>>)>;

/// Why a producer stops before its last epoch.
enum Stop {
    /// Client `id` has gone: the group ends.
    Left(u64),
    /// The batches cannot be made; the members were told.
    Failed,
}

impl Producer {
    fn run(mut self) {
        let plans: Vec<JobPlan> = self.members.iter().map(|m| m.plan.clone()).collect();
        let Some(first) = plans.first() else {
            return;
        };
        // Its own handle on the dataset: the split borrows it while `self` changes.
        let shared = Arc::clone(&self.shared);
        let Ok(split) = shared.dataset.split(&first.spec().split) else {
            return;
        };
        let threads = shared.workers as usize * self.members.len();
        let mut stream = match BatchStream::new(plans, threads) {
            Ok(stream) => stream,
            Err(e) => {
                // Cannot happen for one group key; the members' connections close.
                tracing::error!("producer: {e}");
                return;
            }
        };
        let Some(mut at) = self.members.iter().map(|m| m.start).min() else {
            return;
        };
        let mut sequence = vec![0u64; self.members.len()];
        // Slots taken for a later step that not every client could match yet.
        let mut spare: Vec<Vec<u32>> = vec![Vec::new(); self.members.len()];
        loop {
            if self.epochs.is_some_and(|n| at.epoch >= n) {
                for m in &self.members {
                    let _ = m.events.blocking_send(Event::Finished);
                }
                return;
            }
            let steps = match self.steps(&stream, at, &mut spare) {
                Ok(steps) if steps.is_empty() => continue,
                Ok(steps) => steps,
                Err(id) => return self.left(id),
            };
            match self.fill(&mut stream, split, &steps, &mut sequence) {
                Ok(()) => at = stream.next(steps[steps.len() - 1].0),
                Err(Stop::Left(id)) => return self.left(id),
                Err(Stop::Failed) => return,
            }
        }
    }

    /// The steps of the next fill from `at`. The first step waits for a free slot from every
    /// client that wants it: backpressure stops the workers here. Later steps of the same
    /// epoch join the fill while their slots are free already. `Err(id)`: client `id` has
    /// gone, which ends the group.
    fn steps(
        &self,
        stream: &BatchStream,
        at: Position,
        spare: &mut [Vec<u32>],
    ) -> Result<Steps, u64> {
        let mut steps = Vec::new();
        for (k, position) in stream.run(at, STEPS_PER_FILL).into_iter().enumerate() {
            match self.take_slots(position, spare, k == 0)? {
                Some(slots) => steps.push((position, slots)),
                None => break,
            }
        }
        Ok(steps)
    }

    /// Fills `steps` into the members' slots, writes each slot's meta, and announces them.
    fn fill(
        &mut self,
        stream: &mut BatchStream,
        split: &Split,
        steps: &Steps,
        sequence: &mut [u64],
    ) -> Result<(), Stop> {
        // A client that leaves mid-fill stops the workers within an image, not after the
        // batches nobody will read.
        let watch: Vec<(u64, mpsc::Sender<Event>)> = self
            .members
            .iter()
            .map(|m| (m.id, m.events.clone()))
            .collect();
        // (step, member, slot) per target, and each slot's meta, in the targets' order.
        let mut written = Vec::new();
        let mut metas = Vec::new();
        let mut targets = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            let mine: Vec<(usize, u32)> = steps
                .iter()
                .enumerate()
                .filter_map(|(k, (_, slots))| slots[i].map(|slot| (k, slot)))
                .collect();
            let numbers: Vec<u32> = mine.iter().map(|&(_, slot)| slot).collect();
            for ((k, slot), s) in mine.into_iter().zip(m.ring.slots_mut(&numbers)) {
                written.push((k, i, slot));
                metas.push(s.meta);
                targets.push(Target {
                    rank: i,
                    at: steps[k].0,
                    images: s.images,
                    labels: s.labels,
                    ids: Some(s.ids),
                });
            }
        }
        let gone = || watch.iter().any(|(_, events)| events.is_closed());
        let in_flight = self
            .shared
            .counters
            .fill_begins(watch.iter().map(|(id, _)| *id).collect());
        let filled = stream.fill_or_stop(split, targets, &self.tenant.gate(&gone));
        drop(in_flight);
        if filled.stopped() {
            let id = watch.iter().find(|(_, e)| e.is_closed()).map(|(id, _)| *id);
            return Err(Stop::Left(id.unwrap_or_default()));
        }
        if filled.failed() {
            self.failed(split, steps[0].0);
            return Err(Stop::Failed);
        }
        // Counted as written, with the decodes, whatever happens to the announcements.
        self.shared.counters.add_fill(&filled.times);
        let mut done = Vec::with_capacity(written.len());
        for (((k, i, slot), meta), batch) in written.into_iter().zip(metas).zip(filled.batches) {
            let position = steps[k].0;
            *meta = SlotMeta::new(
                position.epoch,
                position.step,
                batch.count as u32,
                sequence[i],
            );
            sequence[i] += 1;
            done.push((k, i, slot, batch));
        }
        // Announced step by step, each step's ranks in order, as one step at a time would.
        done.sort_by_key(|d| (d.0, d.1));
        for (k, i, slot, batch) in done {
            self.announce(stream, i, slot, steps[k].0, batch)
                .map_err(Stop::Left)?;
        }
        Ok(())
    }

    /// Tells member `i` that `slot` holds the batch at `position` (and that its epoch ended,
    /// after its last batch); `Err(id)` when the member has gone.
    fn announce(
        &self,
        stream: &BatchStream,
        i: usize,
        slot: u32,
        position: Position,
        batch: Written,
    ) -> Result<(), u64> {
        let counters = &self.shared.counters;
        counters.add_decode_errors(batch.replaced.len() as u64);
        let next = stream.next(position);
        let m = &self.members[i];
        counters.update_client(m.id, |c| {
            c.next = next;
            c.samples += batch.count as u64;
        });
        let ready = Event::Ready {
            slot,
            position,
            count: batch.count as u32,
            replaced: batch.replaced,
        };
        let sent = m.events.blocking_send(ready).is_ok()
            && (next.epoch == position.epoch
                || m.events
                    .blocking_send(Event::EndOfEpoch(position.epoch))
                    .is_ok());
        if sent { Ok(()) } else { Err(m.id) }
    }

    /// No record of the split decodes for the batch at `at`: every member is told why.
    fn failed(&self, split: &Split, at: Position) {
        let message = format!(
            "no record of split {:?} decodes ({} tried) for the batch at epoch {} step {}; the \
             dataset is damaged: run `shard-tool verify` on it",
            split.name(),
            split.len(),
            at.epoch,
            at.step
        );
        tracing::error!("{message}");
        for m in &self.members {
            let _ = m.events.blocking_send(Event::Failed(message.clone()));
        }
    }

    /// A slot of every client that wants the batch at `at` (`None` for the others), taken
    /// from the spares first. Without `block`, `Ok(None)` when some client has no free slot
    /// now (slots taken meanwhile go to the spares); `Err(id)` when client `id` has gone.
    fn take_slots(
        &self,
        at: Position,
        spare: &mut [Vec<u32>],
        block: bool,
    ) -> Result<Option<Vec<Option<u32>>>, u64> {
        let mut slots: Vec<Option<u32>> = Vec::with_capacity(self.members.len());
        for (i, m) in self.members.iter().enumerate() {
            if m.start > at {
                slots.push(None);
                continue;
            }
            let slot = match spare[i].pop() {
                Some(slot) => slot,
                None if block => m.free.recv().map_err(|_| m.id)?,
                None => match m.free.try_recv() {
                    Ok(slot) => slot,
                    Err(crossbeam_channel::TryRecvError::Empty) => {
                        for (j, slot) in slots.iter().enumerate() {
                            if let Some(slot) = *slot {
                                spare[j].push(slot);
                            }
                        }
                        return Ok(None);
                    }
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(m.id),
                },
            };
            if m.events.is_closed() {
                return Err(m.id);
            }
            slots.push(Some(slot));
        }
        Ok(Some(slots))
    }

    /// Client `id` has gone: stop, which closes the other members' connections.
    fn left(self, id: u64) {
        if self.members.len() > 1 {
            tracing::info!(
                "client {id} left its group of {}; the others reconnect and regroup",
                self.members.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::request::job::{JobSpec, Position};
    use crate::request::transform::TransformSpec;
    use crate::server::{LocalServer, ServeConfig};
    use crate::wire::client::{self, Client, ClientOptions};

    fn shards(dir: &Path) -> std::path::PathBuf {
        // timm's repeated-augmentation sampler needs 256 records.
        crate::testutil::packed(dir, 3, 90, 32)
    }

    fn daemon(shards: &Path, group_wait_s: f64) -> LocalServer {
        LocalServer::start(ServeConfig {
            shards: Some(shards.to_path_buf()),
            workers: 1,
            group_wait_s,
            ..ServeConfig::default()
        })
        .unwrap()
    }

    fn a1_at_32px() -> TransformSpec {
        let Some(TransformSpec::Train(t)) = TransformSpec::preset("a1") else {
            panic!("a1 is a train transform")
        };
        TransformSpec::Train(crate::request::transform::TrainTransform { img_size: 32, ..t })
    }

    /// Ranks `ranks` of a 3-rank A1 job, each on its own thread from step 0: the bytes of its
    /// first 3 batches, per rank.
    fn fetch(server: &LocalServer, job_id: &str, ranks: &[u32]) -> Vec<Vec<Vec<u8>>> {
        let starts: Vec<(u32, u64)> = ranks.iter().map(|&r| (r, 0)).collect();
        fetch_from(server, job_id, &starts, 3)
    }

    /// As [`fetch`], each (rank, first step) of `starts`, up to step `end`, 4 slots.
    fn fetch_from(
        server: &LocalServer,
        job_id: &str,
        starts: &[(u32, u64)],
        end: u64,
    ) -> Vec<Vec<Vec<u8>>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = starts
                .iter()
                .map(|&(rank, step)| {
                    let socket = server.socket().to_path_buf();
                    scope.spawn(move || {
                        let mut client = Client::connect(ClientOptions {
                            socket,
                            job_id: job_id.to_string(),
                            job: JobSpec {
                                split: "train".into(),
                                transform: a1_at_32px(),
                                seed: 5,
                                world_size: 3,
                                rank,
                                batch_size: 6,
                            },
                            start: Position { epoch: 0, step },
                            epochs: None,
                            slots: Some(4),
                            reconnect_timeout: std::time::Duration::from_secs(10),
                        })
                        .unwrap();
                        (step..end)
                            .map(|_| {
                                let batch = client.next_batch().unwrap().unwrap();
                                let mut bytes = batch.images().to_vec();
                                bytes.extend(batch.labels().iter().flat_map(|l| l.to_le_bytes()));
                                bytes
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn a_batch_that_cannot_be_made_ends_the_job_with_an_error_not_stale_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let shards = shards(dir.path());
        crate::testutil::break_every_record(&shards);
        let server = daemon(&shards, 0.0);
        let mut client = Client::connect(ClientOptions {
            socket: server.socket().to_path_buf(),
            job_id: "broken".into(),
            job: JobSpec::single("train", a1_at_32px(), 5, 6),
            start: Position::default(),
            epochs: None,
            slots: Some(2),
            reconnect_timeout: std::time::Duration::from_secs(10),
        })
        .unwrap();
        let e = client.next_batch().err().expect("an error, not a batch");
        assert!(
            matches!(e, client::ClientError::Refused { .. }),
            "refused, so the client does not retry: {e}"
        );
        assert!(
            e.to_string()
                .contains("no record of split \"train\" decodes"),
            "{e}"
        );
        // The daemon serves on.
        client::stats(server.socket()).unwrap();
    }

    #[test]
    fn ranks_that_resume_at_different_steps_get_their_own_batches_from_one_group() {
        let dir = tempfile::tempdir().unwrap();
        let shards = shards(dir.path());
        let starts = [(0, 0), (1, 3), (2, 1)];
        // Every rank reads up to the same step, as trainers do: one that left early would
        // end the group, and the others would wait `group_wait_s` for it to come back.
        const END: u64 = 7;
        let solo = daemon(&shards, 0.0);
        let alone: Vec<Vec<Vec<u8>>> = starts
            .iter()
            .map(|&(rank, step)| fetch_from(&solo, &format!("solo-{rank}"), &[(rank, step)], END))
            .map(|mut b| b.remove(0))
            .collect();
        // One group from step 0; the producer fills several steps per call, rank 1's and
        // rank 2's slots only from their own first steps on.
        let shared = daemon(&shards, 30.0);
        assert_eq!(fetch_from(&shared, "job", &starts, END), alone);
        assert!(settled_stats(&shared).decoded < settled_stats(&solo).decoded);
    }

    /// Statistics once the producers have stopped (they finish the step they were in after
    /// their clients left).
    fn settled_stats(server: &LocalServer) -> crate::wire::protocol::Stats {
        let mut last = client::stats(server.socket()).unwrap();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let now = client::stats(server.socket()).unwrap();
            if (now.samples, now.decoded) == (last.samples, last.decoded) {
                return now;
            }
            last = now;
        }
    }

    #[test]
    fn the_ranks_of_a_job_share_decodes_and_get_the_bytes_they_would_get_alone() {
        let dir = tempfile::tempdir().unwrap();
        let shards = shards(dir.path());

        // Alone: each rank its own job (no wait), one decode per sample.
        let solo = daemon(&shards, 0.0);
        let alone: Vec<Vec<Vec<u8>>> = (0..3)
            .map(|rank| fetch(&solo, &format!("solo-{rank}"), &[rank]).remove(0))
            .collect();
        let s = settled_stats(&solo);
        assert!(s.samples >= 3 * 3 * 6, "{s:?}");
        assert_eq!(s.decoded, s.samples, "alone, every sample is decoded");

        // Together: one group, one decode for the 3 copies of each image.
        let shared = daemon(&shards, 30.0);
        let together = fetch(&shared, "job", &[0, 1, 2]);
        assert_eq!(
            together, alone,
            "batches differ when the ranks share decodes"
        );
        let s = settled_stats(&shared);
        assert!(s.samples >= 3 * 3 * 6, "{s:?}");
        assert_eq!(
            s.decoded * 3,
            s.samples,
            "{} decodes for {} samples",
            s.decoded,
            s.samples
        );
    }
}
