//! The loop of a run set up ([`super::set_up`]): a step per batch of every rank, each step's
//! loss read back after the next is issued (depth 2), and what follows a step by the recipe
//! ([`After`]): evaluations, `summary.csv`, checkpoints.

use std::sync::Arc;
use std::time::Instant;

use loader::request::job::Position;
use loader::wire::client::Batch;

use super::checkpoint::Contents;
use super::metrics::{self, Metric};
use super::tensorboard::TensorBoardError;
use super::timing::Issued;
use super::{Event, Run, RunState, TrainError, preview, summary};
use crate::data::streams;
use crate::data::upload::Pixels;
use crate::eval::{Target, evaluate};
use crate::recipe::TrainConfig;
use crate::step::{HostBatch, StepError};

impl Run<'_> {
    /// The loop: a step per batch of every rank, each step's loss read back after the next
    /// step is issued (depth 2), evaluations and checkpoints where the recipe puts them.
    pub(super) fn train(
        &mut self,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Option<Metric>, TrainError> {
        let mut pending: Option<Issued> = None;
        while self.steps_done < self.total_steps {
            let began = Instant::now();
            if let Some(p) = pending.as_mut() {
                p.end_at(began);
            }
            let Some(held) = streams::next_batches(&mut self.clients)? else {
                break;
            };
            let data_wait_s = began.elapsed().as_secs_f64();
            let at = held[0].position;
            if self.options.digests {
                report_digests(&held, self.world.placement.ranks().start, on_event);
            }
            if self.steps_done == 0 {
                self.record_preview(&held[0], on_event);
            }
            let issued = self.step(held, at, began, data_wait_s, on_event)?;
            // Depth 2: the previous step's loss is read back now, with this step queued behind
            // it, so the device never waits for the host to fetch, upload and issue the next
            // batch.
            if let Some(previous) = pending.replace(issued) {
                self.write_step(previous, on_event)?;
            }
            let next = at.next(self.steps_per_epoch);
            let after = After::step(
                &self.options.config,
                (at, next),
                self.steps_done,
                self.total_steps,
            );
            // Before an evaluation or a checkpoint, every step's metric is written: a
            // checkpoint never stands ahead of the metrics a resume keeps.
            if after.checkpoint
                && let Some(p) = pending.take()
            {
                self.write_step(p, on_event)?;
            }
            if after.reduce_bn {
                // timm's `--dist-bn reduce` before its end-of-epoch evaluation.
                self.world.reduce_bn()?;
            }
            if after.evaluate {
                self.evaluate(next.epoch, on_event)?;
            }
            if after.summary {
                self.write_summary(on_event);
            }
            if after.checkpoint {
                self.checkpoint(next, on_event)?;
            }
        }
        // A stream that ended early leaves its last step unread.
        if let Some(p) = pending.take() {
            self.write_step(p, on_event)?;
        }
        Ok(self.last_eval.take())
    }

    /// Issues one step on every rank's batch at `at`; the step is not read back.
    fn step(
        &mut self,
        held: Vec<Batch>,
        at: Position,
        began: Instant,
        data_wait_s: f64,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Issued, TrainError> {
        let config = &self.options.config;
        let lr = config
            .schedule()
            .lr(u64::from(at.epoch), at.step, self.steps_per_epoch);
        let issued_before = self.world.primary().upload.issuing_s();
        // Each slot is shared with its upload, which releases it once the copy is done.
        let held: Vec<Arc<Batch>> = held.into_iter().map(Arc::new).collect();
        let hosts: Vec<HostBatch<'_>> = held
            .iter()
            .map(|batch| HostBatch {
                pixels: Pixels::Slot(Arc::clone(batch)),
                shape: [batch.count, config.img_size, config.img_size],
                labels: batch.labels(),
                step: self.steps_done,
            })
            .collect();
        // Each rank's Mixup/CutMix and drop-path draws are keyed by (seed + rank, step).
        let losses = self.world.step(&hosts, lr)?;
        drop(hosts);
        drop(held);
        let upload = &self.world.primary().upload;
        if let Some(note) = upload.take_note() {
            on_event(Event::Note(note));
        }
        self.steps_done += 1;
        Ok(Issued {
            losses,
            step: self.steps_done,
            epoch: at.epoch,
            lr,
            data_wait_s,
            upload_s: upload.issuing_s() - issued_before,
            began,
            ended: None,
        })
    }

    /// Reads a step back and writes its line.
    fn write_step(
        &mut self,
        issued: Issued,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), TrainError> {
        let m = issued.read(self.options.config.global_batch(), &*self.world.processes)?;
        if let Metric::Step { step, loss, .. } = m
            && !loss.is_finite()
        {
            // Not written: every line of metrics.jsonl stays one the trainer reads back.
            return Err(self.diverged(step, format!("the loss is {loss}")));
        }
        self.record(m, on_event)
    }

    /// Writes a metric line (process 0): to `metrics.jsonl`, whose failure stops the run, and
    /// to TensorBoard, whose failure is a warning (the events are a view of the metrics).
    fn record(&mut self, m: Metric, on_event: &mut dyn FnMut(Event)) -> Result<(), TrainError> {
        let Some(metrics) = &mut self.metrics else {
            return Ok(());
        };
        metrics.append(&m)?;
        if let Some(p) = &self.prometheus {
            p.record(&m);
        }
        let written = self.tensorboard.as_mut().map(|t| t.metric(&m));
        self.tensorboard_written(written, on_event);
        on_event(Event::Metric(m));
        Ok(())
    }

    /// Drops the event file after a failed write, saying so once.
    fn tensorboard_written(
        &mut self,
        written: Option<Result<(), TensorBoardError>>,
        on_event: &mut dyn FnMut(Event),
    ) {
        if let Some(Err(e)) = written {
            self.tensorboard = None;
            on_event(Event::Note(format!(
                "warning: TensorBoard events stop here ({e}); training goes on, and \
                 metrics.jsonl keeps every step"
            )));
        }
    }

    /// The first batch's images as a grid in TensorBoard (a fresh run's first step).
    fn record_preview(&mut self, batch: &Batch, on_event: &mut dyn FnMut(Event)) {
        let Some(events) = &mut self.tensorboard else {
            return;
        };
        let grid = preview::grid(batch.images(), self.options.config.img_size);
        let written = preview::encode_png(&grid.pixels, grid.width, grid.height)
            .map_err(|message| TensorBoardError {
                path: events.path().to_path_buf(),
                message,
            })
            .and_then(|png| events.image(0, "train_samples", png, (grid.width, grid.height)));
        self.tensorboard_written(Some(written), on_event);
    }

    /// Evaluates the primary model on the val split and writes the line (process 0; the
    /// others go on to the next step and wait for it there).
    fn evaluate(&mut self, epoch: u32, on_event: &mut dyn FnMut(Event)) -> Result<(), TrainError> {
        if self.metrics.is_none() {
            return Ok(());
        }
        let step = self.world.primary();
        let target = Target {
            model: step.model().ok_or(StepError::Poisoned)?,
            device: self.world.device(),
            upload: &step.upload,
        };
        let a = evaluate(
            &target,
            self.batches.socket(),
            &self.jobs.eval,
            &mut |_, _| {},
        )?;
        if a.non_finite > 0 {
            on_event(Event::Note(format!(
                "evaluation after step {}: {} of {} images had NaN or infinite logits, counted \
                 wrong",
                self.steps_done, a.non_finite, a.samples
            )));
        }
        let m = Metric::Eval {
            step: self.steps_done,
            epoch,
            top1: a.top1,
            top5: a.top5,
            samples: a.samples,
            loss: Some(a.loss),
        };
        self.last_eval = Some(m.clone());
        self.record(m, on_event)
    }

    /// Rewrites timm's `summary.csv` from `metrics.jsonl`. A failure (a full disk) is a
    /// warning: the summary is a view of the metrics, never worth the run.
    fn write_summary(&self, on_event: &mut dyn FnMut(Event)) {
        if self.metrics.is_none() {
            return;
        }
        let out = &self.options.out;
        let written = metrics::read_metrics(&out.metrics())
            .map_err(|e| e.to_string())
            .and_then(|m| summary::write(&out.summary(), &m));
        if let Err(e) = written {
            on_event(Event::Note(format!(
                "warning: summary.csv not written: {e}"
            )));
        }
    }

    /// The error that stops a run at `step`, naming the checkpoint to go on from.
    fn diverged(&self, step: u64, what: String) -> TrainError {
        let last_good = match self.options.out.latest() {
            Some(c) => format!(
                "The last checkpoint, {} (step {}), holds finite weights: --resume goes on \
                 from it (metrics.jsonl holds no NaN line).",
                c.dir().display(),
                c.state()
                    .map_or_else(|_| "?".to_string(), |s| s.steps_done.to_string())
            ),
            None => "No checkpoint was written before it.".to_string(),
        };
        TrainError::Diverged {
            step,
            what,
            last_good,
        }
    }

    /// Writes a checkpoint whose next batch is `next`.
    fn checkpoint(
        &mut self,
        next: Position,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), TrainError> {
        let state = RunState {
            steps_done: self.steps_done,
            next,
            config: self.recipe_text.clone(),
            dataset: Some(self.dataset.clone()),
        };
        // One rank's statistics are the model's own: the file is only for several. Every
        // process gathers them (a collective) and checks its weights (the same on all).
        let stats = if self.world.placement.world > 1 {
            Some(self.world.all_stats()?)
        } else {
            None
        };
        let step = self.world.primary();
        let model = step.model().ok_or(StepError::Poisoned)?;
        // A finite loss does not vouch for the update that followed it: the weights are
        // checked before they become the checkpoint a resume would trust.
        let non_finite = model.non_finite_values();
        if non_finite > 0 {
            let what = format!("{non_finite} weights are NaN or infinite after it");
            return Err(self.diverged(self.steps_done, what));
        }
        if self.metrics.is_none() {
            return Ok(());
        }
        let saved = self.options.out.save_checkpoint(&Contents {
            model,
            optimizer: &step.optimizer,
            ranks: stats.as_ref(),
            state: &state,
        })?;
        on_event(Event::Checkpoint(saved));
        Ok(())
    }
}

/// What follows a step, by the recipe: the end of an epoch reduces the ranks' BN statistics
/// (timm's `--dist-bn reduce`), evaluates every `eval_interval` epochs and after the last,
/// rewrites `summary.csv` and checkpoints; a checkpoint also every `checkpoint_interval` steps;
/// the run's last step evaluates, summarizes and checkpoints whatever the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct After {
    reduce_bn: bool,
    evaluate: bool,
    summary: bool,
    checkpoint: bool,
}

