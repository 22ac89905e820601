//! `loader`: the rsb data loader. `serve` is the daemon that feeds trainers through shared
//! memory, `status` and `fetch` talk to it; `bench`, `preview` and `augment` measure the
//! transforms and show them. Each subcommand lives in its own module under `cli/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loader::image::cpu::{CpuExt, CpuExtChoice};

mod cli;

use cli::UsageError;

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
    /// SIMD kernels: auto (the most this CPU has), none (portable code only, to measure what
    /// the SIMD kernels buy) or avx2. Every choice gives the same bytes.
    #[arg(long, global = true, default_value = "auto")]
    cpu_ext: CpuExtChoice,
}

#[derive(Subcommand)]
enum Command {
    /// Write a PNG grid of augmented samples and list the RandAugment ops of each.
    ///
    /// The first samples of an epoch, as the trainer would get them.
    Preview(cli::preview::PreviewArgs),
    /// Measure the loader on packed shards: samples/s, time per stage, CPU use.
    ///
    /// With the decode-only rate of the same records on the same threads, for scale.
    ///
    /// Transforms: a1/a2 (RRC 224, flip, rand-m7-mstd0.5-inc1, 3 repeats), a3 (160,
    /// rand-m6-mstd0.5-inc1, no repeats), eval (224, crop 0.95, bicubic).
    Bench(cli::bench::BenchArgs),
    /// Run the daemon: serve batches to trainers over a Unix socket and shared-memory rings.
    ///
    /// `loader serve --shards DIR` works with defaults for everything else; a config file
    /// (configs/loader.toml) sets the rest, and flags override it. Prints the socket path and
    /// the memory its rings may take, logs to stderr (RUST_LOG=debug for every refused
    /// connection), stops cleanly on SIGTERM or Ctrl-C, removing its socket. Under systemd
    /// (Type=notify) it reports READY, a STATUS line and WATCHDOG pings.
    Serve(cli::serve::ServeArgs),
    /// Show what a running daemon is doing: clients, samples/s, rings, decode errors.
    ///
    /// Per client: its job, rank, position and ring occupancy; per stage: the time per sample.
    Status(cli::status::StatusArgs),
    /// Read batches from a running daemon as a trainer would: samples/s, digests.
    ///
    /// Optionally the SHA-256 of every batch (to compare with `bench --digests` or another
    /// run). Reconnects and resumes at the next batch if the daemon restarts.
    Fetch(cli::fetch::FetchArgs),
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
    Augment(cli::augment::AugmentArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = CpuExt::cap(cli.cpu_ext) {
        let e = anyhow::Error::new(UsageError(e.to_string()));
        return shard_tool::console::fail(e.chain(), |_| false);
    }
    let result = match cli.command {
        Command::Preview(args) => cli::preview::run(&args),
        Command::Bench(args) => cli::bench::run(&args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Status(args) => cli::status::run(&args),
        Command::Fetch(args) => cli::fetch::run(&args),
        Command::Augment(args) => cli::augment::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => shard_tool::console::fail(e.chain(), |e| {
            e.downcast_ref::<loader::server::ServeError>()
                .is_some_and(loader::server::ServeError::is_bad_input)
        }),
    }
}

#[cfg(test)]
mod tests {
    /// Every subcommand's flags, its one line in `--help`, every number bounded.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        shard_tool::console::assert_command_line(
            super::Cli::command(),
            &["seed", "allow-uid", "allow-gid"],
        );
    }
}
