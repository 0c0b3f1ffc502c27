#!/usr/bin/env python
"""Robustness of a fine-tuned classifier to common corruptions (the ImageNet-C families and
5 severities, from the maintained `imagecorruptions-imaug` package), and its mean corruption
error (mCE) relative to a named baseline classifier.

    python training/run_robustness.py --model outputs/cls-mfm --baseline outputs/cls-scratch --output_dir outputs/robustness

Each evaluation image is resized and centre-cropped to the model's input size, corrupted
(seeded per image, corruption and severity, so model and baseline see identical images),
normalised and classified. For corruption c, ``CE_c = sum_s err(model, c, s) / sum_s
err(baseline, c, s)``; ``mCE`` is the mean of ``CE_c`` over corruptions (Hendrycks &
Dietterich, 2019). Writes ``results.json``, ``corruption_errors.png`` (per-corruption error
bars for both models) and a `model-index` entry (clean top-1 and mCE) in the model's card (a local
checkpoint's own; for a Hub or zoo model a results card in ``--output_dir``).
"""

import argparse
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm
from transformers import AutoModelForImageClassification

import mfm_hub  # noqa: F401  (registers the MFM classes with the Auto classes)
from mfm_hub import evaluation
from mfm_hub.arguments import guard_output_dir
from mfm_hub.configuration_mfm import check_model_source
from mfm_hub.data import DatasetReference, dataset_reference, decode_image, sample_examples
from mfm_hub.evaluation.robustness import SEVERITIES, corruption_names, error_rates
from mfm_hub.modeling_common import normalize
from mfm_hub.validation import require, require_at_least
from mfm_hub.visualization import plot_errors


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fine-tuned classifier checkpoint")
    parser.add_argument("--baseline", required=True, help="classifier the corruption errors are normalised by")
    parser.add_argument("--output_dir", default="outputs/robustness")
    parser.add_argument("--data_dir", default=None, help="image folder with class sub-folders (default: embedded Fashion-MNIST)")
    parser.add_argument("--dataset_name", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--corruptions", nargs="+", default=None, help="default: the 15 ImageNet-C corruptions")
    parser.add_argument("--max_eval_samples", type=int, default=1000, help="a seeded class-balanced sample of N images")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--crop_pct", type=float, default=224 / 256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite_output_dir", action="store_true", help="write into an output folder that already holds files")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    require_at_least(args, 1, "max_eval_samples", "batch_size")
    require(0 < args.crop_pct <= 1, "--crop_pct", args.crop_pct, "in (0, 1]")
    guard_output_dir(args.output_dir, args.overwrite_output_dir)
    check_model_source(args.model)
    check_model_source(args.baseline, "--baseline")
    corruptions = corruption_names(args.corruptions)

    dataset, image_column, class_names = evaluation.load_labelled_split(
        args.split, args.data_dir, args.dataset_name, label_column=args.label_column
    )
    dataset = sample_examples(dataset, args.max_eval_samples, args.seed, args.label_column)
    models = {
        name: AutoModelForImageClassification.from_pretrained(path).eval()
        for name, path in (("model", args.model), ("baseline", args.baseline))
    }
    for name, model in models.items():
        evaluation.check_head_matches(model.config.num_labels, class_names, what=f"the {name}'s classifier")
    config = models["model"].config
    geometry = {name: (model.config.image_size, tuple(model.config.image_mean), tuple(model.config.image_scale))
                for name, model in models.items()}
    if geometry["model"] != geometry["baseline"]:
        raise ValueError("Model and baseline need the same input size and normalisation to see identical corrupted images.")
    # the evaluation geometry of timm's eval transform; corruptions apply to the cropped uint8 image
    resize_crop = T.Compose([T.Resize(math.floor(config.image_size / args.crop_pct), interpolation=T.InterpolationMode.BICUBIC),
                             T.CenterCrop(config.image_size)])
    images = [np.asarray(resize_crop(decode_image(value))) for value in dataset[image_column]]
    labels = np.asarray(dataset[args.label_column])
    def to_input(uint8_chw):
        return normalize(uint8_chw.float() / 255, config)

    clean = error_rates(models, images, labels, "clean", 0, to_input, args.batch_size, args.seed)
    errors = {name: {} for name in models}
    for corruption in tqdm(corruptions, desc="corruptions"):
        for name in models:
            errors[name][corruption] = {}
        for severity in SEVERITIES:
            rates = error_rates(models, images, labels, corruption, severity, to_input, args.batch_size, args.seed)
            for name, rate in rates.items():
                errors[name][corruption][str(severity)] = rate
    corruption_errors = {
        c: sum(errors["model"][c].values()) / max(sum(errors["baseline"][c].values()), 1e-12) for c in corruptions
    }
    results = {
        "model": args.model, "baseline": args.baseline, "split": args.split, "eval_images": len(images), "seed": args.seed,
        "clean_error": clean, "clean_top1": 1 - clean["model"], "errors": errors, "corruption_error": corruption_errors,
        "mCE": float(np.mean(list(corruption_errors.values()))),
    }
    output = Path(args.output_dir)
    data = dataset_reference(args.dataset_name, args.data_dir)
    corrupted = DatasetReference(data.type, f"{data.name} with ImageNet-C corruptions", data.hub_id)
    entry = evaluation.ModelIndexEntry(evaluation.results_card_dir(args.model, output), Path(args.model).name, "image-classification",
                                       f"Common corruptions (mCE vs {Path(args.baseline).name})", corrupted,
                                       {"mCE": results["mCE"], "clean_top1": results["clean_top1"]}, args.split, source=args.model)
    evaluation.report_results(
        output, results, entry, f"mCE {results['mCE']:.4f} (relative to {args.baseline}); clean top-1 {results['clean_top1']:.4f}",
        lambda folder: plot_errors(results, corruptions, folder / "corruption_errors.png", Path(args.model).name, Path(args.baseline).name))
    return results


if __name__ == "__main__":
    main()
