#!/usr/bin/env python3
"""The kernels' bench as ratios: for each group of `cargo bench -p cpu-kernels`, the median time
of ours, of ours at `--cpu-ext none` and of burn-flex's own operation, from criterion's
estimates, and how many times faster ours is than each.

    cpu-kernels/benches/ratios.py [CRITERION_DIR]    (default target/criterion)
"""

import json
import os
import sys


def median_ms(folder):
    with open(os.path.join(folder, "new", "estimates.json"), encoding="utf-8") as f:
        return json.load(f)["median"]["point_estimate"] / 1e6


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
    print("| kernel (forward + backward) | ours ms | scalar ms | flex ms | ours vs scalar | ours vs flex |")
    print("|---|---|---|---|---|---|")
    for group in sorted(os.listdir(root)):
        folder = os.path.join(root, group)
        ids = {}
        for who in ("ours", "ours-scalar", "flex"):
            path = os.path.join(folder, who)
            if os.path.isdir(path):
                ids[who] = median_ms(path)
        if len(ids) < 3:
            continue
        ours, scalar, flex = ids["ours"], ids["ours-scalar"], ids["flex"]
        with open(os.path.join(folder, "ours", "new", "benchmark.json"), encoding="utf-8") as f:
            title = json.load(f)["group_id"]
        print(f"| {title} | {ours:.2f} | {scalar:.2f} | {flex:.2f} | "
              f"{scalar / ours:.2f}x | {flex / ours:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
