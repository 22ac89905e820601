#!/usr/bin/env python3
"""Writes the golden files that `trainer/tests/golden.rs` compares against, with timm and torch.

    pip install torch timm safetensors
    python3 trainer/golden/make_golden.py            # from the repository root

Outputs (committed, so that the Rust tests need neither Python nor torch):

- `resnet50_w16.safetensors`: a timm ResNet-50 with every channel count divided by 16
  (`channels=(4, 8, 16, 32)` and a 4-wide stem, 5 classes; the same structure as ours with
  `width = 0.0625`), timm's initialization, then random BN γ/β/running statistics so that no
  layer is an identity. PyTorch layouts, timm names, float32.
- `forward.safetensors`: the probe batch x[i] = 2·sin(0.001·i) (NCHW, 2×3×64×64) through that
  model in float64: `eval.logits`, `train.logits` (batch statistics), and the running
  statistics after that one training forward (`train.<bn>.running_mean/var`, PyTorch's update
  with the unbiased variance).
- `lamb100.safetensors`: the trainable parameters after 100 steps of timm's `Lamb` (float64,
  timm's weight-decay groups from `create_optimizer_v2`, weight decay 0.02) from the weights
  above (saved as float32), with the gradient of tensor k (in sorted name order), element i (PyTorch layout), at
  step t: float32(s_t · sin(0.01·i + 0.7·k + 1.3·t)), s_t = (0.05, 1e-4, 0.004)[t mod 3] (global
  norms ≈ 11, 0.02, 0.9: the clip at 1.0 acts on one step in three), LR 5e-3·(t+1)/100.
- `schedule.json`: timm's `CosineLRScheduler` built as train.py builds it from
  `configs/a{1,2,3}.toml` (`scheduler_kwargs` + `create_scheduler_v2`), the LR of every epoch
  (per epoch) and of every update of A3 with 7 updates per epoch (`sched_on_updates`).
- `mixup.json`: timm's `FastCollateMixup` (batch mode, the prefetcher's uint8 path) on a fixed
  uint8 batch with λ and the CutMix box fixed, its targets, `BinaryCrossEntropy
  (target_threshold=0.2)` and `SoftTargetCrossEntropy` of fixed logits against them, and
  `LabelSmoothingCrossEntropy(0.1)` of the same logits against the labels.
"""
import json
import math
import pathlib
import tomllib
from types import SimpleNamespace

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from timm.data import mixup as timm_mixup
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models.resnet import Bottleneck, ResNet
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

HERE = pathlib.Path(__file__).resolve().parent
CONFIGS = HERE.parent.parent / "configs"


def tiny_resnet50():
    model = ResNet(Bottleneck, [3, 4, 6, 3], channels=(4, 8, 16, 32), num_classes=5)
    # timm's plain stem is 64 wide whatever `channels` says; ours scales with the width, so
    # the stem and the two layers that read it are narrowed to 4 (same modules, same forward).
    model.conv1 = torch.nn.Conv2d(3, 4, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = torch.nn.BatchNorm2d(4)
    model.layer1[0].conv1 = torch.nn.Conv2d(4, 4, kernel_size=1, bias=False)
    model.layer1[0].downsample[0] = torch.nn.Conv2d(4, 16, kernel_size=1, bias=False)
    for conv in (model.conv1, model.layer1[0].conv1, model.layer1[0].downsample[0]):
        torch.nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return model


def state(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def make_weights():
    torch.manual_seed(0)
    model = tiny_resnet50()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    weights = state(model)
    save_file(weights, HERE / "resnet50_w16.safetensors")
    return weights


def make_forward(weights):
    model = tiny_resnet50().double()
    model.load_state_dict({k: v.double() for k, v in weights.items()}, strict=False)
    n = 2 * 3 * 64 * 64
    x = ((torch.arange(n, dtype=torch.float64) * 0.001).sin().float() * 2.0).double()
    x = x.reshape(2, 3, 64, 64)
    out = {}
    with torch.no_grad():
        model.eval()
        out["eval.logits"] = model(x)
        model.train()
        out["train.logits"] = model(x)
    for k, v in model.state_dict().items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            out["train." + k] = v
    save_file({k: v.contiguous() for k, v in out.items()}, HERE / "forward.safetensors")


def gradient(k, shape, t):
    scale = (0.05, 1e-4, 0.004)[t % 3]
    i = np.arange(int(np.prod(shape)), dtype=np.float64)
    g = (scale * np.sin(0.01 * i + 0.7 * k + 1.3 * t)).astype(np.float32)
    return torch.from_numpy(g.reshape(shape))


def make_lamb(weights):
    model = tiny_resnet50().double()
    model.load_state_dict({k: v.double() for k, v in weights.items()}, strict=False)
    optimizer = create_optimizer_v2(model, opt="lamb", lr=1e-3, weight_decay=0.02)
    assert type(optimizer).__name__ == "Lamb", optimizer
    named = sorted(model.named_parameters())
    for t in range(100):
        for group in optimizer.param_groups:
            group["lr"] = 5e-3 * (t + 1) / 100
        for k, (_, p) in enumerate(named):
            p.grad = gradient(k, tuple(p.shape), t).double()
        optimizer.step()
    save_file({name: p.detach().float().contiguous() for name, p in named},
              HERE / "lamb100.safetensors")


def make_schedule():
    out = {"timm": timm.__version__}
    for name in ("a1", "a2", "a3"):
        cfg = tomllib.loads((CONFIGS / f"{name}.toml").read_text())
        args = SimpleNamespace(**{k: v for k, v in cfg.items() if not isinstance(v, dict)})
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.lr)
        scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args))
        lrs = []
        for epoch in range(num_epochs):
            scheduler.step(epoch)
            lrs.append(optimizer.param_groups[0]["lr"])
        out[name] = {"epochs": num_epochs, "lr": lrs}
    cfg = tomllib.loads((CONFIGS / "a3.toml").read_text())
    cfg["sched_on_updates"] = True
    args = SimpleNamespace(**{k: v for k, v in cfg.items() if not isinstance(v, dict)})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.lr)
    upe = 7
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args), updates_per_epoch=upe)
    lrs = []
    # train.py: the LR of update u is what step_update(u) set (u = 0: the warmup start).
    for u in range(num_epochs * upe):
        scheduler.step_update(num_updates=u)
        lrs.append(optimizer.param_groups[0]["lr"])
    out["a3_on_updates"] = {"updates_per_epoch": upe, "lr": lrs}
    (HERE / "schedule.json").write_text(json.dumps(out) + "\n")


