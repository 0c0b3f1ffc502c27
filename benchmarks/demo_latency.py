#!/usr/bin/env python
"""How long the demo page takes per request on this machine: read and resize an upload, put a
pretext task to the model, draw the pictures. Prints the median of each stage over ``--repeats``
requests after one warm-up; a random-initialised model of the preset takes as long as a trained one.

    python -m benchmarks.demo_latency                      # ViT-B/16 at 224 px, every task
    python -m benchmarks.demo_latency --preset resnet50
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.machine import cpu_name
from mfm_hub import config_from_preset
from mfm_hub.demo.panels import image_to_pixels, panel_images, read_image, run_task
from mfm_hub.families import family_of
from mfm_hub.pretext import PRETEXT_TASKS
from mfm_hub.visualization import plot_band_errors


def middle_value(parameter):
    """A representative value of a task parameter: the middle choice or the range's middle step."""
    if parameter.choices:
        choices = list(parameter.choices.values())
        return choices[len(choices) // 2]
    steps = round((parameter.maximum - parameter.minimum) / parameter.step)
    return parameter.minimum + (steps // 4) * parameter.step


def request(model, photo: Path, task: str, values: dict) -> tuple[float, float, float, float]:
    """One request, timed per stage: read + resize, model, pictures, total (seconds)."""
    start = time.perf_counter()
    pixels = image_to_pixels(read_image(photo), model.config)
    read = time.perf_counter()
    result = run_task(model, pixels, task, values)
    ran = time.perf_counter()
    panel_images(result)
    plot_band_errors(result.bands, task, values.get("mask_radius"))
    end = time.perf_counter()
    return read - start, ran - read, end - ran, end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vit-base-patch16-224")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = config_from_preset(args.preset)
    model = family_of(config).for_pretraining(config).eval()
    photo = Path(tempfile.mkdtemp()) / "photo.jpg"
    Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)).save(photo)
    print(f"{args.preset} at {config.image_size} px, {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'task':10s} {'read+resize':>12s} {'model':>8s} {'pictures':>9s} {'total':>8s}   (median seconds of {args.repeats})")
    for name, task in PRETEXT_TASKS.items():
        values = {parameter.field: middle_value(parameter) for parameter in task.parameters}
        request(model, photo, name, values)
        stages = list(zip(*(request(model, photo, name, values) for _ in range(args.repeats))))
        print(f"{name:10s} " + " ".join(f"{statistics.median(stage):{width}.3f}" for stage, width in zip(stages, (12, 8, 9, 8))))


if __name__ == "__main__":
    main()
