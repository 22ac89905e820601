//! `trainer`: benchmark the training step and check a GPU backend against the CPU.

use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::module::Module;
use clap::{Args, Parser, Subcommand};
use trainer::bench::{self, BenchOptions};
use trainer::data::{DataJobs, DataSource, check_splits};
use trainer::device::{DeviceKind, Precision};
use trainer::metrics::Metric;
use trainer::numerics;
use trainer::overrides::RecipeOverrides;
use trainer::resnet::ResNetConfig;
use trainer::train::{Event, TrainOptions};

/// Trains ResNets with timm's "ResNet strikes back" recipes on burn.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train with a recipe (configs/a1.toml, configs/cifar10.toml, ...): batches from a
    /// `loader serve` daemon (--loader) or a loader inside this process (--shards);
    /// evaluation every `rsb.eval_interval` epochs; OUT/metrics.jsonl (one JSON line per step
    /// and per eval); atomic checkpoints in OUT at each epoch end (and every
    /// `rsb.checkpoint_interval` steps). After a crash, the same command with --resume
    /// continues exactly where the last checkpoint stands.
    Train(TrainArgs),
    /// Evaluate a checkpoint (OUT/latest or a ckpt-* directory) or timm-named safetensors on
    /// the recipe's val split: top-1 and top-5 at rsb.test_img_size, crop_pct, interpolation.
    Eval(EvalArgs),
    /// Draw a run's curves (loss, learning rate, top-1/top-5, samples/s) from its
    /// metrics.jsonl into a PNG.
    Plot {
        /// The run's --out directory, or a metrics.jsonl file.
        run: std::path::PathBuf,
        /// The PNG to write [default: RUN/curves.png, or next to the metrics file].
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Title above the panels [default: the run's directory name].
        #[arg(long)]
        title: Option<String>,
        /// Image width in pixels.
        #[arg(long, default_value_t = 1200)]
        width: u32,
        /// Image height in pixels.
        #[arg(long, default_value_t = 800)]
        height: u32,
    },
    /// Time the full training step (upload uint8, Mixup/CutMix, normalize, forward, BCE,
    /// backward, timm's LAMB) on synthetic batches held in memory.
    Bench(BenchArgs),
    /// Run one batch through the same weights on two devices and report how far logits, loss
    /// and gradients differ; exit status 1 if any is over --tolerance.
    CheckDevice(CheckArgs),
    /// Print a model's structure facts (parameter count).
    Info(ModelArgs),
    /// Write a freshly initialized model's weights as timm-named safetensors.
    Export {
        #[command(flatten)]
        model: ModelArgs,
        /// Seed of the initialization.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Initialize the last BN γ of each block at 1 instead of timm's 0, so that every
        /// layer shapes the output (for comparisons).
        #[arg(long)]
        no_zero_init_last: bool,
        /// Output file.
        out: std::path::PathBuf,
    },
    /// Eval-mode logits of timm-named weights on the fixed probe batch of
    /// `trainer/benches/timm_logits.py` (x[i] = sin(0.001·i)·2 in NCHW order), as JSON.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// safetensors weights (timm names).
        #[arg(long)]
        weights: std::path::PathBuf,
        /// Images in the probe batch.
        #[arg(long, short = 'b', default_value_t = 2)]
        batch: usize,
        /// Square side of the probe images.
        #[arg(long, default_value_t = 64)]
        img_size: usize,
    },
    /// Read a recipe (configs/a1.toml, ...) with timm's flags over it, check every value,
    /// report ignored timm keys, print it resolved with its global batch.
    Config {
        /// The TOML file.
        path: std::path::PathBuf,
        #[command(flatten)]
        overrides: RecipeOverrides,
    },
}

/// Which model (timm's `--model`, plus CPU-sized variants).
#[derive(Args, Clone)]
struct ModelArgs {
    /// timm model name: resnet18, resnet34, resnet50, resnet101, resnet152.
    #[arg(long, default_value = "resnet50")]
    model: String,
    /// timm's --num-classes.
    #[arg(long, default_value_t = 1000)]
    num_classes: usize,
    /// Channel multiplier (1.0 = timm's model).
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// 3×3 stride-1 stem without max-pool, for 32×32 images.
    #[arg(long)]
    small_stem: bool,
    /// timm's --drop-path.
    #[arg(long, default_value_t = 0.0)]
    drop_path: f64,
}