def make_mixup():
    rng = np.random.default_rng(7)
    batch, classes, side = 4, 10, 8
    images = rng.integers(0, 256, size=(batch, 3, side, side), dtype=np.uint8)
    labels = [3, 9, 3, 0]
    logits = rng.normal(size=(batch, classes)).astype(np.float32) * 3
    cases = []
    # λ 0.5 makes every blend a tie that np.rint rounds to even; λ 0.9 and the small box leave
    # the partner's target under the 0.2 threshold, so BCE sees only the sample's own label.
    for lam, use_cutmix, fixed_box in ((0.6, True, (2, 6, 1, 7)), (0.2, True, (0, 2, 5, 8)),
                                       (0.7, False, None), (0.5, False, None),
                                       (0.3137, False, None), (0.9, False, None),
                                       (1.0, False, None)):
        collate = timm_mixup.FastCollateMixup(
            mixup_alpha=0.2, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
            label_smoothing=0.1, num_classes=classes)
        collate._params_per_batch = lambda lam=lam, c=use_cutmix: (lam, c)
        saved = timm_mixup.rand_bbox
        timm_mixup.rand_bbox = lambda *a, **k: fixed_box
        try:
            mixed, target = collate([(images[i], labels[i]) for i in range(batch)])
        finally:
            timm_mixup.rand_bbox = saved
        loss = BinaryCrossEntropy(target_threshold=0.2)(torch.from_numpy(logits), target)
        loss64 = BinaryCrossEntropy(target_threshold=0.2)(
            torch.from_numpy(logits).double(), target.double())
        ce = float(SoftTargetCrossEntropy()(torch.from_numpy(logits).double(), target.double()))
        corrected = lam
        if use_cutmix:
            corrected = 1 - (fixed_box[1] - fixed_box[0]) * (fixed_box[3] - fixed_box[2]) / side ** 2
        cases.append({
            "lam": lam, "cutmix": use_cutmix, "box": list(fixed_box) if use_cutmix else None,
            "corrected_lam": corrected,
            "mixed": mixed.flatten().tolist(), "targets": target.flatten().tolist(),
            "bce": float(loss), "bce_f64": float(loss64), "ce_f64": ce,
        })
    # Without Mixup, train.py's cross-entropy with --smoothing is LabelSmoothingCrossEntropy.
    ls_ce = float(LabelSmoothingCrossEntropy(smoothing=0.1)(
        torch.from_numpy(logits).double(), torch.tensor(labels)))
    out = {"timm": timm.__version__, "label_smoothing_ce_f64": ls_ce, "shape": [batch, 3, side, side], "num_classes": classes,
           "smoothing": 0.1, "bce_target_thresh": 0.2, "images": images.flatten().tolist(),
           "labels": labels, "logits": logits.flatten().tolist(), "cases": cases}
    (HERE / "mixup.json").write_text(json.dumps(out) + "\n")


def main():
    torch.set_num_threads(2)
    weights = make_weights()
    make_forward(weights)
    make_lamb(weights)
    make_schedule()
    make_mixup()
    print(f"golden files written to {HERE} (timm {timm.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
