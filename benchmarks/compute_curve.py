#!/usr/bin/env python
"""When does MFM pay off? Representation quality along pre-training, against MAE and scratch.

The CIFAR-10 benchmark's encoder and data (`benchmarks.cifar10_benchmark`), pre-trained with
each of ``--methods`` (MFM, FOLK and MAE, `benchmarks.mae_contender`) for the same compute:
``--budget_minutes`` of this machine, turned into a step count per method by a calibration
of its end-to-end throughput (stored in ``results.json``, so re-runs and seeds train the same
steps). All use ``--batched_augmentation``. Along each run (one checkpoint every 1/16 of it),
the encoder at 1/16, 1/8, 1/4, 1/2 and all of the budget gets a weighted kNN and a linear
probe on frozen features; at the end point also fine-tuning on 10 % of the labels and 5-way
5-shot episodes. Scratch (the randomly initialised encoder) is evaluated once per
``--scratch_seeds`` and drawn as a band (its seed spread). FOLK's teacher entropy along the run
is kept beside, against ``log K``.

    python -m benchmarks.compute_curve --output_dir outputs/compute_curve                   # 4 x 15.5 min per method
    python -m benchmarks.compute_curve --budget_minutes 15.5 --end_point_seeds 0 ...       # a shorter curve
    python -m benchmarks.compute_curve --output_dir outputs/compute_curve_4x \
        --reuse_from docs/results/compute_curve_15.5min.json                                # the 15.5-min run's compute axis

Writes ``results.json`` (as each item finishes; a re-run skips what is done and resumes an
interrupted pre-training from its last checkpoint), ``curve.md`` and ``compute_curve.png``.
A finished item needs only its entry in ``results.json``: a copy of that file in a new
``--output_dir`` continues the run where it stood, without the run folders.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from benchmarks.cifar10_benchmark import (
    CONTENDERS,
    COVERAGE,
    ENCODER,
    FOLK_HEAD,
    FROZEN_FEATURE_PROTOCOLS,
    RUN_STATE,
    Results,
    add_run_arguments,
    calibrate,
    cell,
    chosen_settings,
    cifar10_folder,
    fine_tune,
    frozen_feature_top1,
    frozen_features,
    pretrain,
    spread,
)
from benchmarks.machine import cpu_name
from benchmarks.mae_contender import ImageInputViTMAE, encoder_from_mae
from mfm_hub import MFMViTConfig
from mfm_hub.folder_lock import claim_folder
from mfm_hub.pretraining import METHODS, pretrained_backbone, pretraining_model
from mfm_hub.validation import require, require_at_least
from mfm_hub.visualization import plt

#: Checkpoints per run; the curve is read at the log-spaced ones in `FRACTIONS`.
CHECKPOINTS = 16
FRACTIONS = (Fraction(1, 16), Fraction(1, 8), Fraction(1, 4), Fraction(1, 2), Fraction(1))
CURVE_PROTOCOLS = {"knn": "kNN (k=20)", "linear_probe": "linear probe"}
END_PROTOCOLS = {"fine_tune_10pct": "fine-tune 10%", "five_shot": "5-way 5-shot"}


def encoder_at(method: str, checkpoint: Path):
    """The encoder a run holds at ``checkpoint``, as the backbone its export would be."""
    if method in CONTENDERS:
        return encoder_from_mae(ImageInputViTMAE.from_pretrained(checkpoint), MFMViTConfig(**ENCODER))
    objective = "folk" if method == "folk" else "reconstruction"
    return pretrained_backbone(pretraining_model(str(checkpoint), objective), objective)


def curve_encoder(method: str, run: Path, step: int, steps: int) -> Path:
    """The folder of the encoder at ``step``: the run's export at its end, else exported from its checkpoint once."""
    if step == steps or step == 0:
        return run / "encoder"
    folder = run / "curve" / f"step-{step}"
    if not (folder / "config.json").exists():
        encoder_at(method, run / "encoder" / f"checkpoint-{step}").save_pretrained(folder)
    return folder


def evaluate_point(method: str, seed: int, step: int, steps: int, protocols, data: Path, args, results: Results) -> None:
    run = Path(args.output_dir) / f"{method}-seed{seed}"
    todo = [p for p in protocols if results.get(f"{method}/seed{seed}/step{step}/{p}") is None]
    if not todo:
        return
    encoder = curve_encoder(method, run, step, steps)
    started = time.time()
    values = {}
    frozen = [p for p in todo if p in FROZEN_FEATURE_PROTOCOLS]
    if frozen:
        train = frozen_features(encoder, data / "train", encoder / "train_features.safetensors", args)
        test = frozen_features(encoder, data / "test", encoder / "test_features.safetensors", args)
        values = {protocol: {"top1": frozen_feature_top1(protocol, train, test, seed, args)} for protocol in frozen}
    if "fine_tune_10pct" in todo:
        values["fine_tune_10pct"] = fine_tune(encoder, 0.1, seed, data, run / "fine_tune_10pct", args)
    for protocol, value in values.items():
        value["wall_s"] = round(time.time() - started, 1)
        results.put(f"{method}/seed{seed}/step{step}/{protocol}", value)
        print(f"{method} seed {seed} step {step}: {protocol} top-1 {value['top1']:.4f}", flush=True)


