//! The runs a study's `--vary KEY=V1,V2,...` flags name: every combination of the values, each
//! typed as the recipe's key is and checked by parsing the recipe with it.

use std::str::FromStr;

use super::StudyError;
use crate::recipe::{Origin, Overrides, TrainConfig};

/// One `--vary KEY=V1,V2,...`: a recipe key (timm's name, `-` or `_`; `[rsb]` keys with or
/// without `rsb.`) and the values to try, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Vary {
    /// The key as given.
    pub key: String,
    /// The values as written (parsed against the recipe's types by [`plan`]).
    pub values: Vec<String>,
}

impl FromStr for Vary {
    type Err = String;

    fn from_str(s: &str) -> Result<Vary, String> {
        let (key, list) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected KEY=V1,V2,... e.g. seed=0,1,2"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{s:?}: the key is empty"));
        }
        let values = split_values(list);
        if values.iter().any(String::is_empty) {
            return Err(format!("{s:?}: an empty value"));
        }
        for (i, v) in values.iter().enumerate() {
            if values[..i].contains(v) {
                return Err(format!("{s:?}: {v} is given twice"));
            }
        }
        Ok(Vary {
            key: key.to_owned(),
            values,
        })
    }
}

/// `list` split at the commas outside brackets, so `scale=[0.08,1],[0.5,1]` gives two values.
fn split_values(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    for c in list.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(current.trim().to_owned());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current.trim().to_owned());
    out
}

/// One combination of the varied values: a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Combination {
    /// Its run directory's name: `key=value` pairs joined by `+`, in `--vary` order.
    pub name: String,
    /// (recipe key, value) pairs applied over the recipe as [`Origin::Vary`] overrides.
    pub entries: Vec<(String, toml::Value)>,
    /// (recipe key, value as written), for tables.
    pub shown: Vec<(String, String)>,
    /// The recipe with them, through the recipe's gate.
    pub config: TrainConfig,
}

/// A varied key and its values (typed, and as written).
type Axis = (String, Vec<(toml::Value, String)>);

/// The recipe key `name` stands for: `weight-decay` → `weight_decay`, `world_size` →
/// `rsb.world_size`; with the recipe's value there, if it has one.
fn resolve_key(base: &toml::Table, name: &str) -> (String, Option<toml::Value>) {
    let name = name.replace('-', "_");
    if let Some(sub) = name.strip_prefix("rsb.") {
        let value = base
            .get("rsb")
            .and_then(|r| r.as_table())
            .and_then(|r| r.get(sub))
            .cloned();
        return (name.clone(), value);
    }
    if let Some(v) = base.get(&name) {
        return (name, Some(v.clone()));
    }
    match base
        .get("rsb")
        .and_then(|r| r.as_table())
        .and_then(|r| r.get(&name))
    {
        Some(v) => (format!("rsb.{name}"), Some(v.clone())),
        // Unknown here (or an optional key the recipe leaves out): the recipe's own parse
        // accepts it or names the keys that exist.
        None => (name, None),
    }
}

/// `text` as a TOML value of the type `like` has (an integer where a float is expected
/// becomes a float); text that is no TOML value is a string (`aa=rand-m9-mstd0.5-inc1`).
fn typed_value(text: &str, like: Option<&toml::Value>) -> toml::Value {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()));
    coerce(parsed, like)
}

fn coerce(value: toml::Value, like: Option<&toml::Value>) -> toml::Value {
    match (value, like) {
        (toml::Value::Integer(i), Some(toml::Value::Float(_))) => toml::Value::Float(i as f64),
        (toml::Value::Array(items), Some(toml::Value::Array(like))) => toml::Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| coerce(v, like.get(i).or(like.first())))
                .collect(),
        ),
        // A string recipe value stays a string even when it looks like a number.
        (
            v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
            Some(toml::Value::String(_)),
        ) => toml::Value::String(v.to_string()),
        (v, _) => v,
    }
}

/// A run directory's name for a value: no path separators, no spaces.
fn path_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '/' | '\\' | ' ' | '"' | '\'' => '_',
            c => c,
        })
        .collect()
}

/// Every combination of `varies` over the recipe, the first key slowest, each read through
/// the recipe's gate (so a bad value fails before any run starts, with the message `trainer
/// train` would give).
///
/// # Errors
/// [`StudyError::Vary`] for no `--vary` or a key given twice; [`StudyError::Recipe`] for a
/// combination the recipe's gate refuses.
pub fn plan(
    recipe_text: &str,
    origin: &str,
    overrides: &Overrides,
    varies: &[Vary],
) -> Result<Vec<Combination>, StudyError> {
    if varies.is_empty() {
        return Err(StudyError::Vary(
            "is missing: name at least one key, e.g. --vary seed=0,1,2".into(),
        ));
    }
    let base = TrainConfig::parse(recipe_text, origin, overrides)?.config;
    let axes = axes(&base, varies)?;
    product(&axes)
        .into_iter()
        .map(|(name, entries, shown)| {
            let varied = overrides.then(entries.clone(), Origin::Vary);
            let config = TrainConfig::parse(recipe_text, origin, &varied)?.config;
            Ok(Combination {
                name,
                entries,
                shown,
                config,
            })
        })
        .collect()
}

