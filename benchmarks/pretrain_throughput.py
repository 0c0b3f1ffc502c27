#!/usr/bin/env python
"""Pre-training throughput: images/s, peak memory, achieved FLOP/s and its share of the
machine's measured matmul peak, and the share of the step spent in masking + loss.

    python -m benchmarks.pretrain_throughput                       # the CPU table of docs/SPEED.md
    python -m benchmarks.pretrain_throughput --models vit-base-patch16-224 --batch-size 128 --dtypes bf16
    python -m benchmarks.pretrain_throughput --objectives mfm folk     # FOLK / MFM step time, FLOP and memory ratios
    python -m benchmarks.pretrain_throughput --side-by-side            # ours against the official structure
    python -m benchmarks.pretrain_throughput --side-by-side ours-sdpa ours-math --models vit-small-patch16-224

One training step = forward (corruption, encoder, decoder, frequency loss) + backward +
AdamW update. FLOPs are counted by `torch.utils.flop_counter` on one step (matmuls and
convolutions; FFTs are not counted, so the figure is a slight under-estimate). The matmul
peak is the best of a few large square matmuls in the same dtype on the same device.
Masking + loss is timed separately on the same batch (corrupt + normalise + frequency loss
on a stand-in reconstruction) and reported as a share of the full step.

A FOLK step takes the same number of images, as two views each (so the student encodes 2x
the images, the teacher encodes them too) and includes the teacher's EMA update.

``--side-by-side A B ...`` builds every contender from the same weights and images in one
process and runs their steps in turn (A, B, A, B, ...), so that a slow spell of a shared
machine hits them all alike; it prints each one's median step, the spread (25th-75th
percentile) and the ratio of the first contender's median to each one's. Contenders
(`CONTENDERS`): ``reference`` (the official structure, `reference_mfm.py`: BEiT attention
written out, host-built masks copied in, FFTs as the official forward, PyTorch's default
AdamW), ``reference-encoder`` (the reference's encoder alone, forward + backward: the floor
for any step that keeps its kernels), ``ours`` (our default path: what the scripts run), and ``ours`` with one switch
changed (``ours-sdpa``, ``ours-math``, ``ours-compiled``, ``ours-contiguous`` (ResNet without channels-last),
``ours-foreach-adamw``) to measure each switch.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForPreTraining

from benchmarks.reference_mfm import HostMasks, ReferenceMFM, official_resnet50, official_vit
from mfm_hub import MFMResNetConfig, MFMViTConfig, config_from_preset, family_of
from mfm_hub.allocator import keep_freed_memory
from mfm_hub.modeling_common import corrupt, normalize, reconstruction_loss

DEFAULT_MODELS = ["vit-small-patch16-224", "resnet50", "swin-tiny-patch4-window7-224", "vit-tiny-patch4-32"]
SIDE_BY_SIDE_MODELS = ["vit-small-patch16-224", "resnet50"]
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def timed(fn, device, repeats):
    return sorted(time_once(fn, device) for _ in range(repeats))[repeats // 2]  # median


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


def adamw(parameters, fused: bool | None = True, foreach: bool | None = None):
    """The pre-training optimizer (betas 0.9/0.95, weight decay 0.05 off for 1-D parameters).
    ``fused=True`` is what the scripts' Trainer uses (``adamw_torch_fused``)."""
    parameters = list(parameters)
    groups = [{"params": [p for p in parameters if p.ndim > 1], "weight_decay": 0.05},
              {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), fused=fused, foreach=foreach)


@dataclass
class Step:
    """One contender's training step (``run``) and its model, built from shared weights."""

    run: Callable[[], None]
    model: torch.nn.Module


