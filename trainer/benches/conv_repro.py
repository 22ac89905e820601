#!/usr/bin/env python3
"""PyTorch twin of `cargo run --release -p trainer --example conv_repro`: one convolution,
forward and forward + backward, on the CPU, at the shapes that example printed (its JSON lines
on stdin: `"shape"` and `"dims"` = batch, in, out, side, kernel, stride). One JSON line per shape.

Usage: target/release/examples/conv_repro | python3 conv_repro.py [--threads N]
"""
import argparse
import json
import sys
import time

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for line in sys.stdin:
        ours = json.loads(line)
        n, cin, cout, side, k, stride = ours["dims"]
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
        print(json.dumps({"framework": f"torch {torch.__version__}", "shape": ours["shape"],
                          "forward_ms": run(False, 5), "forward_backward_ms": run(True, 5)}), flush=True)


if __name__ == "__main__":
    main()
