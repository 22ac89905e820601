#!/usr/bin/env python3
"""Max absolute pixel difference between `loader augment` and Pillow on real ImageNet images.

    python3 loader/tests/golden/compare_imagenet.py IMAGENET_SAMPLE_DIR [--loader BIN] [--count 20]

Needs Pillow (`pip install pillow==13.0.0`) and a built `loader` (default target/release/loader).
Takes the first COUNT JPEGs of IMAGENET_SAMPLE_DIR/train/*/ in sorted order. Each image is
decoded once by Pillow (libjpeg-turbo) and saved as PNG, so both sides transform the same
pixels; the decoders themselves are compared separately (`decode`). Parameters are fixed per
image (a crop box derived from its size), as the issue asks: no randomness is compared here.
"""
import argparse
import subprocess
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def max_diff(a, b):
    assert a.size == b.size, (a.size, b.size)
    return max(hi for _, hi in ImageChops.difference(a, b).getextrema())


def crop_box(w, h):
    # A fixed, off-centre box of about 40 % of the area with an aspect ratio near 4/3.
    cw, ch = max(1, (w * 2) // 3), max(1, (h * 3) // 5)
    return (w // 7, h // 5, min(cw, w - w // 7), min(ch, h - h // 5))


def pil_eval(img, size, crop_pct, filt):
    scale = int(size / crop_pct)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new = (scale, int(scale * long / short))
    img = img.resize(new if w <= h else new[::-1], FILTERS[filt])
    top = int(round((img.size[1] - size) / 2.0))
    left = int(round((img.size[0] - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--loader", default="target/release/loader")
    ap.add_argument("--count", type=int, default=20)
    args = ap.parse_args()
    files = sorted(Path(args.root, "train").glob("*/*.JPEG"))[: args.count]
    worst = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def ours(op, src, extra):
            out = tmp / "out.png"
            subprocess.run([args.loader, "augment", "--op", op, *extra, str(src), str(out)], check=True)
            return Image.open(out).convert("RGB")

        for f in files:
            img = Image.open(f).convert("RGB")
            png = tmp / "in.png"
            img.save(png)
            w, h = img.size
            results = {"decode (zune-jpeg vs libjpeg-turbo)": max_diff(ours("decode", f, []), img)}
            left, top, cw, ch = crop_box(w, h)
            for filt in ("bilinear", "bicubic"):
                pil = img.crop((left, top, left + cw, top + ch)).resize((224, 224), FILTERS[filt])
                arg = f"{left},{top},{cw},{ch}"
                results[f"resized-crop {filt}"] = max_diff(
                    ours("resized-crop", png, ["--arg", arg, "--size", "224", "--interp", filt]), pil
                )
            results["eval 224/0.95 bicubic"] = max_diff(
                ours("eval", png, ["--size", "224", "--crop-pct", "0.95", "--interp", "bicubic"]),
                pil_eval(img, 224, 0.95, "bicubic"),
            )
            results["flip"] = max_diff(ours("flip", png, []), img.transpose(Image.FLIP_LEFT_RIGHT))
            for k, v in results.items():
                worst[k] = max(worst.get(k, 0), v)
    print(f"{len(files)} images of {args.root}, Pillow {Image.__version__}: max |diff| per op")
    for k, v in worst.items():
        print(f"  {k:40s} {v}")


if __name__ == "__main__":
    main()
