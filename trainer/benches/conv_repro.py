#!/usr/bin/env python3
"""PyTorch twin of `cargo run --release -p trainer --example conv_repro`: one convolution,
forward and forward + backward, at the same shapes, on the CPU. One JSON line per shape.

Usage: python3 conv_repro.py [--threads N]
"""
import argparse
import json
import time

import torch

SHAPES = [
    ("r18/8 32px stage1 3x3", 64, 8, 8, 32, 3, 1),
    ("r18/8 32px stage3 3x3", 64, 32, 32, 8, 3, 1),
    ("r50 224px stem 7x7/2 b8", 8, 3, 64, 224, 7, 2),
    ("r50 224px stage1 3x3 b8", 8, 64, 64, 56, 3, 1),
    ("r50 224px stage1 1x1 b8", 8, 256, 64, 56, 1, 1),
    ("r50 224px stage4 3x3 b8", 8, 512, 512, 7, 3, 1),
]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for name, n, cin, cout, side, k, stride in SHAPES:
        x = torch.rand(n, cin, side, side, requires_grad=True)
        w = torch.rand(cout, cin, k, k, requires_grad=True)

        def run(backward, reps):
            start = time.perf_counter()
            for _ in range(reps):
                y = torch.nn.functional.conv2d(x, w, stride=stride, padding=k // 2)
                if backward:
                    y.sum().backward()
                else:
                    float(y.sum().detach())
            return (time.perf_counter() - start) * 1e3 / reps

        run(True, 1)
        print(json.dumps({"framework": f"torch {torch.__version__}", "shape": name,
                          "forward_ms": run(False, 5), "forward_backward_ms": run(True, 5)}), flush=True)


if __name__ == "__main__":
    main()
