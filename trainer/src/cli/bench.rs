//! `trainer bench`: the training step's speed on synthetic or loader batches.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use loader::request::job::BATCH_SIZE;
use loader::request::transform::IMG_SIZE;
use shard_tool::console::number_in;
use trainer::device::{DeviceKind, Precision};
use trainer::diagnostics::bench::{self, BenchOptions};
use trainer::recipe::ranges;

use super::ModelArgs;

/// `trainer bench` flags.
#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// flex (burn's CPU backend; `cpu` is the same), cuda or cuda:N, cube-cpu.
    #[arg(long, default_value = "flex")]
    pub device: DeviceKind,
    /// Float types: f32, bf16 (everything), amp (f32 weights, bf16 convolutions and classifier).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
    /// Images per step (timm's --batch-size).
    #[arg(long, short = 'b', default_value_t = 256, value_parser = number_in(super::widen(BATCH_SIZE)))]
    pub batch: usize,
    /// Square image side (timm's --img-size).
    #[arg(long, default_value_t = 224, value_parser = number_in(super::widen(IMG_SIZE)))]
    pub img_size: usize,
    /// Untimed steps first: kernel compilation and autotuning happen here.
    #[arg(long, default_value_t = 5, value_parser = number_in(0..=100_000usize))]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20, value_parser = number_in(1..=100_000usize))]
    pub steps: usize,
    /// Seed of weights, pixels and mixing.
    #[arg(long, default_value_t = 0, value_parser = number_in(ranges::SEED))]
    pub seed: u64,
    /// Print the report as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Take batches from the loader core on these packed shards (pipeline speed) instead of
    /// synthetic ones held in memory (pure step speed).
    #[arg(long)]
    pub shards: Option<std::path::PathBuf>,
    /// With --shards: read the batches through the loader's ring and client, as `trainer
    /// train` does (a loader started in this process), each slot shared with its upload
    /// without a host copy, instead of the loader core's batches in process memory.
    #[arg(long, requires = "shards")]
    pub ring: bool,
    /// Loader transform with --shards (a1, a2, a3, eval); it sets the image size.
    #[arg(long, default_value = "a1")]
    pub transform: loader::TransformSpec,
    /// Loader worker threads with --shards (timm's --workers).
    #[arg(long, short = 'j', default_value_t = 4, value_parser = number_in(super::widen(super::WORKERS)))]
    pub workers: usize,
    /// Virtual ranks of -b images each (synthetic batches): measures one rank of
    /// world-size × b images, then world-size ranks of b, and prints the ratio.
    #[arg(long, default_value_t = 1, value_parser = number_in(ranges::WORLD_SIZE))]
    pub world_size: usize,
    /// With --world-size: also run the same ranks through a one-GPU DistributedContext
    /// (NCCL all-reduce in backward, as `trainer train --devices` does on several GPUs) and
    /// print its speed and last loss against the virtual ranks'. CUDA only.
    #[arg(long, requires = "world_size")]
    pub distributed: bool,
    /// Instead of steps: time the sum of one step's gradients over the processes that
    /// `mpirun -np P` (or srun) started, as `trainer train` makes it after every step (to host
    /// memory, summed by MPI, back on the device), and the sum alone; --steps sums, after
    /// --warmup. Needs a trainer built with the `mpi` feature.
    #[arg(long, conflicts_with_all = ["shards", "distributed"])]
    pub all_reduce: bool,
}

