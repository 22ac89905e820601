#!/usr/bin/env python3
"""Pillow decodes every record the packer re-encoded with restart markers to its source's pixels.

    python3 tests/restart_pixels.py EXTRACTED_DIR SOURCE_ROOT DATASET_DIR

EXTRACTED_DIR is `shard-tool extract DATASET_DIR --all --out EXTRACTED_DIR`. A record whose bytes
are its source's needs no decode; one converted from PNG or CMYK (listed as transcoded in the
manifest) has other pixels by design and is skipped; every other record must decode, in Pillow,
to exactly the source's RGB pixels. Exit status 1 on the first difference.
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def rgb(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def main():
    extracted, source, dataset = (Path(a) for a in sys.argv[1:4])
    manifest = json.loads((dataset / "manifest.json").read_text())
    converted = {t["path"] for s in manifest["splits"] for t in s["transcoded"]}
    restarted = sum(s.get("restart_markers", 0) for s in manifest["splits"])
    same_bytes = checked = 0
    for path in sorted(p for p in extracted.rglob("*") if p.is_file()):
        rel = path.relative_to(extracted).as_posix()
        if rel in converted:
            continue
        src = source / rel
        if path.read_bytes() == src.read_bytes():
            same_bytes += 1
            continue
        a, b = rgb(path), rgb(src)
        if a.shape != b.shape or not np.array_equal(a, b):
            print(f"{rel}: Pillow decodes the record to other pixels than its source")
            return 1
        checked += 1
    print(f"{dataset.name}: {checked} re-encoded records decode in Pillow {Image.__version__} to "
          f"their sources' pixels ({restarted} re-encoded in the manifest, {len(converted)} "
          f"converted, {same_bytes} stored as they were)")
    # A source that already had the chosen restart markers can re-encode to its own bytes.
    if checked + same_bytes < restarted - len(converted):
        print("fewer re-encoded records than the manifest counts")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