impl ModelArgs {
    fn config(&self) -> Result<ResNetConfig> {
        let depth = trainer::resnet::timm_depth(&self.model)?;
        Ok(ResNetConfig {
            depth,
            num_classes: self.num_classes,
            width: self.width,
            small_stem: self.small_stem,
            drop_path_rate: self.drop_path,
            zero_init_last: true,
        })
    }
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
    /// Float type of parameters and activations.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Images per step (timm's --batch-size).
    #[arg(long, short = 'b', default_value_t = 256)]
    batch: usize,
    /// Square image side (timm's --img-size).
    #[arg(long, default_value_t = 224)]
    img_size: usize,
    /// Untimed steps first: kernel compilation and autotuning happen here.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Seed of weights, pixels and mixing.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the report as one JSON line.
    #[arg(long)]
    json: bool,
    /// Take batches from the loader core on these packed shards (pipeline speed) instead of
    /// synthetic ones held in memory (pure step speed).
    #[arg(long)]
    shards: Option<std::path::PathBuf>,
    /// Loader transform with --shards (a1, a2, a3, eval); it sets the image size.
    #[arg(long, default_value = "a1")]
    transform: loader::TransformSpec,
    /// Loader worker threads with --shards (timm's --workers).
    #[arg(long, short = 'j', default_value_t = 4)]
    workers: usize,
}

/// Where batches come from (one of the two).
#[derive(Args)]
#[group(required = true, multiple = false)]
struct DataArgs {
    /// Socket of a running `loader serve` daemon.
    #[arg(long)]
    loader: Option<std::path::PathBuf>,
    /// Packed shards, read by a loader started inside this process.
    #[arg(long)]
    shards: Option<std::path::PathBuf>,
}

impl DataArgs {
    fn source(&self, workers: u32) -> DataSource {
        match (&self.loader, &self.shards) {
            (Some(socket), _) => DataSource::Loader {
                socket: socket.clone(),
            },
            (None, Some(dir)) => DataSource::Shards {
                dir: dir.clone(),
                workers,
            },
            // clap's group makes one of the two required.
            (None, None) => DataSource::Loader {
                socket: loader::server::default_socket(),
            },
        }
    }
}

#[derive(Args)]
struct TrainArgs {
    /// The recipe (TOML with timm's train.py flag names).
    #[arg(long)]
    config: std::path::PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Output directory (checkpoints, metrics.jsonl).
    #[arg(long, default_value = "runs/train")]
    out: std::path::PathBuf,
    /// Continue the run in --out from its latest checkpoint (starts fresh if it has none).
    #[arg(long)]
    resume: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
    /// Float type of parameters and activations.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Stop after this many steps in all (the LR schedule still spans the recipe's epochs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Loader worker threads with --shards (0: one per core).
    #[arg(short = 'j', long, default_value_t = 0)]
    workers: u32,
    /// Start from timm-named safetensors weights (from `timm`'s
    /// `safetensors.torch.save_file(model.state_dict(), ...)` or `trainer export`) instead of
    /// a fresh initialization. Ignored with --resume, whose checkpoint holds the weights.
    #[arg(long)]
    init_from: Option<std::path::PathBuf>,
    #[command(flatten)]
    overrides: RecipeOverrides,
}

