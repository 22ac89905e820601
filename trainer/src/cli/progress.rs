//! How `trainer train` and `study` show a run: one bar of steps on stderr (the workspace's
//! one bar helper, `shard_tool::console`), evaluations, checkpoints and notes printed above
//! it, and, without a terminal (a log file), a step line every fiftieth of the run.

use indicatif::ProgressBar;
use shard_tool::console::say;
use trainer::run::Event;
use trainer::run::metrics::Metric;

/// The bar a run's steps advance (its length is set when the run starts).
pub fn run_bar() -> ProgressBar {
    shard_tool::console::bar(
        0,
        "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} (eta {eta})",
        false,
    )
}

/// Shows one event of the run of `model` whose metrics are in `metrics`.
pub fn report(bar: &ProgressBar, model: &str, metrics: &std::path::Path, e: Event) {
    match e {
        Event::Started {
            start_step,
            total_steps,
            steps_per_epoch,
            params,
        } => {
            bar.set_length(total_steps);
            bar.set_position(start_step);
            say(
                bar,
                format!(
                    "{model} ({params} trainable parameters), {steps_per_epoch} steps per \
                     epoch, steps {start_step}..{total_steps}; metrics in {}",
                    metrics.display()
                ),
            );
        }
        Event::Metric(Metric::Step {
            step,
            epoch,
            loss,
            lr,
            samples_per_s,
            ..
        }) => {
            let text = format!("epoch {epoch} loss {loss:.4} lr {lr:.2e} {samples_per_s:.1} img/s");
            // Without a terminal (a log file), a line for every fiftieth of the run.
            let total = bar.length().unwrap_or(0);
            if bar.is_hidden() && (step % (total / 50).max(1) == 0 || step == total) {
                eprintln!("step {step}/{total} {text}");
            }
            bar.set_position(step);
            bar.set_message(text);
        }
        Event::Metric(Metric::Eval {
            epoch,
            top1,
            top5,
            samples,
            ..
        }) => say(
            bar,
            format!(
                "eval after epoch {epoch}: top-1 {top1:.2} %, top-5 {top5:.2} % ({samples} images)"
            ),
        ),
        Event::Checkpoint(c) => say(bar, format!("checkpoint {}", c.dir().display())),
        Event::Note(text) => say(bar, format!("note: {text}")),
        Event::Batch {
            rank,
            position,
            sha256,
        } => println!(
            "rank {rank} epoch {} step {} sha256 {sha256}",
            position.epoch, position.step
        ),
    }
}
