//! `loader`: the rsb data loader. `serve` is the daemon that feeds trainers through shared
//! memory, `status` and `fetch` talk to it; `bench`, `preview` and `augment` measure the
//! transforms and show them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use loader::batch::{BatchMaker, BatchOut, STEPS_PER_FILL};
use loader::client::{Client, ClientOptions};
use loader::crop::CropBox;
use loader::decode::{Decoder, RgbImage};
use loader::eval_transform::EvalTransform;
use loader::flip::flip_horizontal;
use loader::interpolation::{Interpolation, InterpolationChoice};
use loader::job::{JobPlan, JobSpec, Position};
use loader::pipeline::Worker;
use loader::rand_augment::{Op, OpArg, RandAugment, level_value};
use loader::resample::Resampler;
use loader::server::{ServeConfig, Server, default_socket};
use loader::transform::{TrainTransform, TransformSpec, parse_aa};
use sha2::{Digest, Sha256};
use shard_tool::Dataset;
use zune_core::bit_depth::BitDepth;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::{DecoderOptions, EncoderOptions};
use zune_png::{PngDecoder, PngEncoder};

#[derive(Parser)]
#[command(
    name = "loader",
    version,
    about = "The rsb data loader: the daemon that feeds trainers (serve, status, fetch), and \
             tools to measure and look at its transforms (bench, preview, augment)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a PNG grid of augmented samples (the first samples of an epoch, as the trainer
    /// would get them) and list the RandAugment ops applied to each.
    Preview {
        /// Dataset directory made by `shard-tool pack`.
        shards: PathBuf,
        #[command(flatten)]
        transform: TransformArgs,
        /// Output PNG.
        #[arg(short, long)]
        out: PathBuf,
        /// Samples in the grid.
        #[arg(long, default_value_t = 12)]
        count: usize,
        /// Grid columns.
        #[arg(long, default_value_t = 6)]
        cols: usize,
        /// Epoch whose samples are shown.
        #[arg(long, default_value_t = 0)]
        epoch: u32,
        /// timm's --seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Split to read.
        #[arg(long, default_value = "train")]
        split: String,
    },
    /// Measure the loader on packed shards: samples/s, time per stage, CPU use, and the
    /// decode-only rate of the same records on the same threads.
    ///
    /// Transforms: a1/a2 (RRC 224, flip, rand-m7-mstd0.5-inc1, 3 repeats), a3 (160,
    /// rand-m6-mstd0.5-inc1, no repeats), eval (224, crop 0.95, bicubic).
    Bench(BenchArgs),
    /// Run the daemon: serve batches to trainers over a Unix socket and shared-memory rings.
    ///
    /// `loader serve --shards DIR` works with defaults for everything else; a config file
    /// (configs/loader.toml) sets the rest, and flags override it. Prints the socket path,
    /// logs to stderr (RUST_LOG=debug for every refused connection), stops cleanly on SIGTERM
    /// or Ctrl-C, removing its socket. Under systemd (Type=notify) it reports READY, a STATUS
    /// line and WATCHDOG pings.
    Serve(ServeArgs),
    /// Show what a running daemon is doing: clients, samples/s, ring occupancy, per-stage
    /// times, decode errors.
    Status {
        /// The daemon's socket (default: as `serve`).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the raw statistics as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read batches from a running daemon as a trainer would: samples/s, and optionally the
    /// SHA-256 of every batch (to compare with `bench --digests` or another run). Reconnects
    /// and resumes at the next batch if the daemon restarts.
    Fetch(FetchArgs),
    /// Apply one transform with explicit parameters to IN (JPEG or PNG) and write OUT.png.
    ///
    /// Ops: `decode` (no transform), `resized-crop` (--arg LEFT,TOP,WIDTH,HEIGHT --size S:
    /// Pillow's img.crop(box).resize((S, S), interp)), `eval` (--size S --crop-pct P: timm's
    /// eval resize and center crop), `flip` (horizontal), and the 15 RandAugment ops
    /// (auto-contrast, equalize, invert, rotate, posterize, solarize, solarize-add, color,
    /// contrast, brightness, sharpness, shear-x, shear-y, translate-x-rel, translate-y-rel)
    /// with either --arg X (the op's argument: degrees, bits, threshold, factor, shear,
    /// fraction) or --magnitude M (timm's increasing level function at M; --negative for the
    /// negated sign).
    Augment {
        /// The transform.
        #[arg(long)]
        op: String,
        /// The op's explicit parameter (see above).
        #[arg(long, conflicts_with = "magnitude")]
        arg: Option<String>,
        /// RandAugment magnitude (0..10) turned into the argument as timm does.
        #[arg(long)]
        magnitude: Option<f64>,
        /// With --magnitude: take the negative sign where timm draws one.
        #[arg(long, requires = "magnitude")]
        negative: bool,
        /// Output side in pixels.
        #[arg(long, default_value_t = 224)]
        size: u32,
        /// Eval crop fraction (timm's --crop-pct).
        #[arg(long, default_value_t = 0.95)]
        crop_pct: f64,
        /// Resize filter.
        #[arg(long, default_value = "bicubic")]
        interp: Interpolation,
        /// Input image.
        input: PathBuf,
        /// Output PNG.
        output: PathBuf,
    },
}

