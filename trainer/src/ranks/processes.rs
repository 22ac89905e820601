//! The recipe's ranks over several processes (and nodes), joined by collectives.
//!
//! `mpirun -np P trainer train --world-size W` runs `W / P` ranks in each process: process `p`
//! holds ranks `p·k .. (p+1)·k` with `k = W / P` ([`ProcessPlacement`]), as virtual ranks or on
//! its `--devices`, so every rank reads the loader stream, the Mixup/CutMix seed (`seed +
//! rank`) and the drop-path keys it reads in one process. After each step's backward passes, a
//! process's summed gradients are added to the other processes' (`all_reduce_grads`: one
//! contiguous f32 buffer, summed in buckets of [`BUCKET`] values), and every process takes the
//! same LAMB step with the same sum, as DDP's all-reduce gives every rank. BN statistics are
//! averaged over all ranks at each epoch end, the loss over all ranks for the log.
//!
//! [`Processes`] is what the run needs of the processes: who it is, how many there are, a sum
//! and a gather. Three kinds: [`Alone`] (one process, the default), [`ThreadGroup`] (processes
//! as threads of one process: how the tests check the orchestration without a launcher), and,
//! with the `mpi` feature, MPI ([`launched`] joins the processes `mpirun` or `srun` started).
//! On GPUs the sum goes through host memory: the gradients are read back, summed by MPI and
//! uploaded again (a CUDA-aware MPI is not used).

use std::fmt;
use std::ops::Range;
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::model::Network;

/// How long a process waits for the others in an exchange by default (`trainer train
/// --peer-timeout`): ten minutes, beyond any step, the first (with its kernel compilation)
/// included.
pub const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Values summed per collective call: 16 M f32 (64 MiB), large enough that the call's latency
/// is nothing next to its bytes, small enough that the receive buffer stays modest.
pub const BUCKET: usize = 16 << 20;

/// Errors of the processes of a run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The process count does not divide the rank count.
    #[error(
        "{processes} processes cannot share {world} ranks evenly (rsb.world_size or \
         --world-size): start a process count that divides {world} (mpirun -np {suggest}), or \
         change --world-size"
    )]
    Uneven {
        /// Processes started.
        processes: usize,
        /// Ranks of the run.
        world: usize,
        /// A process count that would do.
        suggest: usize,
    },
    /// The processes disagree on something every one of them must hold the same.
    #[error(
        "the processes disagree on {what}: process {process} has another than process 0; start \
         every process with the same command, recipe and data"
    )]
    Disagree {
        /// What differs.
        what: String,
        /// The first process that differs from process 0.
        process: usize,
    },
    /// Another process left the collective (its thread ended, or it failed).
    #[error("process {0} left the run")]
    Left(usize),
    /// Other processes did not answer within `--peer-timeout`: stopped (SIGSTOP, a debugger),
    /// hung in a driver, or on a node that is gone without its connections closing.
    #[error(
        "process(es) {late:?} did not answer {at} within {waited:.1?} (--peer-timeout): \
         stopped, hung, or on a node that is gone; ending the run, whose last checkpoint \
         stands (--resume goes on from it)"
    )]
    Unresponsive {
        /// The processes that did not answer.
        late: Vec<usize>,
        /// Where this process waited for them ("at gradient sum 9 of this start").
        at: String,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// An exchange between the processes did not complete within `--peer-timeout`, though
    /// every process answered a roll call after it: MPI or the network between them is stuck.
    #[error(
        "an exchange between the processes {at} did not complete within {waited:.1?} \
         (--peer-timeout), though every process answered: MPI or the network between them is \
         stuck; ending the run, whose last checkpoint stands (--resume goes on from it)"
    )]
    Stalled {
        /// Where ("after gradient sum 9 of this start").
        at: String,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// Several processes were started, but this trainer cannot join them.
    #[error("{0}")]
    Launcher(String),
}