#[derive(Args)]
struct EvalArgs {
    /// The recipe.
    #[arg(long)]
    config: std::path::PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// A checkpoint directory (e.g. runs/x/latest) or a .safetensors file with timm's names.
    weights: std::path::PathBuf,
    /// Loader worker threads with --shards (0: one per core).
    #[arg(short = 'j', long, default_value_t = 0)]
    workers: u32,
    #[command(flatten)]
    overrides: RecipeOverrides,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Device under test.
    #[arg(long, default_value = "cuda")]
    device: DeviceKind,
    /// Reference device (always f32).
    #[arg(long, default_value = "cpu")]
    reference: DeviceKind,
    /// Float type on the device under test.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Images in the batch.
    #[arg(long, short = 'b', default_value_t = 8)]
    batch: usize,
    /// Square image side.
    #[arg(long, default_value_t = 64)]
    img_size: usize,
    /// Largest relative difference (‖a−b‖/‖a‖) that passes.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
    /// Seed of weights and batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train(a) => train(a),
        Command::Eval(a) => eval(a),
        Command::Plot {
            run,
            out,
            title,
            width,
            height,
        } => {
            let metrics = if run.is_dir() {
                run.join("metrics.jsonl")
            } else {
                run.clone()
            };
            let dir = metrics.parent().map_or_else(
                || std::path::PathBuf::from("."),
                std::path::Path::to_path_buf,
            );
            let out = out.unwrap_or_else(|| dir.join("curves.png"));
            let title = title.unwrap_or_else(|| {
                let name = dir.canonicalize().unwrap_or(dir.clone());
                name.file_name()
                    .map_or_else(|| "run".to_string(), |n| n.to_string_lossy().into_owned())
            });
            let summary = trainer::plot::plot(&metrics, &out, &title, width, height)?;
            let top1 = summary
                .last_top1
                .map_or_else(String::new, |t| format!("; last top-1 {t:.2} %"));
            println!(
                "wrote {} ({} steps, {} evaluation(s){top1})",
                out.display(),
                summary.steps,
                summary.evals
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(a) => {
            let options = BenchOptions {
                device: a.device,
                precision: a.dtype,
                model: a.model.config()?,
                batch: a.batch,
                img_size: a.img_size,
                warmup: a.warmup,
                steps: a.steps,
                seed: a.seed,
                source: match a.shards {
                    Some(path) => bench::BatchSource::Shards {
                        path,
                        transform: a.transform,
                        threads: a.workers,
                    },
                    None => bench::BatchSource::Synthetic,
                },
            };
            let r = bench::run(&options).context("benchmark failed")?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} {} {} batch {} at {}px: {:.2} steps/s, {:.1} samples/s \
                     (warm-up {:.1} s, {} timed steps in {:.2} s of which {:.2} s waiting for \
                     data, loss {:.4}, device memory {}; batches: {})",
                    a.model.model,
                    r.device,
                    r.precision,
                    r.batch,
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
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckDevice(a) => {
            // With timm's zero-initialized last BN γ, no gradient reaches the residual
            // branches: they would compare as equal zeros.
            let config = ResNetConfig {
                zero_init_last: false,
                ..a.model.config()?
            };
            let reference = a.reference.device(Precision::F32)?.autodiff();
            let target = a.device.device(a.dtype)?.autodiff();
            let diffs = numerics::compare_devices(
                &config, a.batch, a.img_size, a.seed, &reference, &target,
            )?;
            println!(
                "{} batch {} at {}px, {} {:?} against {} f32 (relative = |a-b|/|a|):",
                a.model.model, a.batch, a.img_size, a.device, a.dtype, a.reference
            );
            let mut worst = 0.0f64;
            for d in &diffs {
                let verdict = if d.relative <= a.tolerance {
                    "ok"
                } else {
                    "OVER"
                };
                println!(
                    "  {:<34} relative {:>10.3e}  max abs {:>10.3e}  |ref| {:>10.3e}  {verdict}",
                    d.name, d.relative, d.max_abs, d.reference_norm
                );
                worst = worst.max(d.relative);
            }
            println!(
                "worst relative difference {worst:.3e} (tolerance {:.1e})",
                a.tolerance
            );
            Ok(if worst <= a.tolerance {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Config { path, overrides } => {
            let loaded = trainer::config::TrainConfig::load_with(&path, &overrides)?;
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", toml::to_string(&loaded.config)?);
            println!(
                "# global batch {} = batch_size {} x rsb.world_size {}",
                loaded.config.global_batch(),
                loaded.config.batch_size,
                loaded.config.rsb.world_size
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            model,
            seed,
            no_zero_init_last,
            out,
        } => {
            let config = ResNetConfig {
                zero_init_last: !no_zero_init_last,
                ..model.config()?
            };
            let device = burn::tensor::Device::flex();
            device.seed(seed);
            let net = config.init(&device)?;
            trainer::weights::export(&net, &out)?;
            println!(
                "wrote {} ({} parameters)",
                out.display(),
                net.trainable_params()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Logits {
            model,
            weights,
            batch,
            img_size,
        } => {
            let device = burn::tensor::Device::flex();
            let net = trainer::weights::import(model.config()?.init(&device)?, &weights)?;
            let n = batch * 3 * img_size * img_size;
            let probe: Vec<f32> = (0..n)
                .map(|i| ((i as f64) * 0.001).sin() as f32 * 2.0)
                .collect();
            let x = burn::tensor::Tensor::<4>::from_data(
                burn::tensor::TensorData::new(probe, [batch, 3, img_size, img_size]),
                &device,
            );
            let logits: Vec<f32> = net.forward(x).into_data().iter::<f32>().collect();
            println!("{}", serde_json::to_string(&logits)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Info(m) => {
            let config = m.config()?;
            let model = config.init(&burn::tensor::Device::flex())?;
            println!(
                "{}: {} trainable parameters ({} values with the BN running statistics)",
                m.model,
                model.trainable_params(),
                model.num_params()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_recipe(
    path: &std::path::Path,
    overrides: &RecipeOverrides,
) -> Result<trainer::config::TrainConfig> {
    let loaded = trainer::config::TrainConfig::load_with(path, overrides)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded.config)
}

fn train(a: TrainArgs) -> Result<ExitCode> {
    let config = load_recipe(&a.config, &a.overrides)?;
    let options = TrainOptions {
        config,
        data: a.data.source(a.workers),
        out: a.out.clone(),
        resume: a.resume,
        device: a.device,
        precision: a.dtype,
        max_steps: a.max_steps,
        init_from: a.init_from.clone(),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} (eta {eta})",
        )?
        .progress_chars("=> "),
    );
    let last = trainer::train::train(&options, &mut |e| match e {
        Event::Started {
            start_step,
            total_steps,
            steps_per_epoch,
            params,
        } => {
            bar.set_length(total_steps);
            bar.set_position(start_step);
            bar.println(format!(
                "{} ({params} trainable parameters), {steps_per_epoch} steps per epoch, steps \
                 {start_step}..{total_steps}; metrics in {}",
                options.config.model,
                options.out.join("metrics.jsonl").display()
            ));
        }
        Event::Metric(Metric::Step {
            step,
            epoch,
            loss,
            lr,
            samples_per_s,
            ..
        }) => {
            bar.set_position(step);
            bar.set_message(format!(
                "epoch {epoch} loss {loss:.4} lr {lr:.2e} {samples_per_s:.1} img/s"
            ));
        }
        Event::Metric(Metric::Eval {
            epoch,
            top1,
            top5,
            samples,
            ..
        }) => bar.println(format!(
            "eval after epoch {epoch}: top-1 {top1:.2} %, top-5 {top5:.2} % ({samples} images)"
        )),
        Event::Checkpoint(dir) => bar.println(format!("checkpoint {}", dir.display())),
    })?;
    bar.finish();
    if let Some(Metric::Eval { top1, top5, .. }) = last {
        println!("final: top-1 {top1:.2} %, top-5 {top5:.2} %");
    }
    Ok(ExitCode::SUCCESS)
}

fn eval(a: EvalArgs) -> Result<ExitCode> {
    let config = load_recipe(&a.config, &a.overrides)?;
    let jobs = DataJobs::try_from(&config)?;
    let batches = a.data.source(a.workers).open()?;
    check_splits(batches.socket(), &jobs, config.num_classes)?;
    let device = burn::tensor::Device::flex().autodiff();
    let model = trainer::train::model_config(&config)?.init(&device)?;
    let model = if a.weights.is_dir() {
        trainer::checkpoint::load_model(&a.weights, model)?
    } else {
        trainer::weights::import(model, &a.weights)?
    };
    let m = trainer::eval::evaluate(&model, &device, batches.socket(), &jobs.eval, 0, 0)?;
    if let Metric::Eval {
        top1,
        top5,
        samples,
        ..
    } = m
    {
        println!(
            "{}: top-1 {top1:.2} %, top-5 {top5:.2} % on {samples} images of {}",
            a.weights.display(),
            config.rsb.val_split
        );
    }
    Ok(ExitCode::SUCCESS)
}