/// The transform of a job: a preset, then timm's flags for any setting to change.
#[derive(Args)]
#[command(next_help_heading = "Transform (timm's flags)")]
struct TransformArgs {
    /// Preset: a1 or a2 (RRC 224, flip 0.5, rand-m7-mstd0.5-inc1, random interpolation, 3
    /// repeats), a3 (160, rand-m6-mstd0.5-inc1, no repeats), eval (224, crop 0.95, bicubic).
    #[arg(long, default_value = "a1")]
    transform: TransformSpec,
    /// Output side (timm's --img-size).
    #[arg(long)]
    img_size: Option<u32>,
    /// RandomResizedCrop area range, MIN MAX (train).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"])]
    scale: Option<Vec<f64>>,
    /// RandomResizedCrop aspect-ratio range, MIN MAX (train).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"])]
    ratio: Option<Vec<f64>>,
    /// Horizontal flip probability (train).
    #[arg(long)]
    hflip: Option<f64>,
    /// RandAugment, timm's grammar (rand-m9-mstd0.5-inc1), or `none` (train).
    #[arg(long)]
    aa: Option<String>,
    /// random, bilinear or bicubic (train).
    #[arg(long)]
    train_interpolation: Option<InterpolationChoice>,
    /// Repeated-augmentation copies per image, 0 for none (train).
    #[arg(long)]
    aug_repeats: Option<u32>,
    /// Fraction of the resized image the center crop keeps (eval).
    #[arg(long)]
    crop_pct: Option<f64>,
    /// bilinear or bicubic (eval).
    #[arg(long)]
    interpolation: Option<Interpolation>,
}

impl TryFrom<&TransformArgs> for TransformSpec {
    type Error = UsageError;

    /// The preset with the flags applied, checked; a flag that does not apply to the preset's
    /// kind (train or eval) is an error.
    fn try_from(a: &TransformArgs) -> Result<TransformSpec, UsageError> {
        let misplaced = |flag: &str, kind: &str| {
            UsageError(format!(
                "--{flag} applies to {kind} transforms, and --transform {} is not one",
                a.transform.kind()
            ))
        };
        let pair = |v: &Option<Vec<f64>>| v.as_ref().map(|v| [v[0], v[1]]);
        let spec = match a.transform {
            TransformSpec::Train(t) => {
                if a.crop_pct.is_some() {
                    return Err(misplaced("crop-pct", "eval"));
                }
                if a.interpolation.is_some() {
                    return Err(misplaced("interpolation", "eval"));
                }
                let aa = match a.aa.as_deref() {
                    None => t.aa,
                    Some(text) => parse_aa(text).map_err(UsageError::flag)?,
                };
                TransformSpec::Train(TrainTransform {
                    img_size: a.img_size.unwrap_or(t.img_size),
                    scale: pair(&a.scale).unwrap_or(t.scale),
                    ratio: pair(&a.ratio).unwrap_or(t.ratio),
                    hflip: a.hflip.unwrap_or(t.hflip),
                    aa,
                    train_interpolation: a.train_interpolation.unwrap_or(t.train_interpolation),
                    aug_repeats: a.aug_repeats.unwrap_or(t.aug_repeats),
                })
            }
            TransformSpec::Eval(e) => {
                for (flag, set) in [
                    ("scale", a.scale.is_some()),
                    ("ratio", a.ratio.is_some()),
                    ("hflip", a.hflip.is_some()),
                    ("aa", a.aa.is_some()),
                    ("train-interpolation", a.train_interpolation.is_some()),
                    ("aug-repeats", a.aug_repeats.is_some()),
                ] {
                    if set {
                        return Err(misplaced(flag, "train"));
                    }
                }
                TransformSpec::Eval(EvalTransform {
                    img_size: a.img_size.unwrap_or(e.img_size),
                    crop_pct: a.crop_pct.unwrap_or(e.crop_pct),
                    interpolation: a.interpolation.unwrap_or(e.interpolation),
                })
            }
        };
        spec.validate().map_err(UsageError::flag)?;
        Ok(spec)
    }
}

/// A bad flag or config value: one line naming it and the allowed range, exit status 2, before
/// any file is opened or connection made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

impl UsageError {
    /// A transform setting out of range, named by its flag (`--crop-pct 0.001 is outside ...`).
    fn flag(e: loader::transform::SettingError) -> UsageError {
        UsageError(format!(
            "--{} {} {}",
            e.key.replace('_', "-"),
            e.value,
            e.problem
        ))
    }
}