/// Each `--vary`'s recipe key and values, typed as the recipe's value of that key.
fn axes(base: &TrainConfig, varies: &[Vary]) -> Result<Vec<Axis>, StudyError> {
    let table = match toml::Value::try_from(base) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let mut axes: Vec<Axis> = Vec::new();
    for vary in varies {
        let (key, like) = resolve_key(&table, &vary.key);
        if axes.iter().any(|(k, _)| *k == key) {
            return Err(StudyError::Vary(format!("{key} is given twice")));
        }
        let values = vary
            .values
            .iter()
            .map(|text| (typed_value(text, like.as_ref()), text.clone()))
            .collect();
        axes.push((key, values));
    }
    Ok(axes)
}

/// A combination before the recipe's gate: its name, entries and values as written.
type Unchecked = (String, Vec<(String, toml::Value)>, Vec<(String, String)>);

/// Every combination of the axes' values, the first axis slowest.
fn product(axes: &[Axis]) -> Vec<Unchecked> {
    let mut combos: Vec<Unchecked> = vec![(String::new(), Vec::new(), Vec::new())];
    for (key, values) in axes {
        let short = key.strip_prefix("rsb.").unwrap_or(key);
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |(value, text)| {
                    let (mut name, mut entries, mut shown) = c.clone();
                    if !name.is_empty() {
                        name.push('+');
                    }
                    name.push_str(&format!("{short}={}", path_safe(text)));
                    entries.push((key.clone(), value.clone()));
                    shown.push((short.to_owned(), text.clone()));
                    (name, entries, shown)
                })
            })
            .collect();
    }
    combos
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = include_str!("../../../../configs/smoke.toml");

    #[test]
    fn vary_parses_lists_and_refuses_what_it_cannot_use() {
        let v: Vary = "seed=0,1,2".parse().unwrap();
        assert_eq!(v.key, "seed");
        assert_eq!(v.values, ["0", "1", "2"]);
        let v: Vary = "scale=[0.08,1], [0.5, 1]".parse().unwrap();
        assert_eq!(v.values, ["[0.08,1]", "[0.5, 1]"]);
        for bad in ["seed", "=1,2", "seed=1,,2", "seed=1,1"] {
            assert!(bad.parse::<Vary>().is_err(), "{bad}");
        }
    }

    #[test]
    fn plan_is_the_product_typed_as_the_recipe() {
        let varies: Vec<Vary> = ["lr=1e-3,2e-3", "seed=0,1,2", "scale=[0.5,1],[1,1]"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let combos = plan(RECIPE, "smoke.toml", &Overrides::none(), &varies).unwrap();
        assert_eq!(combos.len(), 12);
        assert_eq!(combos[0].name, "lr=1e-3+seed=0+scale=[0.5,1]");
        assert_eq!(combos[11].name, "lr=2e-3+seed=2+scale=[1,1]");
        // `[1,1]` is a pair of floats, as the recipe's scale is.
        let scale = &combos[1].entries[2].1;
        assert_eq!(
            *scale,
            toml::Value::Array(vec![toml::Value::Float(1.0), toml::Value::Float(1.0)])
        );
        // An [rsb] key by its short name; an integer where the recipe has a float.
        let varies: Vec<Vary> = ["world-size=1,2", "weight_decay=0,1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let combos = plan(RECIPE, "smoke.toml", &Overrides::none(), &varies).unwrap();
        assert_eq!(combos[0].entries[0].0, "rsb.world_size");
        assert_eq!(combos[0].entries[1].1, toml::Value::Float(0.0));
        assert_eq!(combos[3].name, "world_size=2+weight_decay=1");
        let config = &combos[3].config;
        assert_eq!((config.rsb.world_size, config.weight_decay), (2, 1.0));
        // A bad value is named before anything runs; so is an unknown key.
        let bad = |s: &str| {
            plan(
                RECIPE,
                "smoke.toml",
                &Overrides::none(),
                &[s.parse().unwrap()],
            )
            .unwrap_err()
            .to_string()
        };
        let e = bad("epochs=1,0");
        assert!(
            e.contains("--vary epochs=0") && e.contains("outside"),
            "{e}"
        );
        // The second combination is refused by the recipe's gate before the first runs.
        let e = bad("drop=0,0.1");
        assert!(
            e.starts_with("smoke.toml: --vary drop=0.1 is not implemented yet"),
            "{e}"
        );
        let e = bad("learning_rate=1,2");
        assert!(e.contains("learning_rate"), "{e}");
        let e = plan(RECIPE, "s", &Overrides::none(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--vary seed=0,1,2"), "{e}");
    }
}
