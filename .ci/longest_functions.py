#!/usr/bin/env python3
"""The longest functions of the workspace's Rust code (tests left out), by lines from `fn` to
its closing brace.

    .ci/longest_functions.py [N]    (default 10)
"""

import os
import re
import sys

CRATES = ["shard-tool/src", "loader/src", "cpu-kernels/src", "trainer/src"]
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    cut = next((i for i, l in enumerate(lines) if l.startswith("mod tests")), len(lines))
    i = 0
    while i < cut:
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        depth, opened, j = 0, False, i
        while j < len(lines):
            code = re.sub(r"//.*", "", lines[j])
            code = re.sub(r'"([^"\\]|\\.)*"', '""', code)
            depth += code.count("{") - code.count("}")
            opened = opened or "{" in code
            if opened and depth <= 0:
                break
            if not opened and code.rstrip().endswith(";"):
                break
            j += 1
        if opened:
            yield m.group(6), i + 1, j - i + 1
        i = j + 1 if opened else i + 1


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    found = []
    for crate in CRATES:
        for folder, _, files in os.walk(crate):
            for name in files:
                if name.endswith(".rs") and "test" not in name:
                    path = os.path.join(folder, name)
                    found += [(length, f"{path}:{line}", fn) for fn, line, length in functions(path)]
    for length, at, fn in sorted(found, reverse=True)[:n]:
        print(f"{length:5d}  {fn}  {at}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