/// Seconds for a timeout flag: finite, not negative, at most a day.
fn seconds(text: &str) -> Result<Duration, String> {
    let s: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=86_400.0).contains(&s) {
        return Err(format!("{s} is outside 0..=86400 seconds"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`loader preview ... | head`) is the reader's choice, not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) if e.chain().any(|c| c.is::<UsageError>()) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Preview {
            shards,
            transform,
            out,
            count,
            cols,
            epoch,
            seed,
            split,
        } => preview(
            &shards,
            TransformSpec::try_from(&transform)?,
            &out,
            (count, cols),
            epoch,
            seed,
            &split,
        ),
        Command::Bench(args) => bench(&args),
        Command::Serve(args) => serve(args),
        Command::Status { socket, json } => status(socket, json),
        Command::Fetch(args) => fetch(&args),
        Command::Augment {
            op,
            arg,
            magnitude,
            negative,
            size,
            crop_pct,
            interp,
            input,
            output,
        } => {
            let image = read_image(&input)?;
            let out = match op.as_str() {
                "decode" => image,
                "flip" => {
                    let mut image = image;
                    flip_horizontal(&mut image.pixels, image.width as usize);
                    image
                }
                "resized-crop" => {
                    check_size(size)?;
                    let crop = parse_box(arg.as_deref(), &image)?;
                    let side = size as usize;
                    let mut pixels = vec![0u8; side * side * 3];
                    Resampler::new().resize(
                        &image.pixels,
                        image.width as usize,
                        crop,
                        (side, side),
                        interp,
                        &mut pixels,
                    );
                    RgbImage {
                        width: size,
                        height: size,
                        pixels,
                    }
                }
                "eval" => {
                    let t = EvalTransform {
                        img_size: size,
                        crop_pct,
                        interpolation: interp,
                    };
                    TransformSpec::Eval(t)
                        .validate()
                        .map_err(UsageError::flag)?;
                    let side = size as usize;
                    let mut pixels = vec![0u8; side * side * 3];
                    t.apply(
                        &image,
                        &mut Resampler::new(),
                        &mut RgbImage::default(),
                        &mut pixels,
                    );
                    RgbImage {
                        width: size,
                        height: size,
                        pixels,
                    }
                }
                name => {
                    let op: Op = name.parse().map_err(|e: String| {
                        anyhow::anyhow!("{e}, or decode, resized-crop, eval, flip")
                    })?;
                    let no_arg = matches!(level_value(op, 0.0, true, false), OpArg::None);
                    let arg = match (arg, magnitude) {
                        (Some(a), _) => parse_op_arg(op, &a)?,
                        (None, Some(m)) => level_value(op, m, true, negative),
                        (None, None) if no_arg => OpArg::None,
                        (None, None) => bail!("{name} needs --arg X or --magnitude M"),
                    };
                    let mut image = image;
                    let mut ra =
                        RandAugment::new("rand-m0".parse()?, InterpolationChoice::Fixed(interp));
                    ra.apply_op(&mut image, op, arg, interp);
                    eprintln!("applied {name} with {arg:?}");
                    image
                }
            };
            write_png(&output, &out)
        }
    }
}

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given, which lives on this stack frame.
    let usage = unsafe {
        let mut u = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Opens the dataset and resolves a job of `bench` or `preview`.
fn open_job(shards: &Path, spec: &JobSpec) -> Result<(Dataset, JobPlan)> {
    // SAFETY: bench and preview only read, and nothing writes a finished dataset.
    let dataset = unsafe { Dataset::open(shards) }
        .with_context(|| format!("opening {}", shards.display()))?;
    let split = dataset.split(&spec.split)?;
    let plan = spec
        .plan(split.len())
        .with_context(|| format!("{} split {}", shards.display(), spec.split))?;
    Ok((dataset, plan))
}

fn preview(
    shards: &Path,
    transform: TransformSpec,
    out: &Path,
    (count, cols): (usize, usize),
    epoch: u32,
    seed: u64,
    split_name: &str,
) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    let spec = JobSpec::single(split_name, transform, seed, 1);
    let (dataset, plan) = open_job(shards, &spec)?;
    let transform = plan.transform();
    let split = dataset.split(split_name)?;
    let samples: Vec<_> = plan
        .sampler()
        .epoch(epoch)
        .into_iter()
        .take(count)
        .collect();
    let (side, cols) = (
        transform.img_size() as usize,
        cols.clamp(1, samples.len().max(1)),
    );
    let rows = samples.len().div_ceil(cols);
    let mut grid = RgbImage {
        width: (cols * side) as u32,
        height: (rows * side) as u32,
        pixels: vec![0u8; cols * rows * side * side * 3],
    };
    let mut worker = Worker::new(transform, seed);
    let mut tile = vec![0u8; transform.image_bytes()];
    for (i, s) in samples.iter().enumerate() {
        let record = split.get(u64::from(s.index))?;
        worker
            .produce(
                record.data,
                epoch,
                std::slice::from_ref(s),
                &mut [&mut tile[..]],
            )
            .with_context(|| format!("record {} ({})", s.index, record.path))?;
        let (gx, gy) = ((i % cols) * side, (i / cols) * side);
        for y in 0..side {
            let dst = ((gy + y) * cols * side + gx) * 3;
            grid.pixels[dst..dst + side * 3]
                .copy_from_slice(&tile[y * side * 3..(y + 1) * side * 3]);
        }
        let ops: Vec<String> = worker
            .last_ops()
            .iter()
            .map(|a| {
                let interp = a.interpolation.map_or(String::new(), |f| format!(" {f:?}"));
                format!("{}({:?}{interp})", a.op.name(), a.arg)
            })
            .collect();
        let listed = if ops.is_empty() {
            "no RandAugment op".to_owned()
        } else {
            ops.join(", ")
        };
        writeln!(
            stdout,
            "tile {i} (row {}, col {}): record {} {} label {} repeat {}: {listed}",
            i / cols,
            i % cols,
            s.index,
            record.path,
            record.label,
            s.repeat,
        )?;
    }
    write_png(out, &grid)?;
    eprintln!("wrote {} ({} tiles)", out.display(), samples.len());
    Ok(())
}

