//! The `shard-tool` binary's subcommands, one module each, and what they share: the thread
//! default and the progress bars.

use indicatif::ProgressBar;

pub mod bench;
pub mod extract;
pub mod inspect;
pub mod pack;
pub mod synth;
pub mod verify;

/// All cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What `-j/--threads` takes: one thread up to more than any machine has.
pub const THREADS: std::ops::RangeInclusive<usize> = 1..=4096;

/// A bar of `len` steps on stderr; hidden with `--quiet` or when stderr is not a terminal.
pub fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    shard_tool::console::bar(
        len,
        "{prefix:>6} [{bar:32}] {human_pos}/{human_len} {msg} ETA {eta}",
        quiet,
    )
}
