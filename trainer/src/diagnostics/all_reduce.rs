//! What summing a step's gradients over the processes costs (`mpirun -np P trainer bench
//! --all-reduce`): the model's gradients read to host memory, summed by the processes and put
//! back on the device, as every step of a run over several processes does
//! (`crate::ranks::processes::all_reduce_grads`), and the sum alone on a buffer already in
//! host memory.

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::model::Network;
use crate::ranks::processes::{ProcessError, Processes, all_reduce_grads};

/// Milliseconds per sum, the median over the calls of every process's slowest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AllReduceReport {
    /// Processes that took part.
    pub processes: usize,
    /// Values summed per step (the model's trainable parameters).
    pub values: usize,
    /// Sums timed.
    pub calls: usize,
    /// The whole path: gradients to host memory, summed, back on the device.
    pub grads_ms: f64,
    /// The sum alone, on a host buffer.
    pub sum_ms: f64,
    /// Bytes each process sends and receives per sum in a ring all-reduce, over the sum's
    /// time: `2 (P - 1) / P × 4 × values / sum_ms` (NCCL's "bus bandwidth"), GB/s.
    pub bus_gb_per_s: f64,
}

/// Times `calls` sums of `model`'s gradients (ones) over `processes`, after `warmup` untimed.
///
/// # Errors
/// [`ProcessError`] of a sum.
pub fn measure(
    processes: &dyn Processes,
    model: &Network,
    device: &Device,
    warmup: usize,
    calls: usize,
) -> Result<AllReduceReport, ProcessError> {
    struct Ones<'a>(GradientsParams, Vec<burn::module::ParamId>, &'a Device);
    impl ModuleVisitor for Ones<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if self.1.contains(&p.id) {
                let ones = Tensor::<D>::ones(p.val().shape(), self.2);
                self.0.register(p.id, ones);
            }
        }
    }
    let mut ids = Vec::new();
    model.for_each_trainable(|p| ids.push(p.id));
    let values = model.trainable_params();
    let grads = |ids: &[burn::module::ParamId]| {
        let mut v = Ones(GradientsParams::new(), ids.to_vec(), device);
        model.visit(&mut v);
        v.0
    };
    let slowest = |seconds: f64| -> Result<f64, ProcessError> {
        let all = processes.all_gather(&seconds.to_le_bytes())?;
        Ok(all
            .iter()
            .filter_map(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(f64::from_le_bytes)
            .fold(0.0, f64::max))
    };
    let mut whole = Vec::with_capacity(calls);
    let mut alone = Vec::with_capacity(calls);
    let mut flat = vec![1f32; values];
    for call in 0..warmup + calls {
        let g = grads(&ids);
        let _ = device.sync();
        let began = Instant::now();
        let summed = all_reduce_grads(processes, g, model)?;
        let _ = device.sync();
        let grads_s = slowest(began.elapsed().as_secs_f64())?;
        drop(summed);
        let began = Instant::now();
        flat = processes.all_reduce_sum(flat)?;
        let sum_s = slowest(began.elapsed().as_secs_f64())?;
        if call >= warmup {
            whole.push(grads_s);
            alone.push(sum_s);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN) * 1e3
    };
    let (grads_ms, sum_ms) = (median(whole), median(alone));
    let p = processes.count() as f64;
    let bus = 2.0 * (p - 1.0) / p * 4.0 * values as f64 / (sum_ms * 1e-3) / 1e9;
    Ok(AllReduceReport {
        processes: processes.count(),
        values,
        calls,
        grads_ms,
        sum_ms,
        bus_gb_per_s: bus,
    })
}