/// `loader serve` flags; each overrides the config file's key of the same name.
#[derive(Args)]
struct ServeArgs {
    /// TOML config (keys: shards, socket, workers, slots, max_slots, max_ring_bytes,
    /// max_clients, allow_uids, allow_gids, allow_groups, socket_mode, handshake_timeout_s;
    /// see configs/loader.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Dataset directory made by `shard-tool pack`.
    #[arg(long)]
    shards: Option<PathBuf>,
    /// Socket path (default: $RUNTIME_DIRECTORY/loader.sock, $XDG_RUNTIME_DIR/rsb/loader.sock
    /// or /run/rsb/loader.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Worker threads per client (default: one per core).
    #[arg(short = 'j', long)]
    workers: Option<u32>,
    /// Ring slots per client when the client does not ask (default 8).
    #[arg(long)]
    slots: Option<u32>,
    /// Allow this user id to connect (repeatable; default: the daemon's own uid).
    #[arg(long = "allow-uid")]
    allow_uids: Vec<u32>,
    /// Allow this group id to connect (repeatable).
    #[arg(long = "allow-gid")]
    allow_gids: Vec<u32>,
}

/// `loader fetch` flags.
#[derive(Args)]
struct FetchArgs {
    /// The daemon's socket (default: as `serve`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Job id: the ranks of one job (same id, same job, --rank 0..--world-size) that attach
    /// together are served by one producer and share decodes [default: fetch-PID, alone].
    #[arg(long)]
    job_id: Option<String>,
    #[command(flatten)]
    transform: TransformArgs,
    /// Split to read.
    #[arg(long, default_value = "train")]
    split: String,
    /// timm's --seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Samples per batch.
    #[arg(short = 'b', long, default_value_t = 64)]
    batch_size: u32,
    /// Ranks of the job.
    #[arg(long, default_value_t = 1)]
    world_size: u32,
    /// This client's rank.
    #[arg(long, default_value_t = 0)]
    rank: u32,
    /// First epoch.
    #[arg(long, default_value_t = 0)]
    start_epoch: u32,
    /// First step within the first epoch.
    #[arg(long, default_value_t = 0)]
    start_step: u64,
    /// Batches to read (default: to the end of the first epoch).
    #[arg(long)]
    steps: Option<u64>,
    /// Ring slots to ask for.
    #[arg(long)]
    slots: Option<u32>,
    /// Print the SHA-256 of every batch.
    #[arg(long)]
    digests: bool,
    /// Every N batches, print the daemon's resident memory (to watch for growth).
    #[arg(long, value_name = "N")]
    memory_every: Option<u64>,
    /// Seconds to keep trying to reach a daemon (at start and after it goes away).
    #[arg(long, default_value = "60", value_parser = seconds, allow_negative_numbers = true)]
    reconnect_timeout: Duration,
}

fn serve(args: ServeArgs) -> Result<()> {
    let origin = args.config.as_ref().map_or_else(
        || "loader serve".to_owned(),
        |p| format!("{} (or its flag)", p.display()),
    );
    let mut config: ServeConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text)
                .map_err(|e| UsageError(format!("{}: {}", path.display(), e.message())))?
        }
        None => ServeConfig::default(),
    };
    if let Some(s) = args.shards {
        config.shards = Some(s);
    }
    if let Some(s) = args.socket {
        config.socket = Some(s);
    }
    if let Some(w) = args.workers {
        config.workers = w;
    }
    if let Some(s) = args.slots {
        config.slots = s;
    }
    if !args.allow_uids.is_empty() {
        config.allow_uids = args.allow_uids;
    }
    if !args.allow_gids.is_empty() {
        config.allow_gids = args.allow_gids;
    }
    config
        .validate()
        .map_err(|e| UsageError(format!("{origin}: {e}")))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shards = config.shards.clone();
        let server = Server::bind(config)?;
        println!("{}", server.socket().display());
        tracing::info!(
            "serving {} on {}",
            shards.unwrap_or_default().display(),
            server.socket().display()
        );
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        };
        server.run(shutdown).await;
        Ok(())
    })
}

fn status(socket: Option<PathBuf>, json: bool) -> Result<()> {
    let socket = socket.unwrap_or_else(default_socket);
    let s = loader::client::stats(&socket)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "loader pid {} on {}, up {:.0} s, {} worker thread(s) per client",
        s.pid,
        socket.display(),
        s.uptime_s,
        s.workers
    )?;
    writeln!(
        out,
        "  {:.1} samples/s now; {} samples since start from {} decodes ({:.2} samples per \
         decode); {} decode error(s); {} connection(s) refused",
        s.samples_per_s,
        s.samples,
        s.decoded,
        s.samples as f64 / s.decoded.max(1) as f64,
        s.decode_errors,
        s.refused
    )?;
    let [d, r, f, a, w] = s.stage_ms;
    writeln!(
        out,
        "  per sample (ms, summed over threads): decode {d:.3}, crop+resize {r:.3}, flip \
         {f:.3}, RandAugment {a:.3}, write {w:.3}"
    )?;
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    writeln!(
        out,
        "  memory: {:.1} MiB anonymous, {:.1} MiB rings (shared memory), {:.1} MiB mapped files \
         (binary and shard pages: page cache)",
        mb(s.memory.anon),
        mb(s.memory.shmem),
        mb(s.memory.file)
    )?;
    writeln!(out, "  {} client(s)", s.clients.len())?;
    for c in &s.clients {
        writeln!(
            out,
            "    job {:?} rank {} (pid {}, uid {}, {}): next epoch {} step {}, ring {}/{} \
             slots full, {} samples",
            c.job_id,
            c.rank,
            c.pid,
            c.uid,
            match c.group {
                0 => "waiting for its job's other ranks".to_string(),
                1 => "alone".to_string(),
                n => format!("decodes shared by {n} ranks"),
            },
            c.next.epoch,
            c.next.step,
            c.slots_full,
            c.slots,
            c.samples
        )?;
    }
    Ok(())
}

