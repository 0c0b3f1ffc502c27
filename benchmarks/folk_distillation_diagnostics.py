#!/usr/bin/env python
"""Why FOLK's distillation term does or does not learn: measurements behind docs/FOLK.md.

    python -m benchmarks.folk_distillation_diagnostics --train_dir cifar10/train --output_dir outputs/folk_diagnostics

1. At initialisation (no training, real training images): the scale of the prototype
   logits and the teacher's target entropy against ``log K``, for plain and unit-norm
   prototypes.
2. The EMA schedule: how much of the teacher is still its random initialisation after a run
   of ``--max_steps`` optimizer steps, ``prod_k m_k``, for several starting momenta.
3. Short FOLK runs (`run_pretraining.py --objective folk`) of each variant in ``--variants``,
   logging the distillation loss, the teacher's mean target entropy and the KL of its mean
   target to uniform; prints a table and draws ``folk_diagnostics.png``.
Every run is kept in its own folder under ``--output_dir``; a variant whose folder already
holds ``train_results.json`` is read back instead of being trained again.
"""

import argparse
import json
import math
from pathlib import Path

import torch

from mfm_hub import FOLKViTForPreTraining, image_processor_for_config
from mfm_hub.configuration_mfm import resolve_config
from mfm_hub.data import decode_image, load_image_dataset
from mfm_hub.modeling_common import normalize
from mfm_hub.modeling_folk import distribution_statistics, ema_momentum
from mfm_hub.visualization import plt
from training import run_pretraining

#: name -> run_pretraining arguments; "before" is the FOLK of the first release (plain
#: prototypes, cls token, teacher temperature 0.04), "default" today's defaults.
VARIANTS = {
    "before": ["--config_overrides", "folk_normalize_prototypes=false,folk_head_pooling=cls,folk_teacher_temperature=0.04"],
    "cls_t0.04": ["--config_overrides", "folk_head_pooling=cls,folk_teacher_temperature=0.04"],
    "cls_t0.02": ["--config_overrides", "folk_head_pooling=cls"],
    "cls_t0.04_m0.99": ["--config_overrides", "folk_head_pooling=cls,folk_teacher_temperature=0.04,folk_ema_momentum=0.99"],
    "cls_t0.01_to_0.04": ["--config_overrides", "folk_head_pooling=cls,folk_teacher_temperature=0.04,folk_warmup_teacher_temperature=0.01,"
                          "folk_teacher_temperature_warmup_ratio=0.5"],
    "cls_t0.04_frozen": ["--config_overrides", "folk_head_pooling=cls,folk_teacher_temperature=0.04,folk_freeze_prototypes_ratio=1.0"],
    "mean_t0.04": ["--config_overrides", "folk_teacher_temperature=0.04"],
    "mean_t0.03": ["--config_overrides", "folk_teacher_temperature=0.03"],
    "default": [],
    "default_freeze0.1": ["--config_overrides", "folk_freeze_prototypes_ratio=0.1"],
    "default_m0.99": ["--config_overrides", "folk_ema_momentum=0.99"],
    "default_lr5e-4": ["--learning_rate", "5e-4"],
}

#: The first release's (and DINO's) teacher temperature, at which the initial targets are measured.
DINO_TEACHER_TEMPERATURE = 0.04


@torch.no_grad()
def initial_statistics(model_name: str, images: torch.Tensor, seed: int) -> list[dict]:
    rows = []
    for normalized in (False, True):
        torch.manual_seed(seed)
        model = FOLKViTForPreTraining(resolve_config(model_name, pretext_task="informed", folk_normalize_prototypes=normalized,
                                                     folk_head_pooling="cls")).eval()
        config = model.config
        logits = model.teacher_head(model.head_features(model.teacher(normalize(images, config))))
        probs = torch.softmax((logits - logits.mean(0, keepdim=True)) / DINO_TEACHER_TEMPERATURE, dim=-1)
        entropy, marginal_kl = distribution_statistics(probs)
        rows.append(
            {
                "prototypes": "unit-norm" if normalized else "plain",
                "logit_std": logits.std().item(),
                "logit_range": (logits.max() - logits.min()).item(),
                "scaled_logit_std": (logits / DINO_TEACHER_TEMPERATURE).std().item(),
                "teacher_entropy": entropy.item(),
                "marginal_kl": marginal_kl.item(),
                "log_k": math.log(config.folk_head_output_dim),
            }
        )
    return rows


@torch.no_grad()
def head_input_spread(model_name: str, images: torch.Tensor, seed: int) -> dict[str, float]:
    """How much the features a head reads differ between images at initialisation: after
    centring, only this spread can make the teacher's targets differ."""
    torch.manual_seed(seed)
    model = FOLKViTForPreTraining(resolve_config(model_name, pretext_task="informed")).eval()
    encoded = model.teacher(normalize(images, model.config))
    spread = {}
    for pooling in ("cls", "mean"):
        model.config.folk_head_pooling = pooling
        features = model.head_features(encoded)
        spread[pooling] = ((features - features.mean(0)).norm(dim=1).mean() / features.norm(dim=1).mean()).item()
    return spread