impl ProcessError {
    /// Whether the command or the launch is at fault (exit status 2), not a process that
    /// failed while running.
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            ProcessError::Left(_)
                | ProcessError::Unresponsive { .. }
                | ProcessError::Stalled { .. }
        )
    }
}

/// What a run needs of its processes.
pub trait Processes: fmt::Debug {
    /// This process's index, `0 .. count()`; process 0 writes checkpoints and metrics.
    fn index(&self) -> usize;

    /// Processes of the run.
    fn count(&self) -> usize;

    /// Every process's `mine`, in process order (the same on every process).
    ///
    /// # Errors
    /// [`ProcessError::Left`] when a process is gone; between processes that can stop alone
    /// (MPI's), [`ProcessError::Unresponsive`] or [`ProcessError::Stalled`] when the exchange
    /// has not completed within the run's `--peer-timeout`.
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, ProcessError>;

    /// The element-wise sum over every process's `values` (equal lengths). By value: an
    /// exchange given up on keeps its buffers, which the caller then must not free.
    ///
    /// # Errors
    /// As [`Processes::all_gather`].
    fn all_reduce_sum(&self, mut values: Vec<f32>) -> Result<Vec<f32>, ProcessError> {
        for chunk in values.chunks_mut(BUCKET) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            let all = self.all_gather(&bytes)?;
            chunk.fill(0.0);
            // In process order, so every process adds the same floats in the same order.
            for other in &all {
                for (v, b) in chunk.iter_mut().zip(other.chunks_exact(4)) {
                    *v += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
        Ok(values)
    }

    /// Before each gradient sum: waits, at most the run's `--peer-timeout`, until every
    /// other process is there too, so that a process that stopped during its step (where a
    /// step spends its time) is named after one timeout, with the number of sums each
    /// process counted checked on the way. One that stops inside an exchange is caught by the
    /// exchange's own bound. Processes that cannot stop alone (threads of one process, one
    /// process) need no such wait.
    ///
    /// # Errors
    /// [`ProcessError::Unresponsive`] naming the processes that did not come.
    fn heartbeat(&self) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Ends every process of the run now with exit status `code` (after this process printed
    /// why): the others are stopped instead of waiting for this one forever.
    fn abort(&self, code: i32) -> !;

    /// How the processes are joined, for the start of a run.
    fn describe(&self) -> String;
}

/// Checks that every process holds the same `value` of `what`.
///
/// # Errors
/// [`ProcessError::Disagree`] naming the first process that differs from process 0.
pub fn agree(processes: &dyn Processes, what: &str, value: &[u8]) -> Result<(), ProcessError> {
    let all = processes.all_gather(value)?;
    match all.iter().position(|v| *v != all[0]) {
        Some(process) => Err(ProcessError::Disagree {
            what: what.to_string(),
            process,
        }),
        None => Ok(()),
    }
}

/// One process: the run as it always was.
#[derive(Debug, Clone, Copy, Default)]
pub struct Alone;

impl Processes for Alone {
    fn index(&self) -> usize {
        0
    }

    fn count(&self) -> usize {
        1
    }

    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, ProcessError> {
        Ok(vec![mine.to_vec()])
    }

    fn all_reduce_sum(&self, values: Vec<f32>) -> Result<Vec<f32>, ProcessError> {
        Ok(values)
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }

    fn describe(&self) -> String {
        "one process".to_string()
    }
}

/// The largest count up to `n` that divides `world` ranks evenly: what to suggest when `n`
/// devices or processes do not.
pub(crate) fn divisor_below(world: usize, n: usize) -> usize {
    (1..=n.min(world))
        .rev()
        .find(|d| world.is_multiple_of(*d))
        .unwrap_or(1)
}

/// Which of the run's ranks this process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessPlacement {
    /// This process.
    pub index: usize,
    /// Processes of the run.
    pub count: usize,
    /// Ranks of the run.
    pub world: usize,
}

impl ProcessPlacement {
    /// `world` ranks over `processes`; their count must divide `world`.
    ///
    /// # Errors
    /// [`ProcessError::Uneven`] naming both counts and one that would do.
    pub fn new(world: usize, processes: &dyn Processes) -> Result<ProcessPlacement, ProcessError> {
        let (world, count) = (world.max(1), processes.count().max(1));
        if !world.is_multiple_of(count) {
            return Err(ProcessError::Uneven {
                processes: count,
                world,
                suggest: divisor_below(world, count),
            });
        }
        Ok(ProcessPlacement {
            index: processes.index(),
            count,
            world,
        })
    }

    /// Ranks per process.
    pub fn per_process(&self) -> usize {
        self.world / self.count
    }

    /// This process's ranks.
    pub fn ranks(&self) -> Range<usize> {
        let k = self.per_process();
        self.index * k..(self.index + 1) * k
    }
}

/// Where one parameter's gradient sits in the flat buffer.
struct Slot {
    id: ParamId,
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
    len: usize,
}

/// `grads` of `model`'s trainable parameters, summed over every process: read into one f32
/// buffer in the model's parameter order (the same on every process), summed, and put back
/// on the devices they came from in their own float type. A parameter without a gradient
/// counts as zeros, so that every process's buffer has the same layout.
///
/// # Errors
/// [`ProcessError`] of the sum.
pub(crate) fn all_reduce_grads(
    processes: &dyn Processes,
    grads: GradientsParams,
    model: &Network,
) -> Result<GradientsParams, ProcessError> {
    if processes.count() <= 1 {
        return Ok(grads);
    }
    struct Flatten<'a> {
        grads: &'a GradientsParams,
        trainable: Vec<ParamId>,
        flat: Vec<f32>,
        slots: Vec<Slot>,
    }
    impl ModuleVisitor for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if !self.trainable.contains(&p.id) {
                return;
            }
            let (data, device) = match self.grads.get::<D>(p.id) {
                Some(g) => (g.to_data(), g.device()),
                None => {
                    let value = p.val();
                    let zeros = TensorData::zeros::<f32, _>(value.dims().to_vec());
                    (zeros.convert_dtype(value.dtype()), value.device())
                }
            };
            let (shape, dtype) = (data.shape().to_vec(), data.dtype());
            let values = data
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default();
            self.slots.push(Slot {
                id: p.id,
                shape,
                dtype,
                device,
                len: values.len(),
            });
            self.flat.extend_from_slice(&values);
        }
    }
    let mut trainable = Vec::new();
    model.for_each_trainable(|p| trainable.push(p.id));
    let mut f = Flatten {
        grads: &grads,
        trainable,
        flat: Vec::new(),
        slots: Vec::new(),
    };
    model.visit(&mut f);
    let (flat, slots) = (f.flat, f.slots);
    drop(grads);
    // Last, just before the sum: a process stopped during its step is named here.
    processes.heartbeat()?;
    let flat = processes.all_reduce_sum(flat)?;
    let mut summed = GradientsParams::new();
    let mut at = 0;
    for slot in slots {
        let values = flat[at..at + slot.len].to_vec();
        at += slot.len;
        let data = TensorData::new(values, slot.shape.clone()).convert_dtype(slot.dtype);
        match slot.shape.len() {
            1 => summed.register(slot.id, Tensor::<1>::from_data(data, &slot.device)),
            2 => summed.register(slot.id, Tensor::<2>::from_data(data, &slot.device)),
            3 => summed.register(slot.id, Tensor::<3>::from_data(data, &slot.device)),
            _ => summed.register(slot.id, Tensor::<4>::from_data(data, &slot.device)),
        }
    }
    Ok(summed)
}