fn fetch(args: &FetchArgs) -> Result<()> {
    let job = JobSpec {
        split: args.split.clone(),
        transform: TransformSpec::try_from(&args.transform)?,
        seed: args.seed,
        world_size: args.world_size,
        rank: args.rank,
        batch_size: args.batch_size,
    };
    job.validate()
        .map_err(|e| UsageError(format!("{e} (flags: --batch-size, --world-size, --rank)")))?;
    let socket = args.socket.clone().unwrap_or_else(default_socket);
    let mut client = Client::connect(ClientOptions {
        socket: socket.clone(),
        job_id: args
            .job_id
            .clone()
            .unwrap_or_else(|| format!("fetch-{}", std::process::id())),
        job,
        start: Position {
            epoch: args.start_epoch,
            step: args.start_step,
        },
        epochs: None,
        slots: args.slots,
        reconnect_timeout: args.reconnect_timeout,
    })?;
    let steps = args
        .steps
        .unwrap_or_else(|| client.steps_per_epoch().saturating_sub(args.start_step));
    let mut out = std::io::stdout().lock();
    let (t0, mut samples) = (Instant::now(), 0usize);
    for i in 0..steps {
        if args.memory_every.is_some_and(|n| n > 0 && i % n == 0) {
            let m = loader::client::stats(&socket)?.memory;
            let mb = |b: u64| b as f64 / (1 << 20) as f64;
            writeln!(
                out,
                "after {i} batches: daemon memory {:.1} MiB anonymous, {:.1} MiB rings, {:.1} \
                 MiB mapped files",
                mb(m.anon),
                mb(m.shmem),
                mb(m.file)
            )?;
        }
        let batch = client.next_batch()?.context("the daemon finished early")?;
        samples += batch.count;
        if args.digests {
            let d = batch_digest(batch.images(), batch.labels());
            let p = batch.position;
            writeln!(out, "epoch {} step {} sha256 {d}", p.epoch, p.step)?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    writeln!(
        out,
        "loader fetch: {steps} batches, {samples} samples in {secs:.2} s = {:.1} samples/s; {} \
         reconnect(s)",
        samples as f64 / secs,
        client.reconnects()
    )?;
    Ok(())
}

/// Settings of one `loader bench` run.
#[derive(Args)]
struct BenchArgs {
    /// Dataset directory made by `shard-tool pack`.
    shards: PathBuf,
    #[command(flatten)]
    transform: TransformArgs,
    /// Worker threads.
    #[arg(short = 'j', long, default_value_t = 1)]
    threads: usize,
    /// Samples to produce (rounded down to whole batches), across epochs if need be.
    #[arg(long, default_value_t = 1536)]
    samples: usize,
    /// Samples per batch.
    #[arg(short = 'b', long, default_value_t = 64)]
    batch_size: usize,
    /// Split to read.
    #[arg(long, default_value = "train")]
    split: String,
    /// timm's --seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// First step (batch) of the run, as after a restart at that step.
    #[arg(long, default_value_t = 0)]
    start_step: usize,
    /// Print the SHA-256 of every batch (images and labels), to compare runs.
    #[arg(long)]
    digests: bool,
    /// Also read the same batches through a `loader serve` daemon (started as a child
    /// process with the same threads) and report the ratio to the in-process rate.
    #[arg(long)]
    ring: bool,
    /// Also measure N ranks of one job (world size N, same threads): each rank's batches made
    /// alone, then the ranks' batches of each step made together as the daemon does for a
    /// job group (one decode for the copies that repeated augmentation spreads over ranks).
    #[arg(long, value_name = "N")]
    ranks: Option<u32>,
    /// Run everything this many times (in-process then --ring, alternating) and, with --ring,
    /// print the median ratio: one run of a few seconds is at the mercy of machine noise.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

fn bench(run: &BenchArgs) -> Result<()> {
    // The one-rank job every measurement of this run reads (`--ranks` splits it).
    let batch_size = u32::try_from(run.batch_size)
        .map_err(|_| UsageError(format!("--batch-size {} is too large", run.batch_size)))?;
    let spec = JobSpec::single(
        &run.split,
        TransformSpec::try_from(&run.transform)?,
        run.seed,
        batch_size,
    );
    spec.validate().map_err(UsageError::flag)?;
    let mut ratios = Vec::new();
    for _ in 0..run.repeat.max(1) {
        if let Some(ratio) = bench_once(run, &spec)? {
            ratios.push(ratio);
        }
    }
    if ratios.len() > 1 {
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        println!(
            "ring / in-process over {} repeats: {} (sorted); median {median:.3}",
            ratios.len(),
            shown.join(", ")
        );
    }
    Ok(())
}

/// One bench run of `spec`; returns ring / in-process with `--ring`.
fn bench_once(run: &BenchArgs, spec: &JobSpec) -> Result<Option<f64>> {
    let shards = run.shards.as_path();
    let mut stdout = std::io::stdout().lock();
    let (threads, samples, batch_size, split_name, seed) = (
        run.threads,
        run.samples,
        run.batch_size,
        run.split.as_str(),
        run.seed,
    );
    let (dataset, plan) = open_job(shards, spec)?;
    let transform = plan.transform();
    let split = dataset.split(split_name)?;
    // The batches from --start-step of epoch 0 on, across epochs as a trainer reads them.
    let spe = plan.steps_per_epoch();
    if run.start_step as u64 >= spe {
        bail!(
            "--start-step {} is past epoch 0's {spe} steps",
            run.start_step
        );
    }
    let batches = (samples / batch_size).max(1);
    let mut positions = vec![Position {
        epoch: 0,
        step: run.start_step as u64,
    }];
    while positions.len() < batches {
        let last = positions[positions.len() - 1];
        positions.push(plan.next(last));
    }
    let orders: std::collections::BTreeMap<u32, Vec<loader::sampler::Sample>> = positions
        .iter()
        .map(|p| (p.epoch, plan.sampler().epoch(p.epoch)))
        .collect();
    let at = |p: Position| plan.batch(&orders[&p.epoch], p.step);
    let mut maker = BatchMaker::new(transform, seed, threads);
    // Steps are filled as the daemon fills them when its client keeps up: up to
    // STEPS_PER_FILL steps of one epoch per call, so the two rates compare the same work.
    let mut images = vec![0u8; STEPS_PER_FILL * batch_size * transform.image_bytes()];
    // Fault its pages in now, as a daemon's ring is after its first pass: otherwise the first
    // writes of the timed run would pay the page faults.
    images.fill(1);
    let mut labels = vec![0u32; STEPS_PER_FILL * batch_size];
    // The records the run reads; the decode-only baseline reads the same ones.
    let used: Vec<u64> = positions
        .iter()
        .flat_map(|&p| at(p))
        .map(|s| u64::from(s.index))
        .collect::<std::collections::BTreeSet<u64>>()
        .into_iter()
        .collect();
    // Both timed runs start with every record's pages mapped and cached, as in a trainer's
    // steady state (the first epoch maps them); otherwise the first run alone would pay the
    // page faults. Then one warm-up batch (buffers), not timed.
    let mut touched = 0u8;
    for &index in &used {
        if let Ok(r) = split.get(index) {
            touched ^= r.data.iter().step_by(4096).fold(0, |a, &b| a ^ b);
        }
    }
    std::hint::black_box(touched);
    maker.fill(split, 0, at(positions[0]), &mut images, &mut labels);
    let warm = maker.times();
    let decode_before = decode_only_rate(split, &used, threads);
    let mut digests = Vec::new();
    let (t0, c0) = (Instant::now(), cpu_time());
    for run_positions in positions
        .chunk_by(|a, b| a.epoch == b.epoch)
        .flat_map(|same_epoch| same_epoch.chunks(STEPS_PER_FILL))
    {
        let outs = images
            .chunks_mut(batch_size * transform.image_bytes())
            .zip(labels.chunks_mut(batch_size))
            .zip(run_positions)
            .map(|((images, labels), &p)| BatchOut {
                samples: at(p),
                images,
                labels,
            })
            .collect();
        let reports = maker.fill_many(split, run_positions[0].epoch, outs);
        for report in reports {
            if !report.replaced.is_empty() {
                eprintln!(
                    "warning: records replaced after decode errors: {:?}",
                    report.replaced
                );
            }
        }
        if run.digests {
            for (k, &p) in run_positions.iter().enumerate() {
                let n = at(p).len();
                let image_bytes = &images[k * batch_size * transform.image_bytes()..]
                    [..n * transform.image_bytes()];
                digests.push((p, batch_digest(image_bytes, &labels[k * batch_size..][..n])));
            }
        }
    }
    let (wall, cpu) = (t0.elapsed(), cpu_time() - c0);
    let mut times = maker.times();
    times.decode -= warm.decode;
    times.resize -= warm.resize;
    times.flip -= warm.flip;
    times.rand_augment -= warm.rand_augment;
    times.write -= warm.write;
    times.decoded -= warm.decoded;
    times.samples -= warm.samples;
    let rate = times.samples as f64 / wall.as_secs_f64();

    // Baseline: decode-only of the same records, same threads, nothing else, timed before
    // and after the run above (the mean of the two rates, so that drift of this machine's
    // speed during the run weighs on both sides alike).
    let decode_rate = (decode_before + decode_only_rate(split, &used, threads)) / 2.0;

    let per = |d: Duration| d.as_secs_f64() * 1e3 / times.samples.max(1) as f64;
    writeln!(
        stdout,
        "loader bench: {} on {} ({} records), {threads} thread(s), {} samples in {} batches of {batch_size}",
        transform,
        shards.display(),
        split.len(),
        times.samples,
        batches
    )?;
    writeln!(
        stdout,
        "  samples/s {rate:.1} ({:.1} per thread); {} decodes for {} samples",
        rate / threads.max(1) as f64,
        times.decoded,
        times.samples
    )?;
    writeln!(
        stdout,
        "  per sample (ms, summed over threads): decode {:.3}, crop+resize {:.3}, flip {:.3} \
         (its draw; the resize writes the mirror), RandAugment {:.3}, output write {:.3}",
        per(times.decode),
        per(times.resize),
        per(times.flip),
        per(times.rand_augment),
        per(times.write)
    )?;
    writeln!(
        stdout,
        "  CPU use {:.0} % of {threads} core(s) ({:.2} s CPU in {:.2} s)",
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64() / threads.max(1) as f64,
        cpu.as_secs_f64(),
        wall.as_secs_f64()
    )?;
    writeln!(
        stdout,
        "  decode-only: {decode_rate:.1} images/s (timed before and after) on the same {} records and threads; \
         samples/s / decode-only images/s = {:.2}",
        used.len(),
        rate / decode_rate
    )?;
    let mut ratio = None;
    if run.ring {
        let ring_rate = bench_ring(run, spec, &positions)?;
        writeln!(
            stdout,
            "  through the daemon's ring into this process (daemon in its own process, same \
             threads): samples/s {ring_rate:.1}; ring / in-process = {:.3}",
            ring_rate / rate
        )?;
        ratio = Some(ring_rate / rate);
    }
    if let Some(n) = run.ranks {
        bench_ranks(run, spec, n, &mut stdout)?;
    }
    for (p, d) in digests {
        writeln!(stdout, "  epoch {} step {} sha256 {d}", p.epoch, p.step)?;
    }
    Ok(ratio)
}

/// Images/s decoding `records` of `split` and nothing else, on `threads` threads.
fn decode_only_rate(split: &shard_tool::Split, records: &[u64], threads: usize) -> f64 {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let (decoder, mut img) = (Decoder::default(), RgbImage::default());
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&index) = records.get(i) else { return };
                    if let Ok(r) = split.get(index) {
                        let _ = decoder.decode_into(r.data, &mut img);
                    }
                }
            });
        }
    });
    records.len() as f64 / t.elapsed().as_secs_f64()
}

