#!/usr/bin/env python3
"""The training step that `trainer bench` times, in PyTorch + timm, for a same-card comparison.

Per step: upload a uint8 NHWC batch from pinned host memory, widen and normalize, timm's Mixup
(mixup 0.2 / cutmix 1.0, switch 0.5, smoothing 0.1, on the GPU), resnet50 in channels_last,
BinaryCrossEntropy(target_threshold=0.2), backward, timm's Lamb. Precision (as `trainer bench
--dtype`): f32; amp, bf16 by autocast (timm's --amp: f32 master weights, what the recipes use);
bf16, the model and batch in bfloat16 without autocast (pure). Eager, and torch.compile with
--compile.

On the CPU (--device cpu --threads N) there is nothing to upload (the widening is "upload"),
f32 by default, and --phases adds the milliseconds per step of each phase (upload, mix,
forward, loss, backward, optimizer), timed like `trainer bench`'s: these steps come after the
timed ones. --width and --small-stem build the same narrowed ResNets as `trainer bench`.

Usage: python3 torch_step.py --batch 256 --dtype amp [--compile] [--steps 20 --warmup 5]
       python3 torch_step.py --device cpu --threads 2 --model resnet18 --width 0.125 --small-stem \
           --img-size 32 --num-classes 10 --batch 64 --phases
Prints one JSON line per run.
"""
import argparse
import json
import time

import timm
import timm.data
import timm.loss
import timm.optim
import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--dtype", choices=["f32", "amp", "bf16"], default=None,
                   help="f32; amp (autocast bf16, f32 weights); bf16 (pure). Default: amp on CUDA, f32 on the CPU")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier, as trainer bench --width")
    p.add_argument("--small-stem", action="store_true", help="3x3 stride-1 stem, no max-pool")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (CPU; 0: torch's default)")
    p.add_argument("--phases", action="store_true", help="also time each phase (synchronized)")
    a = p.parse_args()

    torch.manual_seed(0)
    cuda = a.device == "cuda"
    dev = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.dtype = a.dtype or ("amp" if cuda else "f32")
    # f32 means f32: no TF32 in convolutions or matmuls (burn's f32 does not use it either).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    model = make_model(a).to(dev).to(memory_format=torch.channels_last)
    # Pure bf16: parameters, optimizer state and activations all bfloat16.
    cast = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    model = model.to(cast)
    model.train()
    opt = timm.optim.create_optimizer_v2(model, "lamb", lr=1e-3, weight_decay=0.01)
    mixup = timm.data.Mixup(mixup_alpha=0.2, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                            label_smoothing=0.1, num_classes=a.num_classes)
    loss_fn = timm.loss.BinaryCrossEntropy(target_threshold=0.2)
    mean = (torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1) * 255).to(cast)
    inv_std = (1 / (torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1) * 255)).to(cast)
    g = torch.Generator().manual_seed(0)
    pin = (lambda t: t.pin_memory()) if cuda else (lambda t: t)
    batches = [(pin(torch.randint(0, 256, (a.batch, a.img_size, a.img_size, 3), dtype=torch.uint8, generator=g)),
                pin(torch.randint(0, a.num_classes, (a.batch,), generator=g))) for _ in range(4)]
    autocast = torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.dtype == "amp")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    phases = dict(upload=0.0, mix=0.0, forward=0.0, loss=0.0, backward=0.0, optimizer=0.0)

    def forward_loss(x, y):
        with autocast:
            return loss_fn(model(x).float(), y)

    fwd = torch.compile(forward_loss) if a.compile else forward_loss

    def step(i, timed=False):
        t = [time.perf_counter()]

        def lap(name):
            if timed:
                sync()
                now = time.perf_counter()
                phases[name] += now - t[0]
                t[0] = now

        pixels, labels = batches[i % len(batches)]
        x = pixels.to(dev, non_blocking=True).permute(0, 3, 1, 2).to(cast)
        y = labels.to(dev, non_blocking=True)
        lap("upload")
        x = (x - mean) * inv_std
        x, y = mixup(x, y)
        x = x.contiguous(memory_format=torch.channels_last)
        lap("mix")
        if a.compile:
            loss = fwd(x, y)
            lap("forward")
        else:
            with autocast:
                out = model(x)
            lap("forward")
            with autocast:
                # The loss in f32 (autocast's choice for BCE; pure bf16's logits widened).
                loss = loss_fn(out.float(), y)
            lap("loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lap("backward")
        opt.step()
        lap("optimizer")
        return loss

    t0 = time.perf_counter()
    for i in range(a.warmup):
        step(i)
    sync()
    warm = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(a.warmup, a.warmup + a.steps):
        loss = step(i)
    sync()
    timed = time.perf_counter() - t0
    phase_steps = min(a.steps, 5) if a.phases else 0
    for i in range(phase_steps):
        step(a.warmup + a.steps + i, timed=True)
    print(json.dumps({
        "framework": f"torch {torch.__version__} timm {timm.__version__}",
        "mode": "compile" if a.compile else "eager",
        "device": torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads",
        "precision": a.dtype, "batch": a.batch, "img_size": a.img_size, "steps": a.steps,
        "warmup_s": warm, "timed_s": timed, "steps_per_s": a.steps / timed,
        "samples_per_s": a.steps * a.batch / timed, "last_loss": float(loss.detach()),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "phases_ms": {k: v * 1e3 / phase_steps for k, v in phases.items()} if phase_steps else None,
        "phase_steps": phase_steps,
    }), flush=True)


def make_model(a):
    """timm's model, or the narrowed one `trainer bench --width W [--small-stem]` builds."""
    if a.width == 1.0 and not a.small_stem:
        return timm.create_model(a.model, num_classes=a.num_classes)
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet
    layers = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3),
              "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}[a.model]
    block = BasicBlock if a.model in ("resnet18", "resnet34") else Bottleneck
    w = lambda c: max(1, int(round(c * a.width)))
    stem = w(64)
    if stem % 2:
        raise SystemExit(f"--width {a.width}: the stem's {stem} channels must be even")
    # timm fixes a plain stem at 64 channels; a "deep" stem of width stem/2 makes the blocks
    # expect `stem` channels, and its convolutions are then replaced by the plain stem.
    model = ResNet(block, layers, num_classes=a.num_classes, stem_type="deep", stem_width=stem // 2,
                   channels=tuple(w(c) for c in (64, 128, 256, 512)))
    if a.small_stem:
        model.conv1 = torch.nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    else:
        model.conv1 = torch.nn.Conv2d(3, stem, 7, 2, 3, bias=False)
    return model


if __name__ == "__main__":
    main()
