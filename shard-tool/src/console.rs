//! What the workspace's three binaries share about their console: progress bars, lines said
//! above them, the log subscriber, and exit statuses (0 done, 1 a failure at run time, 2 bad
//! usage or bad input), so `shard-tool`, `loader` and `trainer` behave alike.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps on stderr drawn with indicatif's `template`; hidden with `quiet` or
/// when stderr is not a terminal (a log file then gets [`say`]'s lines, not bar redraws).
pub fn bar(len: u64, template: &str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

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

/// `name` (a record's path, a class name, anything a dataset or a file system supplies) safe
/// to print on a terminal: control characters (escape sequences, newlines, carriage returns)
/// as Rust's `\u{1b}`, `\n`, `\r` escapes; everything else, non-ASCII letters included, as
/// it is.
pub fn escaped(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Installs the binary's log subscriber on stderr: `default` (`warn`, `info`, ...) unless
/// `RUST_LOG` says otherwise. Libraries only emit events; this is for `main`.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A second call (a test's) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Bad usage or bad input (a flag, a config, a file the user named that cannot be used): the
/// command exits with status 2, where a failure at run time exits 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// Prints a failed command's error on one line (`error: ...`, each cause once) and gives its
/// exit status: 0 for a closed pipe (`... | head` is the reader's choice), 2 when `bad_input`
/// says so of any error in the chain or one is a [`Usage`], else 1.
pub fn fail<'a>(
    chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)> + Clone,
    bad_input: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> ExitCode {
    let mut all = chain.clone();
    if all.any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    }) {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {}", crate::one_line(chain.clone()));
    let mut all = chain;
    if all.any(|e| e.is::<Usage>() || bad_input(e)) {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// Checks a binary's command line, for its tests: clap's own checks of every subcommand's
/// flags (a name used twice, a bad default), which clap makes only when that subcommand is
/// parsed, and that `--help` lists each command in one line, as cargo and ripgrep do (the
/// paragraphs are the command's own `--help`).
///
/// # Panics
/// When a check fails, naming the subcommand.
pub fn assert_commands(cmd: clap::Command) {
    let long: Vec<String> = cmd
        .get_subcommands()
        .filter_map(|sub| {
            let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
            let fits = !about.is_empty() && !about.contains('\n') && about.len() <= 90;
            (!fits).then(|| format!("{}: {about:?}", sub.get_name()))
        })
        .collect();
    assert!(long.is_empty(), "not one line in --help: {long:?}");
    cmd.debug_assert();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_only_where_a_terminal_would_obey_them() {
        assert_eq!(escaped("n01440764/a.JPEG"), "n01440764/a.JPEG");
        assert_eq!(escaped("été/ü.jpg"), "été/ü.jpg");
        assert_eq!(escaped("a\x1b[2Jb.jpg"), "a\\u{1b}[2Jb.jpg");
        assert_eq!(escaped("two\nlines\r.jpg"), "two\\nlines\\r.jpg");
    }
}
