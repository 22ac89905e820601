#!/usr/bin/env python3
"""Golden outputs of Pillow's resize for loader/src/resample.rs.

Run from this folder with Pillow installed (`pip install pillow==13.0.0`):
    python3 make_golden.py
It writes a few small deterministic input images (inputs/*.png), Pillow's result for each case
(expected/*.png), and cases.txt, which the Rust tests read. PNG keeps every pixel exact.
"""
import random
from pathlib import Path

import PIL
from PIL import Image, ImageEnhance, ImageOps

HERE = Path(__file__).resolve().parent
FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def make_inputs():
    rng = random.Random(1234)
    images = {}
    # Uniform noise: every weight matters.
    w, h = 97, 73
    images["noise"] = Image.frombytes("RGB", (w, h), bytes(rng.randrange(256) for _ in range(w * h * 3)))
    # Smooth gradients with stripes: rounding near mid-levels.
    w, h = 160, 120
    px = []
    for y in range(h):
        for x in range(w):
            px += [(x * 255) // (w - 1), (y * 255) // (h - 1), 255 if (x // 3 + y // 5) % 2 else 0]
    images["gradient"] = Image.frombytes("RGB", (w, h), bytes(px))
    # Tall, hard edges: clipping at 0 and 255 (bicubic overshoots).
    w, h = 41, 300
    px = []
    for y in range(h):
        for x in range(w):
            v = 255 if (x * 7 + y) % 13 < 6 else 0
            px += [v, 255 - v, (x * y) % 256]
    images["edges"] = Image.frombytes("RGB", (w, h), bytes(px))
    # Low contrast, uneven channels: AutoContrast and Equalize have work to do.
    w, h = 50, 40
    px = []
    for y in range(h):
        for x in range(w):
            px += [60 + (x * 2 + rng.randrange(8)), 100 + (y + rng.randrange(20)), 90 + rng.randrange(40)]
    images["dim"] = Image.frombytes("RGB", (w, h), bytes(px))
    return images


# (input, crop box (left, top, width, height), output size, filter)
CASES = [
    ("noise", (0, 0, 97, 73), (32, 32), "bilinear"),
    ("noise", (0, 0, 97, 73), (32, 32), "bicubic"),
    ("noise", (5, 9, 60, 41), (224, 224), "bilinear"),
    ("noise", (5, 9, 60, 41), (224, 224), "bicubic"),
    ("noise", (10, 0, 50, 73), (50, 20), "bicubic"),
    ("noise", (0, 3, 97, 40), (24, 40), "bilinear"),
    ("gradient", (0, 0, 160, 120), (64, 64), "bilinear"),
    ("gradient", (0, 0, 160, 120), (64, 64), "bicubic"),
    ("gradient", (33, 17, 101, 77), (7, 11), "bicubic"),
    ("gradient", (1, 1, 3, 2), (40, 40), "bicubic"),
    ("edges", (0, 0, 41, 300), (224, 224), "bicubic"),
    ("edges", (2, 50, 30, 200), (16, 16), "bilinear"),
    ("edges", (2, 50, 30, 200), (16, 16), "bicubic"),
]


# Eval transform: (input, img_size, crop_pct, filter), as torchvision's Resize(int) + CenterCrop.
EVAL_CASES = [
    ("noise", 64, 0.95, "bicubic"),
    ("gradient", 100, 0.875, "bicubic"),
    ("edges", 32, 0.95, "bilinear"),
]


# RandAugment pixel ops as timm's auto_augment.py calls Pillow: (op, argument).
def _solarize_add(img, add, thresh=128):
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut + lut + lut)


OPS = {
    "auto_contrast": lambda img, a: ImageOps.autocontrast(img),
    "equalize": lambda img, a: ImageOps.equalize(img),
    "invert": lambda img, a: ImageOps.invert(img),
    "posterize": lambda img, a: img if int(a) >= 8 else ImageOps.posterize(img, int(a)),
    "solarize": lambda img, a: ImageOps.solarize(img, int(a)),
    "solarize_add": lambda img, a: _solarize_add(img, int(a)),
    "color": lambda img, a: ImageEnhance.Color(img).enhance(float(a)),
    "contrast": lambda img, a: ImageEnhance.Contrast(img).enhance(float(a)),
    "brightness": lambda img, a: ImageEnhance.Brightness(img).enhance(float(a)),
    "sharpness": lambda img, a: ImageEnhance.Sharpness(img).enhance(float(a)),
}
FILL = (124, 116, 104)  # timm's img_mean for ImageNet: the fill of every geometric op