def teacher_entropy(output: Path) -> list[list[float]]:
    """FOLK's logged (step, mean teacher-target entropy) pairs of a finished pre-training run's output folder."""
    history = json.loads((output / "train_results.json").read_text())["log_history"]
    return [[entry["step"], entry["teacher_entropy"]] for entry in history if "teacher_entropy" in entry]


def point_steps(steps: int) -> list[int]:
    return [int(fraction * steps) for fraction in FRACTIONS]


def summarise(args, results: Results, steps: dict[str, int]) -> dict:
    """Per method: the curve (mean over curve seeds at each point) and the end point (mean ± sd over end-point seeds)."""
    summary = {}
    for method in args.methods:
        seeds = args.scratch_seeds if method == "scratch" else sorted(set(args.seeds) | set(args.end_point_seeds))
        end_step = steps.get(method, 0)
        end = {}
        for protocol in [*CURVE_PROTOCOLS, *END_PROTOCOLS]:
            values = [results.get(f"{method}/seed{s}/step{end_step}/{protocol}") for s in seeds]
            values = [v["top1"] for v in values if v is not None]
            if values:
                end[protocol] = spread(values)
        curve = {}
        if method != "scratch":
            for step in point_steps(end_step):
                for protocol in CURVE_PROTOCOLS:
                    values = [results.get(f"{method}/seed{s}/step{step}/{protocol}") for s in args.seeds]
                    values = [v["top1"] for v in values if v is not None]
                    if values:
                        curve.setdefault(str(step), {})[protocol] = float(np.mean(values))
        summary[method] = {"steps": end_step, "end_point": end, "curve": curve}
    return summary


def minutes_per_step(method: str, results: Results, args) -> float:
    return args.batch_size / results.get(f"calibration/{method}")["images_per_second"] / 60


