#!/usr/bin/env python
"""Few-shot evaluation of an MFM / FOLK backbone.

Two protocols:

* ``--protocol episodes`` (default): N-way K-shot episodes on a **frozen** backbone. Features
  (`evaluation.frozen_features`: mean patch token for a ViT, pooled map for a ResNet) of the
  evaluation split are extracted once; each seeded episode draws
  N classes, K support and Q query images per class, and classifies the queries with class
  prototypes (cosine to the mean support feature) or a logistic regression fitted on the
  support set. Reports the mean accuracy and its 95% interval over episodes.

      python training/run_few_shot.py --model outputs/quickstart --ways 5 --shots 5 --episodes 600

* ``--protocol finetune``: k examples per class (``--shots``) or a labelled fraction
  (``--train_fraction 0.01``) of the training split, fine-tuned or linearly probed with
  `run_classification.py` (every argument after ``--`` is passed on):

      python training/run_few_shot.py --protocol finetune --model outputs/quickstart --shots 5 -- --linear_probe --max_steps 200

Writes ``results.json`` and a histogram of episode accuracies (``few_shot_episodes.png``) to
``--output_dir``, and a ``model-index`` entry to the checkpoint's model card (a local
checkpoint's own ``README.md``; otherwise one in ``--output_dir``).
"""

import argparse
import math
import runpy
import sys
from pathlib import Path
from typing import Optional

import numpy as np

import mfm_hub  # noqa: F401  (registers the MFM classes with the Auto classes)
from mfm_hub import evaluation
from mfm_hub.arguments import guard_output_dir
from mfm_hub.configuration_mfm import check_model_source
from mfm_hub.data import dataset_reference, sample_examples
from mfm_hub.evaluation.few_shot import extract_features, run_episodes
from mfm_hub.validation import require, require_at_least
from mfm_hub.visualization import plot_episodes


def main(argv: Optional[list[str]] = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_dir", default="outputs/few_shot")
    parser.add_argument("--protocol", choices=["episodes", "finetune"], default="episodes")
    parser.add_argument("--data_dir", default=None, help="image folder with class sub-folders (default: embedded Fashion-MNIST)")
    parser.add_argument("--dataset_name", default=None)
    parser.add_argument("--split", default="test", help="split the episodes are drawn from")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--classifier", choices=["prototype", "logistic"], default="prototype")
    parser.add_argument("--train_fraction", type=float, default=None, help="finetune protocol: labelled fraction instead of --shots")
    parser.add_argument(
        "--max_samples", type=int, default=None, help="draw episodes from N images of the split, a seeded class-balanced sample"
    )
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--crop_pct", type=float, default=224 / 256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite_output_dir", action="store_true", help="write into an output folder that already holds files")
    args = parser.parse_args(argv)
    require(args.ways >= 2, "--ways", args.ways, "at least 2 (one class is always right)")
    require_at_least(args, 1, "shots", "queries", "episodes", "batch_size", "max_samples")
    require(0 < args.crop_pct <= 1, "--crop_pct", args.crop_pct, "in (0, 1]")

    if args.overwrite_output_dir:
        passthrough = ["--overwrite_output_dir", *passthrough]
    if args.protocol == "finetune":
        subset = ["--train_fraction", str(args.train_fraction)] if args.train_fraction else ["--shots_per_class", str(args.shots)]
        data = (["--train_dir", args.data_dir] if args.data_dir else []) + (
            ["--dataset_name", args.dataset_name] if args.dataset_name else []
        )
        # the sibling script by its path: it is found whether this one runs as a script or as training.run_few_shot
        run_classification = runpy.run_path(str(Path(__file__).with_name("run_classification.py")))
        return run_classification["main"](["--model", args.model, "--output_dir", args.output_dir, "--seed", str(args.seed),
                                           *subset, *data, *passthrough])

    guard_output_dir(args.output_dir, args.overwrite_output_dir)
    check_model_source(args.model)
    dataset, image_column, class_names = evaluation.load_labelled_split(
        args.split, args.data_dir, args.dataset_name, label_column=args.label_column
    )
    dataset = sample_examples(dataset, args.max_samples, args.seed, args.label_column)
    model = evaluation.load_encoder(args.model).eval()
    features = extract_features(model, dataset, image_column, args.batch_size, args.crop_pct)
    labels = np.asarray(dataset[args.label_column])
    accuracies = run_episodes(features, labels, args.ways, args.shots, args.queries, args.episodes, args.classifier, args.seed)
    mean = float(np.mean(accuracies))
    interval = float(1.96 * np.std(accuracies) / math.sqrt(len(accuracies)))
    results = {"model": args.model, "protocol": f"{args.ways}-way {args.shots}-shot episodes", "classifier": args.classifier,
               "episodes": args.episodes, "queries_per_class": args.queries, "seed": args.seed, "split": args.split,
               "accuracy": mean, "ci95": interval}
    output = Path(args.output_dir)
    entry = evaluation.ModelIndexEntry(
        evaluation.results_card_dir(args.model, output),
        Path(args.model).name,
        "image-classification",
        f"Few-shot, {results['protocol']}",
        dataset_reference(args.dataset_name, args.data_dir),
        {"accuracy": mean, "ci95": interval},
        args.split,
        source=args.model,
    )
    evaluation.report_results(
        output,
        results,
        entry,
        f"{results['protocol']} accuracy {mean:.4f} +- {interval:.4f} (95% interval over {args.episodes} episodes)",
        lambda folder: plot_episodes(
            accuracies, folder / "few_shot_episodes.png", f"{results['protocol']} ({args.classifier}): {mean:.3f} +- {interval:.3f}"
        ),
    )
    return results


if __name__ == "__main__":
    main()