def _geometric(fn):
    # Argument "value:filter", e.g. "21.0:bicubic".
    def op(img, a):
        value, filt = a.split(":")
        return fn(img, float(value), dict(resample=FILTERS[filt], fillcolor=FILL))
    return op


def _affine(img, matrix, kw):
    return img.transform(img.size, Image.AFFINE, matrix, **kw)


OPS.update({
    "rotate": _geometric(lambda img, v, kw: img.rotate(v, **kw)),
    "shear_x": _geometric(lambda img, v, kw: _affine(img, (1, v, 0, 0, 1, 0), kw)),
    "shear_y": _geometric(lambda img, v, kw: _affine(img, (1, 0, 0, v, 1, 0), kw)),
    "translate_x_rel": _geometric(lambda img, v, kw: _affine(img, (1, 0, v * img.size[0], 0, 1, 0), kw)),
    "translate_y_rel": _geometric(lambda img, v, kw: _affine(img, (1, 0, 0, 0, 1, v * img.size[1]), kw)),
})
GEOMETRIC = [
    ("rotate", ["21.0", "-21.0", "7.3", "-0.01"]),
    ("shear_x", ["0.21", "-0.18"]),
    ("shear_y", ["0.21", "-0.18"]),
    ("translate_x_rel", ["0.315", "-0.27"]),
    ("translate_y_rel", ["0.315", "-0.27"]),
]
OP_CASES = [
    (op, f"{v}:{filt}", inp)
    for inp in ("noise", "gradient", "edges")
    for op, values in GEOMETRIC
    for v in values
    for filt in ("bilinear", "bicubic")
] + [
    (op, arg, inp)
    for inp in ("dim", "gradient", "noise")
    for op, args in [
        ("auto_contrast", ["0"]),
        ("equalize", ["0"]),
        ("invert", ["0"]),
        ("posterize", ["1", "2", "4", "8"]),
        ("solarize", ["77", "128", "256"]),
        ("solarize_add", ["77", "110"]),
        ("color", ["0.0", "0.37", "1.0", "1.63", "1.9"]),
        ("contrast", ["0.37", "1.63"]),
        ("brightness", ["0.1", "0.37", "1.63"]),
        ("sharpness", ["0.37", "1.63"]),
    ]
    for arg in args
]


def eval_transform(img, img_size, crop_pct, filt):
    scale = int(img_size / crop_pct)  # math.floor for positive values
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = scale, int(scale * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize(size, FILTERS[filt])
    top = int(round((size[1] - img_size) / 2.0))
    left = int(round((size[0] - img_size) / 2.0))
    return img.crop((left, top, left + img_size, top + img_size))


def main():
    (HERE / "inputs").mkdir(exist_ok=True)
    (HERE / "expected").mkdir(exist_ok=True)
    images = make_inputs()
    for name, img in images.items():
        img.save(HERE / "inputs" / f"{name}.png")
    lines = [f"# Pillow {PIL.__version__}: name input left top width height out_w out_h filter"]
    for n, (inp, (left, top, w, h), (ow, oh), filt) in enumerate(CASES):
        out = images[inp].crop((left, top, left + w, top + h)).resize((ow, oh), FILTERS[filt])
        name = f"{n:02d}-{inp}-{filt}-{ow}x{oh}"
        out.save(HERE / "expected" / f"{name}.png")
        lines.append(f"{name} {inp} {left} {top} {w} {h} {ow} {oh} {filt}")
    (HERE / "cases.txt").write_text("\n".join(lines) + "\n")
    lines = [f"# Pillow {PIL.__version__}: name input img_size crop_pct filter"]
    for n, (inp, img_size, crop_pct, filt) in enumerate(EVAL_CASES):
        name = f"eval-{n:02d}-{inp}-{img_size}-{crop_pct}-{filt}"
        eval_transform(images[inp], img_size, crop_pct, filt).save(HERE / "expected" / f"{name}.png")
        lines.append(f"{name} {inp} {img_size} {crop_pct} {filt}")
    (HERE / "eval_cases.txt").write_text("\n".join(lines) + "\n")
    lines = [f"# Pillow {PIL.__version__}: name input op arg"]
    for op, arg, inp in OP_CASES:
        name = f"op-{inp}-{op}-{arg.replace(':', '-')}"
        OPS[op](images[inp], arg).save(HERE / "expected" / f"{name}.png")
        lines.append(f"{name} {inp} {op} {arg}")
    (HERE / "op_cases.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