/// Floats as little-endian bytes, for [`Processes::all_gather`].
pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian bytes back to floats.
pub(crate) fn bytes_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// What the threads of a [`ThreadGroup`] share: each round's contributions.
#[derive(Debug, Default)]
struct Round {
    /// This round's contributions, by process.
    slots: Vec<Option<Vec<u8>>>,
    /// The last finished round's contributions, and its number.
    done: Option<(u64, Arc<Vec<Vec<u8>>>)>,
    /// Rounds finished.
    round: u64,
    /// A member that was dropped: the others stop waiting for it.
    left: Option<usize>,
}

#[derive(Debug, Default)]
struct Shared {
    round: Mutex<Round>,
    changed: Condvar,
}

/// Processes played by threads of one process: member `i` of `n` is process `i`. What the
/// tests check the orchestration of several processes with, without a launcher.
#[derive(Debug)]
pub struct ThreadGroup {
    index: usize,
    count: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// `n` members, one for each thread to hand to a run.
    pub fn new(n: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            round: Mutex::new(Round {
                slots: vec![None; n],
                ..Round::default()
            }),
            changed: Condvar::new(),
        });
        (0..n)
            .map(|index| ThreadGroup {
                index,
                count: n,
                shared: Arc::clone(&shared),
            })
            .collect()
    }
}

