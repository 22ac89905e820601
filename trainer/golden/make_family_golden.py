#!/usr/bin/env python3
"""Writes `family.json`, which `trainer/tests/integration/family.rs` compares our ResNet family,
RegNetY, EfficientNet and ViT against: for each model, timm's parameter count, its state dict's
names and shapes, and its eval-mode logits at 224 px on weights that both sides compute from one formula.

    pip install torch timm
    python3 trainer/golden/make_family_golden.py      # from the repository root

Why a formula and not a weights file: a full-size model's weights are 100 MB a model, too big
to commit, and at 1/16 width ResNeXt's grouped 3x3 and the tiered stem have no channels left.
The formula is integer arithmetic (splitmix64), so Rust and numpy give the same bits:

    tensor k (in sorted name order), element i (PyTorch layout):
    u = splitmix64(k * 2**32 + i) >> 11, as a float64 in [0, 1), times 2, minus 1: in [-1, 1)
    running_var: 1 + u/2;  running_mean, and a bias: u/10;  a BN weight (1-D): 1/2 + u/4;
    a weight of 2 or more dimensions: u * sqrt(6 / fan_in), fan_in = numel / shape[0]
    (uniform with He's variance 2 / fan_in); each cast to float32.

BN weights below 1 keep the activations from growing block after block: with them at 1 + u/4,
torch's own float32 forward of seresnet50 is 2.5e-3 from its float64 one (the gates amplify
the rounding), and no float32 implementation could be held to 1e-5; with 1/2 + u/4 it is 4e-7.

The probe batch is the golden ResNet-50's at 224 px: x[i] = 2 sin(0.001 i), 2x3x224x224.
The logits are computed in float64 (the float32 weights widened), eval mode.
"""
import json
import pathlib

import numpy as np
import timm
import torch

HERE = pathlib.Path(__file__).resolve().parent
MODELS = ["resnet50", "resnet18d", "resnet50d", "resnext50_32x4d", "seresnet50", "ecaresnet50t",
          "regnety_040", "efficientnet_b0", "vit_small_patch16_224"]
MASK = (1 << 64) - 1


def splitmix64(x):
    """splitmix64's output for each uint64 of `x` (wrapping arithmetic)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def formula(k, name, shape):
    n = int(np.prod(shape)) if shape else 1
    x = np.uint64(k) * np.uint64(1 << 32) + np.arange(n, dtype=np.uint64)
    u = (splitmix64(x) >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0
    if name.endswith("running_var"):
        v = 1.0 + u / 2.0
    elif name.endswith("running_mean") or name.endswith(".bias"):
        v = u / 10.0
    elif len(shape) == 1:
        v = 0.5 + u / 4.0
    else:
        v = u * np.sqrt(6.0 / (n // shape[0]))
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def probe():
    n = 2 * 3 * 224 * 224
    x = (torch.arange(n, dtype=torch.float64) * 0.001).sin().float() * 2.0
    return x.double().reshape(2, 3, 224, 224)


def main():
    torch.set_num_threads(2)
    np.seterr(over="ignore")
    out = {"timm": timm.__version__, "torch": torch.__version__, "models": {}}
    for name in MODELS:
        model = timm.create_model(name)
        state = {k: v for k, v in model.state_dict().items()
                 if not k.endswith("num_batches_tracked")}
        names = sorted(state)
        weights = {k: formula(i, k, list(state[k].shape)) for i, k in enumerate(names)}
        model.load_state_dict(weights, strict=False)
        model = model.double().eval()
        with torch.no_grad():
            logits = model(probe())
        out["models"][name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "tensors": [[k, list(state[k].shape)] for k in names],
            "eval_logits": logits.flatten().tolist(),
        }
        print(f"{name}: {out['models'][name]['params']} parameters, {len(names)} tensors")
    (HERE / "family.json").write_text(json.dumps(out) + "\n")
    print(f"written {HERE / 'family.json'} (timm {timm.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
