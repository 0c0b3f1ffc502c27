#!/usr/bin/env python
"""Which MFM mask radius for small images? MFM pre-trained with each of ``--radii`` for the same steps.

    python -m benchmarks.radius_sweep --output_dir outputs/radius_sweep                         # 16 24 32 48, 6,800 steps, seed 0
    python -m benchmarks.radius_sweep --output_dir outputs/radius_end_point --radii 24 --pretrain_steps 13616 --seeds 0 1

Each radius (in 224-px units, `MFMViTConfig.mask_radius`) is one `benchmarks.compute_curve` run
of MFM alone in ``<output_dir>/r<radius>``, with its protocols, calibration and resume: the
whole curve for the first of ``--seeds``, the end point for all of them. The default of 6,800
steps is half of the MFM steps of the compute curve's 15.5-minute budget on a 2-core AMD EPYC.
Writes ``sweep.md`` (one row per radius, mean ± sd over seeds) and ``radius_sweep.png`` (each
protocol against the radius; the linear probe along each run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import compute_curve
from benchmarks.cifar10_benchmark import ENCODER, Results
from mfm_hub.frequency import circle_mask
from mfm_hub.validation import require
from mfm_hub.visualization import plt

PROTOCOLS = {**compute_curve.CURVE_PROTOCOLS, **compute_curve.END_PROTOCOLS}


def run_folder(output_dir: str, radius: float) -> Path:
    return Path(output_dir) / f"r{radius:g}"


def low_pass_coefficients(radius: float, size: int = ENCODER["image_size"]) -> int:
    """How many of the ``size`` x ``size`` spectrum's coefficients the low-pass mask of ``radius`` keeps."""
    return int(circle_mask(size, size, radius).sum())


def write_report(args) -> list[dict]:
    rows = []
    for radius in args.radii:
        summary = Results(run_folder(args.output_dir, radius) / "results.json").data.get("summary", {}).get("mfm", {})
        rows.append({"radius": radius, "end_point": summary.get("end_point", {}), "curve": summary.get("curve", {})})
    size = ENCODER["image_size"]
    lines = [f"MFM at {args.pretrain_steps} steps of {args.batch_size} images per radius (mean ± sd over seeds {args.seeds}):", "",
             f"| mask_radius (224-px units) | at {size} px (spectrum px) | low-pass keeps (of {size * size}) | "
             + " | ".join(PROTOCOLS.values()) + " |", "|---" * (3 + len(PROTOCOLS)) + "|"]
    for row in rows:
        cells = [compute_curve.cell(row["end_point"].get(protocol)) for protocol in PROTOCOLS]
        lines.append(f"| {row['radius']:g} | {row['radius'] * size / 224:.1f} | {low_pass_coefficients(row['radius'])} | "
                     + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (Path(args.output_dir) / "sweep.md").write_text(table + "\n")
    print(table)

    fig, (by_radius, along) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for index, (protocol, name) in enumerate(PROTOCOLS.items()):
        entries = [(row["radius"], row["end_point"][protocol]) for row in rows if protocol in row["end_point"]]
        if entries:
            by_radius.errorbar([radius for radius, _ in entries], [100 * entry["mean"] for _, entry in entries],
                               yerr=[100 * entry["sd"] for _, entry in entries], marker="o", capsize=3, color=f"C{index}", label=name)
    by_radius.set_xticks(args.radii, [f"{radius:g}" for radius in args.radii])
    by_radius.set_xlabel("mask_radius (spectrum pixels of a 224-px image)")
    by_radius.set_ylabel("CIFAR-10 test top-1 (%) at the end of the run")
    by_radius.set_title(f"MFM, {args.pretrain_steps} steps, seeds {args.seeds}", fontsize=9)
    for index, row in enumerate(rows):
        points = sorted((int(step), values["linear_probe"]) for step, values in row["curve"].items() if "linear_probe" in values)
        if points:
            along.plot([step for step, _ in points], [100 * value for _, value in points], marker="o", color=f"C{index}",
                       label=f"radius {row['radius']:g}")
    along.set_xscale("log", base=2)
    along.set_xlabel("pre-training step")
    along.set_ylabel("linear probe top-1 (%)")
    along.set_title(f"along the run (seed {args.seeds[0]})", fontsize=9)
    for axis in (by_radius, along):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(args.output_dir) / "radius_sweep.png")
    plt.close(fig)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/radius_sweep")
    parser.add_argument("--radii", type=float, nargs="+", default=[16, 24, 32, 48], help="mask_radius values, in 224-px units")
    parser.add_argument("--pretrain_steps", type=int, default=6800, help="steps of every run (a multiple of 16)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="end-point seeds; the first also gets the whole curve")
    parser.add_argument("--budget_minutes", type=float, default=15.5, help="the budget the compute axis of each run's figure refers to")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--report_only", action="store_true", help="only rewrite sweep.md and radius_sweep.png")
    args, curve_options = parser.parse_known_args(argv)
    require(len(set(args.radii)) == len(args.radii) and all(radius > 0 for radius in args.radii), "--radii", args.radii,
            "distinct positive radii")
    if not args.report_only:
        for radius in args.radii:
            compute_curve.main(["--output_dir", str(run_folder(args.output_dir, radius)), "--methods", "mfm",
                                "--seeds", str(args.seeds[0]), "--end_point_seeds", *map(str, args.seeds),
                                "--budget_minutes", f"{args.budget_minutes:g}", "--pretrain_steps", str(args.pretrain_steps),
                                "--batch_size", str(args.batch_size), *curve_options,
                                "--pretraining_flags", "--mask_radius", f"{radius:g}"])
    return write_report(args)


if __name__ == "__main__":
    main()
