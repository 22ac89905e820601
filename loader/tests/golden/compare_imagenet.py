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

from PIL import Image, ImageChops, ImageEnhance, ImageOps

FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
FILL = (124, 116, 104)
M = 7.0  # A1/A2's magnitude; level functions of timm's increasing list


def level(op, negative):
    lv = M / 10.0
    sign = -1.0 if negative else 1.0
    return {
        "rotate": sign * (lv * 30.0),
        "posterize": 4 - int(lv * 4),
        "solarize": 256 - min(256, int(lv * 256)),
        "solarize-add": min(128, int(lv * 110)),
        "shear-x": sign * (lv * 0.3),
        "shear-y": sign * (lv * 0.3),
        "translate-x-rel": sign * (lv * 0.45),
        "translate-y-rel": sign * (lv * 0.45),
    }.get(op, max(0.1, 1.0 + sign * (lv * 0.9)))


def timm_op(img, op, a, filt):
    kw = dict(resample=FILTERS[filt], fillcolor=FILL)
    affine = lambda m: img.transform(img.size, Image.AFFINE, m, **kw)
    lut = [min(255, i + a) if i < 128 else i for i in range(256)] if op == "solarize-add" else None
    return {
        "auto-contrast": lambda: ImageOps.autocontrast(img),
        "equalize": lambda: ImageOps.equalize(img),
        "invert": lambda: ImageOps.invert(img),
        "rotate": lambda: img.rotate(a, **kw),
        "posterize": lambda: img if a >= 8 else ImageOps.posterize(img, a),
        "solarize": lambda: ImageOps.solarize(img, a),
        "solarize-add": lambda: img.point(lut * 3),
        "color": lambda: ImageEnhance.Color(img).enhance(a),
        "contrast": lambda: ImageEnhance.Contrast(img).enhance(a),
        "brightness": lambda: ImageEnhance.Brightness(img).enhance(a),
        "sharpness": lambda: ImageEnhance.Sharpness(img).enhance(a),
        "shear-x": lambda: affine((1, a, 0, 0, 1, 0)),
        "shear-y": lambda: affine((1, 0, 0, a, 1, 0)),
        "translate-x-rel": lambda: affine((1, 0, a * img.size[0], 0, 1, 0)),
        "translate-y-rel": lambda: affine((1, 0, 0, 0, 1, a * img.size[1])),
    }[op]()


OPS = ["auto-contrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize-add",
       "color", "contrast", "brightness", "sharpness", "shear-x", "shear-y", "translate-x-rel",
       "translate-y-rel"]
SIGNED = {"rotate", "color", "contrast", "brightness", "sharpness", "shear-x", "shear-y",
          "translate-x-rel", "translate-y-rel"}
GEOMETRIC = {"rotate", "shear-x", "shear-y", "translate-x-rel", "translate-y-rel"}


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
            subprocess.run(
                [args.loader, "augment", "--op", op, *extra, str(src), str(out)],
                check=True,
                stderr=subprocess.DEVNULL,
            )
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
            # The 15 RandAugment ops on the 224x224 eval crop, at M = 7, both signs, both filters.
            base = pil_eval(img, 224, 0.95, "bicubic")
            base_png = tmp / "base.png"
            base.save(base_png)
            for op in OPS:
                for negative in ([False, True] if op in SIGNED else [False]):
                    for filt in (["bilinear", "bicubic"] if op in GEOMETRIC else ["bilinear"]):
                        extra = ["--magnitude", str(M), "--interp", filt]
                        if negative:
                            extra.append("--negative")
                        a = level(op, negative)
                        d = max_diff(ours(op, base_png, extra), timm_op(base, op, a, filt))
                        key = f"{op} M={M:g}" + (" both signs" if op in SIGNED else "") + (
                            ", bilinear and bicubic" if op in GEOMETRIC else "")
                        results[key] = max(results.get(key, 0), d)
            for k, v in results.items():
                worst[k] = max(worst.get(k, 0), v)
    print(f"{len(files)} images of {args.root}, Pillow {Image.__version__}: max |diff| per op")
    for k, v in worst.items():
        print(f"  {k:40s} {v}")


if __name__ == "__main__":
    main()
