//! The paper's comparison of architectures under one training procedure (its RQ4/RQ5 tables):
//! when a study varies `model`, one line per setting with the model's parameters, its top-1 on
//! the recipe's val set for each seed, top-1 and top-5 as mean ± sample std over the seeds,
//! and its rank by mean top-1 (1 is best; equal means share a rank).

use serde::{Deserialize, Serialize};

use super::table::{REPLICATE_KEY, RunResult, Stats, group_of, groups};

/// The key whose values are architectures.
const MODEL_KEY: &str = "model";

/// One setting of a study over models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    /// The setting (`model=resnet50d`, or with the other varied keys but `seed`).
    pub group: String,
    /// The model's trainable parameters (timm's count), where known.
    pub params: Option<usize>,
    /// Top-1 of each run, in the order the runs came (their seeds').
    pub top1_runs: Vec<f64>,
    /// Top-1 over the runs.
    pub top1: Stats,
    /// Top-5 over the runs.
    pub top5: Stats,
    /// 1 for the best mean top-1; settings with equal means share the better rank.
    pub rank: usize,
}

/// The comparison, best first: empty unless `model` is varied. Scores are the recipe's val
/// set's (each run's first set).
pub fn models(results: &[RunResult]) -> Vec<ModelRow> {
    let varies_model = results
        .iter()
        .any(|r| r.varied.iter().any(|(k, _)| k == MODEL_KEY));
    let Some(set) = results
        .first()
        .and_then(|r| r.scores.first())
        .map(|s| &s.set)
    else {
        return Vec::new();
    };
    if !varies_model {
        return Vec::new();
    }
    let metric = |r: &RunResult, name: &str| {
        r.scores
            .iter()
            .find(|s| &s.set == set && s.metric == name)
            .map(|s| s.value)
    };
    let mut rows: Vec<ModelRow> = groups(results)
        .into_iter()
        .filter_map(|group| {
            let runs: Vec<&RunResult> = results.iter().filter(|r| group_of(r) == group).collect();
            let top1: Vec<f64> = runs.iter().filter_map(|r| metric(r, "top1")).collect();
            let top5: Vec<f64> = runs.iter().filter_map(|r| metric(r, "top5")).collect();
            (!top1.is_empty() && !top5.is_empty()).then(|| ModelRow {
                group,
                params: runs.iter().find_map(|r| r.params),
                top1: Stats::of(&top1),
                top5: Stats::of(&top5),
                top1_runs: top1,
                rank: 0,
            })
        })
        .collect();
    // Stable: equal means keep the order their runs came in.
    rows.sort_by(|a, b| b.top1.mean.total_cmp(&a.top1.mean));
    for i in 0..rows.len() {
        rows[i].rank = match i {
            0 => 1,
            _ if rows[i].top1.mean == rows[i - 1].top1.mean => rows[i - 1].rank,
            _ => i + 1,
        };
    }
    rows
}

/// The comparison as text: one line per setting, best first.
pub fn format_models(rows: &[ModelRow]) -> String {
    let width = rows.iter().map(|r| r.group.len()).max().unwrap_or(5).max(5);
    let runs = rows.iter().map(|r| r.top1_runs.len()).max().unwrap_or(1);
    let per_run = format!("top-1 per {REPLICATE_KEY}");
    let runs_width = (runs * 7).max(per_run.len());
    let mut out = format!(
        "{:>4}  {:<width$}  {:>12}  {:<runs_width$}  {:>15}  {:>15}\n",
        "rank", "model", "parameters", per_run, "top-1", "top-5"
    );
    let stats = |s: &Stats| match s.std {
        Some(std) => format!("{:.2} ± {std:.2}", s.mean),
        None => format!("{:.2}", s.mean),
    };
    for r in rows {
        // A comma every three digits, as the paper writes parameter counts.
        let params = r.params.map_or("?".to_string(), |n| {
            indicatif::HumanCount(n as u64).to_string()
        });
        let each: Vec<String> = r.top1_runs.iter().map(|v| format!("{v:.2}")).collect();
        out.push_str(&format!(
            "{:>4}  {:<width$}  {params:>12}  {:<runs_width$}  {:>15}  {:>15}\n",
            r.rank,
            r.group,
            each.join(" "),
            stats(&r.top1),
            stats(&r.top5)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::table::result;
    use super::*;

    fn run(model: &str, seed: &str, top1: f64, params: usize) -> RunResult {
        RunResult {
            params: Some(params),
            ..result(&[("model", model), ("seed", seed)], top1)
        }
    }

    #[test]
    fn models_are_ranked_by_mean_top1_with_their_seeds_and_parameters() {
        let results = vec![
            run("resnet50", "0", 60.0, 25_557_032),
            run("resnet50", "1", 62.0, 25_557_032),
            run("resnet50d", "0", 64.0, 25_576_264),
            run("resnet50d", "1", 66.0, 25_576_264),
            run("seresnet50", "0", 61.0, 28_088_024),
            run("seresnet50", "1", 61.0, 28_088_024),
        ];
        let rows = models(&results);
        let order: Vec<(&str, usize)> = rows.iter().map(|r| (r.group.as_str(), r.rank)).collect();
        // resnet50 and seresnet50 both average 61: they share rank 2.
        assert_eq!(
            order,
            [
                ("model=resnet50d", 1),
                ("model=resnet50", 2),
                ("model=seresnet50", 2)
            ]
        );
        assert_eq!(rows[0].top1_runs, [64.0, 66.0]);
        assert!((rows[0].top5.mean - 75.0).abs() < 1e-12);
        let text = format_models(&rows);
        assert!(
            text.contains("25,576,264") && text.contains("64.00 66.00"),
            "{text}"
        );
        assert!(text.contains("65.00 ± 1.41"), "{text}");
        // Without `model` varied, no comparison.
        let seeds = vec![result(&[("seed", "0")], 60.0)];
        assert!(models(&seeds).is_empty());
    }
}