impl Drop for ThreadGroup {
    fn drop(&mut self) {
        if let Ok(mut r) = self.shared.round.lock() {
            r.left.get_or_insert(self.index);
            self.shared.changed.notify_all();
        }
    }
}

impl Processes for ThreadGroup {
    fn index(&self) -> usize {
        self.index
    }

    fn count(&self) -> usize {
        self.count
    }

    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, ProcessError> {
        let poisoned = |_| ProcessError::Left(self.index);
        let mut r = self.shared.round.lock().map_err(poisoned)?;
        // A member still reading the last round's result is never overtaken: a slot is
        // filled only once the round before has been taken by everyone (slots are emptied
        // when a round completes, so a full slot is this round's).
        while r.slots[self.index].is_some() {
            if let Some(left) = r.left {
                return Err(ProcessError::Left(left));
            }
            r = self.shared.changed.wait(r).map_err(poisoned)?;
        }
        let round = r.round;
        r.slots[self.index] = Some(mine.to_vec());
        if r.slots.iter().all(Option::is_some) {
            let all: Vec<Vec<u8>> = r.slots.iter_mut().filter_map(Option::take).collect();
            r.round += 1;
            r.done = Some((round, Arc::new(all)));
            self.shared.changed.notify_all();
        }
        loop {
            if let Some((n, all)) = &r.done
                && *n == round
            {
                return Ok(all.as_ref().clone());
            }
            if let Some(left) = r.left {
                return Err(ProcessError::Left(left));
            }
            r = self.shared.changed.wait(r).map_err(poisoned)?;
        }
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }

    fn describe(&self) -> String {
        format!("{} processes as threads of one process", self.count)
    }
}

/// Open MPI's setting of the algorithm of a non-blocking all-reduce (its `libnbc` component).
const OPEN_MPI_IALLREDUCE: &str = "OMPI_MCA_coll_libnbc_iallreduce_algorithm";

/// Makes Open MPI sum gradients with its ring algorithm unless the user chose one: every sum
/// is a non-blocking all-reduce (so that it can be given up), and for a step's gradients, a
/// large buffer, Open MPI 4.1's own choice (recursive doubling) is slow. 102 MB over 2
/// processes here: 84-90 ms with its choice, 54 ms with the ring, 66-75 ms for the blocking
/// all-reduce rsb used before. The ring is what NCCL and Horovod use for gradients. An MPI
/// other than Open MPI does not read the setting.
///
/// # Safety
/// Changes the process environment: call it before any other thread exists (first in `main`).
pub unsafe fn prefer_ring_sums() {
    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some()
        && std::env::var_os(OPEN_MPI_IALLREDUCE).is_none()
    {
        // SAFETY: the caller guarantees no other thread reads or writes the environment now.
        unsafe { std::env::set_var(OPEN_MPI_IALLREDUCE, "1") };
    }
}

