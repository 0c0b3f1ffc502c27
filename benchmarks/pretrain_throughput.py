#!/usr/bin/env python
"""Pre-training throughput: images/s, peak memory, achieved FLOP/s and its share of the
machine's measured matmul peak, and the share of the step spent in masking + loss.

    python benchmarks/pretrain_throughput.py                       # the README's CPU table
    python benchmarks/pretrain_throughput.py --models vit-base-patch16-224 --batch-size 128 --dtypes bf16
    python benchmarks/pretrain_throughput.py --objectives mfm folk     # FOLK / MFM step time and memory ratios

One training step = forward (corruption, encoder, decoder, frequency loss) + backward +
AdamW update. FLOPs are counted by `torch.utils.flop_counter` on one step (matmuls and
convolutions; FFTs are not counted, so the figure is a slight under-estimate). The matmul
peak is the best of a few large square matmuls in the same dtype on the same device.
Masking + loss is timed separately on the same batch (corrupt + normalise + frequency loss
on a stand-in reconstruction) and reported as a share of the full step.

A FOLK step takes the same number of images, as two views each (so the student encodes 2x
the images, the teacher encodes them too) and includes the teacher's EMA update.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForPreTraining

from mfm_hub import config_from_preset, family_of
from mfm_hub.modeling_common import corrupt, normalize, reconstruction_loss

DEFAULT_MODELS = ["vit-small-patch16-224", "resnet50", "vit-tiny-patch4-32"]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]  # median


def matmul_peak(device, dtype, size):
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    seconds = min(timed(lambda: a @ b, device, 5) for _ in range(2))
    return 2 * size**3 / seconds


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process's peak RSS, KiB -> MiB


def benchmark(name, dtype_name, batch_size, device, steps, compile_model, objective="mfm"):
    is_folk = objective == "folk"
    config = config_from_preset(name, **({"corruption": "informed"} if is_folk else {}))
    model = (family_of(config).folk(config) if is_folk else AutoModelForPreTraining.from_config(config)).to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16}[dtype_name]
    views = (2,) if is_folk else ()
    pixels = torch.rand(batch_size, *views, 3, config.image_size, config.image_size, device=device)
    step_model = torch.compile(model) if compile_model else model

    def step():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = step_model(pixels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if is_folk:
            model.update_teacher(0.996)

    def masking_and_loss():
        images = pixels.flatten(0, 1) if is_folk else pixels
        corruption = corrupt(images, config)
        target = normalize(images, config)
        reconstruction_loss(normalize(corruption.pixel_values, config), target, corruption.frequency_mask, config)

    for _ in range(2):
        step()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step_seconds = timed(step, device, steps)
    masking_seconds = timed(masking_and_loss, device, steps)
    return {
        "model": name,
        "objective": objective,
        "dtype": dtype_name,
        "image_size": config.image_size,
        "batch": batch_size,
        "images_per_s": batch_size / step_seconds,
        "step_ms": 1000 * step_seconds,
        "tflops_per_s": flops / step_seconds / 1e12,
        "peak_memory_mb": peak_memory_mb(device),
        "masking_and_loss_share": masking_seconds / step_seconds,
    }


def run_isolated(name, dtype_name, batch, steps, compile_model, objective):
    """Each configuration runs in a fresh process so that peak memory is its own."""
    command = [sys.executable, __file__, "--single", name, dtype_name, str(batch), "--steps", str(steps), "--objectives", objective]
    command += ["--compile"] if compile_model else []
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU (64 for 32-px models), 128 on GPU")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--objectives", nargs="+", default=["mfm"], choices=["mfm", "folk"], help="with both, FOLK/MFM ratios are printed too")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--single", nargs=3, metavar=("MODEL", "DTYPE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.single:
        name, dtype_name, batch = args.single
        print(json.dumps(benchmark(name, dtype_name, int(batch), device, args.steps, args.compile, args.objectives[0])))
        return
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}")
    peaks = {}
    for dtype_name in args.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        peaks[dtype_name] = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 1024)
        print(f"measured matmul peak ({dtype_name}): {peaks[dtype_name] / 1e12:.3f} TFLOP/s")
    rows = []
    print("| model | objective | dtype | px | batch | img/s | step ms | TFLOP/s | % of matmul peak | peak MiB | masking + loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for name in args.models:
        for dtype_name in args.dtypes:
            small = config_from_preset(name).image_size <= 64
            batch = args.batch_size or (128 if device.type == "cuda" else 64 if small else 8)
            measured = {}
            for objective in args.objectives:
                row = run_isolated(name, dtype_name, batch, args.steps, args.compile, objective)
                row["share_of_matmul_peak"] = row["tflops_per_s"] * 1e12 / peaks[dtype_name]
                rows.append(row)
                measured[objective] = row
                print(f"| {name} | {objective} | {dtype_name} | {row['image_size']} | {batch} | {row['images_per_s']:.1f} | {row['step_ms']:.0f} | "
                      f"{row['tflops_per_s']:.3f} | {100 * row['share_of_matmul_peak']:.0f}% | {row['peak_memory_mb']:.0f} | "
                      f"{100 * row['masking_and_loss_share']:.1f}% |", flush=True)
            if {"mfm", "folk"} <= measured.keys():
                ratios.append((name, dtype_name, measured["folk"]["step_ms"] / measured["mfm"]["step_ms"],
                               measured["folk"]["peak_memory_mb"] / measured["mfm"]["peak_memory_mb"]))
    if ratios:
        print("\n| model | dtype | FOLK / MFM step time | FOLK / MFM peak memory |")
        print("|---|---|---|---|")
        for name, dtype_name, time_ratio, memory_ratio in ratios:
            print(f"| {name} | {dtype_name} | {time_ratio:.2f}x | {memory_ratio:.2f}x |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": where, "matmul_peak_flops": peaks, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
