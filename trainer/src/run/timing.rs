//! Each step's own time, for `metrics.jsonl`'s samples/s.
//!
//! Steps run at depth 2: a step's loss is read back only after the next step is issued, so the
//! device never waits for the host. A step's interval starts when the loop starts waiting for
//! its batch and ends when the loop starts waiting for the next batch: its data wait, its
//! upload and issue, and the read-back of the step before, which in a steady state is one step
//! of device time. A step whose loss is read before an evaluation or a checkpoint (every line is
//! written before either) ends at that read instead: the evaluation and the checkpoint belong to
//! no step, and no step's interval is counted twice or cut short by them.

use std::time::Instant;

use burn::tensor::Tensor;

use super::metrics::Metric;
use crate::ranks::processes::{ProcessError, Processes};

/// A step issued to the device whose loss is not read back yet.
pub(super) struct Issued {
    /// Each rank's loss.
    pub losses: Vec<Tensor<1>>,
    /// Steps done, this one included.
    pub step: u64,
    /// Its batch's epoch.
    pub epoch: u32,
    /// Its learning rate.
    pub lr: f64,
    /// Seconds it waited for its batch.
    pub data_wait_s: f64,
    /// Seconds the host spent issuing its upload.
    pub upload_s: f64,
    /// When the loop started waiting for its batch.
    pub began: Instant,
    /// When the loop started waiting for the next batch, once it has.
    pub ended: Option<Instant>,
}

impl Issued {
    /// The loop starts waiting for the next batch at `now`: this step's interval ends.
    pub(crate) fn end_at(&mut self, now: Instant) {
        self.ended.get_or_insert(now);
    }

    /// Reads the loss back (waiting for the step to finish) and makes its metric: the mean
    /// loss over the ranks of every process (gathered, and added in rank order as one process
    /// adds them).
    ///
    /// # Errors
    /// [`ProcessError`] of the gather.
    pub fn read(
        self,
        global_batch: usize,
        processes: &dyn Processes,
    ) -> Result<Metric, ProcessError> {
        let mine: Vec<u8> = self
            .losses
            .into_iter()
            .flat_map(|l| f64::from(l.into_scalar::<f32>()).to_le_bytes())
            .collect();
        let all: Vec<f64> = processes
            .all_gather(&mine)?
            .concat()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect();
        let loss = all.iter().sum::<f64>() / all.len().max(1) as f64;
        let ended = self.ended.unwrap_or_else(Instant::now);
        let seconds = (ended - self.began).as_secs_f64().max(f64::MIN_POSITIVE);
        Ok(Metric::Step {
            step: self.step,
            epoch: self.epoch,
            loss,
            lr: self.lr,
            global_batch,
            samples_per_s: global_batch as f64 / seconds,
            data_wait_s: self.data_wait_s,
            upload_s: self.upload_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranks::processes::Alone;
    use std::time::Duration;

    fn issued(began: Instant) -> Issued {
        let device = burn::tensor::Device::flex();
        Issued {
            losses: vec![Tensor::<1>::from_floats([0.5], &device)],
            step: 1,
            epoch: 0,
            lr: 0.1,
            data_wait_s: 0.0,
            upload_s: 0.0,
            began,
            ended: None,
        }
    }

    fn rate(m: &Metric) -> f64 {
        match m {
            Metric::Step { samples_per_s, .. } => *samples_per_s,
            Metric::Eval { .. } => f64::NAN,
        }
    }

    #[test]
    fn a_step_ends_when_the_next_wait_begins_not_when_it_is_read() {
        let t0 = Instant::now();
        let mut step = issued(t0);
        step.end_at(t0 + Duration::from_millis(100));
        // A second end (a later wait) does not move it.
        step.end_at(t0 + Duration::from_millis(900));
        std::thread::sleep(Duration::from_millis(20));
        let r = rate(&step.read(10, &Alone).expect("one process"));
        assert!((r - 100.0).abs() < 1e-6, "{r}");
    }

    #[test]
    fn a_step_read_before_the_next_wait_ends_at_its_read() {
        let step = issued(Instant::now() - Duration::from_millis(200));
        let r = rate(&step.read(10, &Alone).expect("one process"));
        assert!(r > 10.0 && r <= 50.0, "{r}");
    }
}