/// The processes this one was started among: MPI's when a launcher (`mpirun`, `srun`) started
/// it (with the `mpi` feature), else [`Alone`]. `peer_timeout`: how long a process waits for the
/// others in any exchange ([`Processes::heartbeat`], the sums and gathers).
///
/// # Errors
/// [`ProcessError::Launcher`] when a launcher started several processes and this trainer was
/// built without the `mpi` feature (each would train alone, on the same ranks).
pub fn launched(peer_timeout: std::time::Duration) -> Result<Rc<dyn Processes>, ProcessError> {
    let started = launcher_size();
    #[cfg(feature = "mpi")]
    if started.is_some() {
        return Ok(Rc::new(mpi_world::Mpi::init(peer_timeout)?));
    }
    // One process waits for no one.
    let _ = peer_timeout;
    match started {
        Some((var, n)) if n > 1 => Err(ProcessError::Launcher(format!(
            "this trainer is one of {n} processes ({var}={n}) but was built without the `mpi` \
             feature, so each would train alone on the same ranks: build it with `cargo build \
             --release -p trainer --features mpi` (needs Open MPI: libopenmpi-dev), or start one \
             process"
        ))),
        _ => Ok(Rc::new(Alone)),
    }
}

/// The process count a launcher announced in the environment, with the variable that said so.
fn launcher_size() -> Option<(&'static str, usize)> {
    // Open MPI's mpirun, MPICH's and Intel's (PMI), Slurm's srun (a step of several tasks).
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .into_iter()
        .find_map(|var| {
            let n = std::env::var(var).ok()?.trim().parse::<usize>().ok()?;
            Some((var, n))
        })
}

#[cfg(feature = "mpi")]
mod mpi_world {
    //! The processes of an MPI launch.
    //!
    //! Every exchange is non-blocking and polled, never a blocking MPI call: a process that
    //! stops without dying (SIGSTOP, a driver that hangs, a node gone without its connections
    //! closing) is invisible to MPI, and a blocking collective would wait for it forever, at
    //! whatever point of the step it stopped. An exchange that has not completed within
    //! `--peer-timeout` is given up, a roll call names the processes that no longer answer, and
    //! the run ends (`MPI_Abort`).

    use std::cell::Cell;
    use std::time::{Duration, Instant};

    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::environment::Universe;
    use mpi::point_to_point::{Destination, Source};
    use mpi::request::{Request, Scope};
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::CommunicatorCollectives;

    use super::{BUCKET, ProcessError, Processes};

    /// The tag of heartbeat messages, sent before each gradient sum.
    const HEARTBEAT_TAG: i32 = 0x7262;
    /// The tag of roll-call messages, sent after an exchange was given up.
    const ROLL_CALL_TAG: i32 = 0x7263;
    /// How often a heartbeat or a roll call looks whether the others' messages have come:
    /// short next to a step, long enough not to spin a core.
    const POLL: Duration = Duration::from_millis(1);

    /// MPI's world communicator; MPI is finalized when this is dropped.
    pub(super) struct Mpi {
        world: SimpleCommunicator,
        /// How long an exchange, a heartbeat or a roll call waits for the others.
        peer_timeout: Duration,
        /// Heartbeats so far.
        beats: Cell<u64>,
        /// The gradient sum this process stops itself after (`RSB_FAULT_STOP`).
        fault_stop: Option<u64>,
        /// Finalizes MPI on drop; declared last, so the communicator goes first.
        _universe: Universe,
    }

