//! `trainer`: train and evaluate ResNets with timm's recipes, look at runs, benchmark the step,
//! and check a GPU backend against the CPU. Each subcommand lives in its own module under
//! `cli/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Trains ResNets with timm's "ResNet strikes back" recipes on burn, fed by rsb's loader.
///
/// `trainer <command> --help` explains a command and every flag; recipes are TOML files with
/// timm's train.py names (configs/a1.toml, a2, a3, smoke, cifar10).
#[derive(Parser)]
#[command(name = "trainer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// SIMD level of our CPU kernels (convolution, batch norm, pooling, residual join, LAMB)
    /// and of the in-process loader's (--shards; as `loader --cpu-ext`): auto (the most this
    /// CPU has), none (baseline x86-64 code, to measure what the vectors buy), avx2 or avx512.
    /// Every choice gives the same bits; gemm's matrix products keep their own dispatch.
    #[arg(long, global = true, default_value = "auto", value_name = "EXT")]
    cpu_ext: cpu_kernels::CpuExtChoice,
}

#[derive(Subcommand)]
enum Command {
    /// Train with a recipe, from a loader daemon or shards; resumable.
    ///
    /// Batches come from a `loader serve` daemon (--loader) or a loader inside this process
    /// (--shards); evaluation every `rsb.eval_interval` epochs; OUT/metrics.jsonl holds one
    /// JSON line per step and per evaluation, OUT/summary.csv timm's row per epoch, and OUT's
    /// TensorBoard event files the same under timm's names (`tensorboard --logdir OUT`, or its
    /// parent to see several runs); atomic checkpoints in OUT at each epoch end (and every
    /// `rsb.checkpoint_interval` steps). After a crash, the same command with --resume
    /// continues exactly where the last checkpoint stands.
    Train(cli::train::TrainArgs),
    /// Top-1/top-5 of a checkpoint or timm weights on the recipe's val split or other sets.
    ///
    /// The recipe's eval transform: rsb.test_img_size, crop_pct, interpolation. Several packed
    /// sets (--set) in one table, with ImageNet-ReaL's labels (--real-labels) where the images
    /// are ImageNet's validation images.
    Eval(cli::eval::EvalArgs),
    /// Draw a run's curves into a PNG.
    ///
    /// Four panels from the run's metrics.jsonl: training loss, learning rate, top-1/top-5,
    /// samples/s.
    Plot(cli::plot::PlotArgs),
    /// Several runs side by side: their curves in one PNG, their final figures in a table.
    ///
    /// Loss and top-1 curves, one color per run; the table has each run's final loss, top-1,
    /// top-5 and best top-1.
    Compare(cli::compare::CompareArgs),
    /// Every combination of --vary values as a run, then mean ± std per setting.
    ///
    /// seed=0,1,2, lr=..., any recipe key. Every combination passes the recipe's checks
    /// before the first run starts. Runs that differ only in their seed are grouped; the table
    /// has mean ± std, min and max per eval set and metric, the plot one point per run.
    /// Running it again resumes unfinished runs and reuses finished ones.
    Study(cli::study::StudyArgs),
    /// Time the full training step on synthetic or loader batches.
    ///
    /// Upload uint8, Mixup/CutMix, normalize, forward, BCE, backward, timm's LAMB; the steady
    /// state apart from the warm-up (kernel compilation, autotuning), and each phase apart.
    Bench(cli::bench::BenchArgs),
    /// One batch through the same weights on two devices: how far apart they are.
    ///
    /// Logits, loss and every parameter's gradient; exit status 1 if any relative difference
    /// is over --tolerance.
    CheckDevice(cli::check_device::CheckArgs),
    /// Print a model's parameter count.
    Info(cli::info::InfoArgs),
    /// Write a freshly initialized model as timm-named safetensors.
    Export(cli::export::ExportArgs),
    /// Eval-mode logits of timm-named weights on a fixed probe batch, as JSON.
    ///
    /// The probe is `trainer/benches/timm_logits.py`'s: x[i] = sin(0.001·i)·2 in NCHW order.
    Logits(cli::logits::LogitsArgs),
    /// Check a recipe with timm's flags over it and print it resolved.
    ///
    /// The same checks `train` and `study` make: every value, the loader jobs it implies,
    /// ignored timm keys reported; then the global batch and how the ranks fit the devices.
    Config(cli::config::ConfigArgs),
}

fn main() -> ExitCode {
    // SAFETY: the first statement of `main`: no other thread exists yet to read the
    // environment while it changes.
    unsafe {
        trainer::device::pin_default_device();
        trainer::ranks::processes::prefer_ring_sums();
    }
    trainer::device::host_memory::keep_freed_memory();
    // The in-process loader's warnings and errors (an image replaced, a worker's failure).
    shard_tool::console::init_logging("warn");
    let cli = Cli::parse();
    if let Err(e) = cap_cpu_ext(cli.cpu_ext) {
        return shard_tool::console::fail(e.chain(), cli::is_bad_input);
    }
    let result = match cli.command {
        Command::Train(a) => cli::train::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Plot(a) => cli::plot::run(a),
        Command::Compare(a) => cli::compare::run(a),
        Command::Study(a) => cli::study::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::CheckDevice(a) => cli::check_device::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Logits(a) => cli::logits::run(a),
        Command::Config(a) => cli::config::run(a),
    };
    result.unwrap_or_else(|e| shard_tool::console::fail(e.chain(), cli::is_bad_input))
}

/// Caps the SIMD level of every kernel in the process: ours, and the in-process loader's
/// (whose kernels are AVX2 or portable, so only `none` lowers them).
fn cap_cpu_ext(choice: cpu_kernels::CpuExtChoice) -> anyhow::Result<()> {
    use cpu_kernels::{CpuExt, CpuExtChoice};
    use loader::image::cpu::{CpuExt as LoaderExt, CpuExtChoice as LoaderChoice};
    cpu_kernels::simd::cap(choice)?;
    let loader = match choice {
        CpuExtChoice::Cap(CpuExt::None) => LoaderChoice::None,
        CpuExtChoice::Auto | CpuExtChoice::Cap(_) => LoaderChoice::Auto,
    };
    LoaderExt::cap(loader)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every subcommand's flags, its one line in `--help`, every number bounded.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        shard_tool::console::assert_command_line(super::Cli::command(), &["seed"]);
    }

    #[test]
    fn a_seed_past_what_a_toml_integer_holds_is_refused() {
        use clap::CommandFactory;
        // Every 32-bit seed is a seed; one past what a TOML integer holds is not (it made the
        // recipe's flags fail to serialize, and every flag given was dropped).
        for command in ["train", "bench", "check-device", "export"] {
            let too_big = format!("--seed={}", i64::MAX as u64 + 1);
            let err = super::Cli::command()
                .try_get_matches_from(["trainer", command, &too_big])
                .err()
                .map(|e| e.kind());
            assert_eq!(
                err,
                Some(clap::error::ErrorKind::ValueValidation),
                "{command}"
            );
        }
    }
}
