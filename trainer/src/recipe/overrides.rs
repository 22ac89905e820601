//! Values that replace a recipe file's keys: timm's `train.py` flags (`--lr 2e-3`, as after
//! timm's `-c a1.yaml`), then one combination of a study's `--vary` values. A bad value is
//! named the way the user gave it: `lr = -1` from the file, `--lr -1.0 ... (given on the
//! command line)` from a flag, `--vary lr=-1` from a study.

use loader::request::transform::SettingError;

/// Where an overriding value came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A flag of the command line (`--lr`).
    Flag,
    /// A study's `--vary KEY=V1,V2,...`.
    Vary,
}

/// One value replacing a recipe key.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The recipe key: timm's name (`lr`), or `rsb.<name>` for the `[rsb]` table.
    pub key: String,
    /// The value, typed as TOML.
    pub value: toml::Value,
    /// Where it came from.
    pub origin: Origin,
}

/// The values replacing a recipe's keys, applied in order (flags first, then `--vary`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    entries: Vec<Override>,
}

impl Overrides {
    /// Nothing replaced: the file as written.
    pub fn none() -> Overrides {
        Overrides::default()
    }

    /// Values given by command-line flags, as (recipe key, value).
    pub fn flags(entries: Vec<(String, toml::Value)>) -> Overrides {
        Overrides::none().then(entries, Origin::Flag)
    }

    /// These overrides, then `entries` from `origin`.
    pub fn then(&self, entries: Vec<(String, toml::Value)>, origin: Origin) -> Overrides {
        let mut out = self.clone();
        out.entries.extend(
            entries
                .into_iter()
                .map(|(key, value)| Override { key, value, origin }),
        );
        out
    }

    /// Every value, in the order applied.
    pub fn entries(&self) -> &[Override] {
        &self.entries
    }

    /// A bad value named as the user gave it: by the last override of its key, else as a
    /// line of the file.
    pub(super) fn describe(&self, bad: &SettingError) -> String {
        match self.entries.iter().rev().find(|o| o.key == bad.key) {
            Some(o) if o.origin == Origin::Vary => {
                format!("--vary {}={} {}", o.key, o.value, bad.problem)
            }
            Some(_) => format!(
                "{} {} {} (given on the command line)",
                flag(bad.key),
                bad.value,
                bad.problem
            ),
            None => format!("{} = {} {}", bad.key, bad.value, bad.problem),
        }
    }
}

/// The command-line flag of recipe key `key` (`rsb.world_size` → `--world-size`).
fn flag(key: &str) -> String {
    let name = key.strip_prefix("rsb.").unwrap_or(key);
    format!("--{}", name.replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_is_named_by_where_it_came_from() {
        let bad = SettingError::new("rsb.world_size", 0, "is outside 1..=4096");
        assert_eq!(
            Overrides::none().describe(&bad),
            "rsb.world_size = 0 is outside 1..=4096"
        );
        let flags = Overrides::flags(vec![("rsb.world_size".into(), toml::Value::Integer(0))]);
        assert_eq!(
            flags.describe(&bad),
            "--world-size 0 is outside 1..=4096 (given on the command line)"
        );
        let varied = flags.then(
            vec![("rsb.world_size".into(), toml::Value::Integer(0))],
            Origin::Vary,
        );
        assert_eq!(
            varied.describe(&bad),
            "--vary rsb.world_size=0 is outside 1..=4096"
        );
    }
}
