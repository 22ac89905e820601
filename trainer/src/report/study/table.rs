//! A study's results: each run's scores, and the table that groups runs differing only in
//! their seed (the replicates) into mean ± sample std, min and max per eval set and metric.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eval::SetScore;

/// The key whose values are replicates of one setting rather than settings of their own.
pub const REPLICATE_KEY: &str = "seed";

/// One metric of one eval set of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// The eval set (the recipe's val split by its name, or a `--set` name).
    pub set: String,
    /// `top1`, `top5`, `real_top1` or `real_top5`.
    pub metric: String,
    /// Percent.
    pub value: f64,
}

/// A finished run's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Its combination's name (its directory's).
    pub name: String,
    /// The varied (key, value as written) pairs.
    pub varied: Vec<(String, String)>,
    /// Steps trained.
    pub steps: u64,
    /// Its model's trainable parameters (timm's count).
    #[serde(default)]
    pub params: Option<usize>,
    /// Its scores.
    pub scores: Vec<Score>,
}

/// The scores of an extra eval set, ReaL's included when it was counted.
pub fn set_scores(s: &SetScore) -> Vec<Score> {
    let mut out = vec![
        Score {
            set: s.name.clone(),
            metric: "top1".into(),
            value: s.top1,
        },
        Score {
            set: s.name.clone(),
            metric: "top5".into(),
            value: s.top5,
        },
    ];
    if let Some(r) = s.real {
        out.push(Score {
            set: s.name.clone(),
            metric: "real_top1".into(),
            value: r.top1,
        });
        out.push(Score {
            set: s.name.clone(),
            metric: "real_top5".into(),
            value: r.top5,
        });
    }
    out
}

/// Count, mean, sample standard deviation (n − 1; none for one run), min and max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Runs.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation, as the paper's ± (none with one run).
    pub std: Option<f64>,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stats {
    /// The statistics of `values` (not empty).
    pub fn of(values: &[f64]) -> Stats {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n.max(1) as f64;
        let std = (n > 1).then(|| {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        });
        Stats {
            n,
            mean,
            std,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// One line of a study's table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The setting: the varied keys but `seed`, `key=value` joined by `+` (`all runs` when
    /// only seeds vary).
    pub group: String,
    /// The eval set.
    pub set: String,
    /// The metric.
    pub metric: String,
    /// Over the group's runs.
    pub stats: Stats,
}

/// A run's group: its varied values but the replicate key's.
pub(super) fn group_of(r: &RunResult) -> String {
    let parts: Vec<String> = r
        .varied
        .iter()
        .filter(|(k, _)| k != REPLICATE_KEY)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if parts.is_empty() {
        "all runs".into()
    } else {
        parts.join("+")
    }
}

/// The groups in the order their first run comes.
pub(super) fn groups(results: &[RunResult]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in results {
        let g = group_of(r);
        if !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

/// The table: per group, eval set and metric, the statistics over the group's runs.
pub fn table(results: &[RunResult]) -> Vec<Row> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut values: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for r in results {
        for s in &r.scores {
            if !order.contains(&(s.set.clone(), s.metric.clone())) {
                order.push((s.set.clone(), s.metric.clone()));
            }
            values
                .entry((group_of(r), s.set.clone(), s.metric.clone()))
                .or_default()
                .push(s.value);
        }
    }
    let mut rows = Vec::new();
    for group in groups(results) {
        for (set, metric) in &order {
            if let Some(v) = values.get(&(group.clone(), set.clone(), metric.clone())) {
                rows.push(Row {
                    group: group.clone(),
                    set: set.clone(),
                    metric: metric.clone(),
                    stats: Stats::of(v),
                });
            }
        }
    }
    rows
}

/// The table as text, one line per row.
pub fn format_table(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.group.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:<width$}  {:<10} {:<10} {:>3} {:>17} {:>7} {:>7}\n",
        "group", "set", "metric", "n", "mean ± std", "min", "max"
    );
    for r in rows {
        let s = &r.stats;
        let mean = match s.std {
            Some(std) => format!("{:.2} ± {std:.2}", s.mean),
            None => format!("{:.2}", s.mean),
        };
        out.push_str(&format!(
            "{:<width$}  {:<10} {:<10} {:>3} {mean:>17} {:>7.2} {:>7.2}\n",
            r.group, r.set, r.metric, s.n, s.min, s.max
        ));
    }
    out
}

/// A run varied over `varied` with `top1` on `val` (and `top1 + 10` as top-5), for tests.
#[cfg(test)]
pub(super) fn result(varied: &[(&str, &str)], top1: f64) -> RunResult {
    RunResult {
        name: String::new(),
        varied: varied
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        steps: 10,
        params: None,
        scores: vec![
            Score {
                set: "val".into(),
                metric: "top1".into(),
                value: top1,
            },
            Score {
                set: "val".into(),
                metric: "top5".into(),
                value: top1 + 10.0,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_replicates_of_their_group() {
        let results = vec![
            result(&[("epochs", "1"), ("seed", "0")], 60.0),
            result(&[("epochs", "1"), ("seed", "1")], 62.0),
            result(&[("epochs", "1"), ("seed", "2")], 64.0),
            result(&[("epochs", "2"), ("seed", "0")], 70.0),
        ];
        let rows = table(&results);
        assert_eq!(rows.len(), 4);
        let r = &rows[0];
        assert_eq!(
            (r.group.as_str(), r.set.as_str(), r.metric.as_str()),
            ("epochs=1", "val", "top1")
        );
        assert_eq!(r.stats.n, 3);
        assert!((r.stats.mean - 62.0).abs() < 1e-12);
        // Sample std of 60, 62, 64: 2.
        assert!((r.stats.std.unwrap() - 2.0).abs() < 1e-12);
        assert_eq!((r.stats.min, r.stats.max), (60.0, 64.0));
        assert_eq!(rows[1].metric, "top5");
        assert!((rows[1].stats.mean - 72.0).abs() < 1e-12);
        assert_eq!(rows[2].group, "epochs=2");
        assert_eq!(rows[2].stats.std, None);
        let text = format_table(&rows);
        assert!(text.contains("62.00 ± 2.00"), "{text}");
        // Seeds alone: one group.
        let seeds: Vec<RunResult> = (0..3)
            .map(|i| result(&[("seed", &i.to_string())], 60.0 + f64::from(i)))
            .collect();
        let rows = table(&seeds);
        assert_eq!(rows[0].group, "all runs");
    }
}