    impl std::fmt::Debug for Mpi {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Mpi")
                .field("rank", &self.world.rank())
                .field("size", &self.world.size())
                .finish()
        }
    }

    impl Mpi {
        /// Joins the launch. Only the thread that calls this makes MPI calls (the run's loop).
        pub(super) fn init(peer_timeout: Duration) -> Result<Mpi, ProcessError> {
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
                .ok_or_else(|| {
                    ProcessError::Launcher("MPI was initialized twice in this process".into())
                })?;
            let world = universe.world();
            let fault_stop = usize::try_from(world.rank()).ok().and_then(fault_stop);
            Ok(Mpi {
                world,
                peer_timeout,
                beats: Cell::new(0),
                fault_stop,
                _universe: universe,
            })
        }

        /// Polls the exchange `request` until it completes, or gives it up after
        /// `--peer-timeout` (`Err` with the time waited). A given-up exchange stays open: MPI
        /// cannot cancel a collective, so the caller must never free its buffers.
        fn wait_or_give_up<'a, D: ?Sized, S: Scope<'a>>(
            &self,
            mut request: Request<'a, D, S>,
        ) -> Result<(), Duration> {
            let started = Instant::now();
            loop {
                // MPI progresses only inside its calls: test without sleeping, as MPI_Wait
                // would, but yield the core, which processes oversubscribed on it need.
                request = match request.test() {
                    Ok(_) => return Ok(()),
                    Err(r) => r,
                };
                let waited = started.elapsed();
                if waited >= self.peer_timeout {
                    // SAFETY: the request leaves its scope open, unregistered; every caller
                    // forgets (never frees) the buffers it lent, and the run ends in MPI_Abort.
                    let _ = unsafe { request.into_raw() };
                    return Err(waited);
                }
                std::thread::yield_now();
            }
        }

        /// What to say of an exchange given up after `waited`: a roll call names the
        /// processes that no longer answer.
        fn given_up(&self, waited: Duration) -> ProcessError {
            let beat = self.beats.get();
            let at = format!("after gradient sum {beat} of this start");
            let (late, _) = self.roll_call(ROLL_CALL_TAG, beat);
            if late.is_empty() {
                ProcessError::Stalled { at, waited }
            } else {
                ProcessError::Unresponsive {
                    late,
                    at: format!("in an exchange {at}"),
                    waited,
                }
            }
        }

        /// Sends `value` to every other process under `tag` and receives theirs, with
        /// non-blocking messages polled by this (the only MPI) thread until all have come or
        /// `--peer-timeout` has passed; then the messages still open are cancelled. Returns the
        /// processes not heard from and every process's value (this one's where none came).
        fn roll_call(&self, tag: i32, value: u64) -> (Vec<usize>, Vec<u64>) {
            let (me, n) = (self.index(), self.count());
            let mut theirs = vec![value; n];
            let started = Instant::now();
            let late = mpi::request::scope(|scope| {
                let mut receives = Vec::new();
                let mut sends = Vec::new();
                for (peer, slot) in theirs.iter_mut().enumerate().filter(|(p, _)| *p != me) {
                    let Ok(rank) = i32::try_from(peer) else {
                        continue;
                    };
                    let process = self.world.process_at_rank(rank);
                    receives.push((
                        peer,
                        process.immediate_receive_into_with_tag(scope, slot, tag),
                    ));
                    sends.push(process.immediate_send_with_tag(scope, &value, tag));
                }
                loop {
                    receives = receives
                        .into_iter()
                        .filter_map(|(peer, r)| r.test().err().map(|r| (peer, r)))
                        .collect();
                    sends = sends.into_iter().filter_map(|r| r.test().err()).collect();
                    if receives.is_empty() && sends.is_empty() {
                        return Vec::new();
                    }
                    if started.elapsed() >= self.peer_timeout {
                        let late = receives.iter().map(|(peer, _)| *peer).collect();
                        // A cancelled request completes: the scope ends with none open.
                        for (_, r) in receives {
                            r.cancel();
                            r.wait_without_status();
                        }
                        for r in sends {
                            r.cancel();
                            r.wait_without_status();
                        }
                        return late;
                    }
                    std::thread::sleep(POLL);
                }
            });
            (late, theirs)
        }
    }

    /// Fault injection, for the tests and for trying `--peer-timeout` by hand:
    /// `RSB_FAULT_STOP=P:N` makes process `P` stop itself (SIGSTOP) just after the heartbeat of
    /// gradient sum `N`, inside the window between the heartbeat and the sum's end, where only
    /// the exchange's own bound sees it. Read once, at the launch: the gradient sum this
    /// process stops at.
    fn fault_stop(process: usize) -> Option<u64> {
        let v = std::env::var("RSB_FAULT_STOP").ok()?;
        let (p, n) = v.split_once(':')?;
        (p.trim().parse() == Ok(process)).then(|| n.trim().parse().ok())?
    }

    /// Whether the MPI library sums device memory itself: Open MPI answers through
    /// `MPIX_Query_cuda_support` (its mpi-ext.h); an MPI without that function cannot say.
    fn cuda_aware() -> Option<bool> {
        // SAFETY: dlsym with the default handle and a NUL-terminated name only looks the name up
        // among the loaded libraries' symbols.
        let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"MPIX_Query_cuda_support".as_ptr()) };
        if f.is_null() {
            return None;
        }
        // SAFETY: the symbol is Open MPI's `int MPIX_Query_cuda_support(void)`, which only reads
        // how the library was built and configured.
        let query: extern "C" fn() -> libc::c_int = unsafe { std::mem::transmute(f) };
        Some(query() == 1)
    }

    impl Processes for Mpi {
        fn index(&self) -> usize {
            usize::try_from(self.world.rank()).unwrap_or(0)
        }

        fn count(&self) -> usize {
            usize::try_from(self.world.size()).unwrap_or(1)
        }

        fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, ProcessError> {
            let n = self.count();
            let len = i32::try_from(mine.len())
                .map_err(|_| ProcessError::Launcher(format!("{} bytes to gather", mine.len())))?;
            let mut lens = vec![0i32; n];
            let done = mpi::request::scope(|scope| {
                let r = self
                    .world
                    .immediate_all_gather_into(scope, &len, &mut lens[..]);
                self.wait_or_give_up(r)
            });
            if let Err(waited) = done {
                // MPI may still write into it: never freed (the run ends in MPI_Abort).
                std::mem::forget(lens);
                return Err(self.given_up(waited));
            }
            let mut displs = Vec::with_capacity(n);
            let mut total = 0i32;
            for l in &lens {
                displs.push(total);
                total = total.saturating_add(*l);
            }
            let mine = mine.to_vec();
            let mut all = vec![0u8; usize::try_from(total).unwrap_or(0)];
            let mut partition = PartitionMut::new(&mut all[..], &lens[..], &displs[..]);
            let done = mpi::request::scope(|scope| {
                let r =
                    self.world
                        .immediate_all_gather_varcount_into(scope, &mine[..], &mut partition);
                self.wait_or_give_up(r)
            });
            if let Err(waited) = done {
                // MPI may still read and write them: never freed (the run ends in MPI_Abort).
                std::mem::forget((mine, all, lens, displs));
                return Err(self.given_up(waited));
            }
            let mut out = Vec::with_capacity(n);
            let mut at = 0usize;
            for l in lens {
                let l = usize::try_from(l).unwrap_or(0);
                out.push(all[at..at + l].to_vec());
                at += l;
            }
            Ok(out)
        }

        fn all_reduce_sum(&self, mut values: Vec<f32>) -> Result<Vec<f32>, ProcessError> {
            let mut sum = vec![0f32; values.len().min(BUCKET)];
            for at in (0..values.len()).step_by(BUCKET) {
                let n = (values.len() - at).min(BUCKET);
                let done = mpi::request::scope(|scope| {
                    let r = self.world.immediate_all_reduce_into(
                        scope,
                        &values[at..at + n],
                        &mut sum[..n],
                        SystemOperation::sum(),
                    );
                    self.wait_or_give_up(r)
                });
                if let Err(waited) = done {
                    // MPI may still read and write them: never freed (the run ends in
                    // MPI_Abort).
                    std::mem::forget((values, sum));
                    return Err(self.given_up(waited));
                }
                values[at..at + n].copy_from_slice(&sum[..n]);
            }
            Ok(values)
        }

        /// Each process sends its heartbeat count to every other and receives theirs.
        fn heartbeat(&self) -> Result<(), ProcessError> {
            let beat = self.beats.get() + 1;
            self.beats.set(beat);
            let started = Instant::now();
            let (late, theirs) = self.roll_call(HEARTBEAT_TAG, beat);
            if !late.is_empty() {
                return Err(ProcessError::Unresponsive {
                    late,
                    at: format!("at gradient sum {beat} of this start"),
                    waited: started.elapsed(),
                });
            }
            // Every process counts its sums alike; one that does not has left the run's path.
            if let Some(process) = theirs.iter().position(|b| *b != beat) {
                return Err(ProcessError::Disagree {
                    what: format!("the number of gradient sums (this one is at {beat})"),
                    process,
                });
            }
            if self.fault_stop == Some(beat) {
                // SAFETY: raise only sends a signal to this process.
                unsafe { libc::raise(libc::SIGSTOP) };
            }
            Ok(())
        }

        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }

        fn describe(&self) -> String {
            let cuda = match cuda_aware() {
                Some(true) => "CUDA-aware, not used yet",
                Some(false) => "not CUDA-aware",
                None => "CUDA awareness unknown",
            };
            let version = mpi::environment::library_version().unwrap_or_default();
            // "Open MPI v4.1.4, package: ..., ident: ...": its name and version.
            let library = version
                .split([',', '\n'])
                .next()
                .unwrap_or("MPI")
                .trim()
                .to_string();
            let host = mpi::environment::processor_name().unwrap_or_default();
            format!(
                "{} processes joined by {library} ({cuda}; this one: process {} on {host}); \
                 gradients summed through host memory",
                self.count(),
                self.index()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_group_gathers_and_sums_in_process_order_round_after_round() {
        let members = ThreadGroup::new(3);
        let handles: Vec<_> = members
            .into_iter()
            .map(|m| {
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    for round in 0..50u8 {
                        let all = m.all_gather(&[m.index() as u8, round]).expect("gather");
                        out.push(all);
                        let v = vec![m.index() as f32 + 1.0, f32::from(round)];
                        let v = m.all_reduce_sum(v).expect("sum");
                        assert_eq!(v, vec![6.0, 3.0 * f32::from(round)]);
                    }
                    out
                })
            })
            .collect();
        for h in handles {
            let rounds = h.join().expect("member");
            for (round, all) in rounds.iter().enumerate() {
                assert_eq!(
                    *all,
                    vec![
                        vec![0, round as u8],
                        vec![1, round as u8],
                        vec![2, round as u8]
                    ]
                );
            }
        }
    }

    #[test]
    fn a_member_that_leaves_ends_the_others_wait() {
        let mut members = ThreadGroup::new(2);
        let second = members.pop().expect("two");
        let first = members.pop().expect("two");
        let waiting = std::thread::spawn(move || first.all_gather(b"x"));
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(second);
        let e = waiting.join().expect("thread").unwrap_err();
        assert!(matches!(e, ProcessError::Left(1)), "{e}");
    }

    #[test]
    fn ranks_are_split_in_order_and_an_uneven_count_is_refused() {
        let members = ThreadGroup::new(2);
        let p = ProcessPlacement::new(4, &members[1]).expect("even");
        assert_eq!((p.per_process(), p.ranks()), (2, 2..4));
        let three = ThreadGroup::new(3);
        let e = ProcessPlacement::new(4, &three[0]).unwrap_err();
        assert!(
            e.to_string().contains("3 processes cannot share 4 ranks"),
            "{e}"
        );
        assert!(e.to_string().contains("mpirun -np 2"), "{e}");
        assert!(agree(&Alone, "the recipe", b"a").is_ok());
    }
}