impl After {
    /// After the step at `at` (whose successor is `next`), `steps_done` of the run's
    /// `total_steps` done.
    fn step(
        config: &TrainConfig,
        (at, next): (Position, Position),
        steps_done: u64,
        total_steps: u64,
    ) -> After {
        let epoch_done = next.epoch != at.epoch;
        let last = steps_done == total_steps;
        let interval = config.rsb.checkpoint_interval;
        let evaluates_after = u64::from(next.epoch) % config.rsb.eval_interval.max(1) == 0
            || next.epoch == config.total_epochs();
        After {
            reduce_bn: epoch_done,
            evaluate: (epoch_done && evaluates_after) || last,
            summary: epoch_done || last,
            checkpoint: epoch_done || last || (interval > 0 && steps_done.is_multiple_of(interval)),
        }
    }
}

/// Each rank's batch digest, as `loader fetch --digests` prints it; `held[i]` is rank
/// `first + i`'s.
fn report_digests(held: &[Batch], first: usize, on_event: &mut dyn FnMut(Event)) {
    for (i, batch) in held.iter().enumerate() {
        on_event(Event::Batch {
            rank: first + i,
            position: batch.position,
            sha256: loader::bench::batch_digest(batch.images(), batch.labels()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Overrides;

    fn smoke() -> TrainConfig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml");
        TrainConfig::load(&path, &Overrides::none()).unwrap().config
    }

    const fn at(epoch: u32, step: u64) -> Position {
        Position { epoch, step }
    }

    #[test]
    fn a_step_inside_an_epoch_is_followed_by_nothing() {
        let mut config = smoke();
        config.rsb.checkpoint_interval = 0;
        let after = After::step(&config, (at(0, 3), at(0, 4)), 4, 1000);
        let nothing = After {
            reduce_bn: false,
            evaluate: false,
            summary: false,
            checkpoint: false,
        };
        assert_eq!(after, nothing);
    }

    #[test]
    fn an_epochs_end_reduces_summarizes_checkpoints_and_evaluates_at_the_interval() {
        let mut config = smoke();
        config.rsb.eval_interval = 2;
        let epochs = config.total_epochs();
        assert!(epochs > 2, "the smoke recipe has {epochs} epochs");
        // Epoch 1 done: not an evaluation epoch at interval 2.
        let after = After::step(&config, (at(0, 9), at(1, 0)), 10, 10 * u64::from(epochs));
        assert!(after.reduce_bn && after.summary && after.checkpoint && !after.evaluate);
        // Epoch 2 done: evaluated.
        let after = After::step(&config, (at(1, 9), at(2, 0)), 20, 10 * u64::from(epochs));
        assert!(after.evaluate);
        // The recipe's last epoch is evaluated whatever the interval.
        config.rsb.eval_interval = 1000;
        let last = at(epochs, 0);
        let after = After::step(
            &config,
            (at(epochs - 1, 9), last),
            10 * u64::from(epochs),
            u64::MAX,
        );
        assert!(after.evaluate);
    }

    #[test]
    fn the_runs_last_step_evaluates_and_checkpoints_mid_epoch() {
        let mut config = smoke();
        config.rsb.checkpoint_interval = 0;
        let after = After::step(&config, (at(0, 4), at(0, 5)), 5, 5);
        assert!(after.evaluate && after.summary && after.checkpoint && !after.reduce_bn);
    }

    #[test]
    fn checkpoints_come_every_checkpoint_interval_steps() {
        let mut config = smoke();
        config.rsb.checkpoint_interval = 3;
        let checkpoints: Vec<u64> = (1..=9)
            .filter(|&s| After::step(&config, (at(0, s - 1), at(0, s)), s, 100).checkpoint)
            .collect();
        assert_eq!(checkpoints, [3, 6, 9]);
    }
}
