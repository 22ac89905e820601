#!/usr/bin/env python3
"""Reads a trainer run's TensorBoard event files with TensorBoard's own reader
(EventAccumulator) and checks them against the run's metrics.jsonl: the same scalar tags, as
many points per tag as metrics.jsonl has lines carrying it, and equal last values (within f32
rounding: TensorBoard's scalars are f32). Also checks that the recipe text and the preview
image are there. Prints one line per tag; exits 1 on a mismatch.

    python3 trainer/tests/tensorboard/check_events.py RUN_DIR
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# metrics.jsonl's fields under timm's names, as run/tensorboard.rs writes them.
STEP_TAGS = {
    "train_loss": "loss",
    "lr": "lr",
    "train_samples_per_s": "samples_per_s",
    "train_data_wait_s": "data_wait_s",
    "train_upload_s": "upload_s",
}
EVAL_TAGS = {"eval_top1": "top1", "eval_top5": "top5", "eval_loss": "loss"}


def main(run):
    lines = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
    want = {}
    for line in lines:
        tags = STEP_TAGS if line["kind"] == "step" else EVAL_TAGS
        for tag, field in tags.items():
            if line.get(field) is not None:
                want.setdefault(tag, []).append((line["step"], line[field]))
    acc = EventAccumulator(run, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    failures = []
    if sorted(tags["scalars"]) != sorted(want):
        failures.append(f"scalar tags {sorted(tags['scalars'])} != metrics.jsonl's {sorted(want)}")
    for tag, points in sorted(want.items()):
        if tag not in tags["scalars"]:
            continue
        got = acc.Scalars(tag)
        steps = [e.step for e in got]
        last = got[-1].value
        ok = steps == [s for s, _ in points] and abs(last - points[-1][1]) <= 1e-6 * max(1.0, abs(points[-1][1]))
        print(f"{tag:22} {len(got):6} points, last step {steps[-1]:6}, last value {last:.7g} "
              f"(metrics.jsonl: {len(points)} points, {points[-1][1]:.7g}) {'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(f"{tag}: steps or last value differ")
    if "recipe" not in tags["tensors"]:
        failures.append(f"no recipe text (tensors: {tags['tensors']})")
    else:
        text = acc.Tensors("recipe")[-1].tensor_proto.string_val[0].decode()
        print(f"recipe                 text, {len(text)} characters")
    if "train_samples" not in tags["images"]:
        failures.append(f"no train_samples image (images: {tags['images']})")
    else:
        image = acc.Images("train_samples")[0]
        print(f"train_samples          image {image.width}x{image.height}, {len(image.encoded_image_string)} bytes of PNG")
    for f in failures:
        print("MISMATCH:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
