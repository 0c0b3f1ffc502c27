#!/usr/bin/env python
"""Does frequency pre-training help here? A small, honest study on the embedded Fashion-MNIST.

For every seed and every method (scratch, MFM, FOLK, SR, deblur, denoise) the same small ViT
is pre-trained for the same number of steps on the Fashion-MNIST training split (scratch:
none), then evaluated on the held-out test split by fine-tuning, linear probing and 5-way
5-shot episodes on frozen features, each with the same budget for every method. Prints and
writes a markdown table (mean and standard deviation over seeds) plus a bar chart.

Budget-driven choices, the same for every method: no Mixup/CutMix/RandAugment/erasing in
these short fine-tunings, and FOLK's teacher momentum starts at 0.95 instead of 0.996 (with a
few hundred steps, a 0.996 teacher would barely leave its initialisation).

    python -m benchmarks.frequency_pretraining_study --output_dir outputs/study
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mfm_hub import MFMViTConfig, MFMViTModel
from mfm_hub.arguments import guard_output_dir
from mfm_hub.pretraining import method_flags
from mfm_hub.visualization import plt
from training import (
    run_classification,
    run_few_shot,
    run_pretraining,
)

METHODS = ["scratch", "mfm", "folk", "sr", "deblur", "denoise"]
SMALL_VIT = dict(image_size=32, patch_size=4, hidden_size=96, num_hidden_layers=6, num_attention_heads=3)


def run(method: str, seed: int, args, out: Path) -> dict:
    encoder = out / f"{method}-seed{seed}" / "encoder"
    overwrite = ["--overwrite_output_dir"] if args.overwrite_output_dir else []
    common = ["--seed", str(seed), "--report_to", "none", "--disable_tqdm", "true", *overwrite]
    if method == "scratch":
        torch.manual_seed(seed)
        MFMViTModel(MFMViTConfig(**SMALL_VIT)).save_pretrained(encoder)
    else:
        config = out / "config.json"
        run_pretraining.main(
            [
                "--model",
                str(config),
                *method_flags(method),
                "--output_dir",
                str(encoder),
                "--max_steps",
                str(args.pretrain_steps),
                "--per_device_train_batch_size",
                "64",
                "--learning_rate",
                "1.5e-3",
                "--warmup_steps",
                "0.1",
                "--save_strategy",
                "no",
                "--logging_steps",
                "25",
                "--num_figure_images",
                "4",
                "--config_overrides",
                "folk_head_output_dim=1024,folk_ema_momentum=0.95",
                *common,
            ]
        )
    evaluation_data = ["--max_eval_samples", str(args.eval_samples), "--eval_strategy", "no", "--per_device_train_batch_size", "64",
                       "--mixup", "0", "--cutmix", "0", "--rand_augment", "", "--reprob", "0"]
    fine_tune = run_classification.main(["--model", str(encoder), "--output_dir", str(out / f"{method}-seed{seed}" / "fine_tune"),
                                         "--max_steps", str(args.finetune_steps), "--learning_rate", "1e-3", *evaluation_data, *common])
    probe = run_classification.main(["--model", str(encoder), "--output_dir", str(out / f"{method}-seed{seed}" / "linear_probe"),
                                     "--linear_probe", "--max_steps", str(args.finetune_steps), "--learning_rate", "5e-3",
                                     *evaluation_data, *common])
    few_shot = run_few_shot.main(["--model", str(encoder), "--output_dir", str(out / f"{method}-seed{seed}" / "few_shot"),
                                  "--ways", "5", "--shots", "5", "--queries", "15", "--episodes", str(args.episodes),
                                  "--max_samples", str(args.eval_samples), "--seed", str(seed), *overwrite])
    return {"fine_tune_top1": fine_tune["top1"], "linear_probe_top1": probe["top1"], "five_shot": few_shot["accuracy"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--pretrain_steps", type=int, default=120)
    parser.add_argument("--finetune_steps", type=int, default=80)
    parser.add_argument("--eval_samples", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--overwrite_output_dir", action="store_true", help="write over an earlier study in --output_dir")
    args = parser.parse_args()
    guard_output_dir(args.output_dir, args.overwrite_output_dir)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    MFMViTConfig(**SMALL_VIT).to_json_file(out / "config.json")
    started = time.time()
    rows = {method: [] for method in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            rows[method].append(run(method, seed, args, out))
            print(f"[{time.time() - started:7.0f} s] {method} seed {seed}: {rows[method][-1]}", flush=True)
    wall = time.time() - started
    metrics = ["fine_tune_top1", "linear_probe_top1", "five_shot"]
    summary = {
        m: {k: (float(np.mean([r[k] for r in rows[m]])), float(np.std([r[k] for r in rows[m]]))) for k in metrics} for m in args.methods
    }
    lines = ["| method | fine-tune top-1 | linear probe top-1 | 5-way 5-shot |", "|---|---|---|---|"]
    for method in args.methods:
        cells = [f"{100 * summary[method][k][0]:.1f} ± {100 * summary[method][k][1]:.1f}" for k in metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    print(f"wall time {wall / 60:.1f} min for {len(args.seeds)} seeds x {len(args.methods)} methods")
    (out / "study.json").write_text(json.dumps({"args": vars(args), "runs": rows, "summary": summary, "wall_time_s": wall}, indent=1))
    (out / "study.md").write_text(table + "\n")
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    x = np.arange(len(args.methods))
    for offset, key in zip((-0.27, 0, 0.27), metrics):
        ax.bar(x + offset, [summary[m][key][0] for m in args.methods], width=0.26, yerr=[summary[m][key][1] for m in args.methods],
               capsize=2, label=key.replace("_", " "))
    ax.set_xticks(x, args.methods)
    ax.set_ylabel("accuracy (Fashion-MNIST test)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(f"{len(args.seeds)} seeds; pre-training {args.pretrain_steps} steps, downstream {args.finetune_steps} steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "study.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