/// `bench --ranks N`: the ranks of one job made alone, then together; same threads, same
/// steps; checks that both give the same bytes.
fn bench_ranks(run: &BenchArgs, spec: &JobSpec, n: u32, out: &mut impl Write) -> Result<()> {
    let (dataset, first) = open_job(&run.shards, &rank_spec(spec, n, 0)?)?;
    let split = dataset.split(&run.split)?;
    let plans = (0..n)
        .map(|rank| Ok(rank_spec(spec, n, rank)?.plan(split.len())?))
        .collect::<Result<Vec<_>>>()?;
    let transform = first.transform();
    let orders: Vec<_> = plans.iter().map(|p| p.sampler().epoch(0)).collect();
    let b = run.batch_size;
    // Steps per rank, plus one untimed warm-up step.
    let steps = (run.samples / (b * n as usize)).max(1) + 1;
    let available = plans.iter().map(|p| p.steps_per_epoch()).min().unwrap_or(0) as usize;
    if steps > available {
        bail!(
            "--ranks {n}: {steps} steps of {b} samples per rank go past the epoch's {available} \
             steps; use fewer --samples"
        );
    }
    let at = |rank: usize, step: usize| plans[rank].batch(&orders[rank], step as u64);
    let bytes = transform.image_bytes();
    let mut images = vec![vec![0u8; b * bytes]; n as usize];
    let mut labels = vec![vec![0u32; b]; n as usize];

    let mut alone = BatchMaker::new(transform, run.seed, run.threads);
    let mut t_alone = Duration::ZERO;
    let mut decoded_alone = 0;
    for step in 0..steps {
        let (t0, d0) = (Instant::now(), alone.times().decoded);
        for rank in 0..n as usize {
            alone.fill(
                split,
                0,
                at(rank, step),
                &mut images[rank],
                &mut labels[rank],
            );
        }
        if step > 0 {
            t_alone += t0.elapsed();
            decoded_alone += alone.times().decoded - d0;
        }
    }
    let last_alone: Vec<String> = (0..n as usize)
        .map(|r| batch_digest(&images[r], &labels[r]))
        .collect();

    let mut together = BatchMaker::new(transform, run.seed, run.threads);
    let mut t_together = Duration::ZERO;
    let mut decoded_together = 0;
    for step in 0..steps {
        let (t0, d0) = (Instant::now(), together.times().decoded);
        let outs = images
            .iter_mut()
            .zip(labels.iter_mut())
            .enumerate()
            .map(|(rank, (images, labels))| BatchOut {
                samples: at(rank, step),
                images,
                labels,
            })
            .collect();
        together.fill_many(split, 0, outs);
        if step > 0 {
            t_together += t0.elapsed();
            decoded_together += together.times().decoded - d0;
        }
    }
    let same = (0..n as usize).all(|r| batch_digest(&images[r], &labels[r]) == last_alone[r]);
    if !same {
        bail!("--ranks {n}: the ranks' batches differ between alone and together");
    }
    let samples = ((steps - 1) * b * n as usize) as f64;
    let (rate_alone, rate_together) = (
        samples / t_alone.as_secs_f64(),
        samples / t_together.as_secs_f64(),
    );
    writeln!(
        out,
        "  {n} ranks of one job ({} steps of {b} per rank, {} thread(s)): alone {rate_alone:.1} \
         samples/s ({decoded_alone} decodes), together {rate_together:.1} samples/s \
         ({decoded_together} decodes), same bytes; together / alone = {:.2}",
        steps - 1,
        run.threads,
        rate_together / rate_alone
    )?;
    Ok(())
}