def our_step(config, pixels, dtype_name, objective="mfm", state=None, compile_model=False, memory_format=None,
             fused_adamw=True, **config_overrides) -> Step:
    """Our pre-training step as the scripts run it: the model, autocast, clipping at 3.0 and
    AdamW (fused, as the Trainer's default), plus FOLK's EMA update. ``memory_format``
    overrides the layout a family's convolutions run in (`MFMResNetPreTrainedModel.memory_format`)."""
    is_folk = objective == "folk"
    config = type(config).from_dict({**config.to_dict(), **config_overrides})
    model = family_of(config).folk(config) if is_folk else AutoModelForPreTraining.from_config(config)
    model = model.to(pixels.device).train()
    if state is not None:
        model.load_state_dict(state)
    if memory_format is not None:
        for module in model.modules():
            if hasattr(module, "memory_format"):
                module.memory_format = memory_format
        model.to(memory_format=memory_format)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(trainable, fused=True if fused_adamw else None, foreach=None if fused_adamw else True)
    step_model = torch.compile(model) if compile_model else model
    autocast_dtype = DTYPES[dtype_name]

    def run():
        with torch.autocast(pixels.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = step_model(pixels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if is_folk:
            model.update_teacher(0.996)

    return Step(run, model)


#: the official encoders the reference can stand in for, by config class
REFERENCE_ENCODERS = {
    MFMViTConfig: lambda c: official_vit(c.image_size, c.patch_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
    MFMResNetConfig: lambda c: official_resnet50(),
}


def reference_model(config, device, state) -> ReferenceMFM:
    """The official structure (`reference_mfm.py`) holding our weights."""
    if type(config) not in REFERENCE_ENCODERS or (isinstance(config, MFMResNetConfig) and list(config.layers) != [3, 4, 6, 3]):
        raise ValueError(f"The reference reproduces the official ViT and ResNet-50, not {config.summary()}.")
    reference = ReferenceMFM(REFERENCE_ENCODERS[type(config)](config), config.encoder_stride, config.num_features)
    prefix = family_of(config).model.base_model_prefix + "."
    reference.load_state_dict({key.removeprefix(prefix): value for key, value in state.items()})
    return reference.to(device).train()


def reference_step(config, pixels, dtype_name, state) -> Step:
    """The official structure with our weights: host-built masks copied in, the official
    forward under autocast, clipping at 3.0, PyTorch's default AdamW."""
    reference = reference_model(config, pixels.device, state)
    size = config.image_size
    masks = HostMasks(size, radius=config.mask_radius * size / 224, low_pass_prob=config.low_pass_prob)
    optimizer = adamw(reference.parameters(), fused=None)
    autocast_dtype = DTYPES[dtype_name]

    def run():
        mask = masks(pixels.shape[0]).to(pixels.device, non_blocking=True)
        with torch.autocast(pixels.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = reference(pixels, mask)[2]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Step(run, reference)


def reference_encoder_step(config, pixels, dtype_name, state) -> Step:
    """The reference's encoder alone: forward and backward of its blocks on the step's images
    under the same autocast, without masking, decoder, loss, clipping or optimizer. A step
    that runs these kernels unchanged cannot be faster than this, whatever it does around them."""
    reference = reference_model(config, pixels.device, state)
    autocast_dtype = DTYPES[dtype_name]

    def run():
        with torch.autocast(pixels.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            features = reference.encode(pixels)
        features.float().sum().backward()
        reference.zero_grad(set_to_none=True)

    return Step(run, reference)


#: contender name -> builder(config, pixels, dtype name, shared state dict) -> Step
CONTENDERS: dict[str, Callable[..., Step]] = {
    "reference": reference_step,
    "reference-encoder": reference_encoder_step,
    "ours": lambda c, x, d, s: our_step(c, x, d, state=s),
    "ours-sdpa": lambda c, x, d, s: our_step(c, x, d, state=s, attention_backend="sdpa"),
    "ours-math": lambda c, x, d, s: our_step(c, x, d, state=s, attention_backend="math"),
    "ours-compiled": lambda c, x, d, s: our_step(c, x, d, state=s, compile_model=True),
    "ours-contiguous": lambda c, x, d, s: our_step(c, x, d, state=s, memory_format=torch.contiguous_format),
    "ours-foreach-adamw": lambda c, x, d, s: our_step(c, x, d, state=s, fused_adamw=False),
}


#: PyTorch's FLOP counter knows the CUDA attention kernels but not the CPU one that "sdpa" runs
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda query, key, value, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(query, key, value)
    ),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda grad_out, query, key, value, *args, out_shape=None, **kwargs: flop_counter.sdpa_backward_flop_count(
            grad_out, query, key, value
        )
    ),
}


def step_flops(step: Step) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        step.run()
    return counter.get_total_flops()


def benchmark(name, dtype_name, batch_size, device, steps, compile_model, objective="mfm"):
    is_folk = objective == "folk"
    config = config_from_preset(name, **({"pretext_task": "informed"} if is_folk else {}))
    views = (2,) if is_folk else ()
    pixels = torch.rand(batch_size, *views, 3, config.image_size, config.image_size, device=device)
    step = our_step(config, pixels, dtype_name, objective, compile_model=compile_model)

    def masking_and_loss():
        images = pixels.flatten(0, 1) if is_folk else pixels
        corruption = corrupt(images, config)
        target = normalize(images, config)
        reconstruction_loss(normalize(corruption.pixel_values, config), target, corruption.frequency_mask, config)

    for _ in range(2):
        step.run()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flops = step_flops(step)
    step_seconds = timed(step.run, device, steps)
    masking_seconds = timed(masking_and_loss, device, steps)
    return {
        "model": name,
        "objective": objective,
        "dtype": dtype_name,
        "image_size": config.image_size,
        "batch": batch_size,
        "images_per_s": batch_size / step_seconds,
        "step_ms": 1000 * step_seconds,
        "flops": flops,
        "tflops_per_s": flops / step_seconds / 1e12,
        "peak_memory_mb": peak_memory_mb(device),
        "masking_and_loss_share": masking_seconds / step_seconds,
    }


def side_by_side(name, dtype_name, batch_size, device, rounds, contenders, peak) -> list[dict]:
    """Every contender from the same weights and images, their steps taken in turn."""
    config = config_from_preset(name)
    pixels = torch.rand(batch_size, 3, config.image_size, config.image_size, device=device)
    state = AutoModelForPreTraining.from_config(config).state_dict()
    steps = {contender: CONTENDERS[contender](config, pixels, dtype_name, state) for contender in contenders}
    # each contender's own FLOPs (one extra step of it); a compiled one's from its eager twin
    step_flop_counts = {
        contender: step_flops(CONTENDERS[contender.removesuffix("-compiled")](config, pixels, dtype_name, state))
        if contender.endswith("-compiled") else step_flops(step)
        for contender, step in steps.items()
    }
    for _ in range(3):  # warm-up (and compilation, which takes a few calls)
        for step in steps.values():
            step.run()
    times = {contender: [] for contender in contenders}
    for _ in range(rounds):
        for contender, step in steps.items():
            times[contender].append(time_once(step.run, device))
    rows = []
    baseline = sorted(times[contenders[0]])[rounds // 2]
    for contender in contenders:
        ordered = sorted(times[contender])
        median = ordered[rounds // 2]
        rows.append({
            "model": name, "dtype": dtype_name, "batch": batch_size, "contender": contender, "rounds": rounds,
            "median_ms": 1000 * median, "p25_ms": 1000 * ordered[rounds // 4], "p75_ms": 1000 * ordered[(3 * rounds) // 4],
            "images_per_s": batch_size / median, "share_of_matmul_peak": step_flop_counts[contender] / median / peak,
            "speedup_vs_first": baseline / median,
        })
    return rows


def run_isolated(name, dtype_name, batch, steps, compile_model, objective, glibc_defaults):
    """Each configuration runs in a fresh process so that peak memory is its own."""
    command = [sys.executable, "-m", "benchmarks.pretrain_throughput", "--single", name, dtype_name, str(batch), "--steps", str(steps),
               "--objectives", objective]
    command += ["--compile"] if compile_model else []
    command += ["--glibc-defaults"] if glibc_defaults else []
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(result.stdout.strip().splitlines()[-1])


def default_batch(name, device, requested):
    small = config_from_preset(name).image_size <= 64
    return requested or (128 if device.type == "cuda" else 64 if small else 8)


def print_side_by_side(rows):
    first = rows[0]["contender"]
    print(f"| model | dtype | batch | contender | median ms | 25-75% ms | img/s | % of matmul peak | {first} / contender |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['dtype']} | {row['batch']} | {row['contender']} | {row['median_ms']:.0f} | "
              f"{row['p25_ms']:.0f}-{row['p75_ms']:.0f} | {row['images_per_s']:.2f} | {100 * row['share_of_matmul_peak']:.0f}% | "
              f"{row['speedup_vs_first']:.2f}x |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_MODELS)} "
                        f"({' '.join(SIDE_BY_SIDE_MODELS)} with --side-by-side)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU (64 for 32-px models), 128 on GPU")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (per contender with --side-by-side, default 15 there)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--objectives", nargs="+", default=["mfm"], choices=["mfm", "folk"], help="with both, FOLK/MFM ratios are printed too"
    )
    parser.add_argument("--side-by-side", nargs="*", choices=list(CONTENDERS), default=None, metavar="CONTENDER",
                        help=f"contenders to alternate (default: reference ours); choices: {', '.join(CONTENDERS)}")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="leave glibc's allocator as it is; by default the process keeps freed memory as the training "
                             "scripts do (mfm_hub.allocator), for every contender alike")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--single", nargs=3, metavar=("MODEL", "DTYPE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    kept = not args.glibc_defaults and keep_freed_memory()
    if args.single:
        name, dtype_name, batch = args.single
        print(json.dumps(benchmark(name, dtype_name, int(batch), device, args.steps, args.compile, args.objectives[0])))
        return
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; freed memory kept in the process: {kept}")
    peaks = {}
    for dtype_name in args.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        peaks[dtype_name] = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 1024)
        print(f"measured matmul peak ({dtype_name}): {peaks[dtype_name] / 1e12:.3f} TFLOP/s")
    rows = []
    if args.side_by_side is not None:
        contenders = args.side_by_side or ["reference", "ours"]
        rounds = args.steps if args.steps != parser.get_default("steps") else 15
        for name in args.models or SIDE_BY_SIDE_MODELS:
            for dtype_name in args.dtypes:
                rows += side_by_side(name, dtype_name, default_batch(name, device, args.batch_size), device, rounds, contenders,
                                     peaks[dtype_name])
        print_side_by_side(rows)
    else:
        rows = throughput_table(args, device, peaks)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": where, "matmul_peak_flops": peaks, "rows": rows}, handle, indent=1)


def throughput_table(args, device, peaks) -> list[dict]:
    rows = []
    print("| model | objective | dtype | px | batch | img/s | step ms | TFLOP/s | % of matmul peak | peak MiB | masking + loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for name in args.models or DEFAULT_MODELS:
        for dtype_name in args.dtypes:
            batch = default_batch(name, device, args.batch_size)
            measured = {}
            for objective in args.objectives:
                row = run_isolated(name, dtype_name, batch, args.steps, args.compile, objective, args.glibc_defaults)
                row["share_of_matmul_peak"] = row["tflops_per_s"] * 1e12 / peaks[dtype_name]
                rows.append(row)
                measured[objective] = row
                print(
                    f"| {name} | {objective} | {dtype_name} | {row['image_size']} | {batch} | {row['images_per_s']:.1f} "
                    f"| {row['step_ms']:.0f} | "
                    f"{row['tflops_per_s']:.3f} | {100 * row['share_of_matmul_peak']:.0f}% | {row['peak_memory_mb']:.0f} | "
                    f"{100 * row['masking_and_loss_share']:.1f}% |",
                    flush=True,
                )
            if {"mfm", "folk"} <= measured.keys():
                folk, mfm = measured["folk"], measured["mfm"]
                ratios.append((name, dtype_name, folk["step_ms"] / mfm["step_ms"], folk["flops"] / mfm["flops"],
                               folk["peak_memory_mb"] / mfm["peak_memory_mb"]))
    if ratios:
        print("\n| model | dtype | FOLK / MFM step time | FOLK / MFM FLOPs | time ratio / FLOP ratio | FOLK / MFM peak memory |")
        print("|---|---|---|---|---|---|")
        for name, dtype_name, time_ratio, flop_ratio, memory_ratio in ratios:
            print(
                f"| {name} | {dtype_name} | {time_ratio:.2f}x | {flop_ratio:.2f}x | {time_ratio / flop_ratio:.2f} | {memory_ratio:.2f}x |"
            )
    return rows


if __name__ == "__main__":
    main()
