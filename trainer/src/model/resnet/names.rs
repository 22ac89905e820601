//! timm's model names for the ResNet family we build, each with the arguments timm's
//! `timm/models/resnet.py` gives its `ResNet` class (`model_args = dict(...)`).

use super::attention::AttentionKind;
use super::stem::StemType;
use super::{ConfigError, Variant};

/// One timm model: its name, depth and arguments.
struct Named {
    name: &'static str,
    depth: usize,
    variant: Variant,
}

const PLAIN: Variant = Variant {
    stem_type: StemType::Plain,
    stem_width: 64,
    avg_down: false,
    cardinality: 1,
    base_width: 64,
    attn: AttentionKind::None,
};

/// "D": deep stem 32 wide, `avg_down` shortcuts.
const D: Variant = Variant {
    stem_type: StemType::Deep,
    stem_width: 32,
    avg_down: true,
    ..PLAIN
};

/// "T": the tiered deep stem (24, 32, 64), `avg_down` shortcuts.
const T: Variant = Variant {
    stem_type: StemType::DeepTiered,
    ..D
};

const fn resnext(width: usize) -> Variant {
    Variant {
        cardinality: 32,
        base_width: width,
        ..PLAIN
    }
}

const fn with_attn(v: Variant, attn: AttentionKind) -> Variant {
    Variant { attn, ..v }
}

const fn named(name: &'static str, depth: usize, variant: Variant) -> Named {
    Named {
        name,
        depth,
        variant,
    }
}

/// Every name `--model` takes. The paper's RSB weights cover resnet18 to 152, resnet50d,
/// resnext50_32x4d, seresnet50 and ecaresnet50t; the rest are the same class with other
/// depths, which cost nothing to offer.
const MODELS: &[Named] = &[
    named("resnet18", 18, PLAIN),
    named("resnet26", 26, PLAIN),
    named("resnet34", 34, PLAIN),
    named("resnet50", 50, PLAIN),
    named("resnet101", 101, PLAIN),
    named("resnet152", 152, PLAIN),
    named("resnet18d", 18, D),
    named("resnet26d", 26, D),
    named("resnet34d", 34, D),
    named("resnet50d", 50, D),
    named("resnet101d", 101, D),
    named("resnet152d", 152, D),
    named("resnet26t", 26, T),
    named("resnet50t", 50, T),
    named("resnext50_32x4d", 50, resnext(4)),
    named("resnext101_32x4d", 101, resnext(4)),
    named("resnext101_32x8d", 101, resnext(8)),
    named("seresnet50", 50, with_attn(PLAIN, AttentionKind::Se)),
    named("seresnet101", 101, with_attn(PLAIN, AttentionKind::Se)),
    named(
        "seresnext50_32x4d",
        50,
        with_attn(resnext(4), AttentionKind::Se),
    ),
    named("ecaresnet50d", 50, with_attn(D, AttentionKind::Eca)),
    named("ecaresnet101d", 101, with_attn(D, AttentionKind::Eca)),
    named("ecaresnet26t", 26, with_attn(T, AttentionKind::Eca)),
    named("ecaresnet50t", 50, with_attn(T, AttentionKind::Eca)),
];

/// timm's plain ResNet (`resnet50`'s arguments).
pub const fn plain() -> Variant {
    PLAIN
}

/// The depth and arguments of timm's model `name`.
///
/// # Errors
/// [`ConfigError::Model`] for a name we do not build; its message lists the names we do.
pub fn timm_model(name: &str) -> Result<(usize, Variant), ConfigError> {
    MODELS
        .iter()
        .find(|m| m.name == name)
        .map(|m| (m.depth, m.variant))
        .ok_or_else(|| ConfigError::Model(name.to_string()))
}

/// The names [`timm_model`] takes, comma-separated (for messages and `--help`).
pub fn model_names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_listed_once_and_unknown_names_are_refused_with_the_list() {
        for (i, m) in MODELS.iter().enumerate() {
            assert!(MODELS[..i].iter().all(|o| o.name != m.name), "{}", m.name);
            assert_eq!(timm_model(m.name).ok().map(|(d, _)| d), Some(m.depth));
        }
        for bad in ["resnet51", "vit_base", "resnet", "ResNet50"] {
            let err = timm_model(bad).expect_err(bad).to_string();
            assert!(err.contains(bad) && err.contains("ecaresnet50t"), "{err}");
        }
    }
}
