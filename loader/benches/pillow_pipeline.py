#!/usr/bin/env python3
"""timm's A1 (or A3) train transform done the way timm does it, with Pillow, for `loader bench` to be
compared against (one process = one core, as a timm DataLoader worker).

    python3 loader/benches/pillow_pipeline.py IMAGENET_SAMPLE_DIR [--samples 768] [--transform a1|a3]

A3 is the same with 160 px, rand-m6-mstd0.5-inc1 and no repeats.

Per sample, as timm's dataset + transforms_imagenet_train: open and decode the JPEG
(every repeat decodes again), RandomResizedCrop 224 (scale 0.08-1, log-uniform ratio 3/4-4/3,
10 attempts, fallback; bilinear or bicubic at random), horizontal flip p=0.5, RandAugment
rand-m7-mstd0.5-inc1 (2 ops with replacement, p=0.5 each, Gaussian magnitude, random sign,
fill (124, 116, 104)), then to a uint8 array. timm itself is not imported (it needs torch);
the ops below are timm's calls into Pillow.
"""
import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

FILL = (124, 116, 104)
INTERP = (Image.BILINEAR, Image.BICUBIC)


def rrc_params(img, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    area = img.size[0] * img.size[1]
    for _ in range(10):
        target_area = random.uniform(*scale) * area
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        aspect_ratio = math.exp(random.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if w <= img.size[0] and h <= img.size[1]:
            return random.randint(0, img.size[1] - h), random.randint(0, img.size[0] - w), h, w
    in_ratio = img.size[0] / img.size[1]
    if in_ratio < min(ratio):
        w = img.size[0]; h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = img.size[1]; w = int(round(h * max(ratio)))
    else:
        w, h = img.size
    return (img.size[1] - h) // 2, (img.size[0] - w) // 2, h, w


def neg(v):
    return -v if random.random() > 0.5 else v


def rand_augment(img, m=7.0, mstd=0.5):
    ops = [
        lambda i, l: ImageOps.autocontrast(i),
        lambda i, l: ImageOps.equalize(i),
        lambda i, l: ImageOps.invert(i),
        lambda i, l: i.rotate(neg(l * 30.0), resample=random.choice(INTERP), fillcolor=FILL),
        lambda i, l: ImageOps.posterize(i, 4 - int(l * 4)) if 4 - int(l * 4) < 8 else i,
        lambda i, l: ImageOps.solarize(i, 256 - min(256, int(l * 256))),
        lambda i, l: i.point([min(255, v + min(128, int(l * 110))) if v < 128 else v for v in range(256)] * 3),
        lambda i, l: ImageEnhance.Color(i).enhance(max(0.1, 1.0 + neg(l * 0.9))),
        lambda i, l: ImageEnhance.Contrast(i).enhance(max(0.1, 1.0 + neg(l * 0.9))),
        lambda i, l: ImageEnhance.Brightness(i).enhance(max(0.1, 1.0 + neg(l * 0.9))),
        lambda i, l: ImageEnhance.Sharpness(i).enhance(max(0.1, 1.0 + neg(l * 0.9))),
        lambda i, l: i.transform(i.size, Image.AFFINE, (1, neg(l * 0.3), 0, 0, 1, 0), resample=random.choice(INTERP), fillcolor=FILL),
        lambda i, l: i.transform(i.size, Image.AFFINE, (1, 0, 0, neg(l * 0.3), 1, 0), resample=random.choice(INTERP), fillcolor=FILL),
        lambda i, l: i.transform(i.size, Image.AFFINE, (1, 0, neg(l * 0.45) * i.size[0], 0, 1, 0), resample=random.choice(INTERP), fillcolor=FILL),
        lambda i, l: i.transform(i.size, Image.AFFINE, (1, 0, 0, 0, 1, neg(l * 0.45) * i.size[1]), resample=random.choice(INTERP), fillcolor=FILL),
    ]
    for op in np.random.choice(len(ops), 2, replace=True):
        if random.random() > 0.5:
            continue
        level = max(0.0, min(random.gauss(m, mstd), 10.0)) / 10.0
        img = ops[op](img, level)
    return img


def sample(path, size=224, m=7.0):
    img = Image.open(path).convert("RGB")
    i, j, h, w = rrc_params(img)
    img = img.crop((j, i, j + w, i + h)).resize((size, size), random.choice(INTERP))
    if random.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = rand_augment(img, m=m)
    return np.asarray(img, dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--samples", type=int, default=768)
    ap.add_argument("--transform", choices=("a1", "a3"), default="a1")
    ap.add_argument("--repeats", type=int, default=None, help="default: 3 for a1, 1 for a3")
    args = ap.parse_args()
    size, m, repeats = (224, 7.0, 3) if args.transform == "a1" else (160, 6.0, 1)
    if args.repeats is not None:
        repeats = args.repeats
    random.seed(0)
    np.random.seed(0)
    files = sorted(Path(args.root, "train").glob("*/*.JPEG"))
    random.shuffle(files)
    order = [f for f in files for _ in range(repeats)][: args.samples]
    for f in order[:16]:
        sample(f, size, m)  # warm-up
    t = time.perf_counter()
    for f in order:
        sample(f, size, m)
    dt = time.perf_counter() - t
    print(f"Pillow pipeline (timm's {args.transform.upper()} transform, {repeats} repeats each decoded): "
          f"{len(order) / dt:.1f} samples/s on 1 core ({len(order)} samples in {dt:.2f} s)")


if __name__ == "__main__":
    main()