def sample_images(train_dir: str, config, count: int, seed: int) -> torch.Tensor:
    """``count`` seeded training images at the model's input size, in [0, 1]."""
    dataset, column = load_image_dataset(train_dir)
    dataset = dataset.shuffle(seed=seed).select(range(min(count, len(dataset))))
    processor = image_processor_for_config(config, do_normalize=False)
    return processor([decode_image(value) for value in dataset[column]], return_tensors="pt")["pixel_values"]


def initial_share_of_teacher(max_steps: int, base: float) -> float:
    """The weight the teacher still gives its initialisation after ``max_steps`` EMA updates."""
    return math.prod(ema_momentum(step, max_steps, base) for step in range(1, max_steps + 1))


def run_variant(name: str, extra: list[str], args) -> list[dict]:
    output = Path(args.output_dir) / name
    results = output / "train_results.json"
    if not results.exists():
        run_pretraining.main(
            [
                "--objective",
                "folk",
                "--model",
                args.model,
                "--train_dir",
                args.train_dir,
                "--output_dir",
                str(output),
                "--max_steps",
                str(args.max_steps),
                "--per_device_train_batch_size",
                str(args.batch_size),
                "--learning_rate",
                str(args.learning_rate),
                "--warmup_steps",
                str(args.max_steps // 10),
                "--logging_steps",
                "10",
                "--save_strategy",
                "no",
                "--seed",
                str(args.seed),
                "--dataloader_num_workers",
                "1",
                "--report_to",
                "none",
                *extra,
            ]
        )
    return [entry for entry in json.loads(results.read_text())["log_history"] if "distillation_loss" in entry]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--output_dir", default="outputs/folk_diagnostics")
    parser.add_argument("--model", default="vit-tiny-patch4-32", help="a ViT preset or config.json")
    parser.add_argument("--max_steps", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1.5e-3)
    parser.add_argument("--variants", nargs="+", default=["before", "default"], choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    config = resolve_config(args.model)
    log_k = math.log(config.folk_head_output_dim)
    images = sample_images(args.train_dir, config, count=128, seed=args.seed)
    print(f"At initialisation ({len(images)} training images, cls token, logits centred on their mean, "
          f"teacher temperature {DINO_TEACHER_TEMPERATURE}):")
    print("  image-to-image spread of the head input (mean distance to the batch mean / mean norm): "
          + ", ".join(f"{pooling} {spread:.2f}" for pooling, spread in head_input_spread(args.model, images, args.seed).items()))
    for row in initial_statistics(args.model, images, args.seed):
        print(f"  {row['prototypes']:>9} prototypes: logit std {row['logit_std']:.4f} (range {row['logit_range']:.3f}), "
              f"std after /T {row['scaled_logit_std']:.3f}; teacher entropy {row['teacher_entropy']:.3f} of log K {row['log_k']:.3f}, "
              f"KL(mean || uniform) {row['marginal_kl']:.3f}")
    print(f"Share of the teacher that is still its random initialisation after {args.max_steps} steps:")
    for base in (0.996, 0.99, 0.95):
        print(f"  folk_ema_momentum {base}: {initial_share_of_teacher(args.max_steps, base):.3f}")

    histories = {name: run_variant(name, VARIANTS[name], args) for name in args.variants}
    print(f"\n{'variant':<24} {'distillation: first / lowest / last quarter':>44} {'teacher entropy: first / lowest / last quarter':>47} "
          f"{'KL(mean||U) last quarter':>25}")
    for name, history in histories.items():
        tail = history[-max(1, len(history) // 4):]
        row = [name]
        for term in ("distillation_loss", "teacher_entropy"):
            lowest = min(history, key=lambda entry: entry[term])
            row.append(
                f"{history[0][term]:.2f} / {lowest[term]:.2f} (step {lowest['step']}) / {sum(e[term] for e in tail) / len(tail):.2f}"
            )
        row.append(f"{sum(e['teacher_marginal_kl'] for e in tail) / len(tail):.2f}")
        print(f"{row[0]:<24} {row[1]:>44} {row[2]:>47} {row[3]:>25}")
    print(f"(log K = {log_k:.3f})")

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), dpi=120)
    for name, history in histories.items():
        steps = [entry["step"] for entry in history]
        for ax, term in zip(axes, ("distillation_loss", "teacher_entropy", "teacher_marginal_kl")):
            ax.plot(steps, [entry[term] for entry in history], label=name)
    for ax, term in zip(axes, ("distillation loss", "teacher mean target entropy", "KL(mean target || uniform)")):
        ax.axhline(log_k, color="black", linestyle=":", linewidth=1)
        ax.set_title(f"{term} (dotted: log K)", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"FOLK {args.model}, batch {args.batch_size}, {args.max_steps} steps, lr {args.learning_rate} unless the variant says otherwise, "
        f"{Path(args.train_dir).name}",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(args.output_dir) / "folk_diagnostics.png"
    fig.savefig(path)
    plt.close(fig)
    print(f"\nFigure: {path.resolve()}")


if __name__ == "__main__":
    main()