/// Rank `rank` of an `n`-rank job of the bench's one-rank `spec`.
fn rank_spec(spec: &JobSpec, n: u32, rank: u32) -> Result<JobSpec> {
    let spec = JobSpec {
        world_size: n,
        rank,
        ..spec.clone()
    };
    spec.validate()
        .map_err(|e| UsageError(format!("--ranks {n}: {e}")))?;
    Ok(spec)
}

/// SHA-256 of a batch: its images, then its labels as little-endian u32.
fn batch_digest(images: &[u8], labels: &[u32]) -> String {
    let mut h = Sha256::new();
    h.update(images);
    for l in labels {
        h.update(l.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

/// Starts `loader serve` as a child process on a private socket, reads the same batches through
/// its ring, and returns the samples/s (first batch not timed, as in-process).
fn bench_ring(run: &BenchArgs, spec: &JobSpec, positions: &[Position]) -> Result<f64> {
    let dir = std::env::temp_dir().join(format!("rsb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let socket = dir.join("loader.sock");
    let mut daemon = std::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg("--shards")
        .arg(&run.shards)
        .arg("--socket")
        .arg(&socket)
        .arg("--workers")
        .arg(run.threads.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting `loader serve` for the ring measurement")?;
    let result = (|| -> Result<f64> {
        let mut client = Client::connect(ClientOptions {
            socket: socket.clone(),
            job_id: "bench".into(),
            job: spec.clone(),
            start: positions.first().copied().unwrap_or_default(),
            epochs: None,
            slots: None,
            reconnect_timeout: Duration::from_secs(30),
        })?;
        // Warm-up batch, as in-process.
        drop(client.next_batch()?);
        let t0 = Instant::now();
        let mut samples = 0;
        for _ in positions.iter().skip(1) {
            let batch = client.next_batch()?.context("the daemon finished early")?;
            // Touch one byte per page, as an upload would read them.
            let sum: u64 = batch
                .images()
                .iter()
                .step_by(4096)
                .map(|&b| u64::from(b))
                .sum();
            std::hint::black_box(sum);
            samples += batch.count;
        }
        // The first batch was the warm-up; time the rest from its arrival.
        Ok(samples as f64 / t0.elapsed().as_secs_f64())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `--size` of `augment`: the loader's output range.
fn check_size(size: u32) -> Result<()> {
    if !loader::transform::IMG_SIZE.contains(&size) {
        return Err(UsageError(format!(
            "--size {size} is outside {}..={}",
            loader::transform::IMG_SIZE.start(),
            loader::transform::IMG_SIZE.end()
        ))
        .into());
    }
    Ok(())
}

fn parse_op_arg(op: Op, text: &str) -> Result<OpArg> {
    Ok(match level_value(op, 0.0, true, false) {
        OpArg::None => OpArg::None,
        OpArg::Int(_) => OpArg::Int(
            text.parse()
                .with_context(|| format!("--arg {text:?}: {} takes a whole number", op.name()))?,
        ),
        OpArg::Float(_) => OpArg::Float(
            text.parse()
                .with_context(|| format!("--arg {text:?}: {} takes a number", op.name()))?,
        ),
    })
}

fn parse_box(arg: Option<&str>, image: &RgbImage) -> Result<CropBox> {
    let usage = |m: String| anyhow::Error::from(UsageError(m));
    let arg = arg.ok_or_else(|| usage("resized-crop needs --arg LEFT,TOP,WIDTH,HEIGHT".into()))?;
    let v: Vec<u32> = arg
        .split(',')
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| usage(format!("--arg {arg:?}: expected four whole numbers")))?;
    let [left, top, width, height] = v[..] else {
        return Err(usage(format!(
            "--arg {arg:?}: expected LEFT,TOP,WIDTH,HEIGHT"
        )));
    };
    // Checked: a box near u32::MAX must not wrap around into the image.
    let fits = |start: u32, len: u32, side: u32| {
        len > 0 && start.checked_add(len).is_some_and(|end| end <= side)
    };
    if !fits(left, width, image.width) || !fits(top, height, image.height) {
        return Err(usage(format!(
            "--arg {left},{top},{width},{height}: the box must lie within the {}x{} image \
             (LEFT + WIDTH <= {}, TOP + HEIGHT <= {}, sides at least 1)",
            image.width, image.height, image.width, image.height
        )));
    }
    Ok(CropBox {
        top,
        left,
        height,
        width,
    })
}

/// Reads a JPEG (through the loader's decoder) or a PNG (as RGB, alpha dropped).
fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"\x89PNG") {
        let options = DecoderOptions::default().png_set_strip_to_8bit(true);
        let mut d = PngDecoder::new_with_options(ZCursor::new(&bytes[..]), options);
        let raw = d
            .decode_raw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .with_context(|| format!("decoding {}", path.display()))?;
        let (w, h) = d.dimensions().context("PNG without a header")?;
        let channels = d
            .colorspace()
            .context("PNG without a colorspace")?
            .num_components();
        let mut pixels = Vec::with_capacity(w * h * 3);
        for px in raw.chunks_exact(channels) {
            match channels {
                1 | 2 => pixels.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => pixels.extend_from_slice(&px[..3]),
            }
        }
        return Ok(RgbImage {
            width: w as u32,
            height: h as u32,
            pixels,
        });
    }
    let mut image = RgbImage::default();
    Decoder::default()
        .decode_into(&bytes, &mut image)
        .with_context(|| format!("decoding {}", path.display()))?;
    Ok(image)
}

fn write_png(path: &Path, image: &RgbImage) -> Result<()> {
    let options = EncoderOptions::new(
        image.width as usize,
        image.height as usize,
        ColorSpace::RGB,
        BitDepth::Eight,
    );
    let mut out = Vec::new();
    PngEncoder::new(&image.pixels, options)
        .encode(&mut out)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("encoding {}", path.display()))?;
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
