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
/// parsed; that `--help` lists each command in one line, as cargo and ripgrep do (the
/// paragraphs are the command's own `--help`); and that no numeric flag takes an absurd
/// number ([`unbounded_numbers`]) but those named in `any_integer` (a seed, a uid).
///
/// # Panics
/// When a check fails, naming the subcommand or the flags.
pub fn assert_command_line(cmd: clap::Command, any_integer: &[&str]) {
    let unbounded = unbounded_numbers(&cmd, any_integer);
    assert!(
        unbounded.is_empty(),
        "flags that take an absurd number: {unbounded:#?}"
    );
    assert_commands(cmd);
}

/// The command-line checks of [`assert_command_line`] but the numbers'.
fn assert_commands(cmd: clap::Command) {
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

/// A clap value parser for a number within `range`, for every numeric flag of the three
/// binaries (clap's own ranges cover neither floats nor `usize`): the value parsed, then
/// checked, so `--tolerance NaN`, `--world-size 4611686018427387904` or `--lr 1e300` is
/// refused where it is parsed, naming the range (NaN and infinities fall outside every range).
pub fn number_in<T>(
    range: std::ops::RangeInclusive<T>,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Debug + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    move |text: &str| {
        let value: T = text.trim().parse().map_err(|e| format!("{e}"))?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(format!(
                "{value:?} is outside {:?}..={:?}",
                range.start(),
                range.end()
            ))
        }
    }
}

/// The flags of `cmd` (and its subcommands) that take a number and would take an absurd one:
/// an integer flag that parses 2^64 − 1 or 2^32 − 1 (unless it is one of `any_integer`, such
/// as a seed or a uid, where every value of its type is a valid one), a float flag that parses NaN, an infinity or 1e300. Each
/// is named `command --flag (value)`. For the binaries' tests: every numeric flag is bounded
/// where it is parsed, and a flag added without a bound fails them.
pub fn unbounded_numbers(cmd: &clap::Command, any_integer: &[&str]) -> Vec<String> {
    use std::any::TypeId;
    let integers = [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
    ];
    let floats = [TypeId::of::<f32>(), TypeId::of::<f64>()];
    let mut found = Vec::new();
    let mut stack: Vec<(Vec<String>, clap::Command)> =
        vec![(vec![cmd.get_name().to_string()], cmd.clone())];
    while let Some((path, cmd)) = stack.pop() {
        for sub in cmd.get_subcommands() {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            stack.push((p, sub.clone()));
        }
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if !arg.get_action().takes_values() {
                continue;
            }
            let parser = arg.get_value_parser();
            let absurd: &[&str] = if integers.iter().any(|t| parser.type_id() == *t) {
                if any_integer.contains(&long) {
                    continue;
                }
                &["18446744073709551615", "4294967295"]
            } else if floats.iter().any(|t| parser.type_id() == *t) {
                &["NaN", "inf", "-inf", "1e300"]
            } else {
                continue;
            };
            // A flag of several values (`--scale MIN MAX`) gets the value in each place.
            let values = arg.get_num_args().map_or(1, |n| n.min_values().max(1));
            for value in absurd {
                let mut argv = path.clone();
                if values == 1 {
                    argv.push(format!("--{long}={value}"));
                } else if value.starts_with('-') {
                    // Read as a flag of its own, not a value: nothing to check.
                    continue;
                } else {
                    argv.push(format!("--{long}"));
                    argv.extend(std::iter::repeat_n(value.to_string(), values));
                }
                let refused = match cmd.clone().try_get_matches_from(&argv[path.len() - 1..]) {
                    Err(e) => matches!(
                        e.kind(),
                        clap::error::ErrorKind::ValueValidation
                            | clap::error::ErrorKind::InvalidValue
                    ),
                    Ok(_) => false,
                };
                if !refused {
                    found.push(format!("{} --{long} ({value})", path.join(" ")));
                }
            }
        }
    }
    found.sort();
    found
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
