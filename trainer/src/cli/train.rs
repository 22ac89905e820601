//! `trainer train`: a run from a recipe, with a progress bar.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use std::rc::Rc;

use trainer::ranks::processes::{ProcessPlacement, launched};
use trainer::run::metrics::Metric;
use trainer::run::{Event, RunDir, TrainOptions, Weights};

use super::progress::{report, run_bar};
use super::recipe_flags::RecipeFlags;
use super::{DataArgs, RunArgs, load_recipe};

/// `trainer train` flags.
#[derive(Args)]
pub struct TrainArgs {
    /// The recipe (TOML with timm's train.py flag names).
    #[arg(long)]
    pub config: std::path::PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output directory (checkpoints, metrics.jsonl, summary.csv, TensorBoard event files).
    #[arg(long, default_value = "runs/train")]
    pub out: std::path::PathBuf,
    /// Continue the run in --out from its latest checkpoint (starts fresh if it has none).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub run: RunArgs,
    /// Loader worker threads with --shards (0: one per core).
    #[arg(short = 'j', long, default_value_t = 0, value_parser = shard_tool::console::number_in(super::WORKERS))]
    pub workers: u32,
    /// Start from these weights instead of a fresh initialization: timm-named safetensors
    /// (from `timm`'s `safetensors.torch.save_file(model.state_dict(), ...)` or `trainer
    /// export`), or another run's checkpoint directory (RUN/latest). A classifier with another
    /// class count than the recipe's num_classes is re-initialized (fine-tuning on another
    /// label set; said once); every other tensor must fit. Ignored with --resume, whose
    /// checkpoint holds the weights.
    #[arg(long)]
    pub init_from: Option<std::path::PathBuf>,
    /// With --init-from: a new classifier (freshly initialized) even when the class counts
    /// match, for fine-tuning on another label set of the same size.
    #[arg(long, requires = "init_from")]
    pub new_head: bool,
    /// Print the SHA-256 of every rank's batch (`rank R epoch E step S sha256 D`), to compare
    /// with `loader fetch --digests --world-size W --rank R` of the same job.
    #[arg(long)]
    pub digests: bool,
    /// Serve the run's Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9465; port
    /// 0 picks a free one, said at start): steps, samples, step time and data wait
    /// histograms, samples/s, loss, lr, the last evaluation, resident memory. Process 0 of
    /// an MPI run serves them. A port that is taken stops the run before it starts. Who can
    /// read them: anyone who can connect to ADDR; on 127.0.0.1 every user of this machine,
    /// on any other address anyone who can reach the port (warned at start).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// With several processes (mpirun, srun): how long a process waits for the others in any
    /// exchange (a step's gradient sum, a checkpoint's or an epoch end's gather) before it ends
    /// the run, naming those that no longer answer. A process stopped or hung without dying
    /// (SIGSTOP, a stuck driver, a node gone without its connections closing) would otherwise
    /// hold every other forever. Give more than the slowest step, the first included (kernel
    /// compilation on a GPU), and more than an evaluation, which process 0 makes while the
    /// others wait for it at the next step.
    #[arg(long, value_name = "SECONDS", default_value_t = trainer::ranks::processes::PEER_TIMEOUT.as_secs_f64(), value_parser = shard_tool::console::number_in(1.0..=86_400.0))]
    pub peer_timeout: f64,
    #[command(flatten)]
    pub recipe: RecipeFlags,
}

/// Trains, printing each eval and checkpoint above the bar.
pub fn run(a: TrainArgs) -> Result<ExitCode> {
    // First: a process started among others by mpirun or srun joins them here.
    let processes = launched(std::time::Duration::from_secs_f64(a.peer_timeout))?;
    let config = load_recipe(&a.config, &a.recipe)?;
    let out = RunDir::new(&a.out);
    let options = TrainOptions {
        config,
        data: a.data.source(a.workers),
        out: out.clone(),
        resume: a.resume,
        devices: a.run.devices(),
        precision: a.run.dtype,
        max_steps: a.run.max_steps,
        init_from: a.init_from.as_deref().map(Weights::at),
        new_head: a.new_head,
        digests: a.digests,
        metrics_listen: a.metrics_listen,
        processes: Rc::clone(&processes),
    };
    // Process 0 shows the run; every process prints its ranks' digests.
    let lead = processes.index() == 0;
    let bar = if lead {
        run_bar()
    } else {
        indicatif::ProgressBar::hidden()
    };
    let result = trainer::run::train(&options, &mut |e| {
        if lead || matches!(e, Event::Batch { .. }) {
            report(&bar, &options.config.model, &out.metrics(), e);
        }
    });
    let last = match result {
        Ok(last) => last,
        Err(e) if processes.count() > 1 => {
            // The others would wait for this process in their next sum forever: one line
            // saying which process and why, then the launcher ends them all.
            bar.abandon();
            let e = anyhow::Error::new(e);
            eprintln!(
                "error: process {} of {} (ranks {:?} of {}): {}",
                processes.index(),
                processes.count(),
                ranks_of(&options),
                options.config.rsb.world_size.max(1),
                shard_tool::one_line(e.chain())
            );
            let code = if e.chain().any(super::is_bad_input) {
                2
            } else {
                1
            };
            processes.abort(code)
        }
        Err(e) => return Err(e.into()),
    };
    bar.finish();
    if let Some(Metric::Eval { top1, top5, .. }) = last {
        println!("final: top-1 {top1:.2} %, top-5 {top5:.2} %");
    }
    Ok(ExitCode::SUCCESS)
}

/// This process's ranks, for its error line (empty where they do not fit the processes).
fn ranks_of(options: &TrainOptions) -> std::ops::Range<usize> {
    ProcessPlacement::new(options.config.rsb.world_size, &*options.processes)
        .map_or(0..0, |p| p.ranks())
}