def write_outputs(args, results: Results, steps: dict[str, int]) -> None:
    out = Path(args.output_dir)
    summary = summarise(args, results, steps)
    results.data["summary"] = summary
    results.save()
    fractions = " | ".join(f"{fraction}" for fraction in FRACTIONS)
    lines = [f"kNN / linear probe top-1 (%) at each fraction of the {args.budget_minutes:g}-minute budget (seeds {args.seeds}):", "",
             f"| method | steps (epochs) | {fractions} |", "|---" * (2 + len(FRACTIONS)) + "|"]
    for method in args.methods:
        if method == "scratch":
            continue
        cells = []
        for step in point_steps(steps[method]):
            point = summary[method]["curve"].get(str(step), {})
            cells.append(" / ".join(f"{100 * point[p]:.1f}" if p in point else "-" for p in CURVE_PROTOCOLS))
        epochs = steps[method] * args.batch_size / args.train_images
        lines.append(f"| {method} | {steps[method]} ({epochs:.0f}) | " + " | ".join(cells) + " |")
    end_seeds = sorted(set(args.seeds) | set(args.end_point_seeds))
    lines += ["", f"End point (mean ± sd over the seeds run so far of scratch: {args.scratch_seeds}, others: {end_seeds}):",
              "", "| method | " + " | ".join([*CURVE_PROTOCOLS.values(), *END_PROTOCOLS.values()]) + " |",
              "|---" * (1 + len(CURVE_PROTOCOLS) + len(END_PROTOCOLS)) + "|"]
    for method in args.methods:
        end = summary[method]["end_point"]
        lines.append(f"| {method} | " + " | ".join(cell(end.get(p)) for p in [*CURVE_PROTOCOLS, *END_PROTOCOLS]) + " |")
    table = "\n".join(lines)
    (out / "curve.md").write_text(table + "\n")
    print(table)

    fig, axes = plt.subplots(1, 4, figsize=(18, 4), dpi=120)
    budget = args.budget_minutes
    colours = {method: "grey" if method == "scratch" else f"C{index}" for index, method in enumerate(args.methods)}
    for axis, (protocol, name) in zip(axes[:2], CURVE_PROTOCOLS.items()):
        scratch = summary.get("scratch", {}).get("end_point", {}).get(protocol)
        if scratch is not None:
            low, high = scratch["mean"] - scratch["sd"], scratch["mean"] + scratch["sd"]
            axis.axhspan(low, high, color=colours["scratch"], alpha=0.3, label=f"scratch (± sd, {scratch['seeds']} seeds)")
            axis.axhline(scratch["mean"], color=colours["scratch"], lw=1)
        for method in args.methods:
            if method == "scratch":
                continue
            points = sorted((int(step), values[protocol]) for step, values in summary[method]["curve"].items() if protocol in values)
            if points:
                minutes = [step * minutes_per_step(method, results, args) for step, _ in points]
                axis.plot(minutes, [value for _, value in points], marker="o", color=colours[method], label=method)
        axis.set_xscale("log", base=2)
        axis.set_xlabel(f"pre-training compute (minutes on {results.data.get('cpu', 'this CPU')}, 2 cores)")
        axis.set_ylabel(f"CIFAR-10 test top-1, {name}")
        axis.set_title(f"{name} along pre-training (budget {budget:g} min)", fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    points = axes[2]  # dots, not bars: the differences are a few points, and bars would have to start at zero
    x = np.arange(len(END_PROTOCOLS))
    width = 0.6 / len(args.methods)
    for i, method in enumerate(args.methods):
        end = summary[method]["end_point"]
        means = [end.get(p, {}).get("mean", np.nan) for p in END_PROTOCOLS]
        sds = [end.get(p, {}).get("sd", 0.0) for p in END_PROTOCOLS]
        seeds = max((end.get(p, {}).get("seeds", 0) for p in END_PROTOCOLS), default=0)
        points.errorbar(x + (i - (len(args.methods) - 1) / 2) * width, means, yerr=sds, fmt="o", capsize=3, color=colours[method],
                        label=f"{method} ({seeds} seed{'s' if seeds != 1 else ''})")
    points.set_xticks(x, list(END_PROTOCOLS.values()))
    points.set_xlim(-0.5, len(END_PROTOCOLS) - 0.5)
    points.set_ylabel("CIFAR-10 test top-1 at the end point (mean ± sd)")
    points.grid(alpha=0.3)
    points.legend(fontsize=7)
    entropy_axis = axes[3]
    for seed in end_seeds:
        entropy = results.get(f"folk/seed{seed}/teacher_entropy")
        if entropy:
            entropy_axis.plot(*zip(*entropy), label=f"FOLK seed {seed}")
    entropy_axis.axhline(math.log(FOLK_HEAD["folk_head_output_dim"]), color="k", ls="--", lw=1, label="log K (uniform targets)")
    entropy_axis.set_xlabel("step")
    entropy_axis.set_ylabel("teacher target entropy (nats)")
    entropy_axis.set_title("FOLK's teacher along the run", fontsize=9)
    entropy_axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "compute_curve.png")
    plt.close(fig)


#: Which methods and seeds a curve covers: a later run in the same folder may cover others.
CURVE_COVERAGE = (*COVERAGE, "end_point_seeds", "scratch_seeds")
#: What a run chooses about its own extent; every other setting of an earlier run must be equal to reuse its items.
EXTENT = (*CURVE_COVERAGE, "budget_minutes", "pretrain_steps")


