//! `trainer check-device`: one batch on two devices, logits, loss and gradients compared.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use loader::request::job::BATCH_SIZE;
use loader::request::transform::IMG_SIZE;
use shard_tool::console::number_in;
use trainer::device::{DeviceKind, Precision};
use trainer::diagnostics::device_check::{self, Difference, GROUPS, Judge, Verdict};
use trainer::recipe::ranges;

use super::ModelArgs;

/// `trainer check-device` flags.
#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Device under test: cuda[:N], or cube-cpu (the same CubeCL kernels on this CPU).
    #[arg(long, default_value = "cuda")]
    pub device: DeviceKind,
    /// Reference device.
    #[arg(long, default_value = "flex")]
    pub reference: DeviceKind,
    /// Float types on the reference (f32, or amp to compare amp with amp: the same bf16
    /// roundings, so only the devices' arithmetic differs).
    #[arg(long, value_enum, default_value = "f32")]
    pub reference_dtype: Precision,
    /// Float types on the device under test: f32, bf16 (everything), amp (f32 weights, bf16
    /// convolutions and classifier); the reference is f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
    /// Images in the batch.
    #[arg(long, short = 'b', default_value_t = 8, value_parser = number_in(super::widen(BATCH_SIZE)))]
    pub batch: usize,
    /// Square image side.
    #[arg(long, default_value_t = 64, value_parser = number_in(super::widen(IMG_SIZE)))]
    pub img_size: usize,
    /// Largest relative difference (‖a−b‖/‖a‖) that passes whatever the floor (with bf16 on
    /// either side, at least bf16's epsilon, 2⁻⁷: what it stores cannot agree closer).
    #[arg(long, default_value_t = 1e-3, value_parser = number_in(0.0..=1.0))]
    pub tolerance: f64,
    /// A difference up to this many times the rounding floor also passes ("ok (floor)"). The
    /// floor: how far the reference moves from itself when each input moves by one rounding
    /// of the compute type (f32: 2⁻²³, amp/bf16: 2⁻⁷). A deep model at random init amplifies
    /// that to 2 % of its gradients in f32 (ResNet-50) and past 100 % in bf16; where the
    /// bound reaches 1 the line says "noise": nothing can be judged there. 0: tolerance only.
    #[arg(long, default_value_t = device_check::FLOOR_FACTOR, value_parser = number_in(0.0..=1e6))]
    pub floor_factor: f64,
    /// Seed of weights and batch.
    #[arg(long, default_value_t = 0, value_parser = number_in(ranges::SEED))]
    pub seed: u64,
    /// Print every gradient, running statistic and update, not only each kind's worst.
    #[arg(long)]
    pub all: bool,
    /// One JSON line at the end: the worst relative difference of each kind.
    #[arg(long)]
    pub json: bool,
}

/// Why `a` names no comparison this command can make: one device against itself (its float
/// type is a setting of the device, so both sides would run the same arithmetic and agree to
/// the bit, a check of nothing), or a pair of float types that is not a reference and what it
/// vouches for.
fn refusal(a: &CheckArgs) -> Option<String> {
    use Precision::{Amp, Bf16, F32};
    let (r, t) = (a.reference_dtype, a.dtype);
    if a.reference == a.device && (r == t || r == Bf16 || t == Bf16) {
        return Some(format!(
            "--device and --reference are both {}: one device, whose float type is its own \
             setting, compared with itself; compare two devices (--device cuda or cube-cpu \
             against --reference flex)",
            a.device
        ));
    }
    match (r, t) {
        (F32, _) | (Amp, Amp) | (Bf16, Bf16) => None,
        _ => Some(format!(
            "--reference-dtype {} cannot vouch for --dtype {}: the reference is f32 (against \
             any), or the same amp or bf16 as the device (the same roundings on both sides)",
            r.name(),
            t.name()
        )),
    }
}

