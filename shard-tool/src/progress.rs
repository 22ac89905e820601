//! What the workspace's binaries share about their progress bars.

use indicatif::ProgressBar;

/// Prints a line above a live bar, or plainly on stderr when the bar is hidden (not a
/// terminal, or `--quiet`), where `ProgressBar::println` would print nothing: a log captured
/// from a service or `nohup` keeps every line.
pub fn say(bar: &ProgressBar, line: impl Into<String>) {
    let line = line.into();
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}
