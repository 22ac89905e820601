#!/usr/bin/env python3
"""The training step that `trainer bench` times, in PyTorch + timm, for a same-card comparison.

Per step: upload a uint8 NHWC batch from pinned host memory, widen and normalize, timm's Mixup
(mixup 0.2 / cutmix 1.0, switch 0.5, smoothing 0.1, on the GPU), resnet50 in channels_last,
BinaryCrossEntropy(target_threshold=0.2), backward, timm's Lamb. Precision: f32, or bf16 by
autocast (PyTorch's usual mixed precision: f32 master weights). Eager, and torch.compile with
--compile.

Usage: python3 torch_step.py --batch 256 --dtype bf16 [--compile] [--steps 20 --warmup 5]
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
    p.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--model", default="resnet50")
    a = p.parse_args()

    torch.manual_seed(0)
    dev = torch.device("cuda")
    # f32 means f32: no TF32 in convolutions or matmuls (burn's f32 does not use it either).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    model = timm.create_model(a.model, num_classes=1000).to(dev).to(memory_format=torch.channels_last)
    model.train()
    opt = timm.optim.create_optimizer_v2(model, "lamb", lr=1e-3, weight_decay=0.01)
    mixup = timm.data.Mixup(mixup_alpha=0.2, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                            label_smoothing=0.1, num_classes=1000)
    loss_fn = timm.loss.BinaryCrossEntropy(target_threshold=0.2)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1) * 255
    inv_std = 1 / (torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1) * 255)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (a.batch, a.img_size, a.img_size, 3), dtype=torch.uint8, generator=g).pin_memory(),
                torch.randint(0, 1000, (a.batch,), generator=g).pin_memory()) for _ in range(4)]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.dtype == "bf16")

    def forward_loss(x, y):
        with autocast:
            return loss_fn(model(x), y)

    fwd = torch.compile(forward_loss) if a.compile else forward_loss

    def step(i):
        pixels, labels = batches[i % len(batches)]
        x = pixels.to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
        y = labels.to(dev, non_blocking=True)
        x = (x - mean) * inv_std
        x, y = mixup(x, y)
        x = x.contiguous(memory_format=torch.channels_last)
        loss = fwd(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    for i in range(a.warmup):
        step(i)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(a.warmup, a.warmup + a.steps):
        loss = step(i)
    torch.cuda.synchronize()
    timed = time.perf_counter() - t0
    print(json.dumps({
        "framework": f"torch {torch.__version__} timm {timm.__version__}",
        "mode": "compile" if a.compile else "eager",
        "device": torch.cuda.get_device_name(),
        "precision": a.dtype, "batch": a.batch, "img_size": a.img_size, "steps": a.steps,
        "warmup_s": warm, "timed_s": timed, "steps_per_s": a.steps / timed,
        "samples_per_s": a.steps * a.batch / timed, "last_loss": float(loss),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }), flush=True)


if __name__ == "__main__":
    main()