def reuse_earlier_run(earlier_path: Path, results: Results) -> None:
    """Take an earlier curve's calibration (so both runs share one compute axis and their step counts
    scale with the budget, up to rounding to a multiple of 16) and its scratch evaluations (scratch
    does not depend on the budget) instead of measuring them again. The two runs must agree on
    every setting but their extent."""
    if not earlier_path.is_file():
        raise FileNotFoundError(f"--reuse_from {earlier_path}: no such file (the results.json of an earlier curve).")
    earlier = Results(earlier_path)
    if "settings" not in earlier.data:
        raise ValueError(f"--reuse_from {earlier_path}: not a compute-curve results.json (it has no settings).")
    ours, theirs = (chosen_settings(r.data["settings"], (*RUN_STATE, *EXTENT)) for r in (results, earlier))
    if ours != theirs:
        raise ValueError(f"--reuse_from {earlier_path}: that run has other settings ({theirs}) than this one ({ours}); "
                         f"only {', '.join(EXTENT)} may differ.")
    for key, value in earlier.data["runs"].items():
        if key.startswith(("calibration/", "scratch/")) and results.get(key) is None:
            results.data["runs"][key] = value
    results.data["cpu"] = earlier.data["cpu"]
    results.data["reused_from"] = str(earlier_path)
    results.save()


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/compute_curve")
    parser.add_argument("--methods", nargs="+", default=["scratch", "mfm", "folk", "mae"], choices=["scratch", *METHODS, *CONTENDERS])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds whose whole curve is evaluated")
    parser.add_argument("--end_point_seeds", type=int, nargs="+", default=[0, 1], help="seeds whose end point is evaluated")
    parser.add_argument("--scratch_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget_minutes", type=float, default=62.0,
                        help="pre-training budget per method and seed on this machine (4x the CIFAR-10 benchmark's 15.5)")
    parser.add_argument("--pretrain_steps", type=int, default=None, help="this many steps for every method instead of the budget's "
                        "(a multiple of 16; the calibration still sets the compute axis)")
    add_run_arguments(parser)
    parser.add_argument("--reuse_from", default=None, help="results.json of an earlier curve with the same settings but its extent: "
                        "its calibration and scratch evaluations are taken, not measured again (read once, at the first run)")
    parser.add_argument("--report_only", action="store_true", help="only rewrite curve.md and compute_curve.png from results.json")
    parser.add_argument("--pretraining_flags", nargs=argparse.REMAINDER, default=[],
                        help="last: more run_pretraining.py flags for every pre-trained method (e.g. --mask_radius 32); "
                             "use a new --output_dir per variant")
    args = parser.parse_args(argv)
    require(args.budget_minutes > 0, "--budget_minutes", args.budget_minutes, "> 0")
    require_at_least(args, 1, "calibration_steps", "batch_size", "fine_tune_batch_size", "episodes")
    require(args.pretrain_steps is None or (args.pretrain_steps > 0 and args.pretrain_steps % CHECKPOINTS == 0), "--pretrain_steps",
            args.pretrain_steps, f"a positive multiple of {CHECKPOINTS} (one checkpoint every 1/{CHECKPOINTS} of the run)")
    require(len(args.scratch_seeds) >= 2 or "scratch" not in args.methods, "--scratch_seeds", args.scratch_seeds,
            "at least two seeds (scratch is drawn as its seed spread)")
    args.fine_tune_epochs = {0.1: args.fine_tune_epochs_10pct}
    return args


def main(argv=None) -> dict:
    args = parse_arguments(argv)
    data = cifar10_folder(args.data_dir)
    args.train_images = sum(1 for path in (data / "train").rglob("*") if path.is_file())
    out = claim_folder(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out / "results.json")
    results.check_settings(args, CURVE_COVERAGE)
    if args.reuse_from and "reused_from" not in results.data:
        reuse_earlier_run(Path(args.reuse_from), results)
    results.data.setdefault("cpu", cpu_name())  # the machine of the calibration, which sets every step count
    results.data["hardware"] = f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    results.save()
    MFMViTConfig(**ENCODER).to_json_file(out / "encoder_config.json")
    args.pretraining_flags = ["--batched_augmentation", "--dataloader_num_workers", "0", *args.pretraining_flags]

    pretrained = [m for m in args.methods if m != "scratch"]
    budget = 60 * args.budget_minutes
    steps = {m: CHECKPOINTS * max(1, round(budget * calibrate(m, args, data / "train", results) / args.batch_size / CHECKPOINTS))
             for m in pretrained}
    if args.pretrain_steps is not None:
        steps = dict.fromkeys(pretrained, args.pretrain_steps)
    results.data["pretraining_steps"] = steps
    results.save()
    if args.report_only:
        write_outputs(args, results, steps)
        return results.data
    started = time.time()
    if "scratch" in args.methods:
        for seed in args.scratch_seeds:
            pretrain("scratch", seed, 0, args, data / "train", results)
            evaluate_point("scratch", seed, 0, 0, [*CURVE_PROTOCOLS, *END_PROTOCOLS], data, args, results)
    for seed in sorted(set(args.seeds) | set(args.end_point_seeds)):
        for method in pretrained:
            pretrain(method, seed, steps[method], args, data / "train", results, num_checkpoints=CHECKPOINTS, keep=CHECKPOINTS)
            if method == "folk" and results.get(f"folk/seed{seed}/teacher_entropy") is None:
                results.put(f"folk/seed{seed}/teacher_entropy", teacher_entropy(out / f"folk-seed{seed}" / "encoder"))
            if seed in args.seeds:
                for step in point_steps(steps[method])[:-1]:
                    evaluate_point(method, seed, step, steps[method], CURVE_PROTOCOLS, data, args, results)
            evaluate_point(method, seed, steps[method], steps[method], [*CURVE_PROTOCOLS, *END_PROTOCOLS], data, args, results)
            print(f"[{(time.time() - started) / 60:6.1f} min] {method} seed {seed} done", flush=True)
            write_outputs(args, results, steps)
    write_outputs(args, results, steps)
    return results.data


if __name__ == "__main__":
    main()
