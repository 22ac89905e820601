//! timm's model names for the ResNet family we build, each with the arguments timm's
//! `timm/models/resnet.py` gives its `ResNet` class (`model_args = dict(...)`).

use std::collections::BTreeMap;

use super::stem::StemType;
use super::{ConfigError, Variant};
use crate::model::attention::AttentionKind;

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
        .ok_or_else(|| ConfigError::Model {
            name: name.to_string(),
            known: model_names(),
        })
}

/// The names [`timm_model`] takes, comma-separated (for messages and `--help`).
pub fn model_names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// What a state dict under timm's names holds (`tensors`: name → shape), in words: timm's
/// name when it is one of ours at full width (`timm's resnet50d, 1000 classes`), else its
/// features (`a ResNet with 16 bottleneck blocks, a deep stem, avg_down shortcuts, ECA`).
/// For the message that refuses weights of another architecture than `--model`.
pub fn describe(tensors: &BTreeMap<String, Vec<usize>>) -> String {
    let dim = |name: &str, i: usize| tensors.get(name).and_then(|s| s.get(i)).copied();
    let has = |part: &str| tensors.keys().any(|k| k.contains(part));
    let bottleneck = tensors.contains_key("layer1.0.conv3.weight");
    let blocks: [usize; 4] = std::array::from_fn(|stage| {
        (0..)
            .take_while(|i| tensors.contains_key(&format!("layer{}.{i}.conv1.weight", stage + 1)))
            .count()
    });
    let classes = dim("fc.weight", 0).map_or(String::new(), |c| format!(", {c} classes"));
    if blocks.iter().all(|&b| b == 0) {
        return format!(
            "no ResNet ({} tensors, no layer1.0.conv1.weight)",
            tensors.len()
        );
    }
    let deep = tensors.contains_key("conv1.0.weight");
    let stem_type = match (dim("conv1.0.weight", 0), dim("conv1.3.weight", 0)) {
        (Some(a), Some(b)) if a != b => StemType::DeepTiered,
        _ if deep => StemType::Deep,
        _ => StemType::Plain,
    };
    // A grouped 3×3 has `width / groups` input channels; at 64 planes its group width is
    // the base width.
    let (width, per_group) = (
        dim("layer1.0.conv2.weight", 0),
        dim("layer1.0.conv2.weight", 1),
    );
    let cardinality = match (width, per_group) {
        (Some(w), Some(g)) if bottleneck && g > 0 && w % g == 0 => w / g,
        _ => 1,
    };
    let variant = Variant {
        stem_type,
        stem_width: if deep {
            dim("conv1.3.weight", 0).unwrap_or(0)
        } else {
            64
        },
        avg_down: has(".downsample.2."),
        cardinality,
        base_width: if cardinality > 1 {
            per_group.unwrap_or(0)
        } else {
            64
        },
        attn: if has(".se.fc1.") {
            AttentionKind::Se
        } else if has(".se.conv.") {
            AttentionKind::Eca
        } else {
            AttentionKind::None
        },
    };
    // timm's widths (what `--width` scales): 64 planes in the first stage.
    let planes = if bottleneck {
        dim("layer1.0.conv3.weight", 0).map(|c| c / 4)
    } else {
        dim("layer1.0.conv2.weight", 0)
    };
    let full_width = planes == Some(64);
    if let Some(m) = MODELS.iter().find(|m| {
        m.variant == variant
            && super::layout(m.depth).ok() == Some((blocks, bottleneck))
            && full_width
    }) {
        return format!("timm's {}{classes}", m.name);
    }
    let mut features = vec![format!(
        "a ResNet with {} {} blocks ({})",
        blocks.iter().sum::<usize>(),
        if bottleneck { "bottleneck" } else { "basic" },
        blocks.map(|b| b.to_string()).join(", ")
    )];
    features.extend(match stem_type {
        StemType::Deep => Some("a deep stem".to_string()),
        StemType::DeepTiered => Some("a tiered deep stem".to_string()),
        StemType::Plain => None,
    });
    features.extend(variant.avg_down.then(|| "avg_down shortcuts".to_string()));
    features.extend((cardinality > 1).then(|| format!("{cardinality} groups")));
    features.extend(match variant.attn {
        AttentionKind::Se => Some("squeeze-excite".to_string()),
        AttentionKind::Eca => Some("ECA".to_string()),
        AttentionKind::None => None,
    });
    format!("{}{classes}", features.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::Family;

    #[test]
    fn exported_state_dicts_are_named_by_their_model() {
        use crate::model::resnet::ResNetConfig;
        use burn::tensor::Device;
        let device = Device::flex();
        for name in [
            "resnet18",
            "resnet50d",
            "resnext50_32x4d",
            "ecaresnet50t",
            "seresnet50",
        ] {
            let model = ResNetConfig {
                num_classes: 10,
                ..ResNetConfig::timm(name).expect("ours")
            }
            .init(&device)
            .expect("config");
            let tensors = crate::model::timm_weights::shapes(&model.into()).expect("export");
            assert_eq!(describe(&tensors), format!("timm's {name}, 10 classes"));
        }
        let small = ResNetConfig {
            width: 0.25,
            num_classes: 3,
            ..ResNetConfig::timm("ecaresnet26t").expect("ours")
        }
        .init(&device)
        .expect("config");
        let tensors = crate::model::timm_weights::shapes(&small.into()).expect("export");
        assert_eq!(
            describe(&tensors),
            "a ResNet with 8 bottleneck blocks (2, 2, 2, 2), a tiered deep stem, avg_down \
             shortcuts, ECA, 3 classes"
        );
        assert!(describe(&BTreeMap::new()).starts_with("no ResNet"));
    }

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