/// Compares and prints each difference; failure if one is over the tolerance.
pub fn run(a: CheckArgs) -> Result<ExitCode> {
    if let Some(why) = refusal(&a) {
        return Err(super::Usage(why).into());
    }
    // With timm's zero-initialized last BN γ, no gradient reaches the residual
    // branches: they would compare as equal zeros.
    let config = a
        .model
        .config_at(Some(a.img_size))?
        .with_zero_init_last(false);
    let reference = a.reference.device(a.reference_dtype)?.autodiff();
    let target = a.device.device(a.dtype)?.autodiff();
    let diffs = device_check::compare_devices(
        &config,
        a.batch,
        a.img_size,
        a.seed,
        &reference,
        &target,
        [a.reference_dtype.compute(), a.dtype.compute()],
    )?;
    // How far the reference moves from itself when its input moves by one ulp: what the
    // model's conditioning makes of any rounding, before any backend differs.
    let floor = device_check::rounding_floor(
        &config,
        a.batch,
        a.img_size,
        a.seed,
        &reference,
        a.reference_dtype.compute(),
        a.reference_dtype.epsilon(),
    )?;
    let judge = Judge::new(
        floor,
        a.tolerance,
        a.floor_factor,
        [a.reference_dtype, a.dtype],
    );
    println!(
        "{} batch {} at {}px, {} {} against {} {} (relative = |a-b|/|a|):",
        a.model.model,
        a.batch,
        a.img_size,
        a.device,
        a.dtype.name(),
        a.reference,
        a.reference_dtype.name()
    );
    let over = report(&a, &diffs, &judge);
    Ok(if over == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints every difference judged (each group's worst, and its tensors that are over or, with
/// `--all`, every one), the summary line and, with `--json`, the figures as one JSON line;
/// returns how many differences are over.
fn report(a: &CheckArgs, diffs: &[Difference], judge: &Judge) -> usize {
    let tolerance = judge.tolerance();
    let verdict = |d: &Difference| judge.verdict(d);
    let grouped = |d: &Difference| GROUPS.iter().any(|(p, _)| d.name.starts_with(p));
    for d in diffs.iter().filter(|d| !grouped(d)) {
        line(d, judge);
    }
    let mut summary = serde_json::Map::new();
    for d in diffs
        .iter()
        .filter(|d| !grouped(d) && !d.name.starts_with('('))
    {
        summary.insert(d.name.clone(), number(d.relative));
        summary.insert(format!("floor {}", d.name), number(judge.floor(&d.name)));
    }
    for (prefix, what) in GROUPS {
        report_group(a, diffs, judge, (prefix, what), &mut summary);
    }
    let judged: Vec<_> = diffs
        .iter()
        .filter(|d| !d.name.starts_with('('))
        .map(verdict)
        .collect();
    let over = judged.iter().filter(|v| **v == Verdict::Over).count();
    let noise = judged.iter().filter(|v| **v == Verdict::Noise).count();
    let worst = device_check::worst(diffs);
    println!(
        "worst relative difference {worst:.3e} (tolerance {:.1e}, or {}x the floor); {over} of {} over{}",
        tolerance,
        a.floor_factor,
        judged.len(),
        if noise > 0 {
            format!(
                "; {noise} are noise: one rounding of the input moves the reference as far, so \
                 they judge nothing here (f32, or a shallower model, judges them)"
            )
        } else {
            String::new()
        }
    );
    if a.json {
        let mut head = serde_json::Map::new();
        head.insert("model".into(), a.model.model.clone().into());
        head.insert("device".into(), a.device.to_string().into());
        head.insert("dtype".into(), a.dtype.name().into());
        head.insert("reference".into(), a.reference.to_string().into());
        head.insert("reference_dtype".into(), a.reference_dtype.name().into());
        head.insert("worst".into(), number(worst));
        head.insert("tolerance".into(), tolerance.into());
        head.insert("floor_factor".into(), a.floor_factor.into());
        head.insert("over".into(), over.into());
        head.insert("noise".into(), noise.into());
        head.extend(summary);
        println!("{}", serde_json::Value::Object(head));
    }
    over
}

/// One group's line (its worst and how its tensors were judged), the lines of its tensors
/// that are over (every one with `--all`), and its figures in `summary`.
fn report_group(
    a: &CheckArgs,
    diffs: &[Difference],
    judge: &Judge,
    (prefix, what): (&str, &str),
    summary: &mut serde_json::Map<String, serde_json::Value>,
) {
    let verdict = |d: &Difference| judge.verdict(d);
    let members: Vec<_> = diffs
        .iter()
        .filter(|d| d.name.starts_with(prefix))
        .collect();
    let Some(worst) = members
        .iter()
        .copied()
        .max_by(|x, y| x.relative.total_cmp(&y.relative))
    else {
        return;
    };
    let count = |v: Verdict| members.iter().filter(|d| verdict(d) == v).count();
    let worst_floor = judge.group_floor(prefix);
    println!(
        "  {:<34} worst {:>13.3e}  at {} (floor there {:.3e}, the group's {:.3e}); of {} tensors {} ok, {} ok (floor), {} noise, {} OVER",
        what,
        worst.relative,
        worst.name,
        judge.floor(&worst.name),
        worst_floor,
        members.len(),
        count(Verdict::Ok),
        count(Verdict::WithinFloor),
        count(Verdict::Noise),
        count(Verdict::Over),
    );
    for d in members {
        if a.all || verdict(d) == Verdict::Over {
            line(d, judge);
        }
    }
    let kind = prefix.trim_end_matches('/');
    summary.insert(kind.into(), number(worst.relative));
    summary.insert(format!("floor {kind}"), number(worst_floor));
}

/// One tensor's line: its difference, the reference's size, its floor and its verdict.
fn line(d: &Difference, judge: &Judge) {
    println!(
        "  {:<34} relative {:>10.3e}  max abs {:>10.3e}  |ref| {:>10.3e}  floor {:>10.3e}  {}",
        d.name,
        d.relative,
        d.max_abs,
        d.reference_norm,
        judge.floor(&d.name),
        judge.verdict(d).word()
    );
}

/// A relative difference for JSON, which has no infinity: non-finite ones as strings.
fn number(x: f64) -> serde_json::Value {
    if x.is_finite() {
        x.into()
    } else {
        x.to_string().into()
    }
}
