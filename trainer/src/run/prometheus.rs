//! The run's Prometheus metrics (`trainer train --metrics-listen ADDR`), served by process 0
//! on a thread of its own ([`loader::server::prometheus`]): what `metrics.jsonl` says of each step and
//! evaluation, as counters, histograms and gauges a scraper keeps, and the process's memory.
//!
//! Names carry a `trainer_` prefix and base units. Step time and data wait are histograms, so
//! that an alert can say "the median step waited more than 10 % of its time for data"
//! (docs/monitoring.md's alert rules).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use loader::server::prometheus::{PrometheusError, ResidentMemory, Scrape};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::metrics::Metric;

/// A float gauge.
type FloatGauge = Gauge<f64, AtomicU64>;

/// The run's metrics, updated by each metric line.
#[derive(Clone)]
pub struct RunMetrics {
    /// Written once, by `new`; a scrape only reads it.
    registry: Arc<Registry>,
    steps: Counter,
    samples: Counter,
    step_seconds: Histogram,
    data_wait_seconds: Histogram,
    samples_per_second: FloatGauge,
    loss: FloatGauge,
    lr: FloatGauge,
    epoch: Gauge,
    top1: FloatGauge,
    top5: FloatGauge,
    eval_loss: FloatGauge,
    memory: ResidentMemory,
}

impl Default for RunMetrics {
    fn default() -> RunMetrics {
        RunMetrics::new()
    }
}

impl RunMetrics {
    /// All zero.
    pub fn new() -> RunMetrics {
        // 1 ms to about 9 minutes: a step on a GPU to a ResNet-50 step on two CPU cores.
        let seconds = || Histogram::new(exponential_buckets(1e-3, 2.0, 20));
        let mut m = RunMetrics {
            registry: Arc::default(),
            steps: Counter::default(),
            samples: Counter::default(),
            step_seconds: seconds(),
            data_wait_seconds: seconds(),
            samples_per_second: FloatGauge::default(),
            loss: FloatGauge::default(),
            lr: FloatGauge::default(),
            epoch: Gauge::default(),
            top1: FloatGauge::default(),
            top5: FloatGauge::default(),
            eval_loss: FloatGauge::default(),
            memory: ResidentMemory::default(),
        };
        let mut r = Registry::with_prefix("trainer");
        loader::register_metrics!(&mut r;
            steps = m.steps, "Optimizer steps done";
            samples = m.samples, "Images trained on, over all ranks";
            step [Seconds] = m.step_seconds,
                "Each step's interval: its data wait, upload, issue and the read-back of the \
                 step before (metrics.jsonl's samples_per_s)";
            data_wait [Seconds] = m.data_wait_seconds,
                "Each step's wait for its batch from the loader (the sum: all the time waited)";
            samples_per_second = m.samples_per_second,
                "The last step's images per second, over all ranks";
            train_loss = m.loss, "The last step's loss";
            lr = m.lr, "The last step's learning rate";
            epoch = m.epoch, "The last step's epoch";
            eval_top1 = m.top1, "Top-1 accuracy of the last evaluation, percent";
            eval_top5 = m.top5, "Top-5 accuracy of the last evaluation, percent";
            eval_loss = m.eval_loss, "Cross-entropy of the last evaluation";
        );
        m.memory.register(
            &mut r,
            "The process's resident memory (on the CPU backend, the model's and its \
             activations' too): anon, shmem (the loader's rings it reads), file",
        );
        m.registry = Arc::new(r);
        m
    }

    /// Takes in a metric line.
    pub fn record(&self, m: &Metric) {
        match *m {
            Metric::Step {
                epoch,
                loss,
                lr,
                global_batch,
                samples_per_s,
                data_wait_s,
                ..
            } => {
                self.steps.inc();
                self.samples.inc_by(global_batch as u64);
                if samples_per_s > 0.0 {
                    self.step_seconds
                        .observe(global_batch as f64 / samples_per_s);
                }
                self.data_wait_seconds.observe(data_wait_s);
                self.samples_per_second.set(samples_per_s);
                self.loss.set(loss);
                self.lr.set(lr);
                self.epoch.set(i64::from(epoch));
            }
            Metric::Eval {
                top1, top5, loss, ..
            } => {
                self.top1.set(top1);
                self.top5.set(top5);
                if let Some(l) = loss {
                    self.eval_loss.set(l);
                }
            }
        }
    }

    /// Serves the metrics at `addr` from a thread of their own.
    ///
    /// # Errors
    /// [`PrometheusError`] naming the address and `--metrics-listen`.
    pub fn serve(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<std::net::SocketAddr, PrometheusError> {
        let listener = loader::server::prometheus::bind(addr, "--metrics-listen")?;
        let bound = listener.local_addr().map_err(PrometheusError::Start)?;
        loader::server::prometheus::spawn(listener, Arc::new(self.clone()))?;
        Ok(bound)
    }
}

impl Scrape for RunMetrics {
    fn scrape(&self, encode: &mut dyn FnMut(&Registry)) {
        self.memory.refresh();
        encode(&self.registry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_become_counters_histograms_and_gauges() {
        let m = RunMetrics::new();
        m.record(&Metric::test_step(1, 0, 0.75, 0.5, 64.0));
        m.record(&Metric::test_step(2, 0, 0.25, 0.25, 32.0));
        m.record(&Metric::test_eval(2, 1, 12.5, 50.0, 8));
        let mut text = String::new();
        m.scrape(&mut |r| text = loader::server::prometheus::encode(r, false));
        for line in [
            "trainer_steps_total 2",
            "trainer_samples_total 128",
            // 64 images at 64/s, then at 32/s.
            "trainer_step_seconds_sum 3.0",
            "trainer_step_seconds_count 2",
            "trainer_samples_per_second 32.0",
            "trainer_train_loss 0.25",
            "trainer_lr 0.25",
            "trainer_eval_top1 12.5",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            text.contains("trainer_resident_bytes{kind=\"anon\"}"),
            "{text}"
        );
        match loader::server::prometheus::promtool_check(&text) {
            Some(verdict) => assert_eq!(verdict, Ok(()), "{text}"),
            None => eprintln!(
                "promtool check skipped: promtool is not installed (apt-get install prometheus)"
            ),
        }
    }
}