/// Runs the bench and prints its report.
pub fn run(a: BenchArgs) -> Result<ExitCode> {
    let options = BenchOptions {
        device: a.device,
        precision: a.dtype,
        model: a.model.config_at(Some(a.img_size))?,
        batch: a.batch,
        ranks: 1,
        collective: None,
        img_size: a.img_size,
        warmup: a.warmup,
        steps: a.steps,
        seed: a.seed,
        source: match (a.shards.clone(), a.ring) {
            (Some(path), true) => bench::BatchSource::Ring {
                path,
                transform: a.transform,
                threads: a.workers,
            },
            (Some(path), false) => bench::BatchSource::Shards {
                path,
                transform: a.transform,
                threads: a.workers,
            },
            (None, _) => bench::BatchSource::Synthetic,
        },
    };
    if a.all_reduce {
        return all_reduce(&a, &options);
    }
    if a.world_size <= 1 {
        report(&a, &bench::run(&options).context("benchmark failed")?)?;
        return Ok(ExitCode::SUCCESS);
    }
    // The same global batch both ways, in one run.
    let one = bench::run(&BenchOptions {
        batch: a.batch * a.world_size,
        ..options.clone()
    })
    .context("benchmark failed")?;
    report(&a, &one)?;
    let ranks = bench::run(&BenchOptions {
        ranks: a.world_size,
        ..options.clone()
    })
    .context("benchmark failed")?;
    report(&a, &ranks)?;
    if a.distributed {
        let nccl = bench::run(&BenchOptions {
            ranks: a.world_size,
            collective: Some(trainer::ranks::replicas::Collective::Nccl),
            ..options
        })
        .context("the DistributedContext run failed")?;
        report(&a, &nccl)?;
        println!(
            "{} ranks through a one-GPU DistributedContext / as virtual ranks: {:.3} \
             (samples/s); last loss {:.6} / {:.6}",
            a.world_size,
            nccl.samples_per_s / ranks.samples_per_s,
            nccl.last_loss,
            ranks.last_loss
        );
    }
    println!(
        "{} virtual ranks of {} / one rank of {}: {:.3} (samples/s)",
        a.world_size,
        a.batch,
        a.batch * a.world_size,
        ranks.samples_per_s / one.samples_per_s
    );
    Ok(ExitCode::SUCCESS)
}

/// `--all-reduce`: the sum's cost over the processes of this launch, printed by process 0.
fn all_reduce(a: &BenchArgs, options: &BenchOptions) -> Result<ExitCode> {
    let processes = trainer::ranks::processes::launched(trainer::ranks::processes::PEER_TIMEOUT)?;
    let device = options.device.device(options.precision)?;
    let model = options.model.init(&device)?;
    let r = trainer::diagnostics::all_reduce::measure(
        &*processes,
        &model,
        &device,
        a.warmup,
        a.steps.max(1),
    )?;
    if processes.index() != 0 {
        return Ok(ExitCode::SUCCESS);
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} {}: {} values ({:.1} MB of f32) summed over {} process(es) ({}): {:.1} ms per \
             step with the way to host memory and back, {:.1} ms the sum alone ({:.2} GB/s \
             bus bandwidth); median of {} sums",
            a.model.model,
            options.device,
            r.values,
            r.values as f64 * 4.0 / 1e6,
            r.processes,
            processes.describe(),
            r.grads_ms,
            r.sum_ms,
            r.bus_gb_per_s,
            r.calls
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints one report.
fn report(a: &BenchArgs, r: &bench::BenchReport) -> Result<()> {
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} {} {} batch {} x {} rank(s) at {}px: {:.2} steps/s, {:.1} samples/s \
             (warm-up {:.1} s, {} timed steps in {:.2} s of which {:.2} s waiting for \
             data, loss {:.4}, device memory {}; batches: {})",
            a.model.model,
            r.device,
            r.precision,
            r.batch,
            r.ranks,
            r.img_size,
            r.steps_per_s,
            r.samples_per_s,
            r.warmup_s,
            r.steps,
            r.timed_s,
            r.data_wait_s,
            r.last_loss,
            r.device_bytes_reserved.map_or("n/a".into(), |b| format!(
                "{:.2} GiB",
                b as f64 / (1u64 << 30) as f64
            )),
            r.source,
        );
        println!(
            "  host copies per step on the way to the device: {:.1} MB of {:.1} MB of pixels \
             (our copy and the backend's staging; the DMA not counted)",
            r.host_bytes_per_step / 1e6,
            r.pixel_bytes_per_step as f64 / 1e6
        );
        if let Some(note) = &r.upload_note {
            println!("  note: {note}");
        }
        if let Some(p) = &r.phases_ms {
            let total = p.upload + p.mix + p.forward + p.loss + p.backward + p.optimizer;
            println!(
                "  per step, ms ({} more steps, the device synchronized after each phase): \
                 upload {:.1}, mix {:.1}, forward {:.1}, loss {:.1}, backward {:.1}, \
                 optimizer {:.1} (sum {total:.1})",
                r.phase_steps, p.upload, p.mix, p.forward, p.loss, p.backward, p.optimizer
            );
        }
    }
    Ok(())
}
