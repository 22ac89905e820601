//! `shard-tool`: pack an image folder tree into rsb shards, and check, inspect and read them.
//! Each subcommand lives in its own module under `cli/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "shard-tool",
    version,
    about = "Pack an ImageNet-style folder tree into checked, memory-mapped rsb shards.",
    long_about = "Pack an ImageNet-style folder tree into checked, memory-mapped rsb shards, \
                  then verify, inspect or extract them.\n\n\
                  Typical use:\n  \
                  shard-tool pack /data/imagenet --out /data/imagenet-rsb\n  \
                  shard-tool verify /data/imagenet-rsb\n  \
                  shard-tool inspect /data/imagenet-rsb"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print no progress bars or summaries, only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More log output (repeat for more; RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Pack ROOT (train/, val/, test/ with class folders, or a flat val/) into shards.
    ///
    /// Every image is decoded once in strict mode. JPEGs are stored byte for byte; PNGs (whatever
    /// the extension) and CMYK JPEGs are converted to RGB JPEGs; files that do not decode are
    /// listed in manifest.json and report.txt with the reason, never dropped silently.
    ///
    /// Every file is written under a temporary name and renamed when complete, manifest.json
    /// last: a killed pack leaves nothing that opens as a dataset, and running the same command
    /// again keeps the finished shards and completes the job.
    ///
    /// Exit status: 0 every image stored; 3 the dataset is complete but some image files could
    /// not be stored (see report.txt); 2 ROOT is not a tree pack can read (or OUT holds another
    /// pack); 1 error at run time, nothing usable written.
    Pack(cli::pack::PackArgs),
    /// Check every checksum of a packed dataset; name every record that does not match.
    ///
    /// Exit status: 0 intact; 1 damaged (each problem is printed) or unreadable; 2 not a
    /// finished rsb pack.
    Verify(cli::verify::VerifyArgs),
    /// Show counts per split and class, sizes, and the options a dataset was packed with.
    Inspect(cli::inspect::InspectArgs),
    /// Write one record's image bytes, exactly as stored, to a file.
    Extract(cli::extract::ExtractArgs),
    /// Write a synthetic ImageFolder tree (for demos and tests).
    Synth(cli::synth::SynthArgs),
    /// Measure pack throughput against zune-jpeg's decode-only rate on the same files.
    ///
    /// Reads every file of ROOT once to warm the page cache, then for each round decodes all
    /// JPEGs from memory (the baseline: zune-jpeg, strict mode, RGB out, as the packer decodes)
    /// and packs ROOT into a scratch directory, with the same number of threads. Prints
    /// images/s of both, their ratio, and the pack's peak RSS.
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    shard_tool::console::init_logging(match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    });
    let quiet = cli.quiet;
    let result = match cli.command {
        Command::Pack(args) => cli::pack::run(args, quiet),
        Command::Verify(args) => cli::verify::run(&args, quiet),
        Command::Inspect(args) => cli::inspect::run(&args),
        Command::Extract(args) => cli::extract::run(args, quiet),
        Command::Synth(args) => cli::synth::run(args, quiet),
        Command::Bench(args) => cli::bench::run(args),
    };
    result.unwrap_or_else(|e| {
        shard_tool::console::fail(e.chain(), |e| {
            e.downcast_ref::<shard_tool::Error>()
                .is_some_and(shard_tool::Error::is_bad_input)
        })
    })
}

#[cfg(test)]
mod tests {
    /// Every subcommand's flags, its one line in `--help`, every number bounded.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        shard_tool::console::assert_command_line(super::Cli::command(), &["seed"]);
    }
}
