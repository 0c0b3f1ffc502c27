#!/usr/bin/env python
"""Fine-tune or linearly probe an MFM / FOLK backbone for image classification with the Trainer.

    python training/run_classification.py --model outputs/quickstart --output_dir outputs/cls
    python training/run_classification.py --model outputs/quickstart --linear_probe --output_dir outputs/probe
    python training/run_classification.py --model org/mfm-vit-base --train_dir imagenet/train --validation_dir imagenet/val \
        --layer_decay 0.65 --mixup 0.8 --cutmix 1.0 --rand_augment rand-m9-mstd0.5-inc1 --bf16 ...

``--model`` is any MFM checkpoint (a backbone, a pre-training or a converted official one), a
preset name (training from scratch), or a Hub repository. Data: an image folder with class
sub-folders (``--train_dir`` / ``--validation_dir``), a `datasets` dataset
(``--dataset_name``), or, with neither, the embedded Fashion-MNIST (train / test splits).
``--shots_per_class K`` or ``--train_fraction F`` train on a seeded, class-balanced subset
(the few-shot protocols). The recipe ingredients of the MFM fine-tuning come from timm:
layer-wise lr decay (`param_groups_layer_decay`), RandAugment and random erasing
(`create_transform`), Mixup / CutMix (`Mixup`), label smoothing; drop path is the model's.

Writes ``results.json`` (top-1 / top-5 on the evaluation split, via an `evaluate` metric),
``confusion_matrix.png``, the fine-tuned model, and adds the results to the model card's
``model-index``. SIGTERM (a pre-empted job) saves a checkpoint and exits 143;
``--resume_from_checkpoint`` (a checkpoint, or ``True`` for the newest complete one) continues
such a run, or one saved with ``--save_strategy``, exactly: augmentations are seeded per image
and epoch.
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from timm.data import Mixup, create_transform
from transformers import AutoModelForImageClassification, HfArgumentParser, TrainingArguments, set_seed

import mfm_hub  # noqa: F401  (registers the MFM classes with the Auto classes)
from mfm_hub import evaluation
from mfm_hub.arguments import (
    check_training_arguments,
    claim_training_output,
    parse_config_overrides,
    resolve_learning_rate,
    setup_training_process,
)
from mfm_hub.configuration_mfm import PRESETS, check_model_source, resolve_config
from mfm_hub.data import dataset_reference, folder_splits, sample_examples
from mfm_hub.evaluation.classification import (
    AugmentedLabelledImages,
    ClassificationTrainer,
    ImageBatch,
    MixedBatch,
    top1_during_training,
)
from mfm_hub.model_card import write_model_card
from mfm_hub.trainer import EpochCallback, SaveOnSigterm
from mfm_hub.validation import require, require_at_least
from mfm_hub.visualization import logged_series, plot_confusion_matrix, plot_validation_curve

logger = logging.getLogger("run_classification")


@dataclass
class ModelArguments:
    model: str = field(default="vit-tiny-patch4-32", metadata={"help": "an MFM checkpoint folder or Hub id, or a preset (from scratch)"})
    linear_probe: bool = field(default=False, metadata={"help": "freeze the backbone, train only the classifier"})
    use_mean_pooling: bool = field(
        default=True, metadata={"help": "ViT: mean-pool patch tokens through fc_norm (the MFM fine-tuning head)"}
    )
    drop_path_rate: float = field(default=0.1)
    config_overrides: dict | str | None = field(  # `|`, not Union: see run_pretraining.py
        default=None, metadata={"help": "other config fields to change: name=value,name=value (the config checks them)"}
    )
    layer_decay: Optional[float] = field(default=0.75, metadata={"help": "layer-wise lr decay (ViT); 1 or empty to disable"})

    def __post_init__(self):
        require(0 <= self.drop_path_rate < 1, "--drop_path_rate", self.drop_path_rate, "in [0, 1)")
        require(self.layer_decay is None or 0 < self.layer_decay <= 1, "--layer_decay", self.layer_decay, "in (0, 1], or empty")
        self.config_overrides = parse_config_overrides(self.config_overrides)


@dataclass
class DataArguments:
    train_dir: Optional[str] = field(default=None)
    validation_dir: Optional[str] = field(default=None)
    dataset_name: Optional[str] = field(default=None)
    dataset_config_name: Optional[str] = field(default=None)
    train_split: str = field(default="train")
    eval_split: str = field(default="test")
    image_column: Optional[str] = field(default=None)
    label_column: str = field(default="label")
    shots_per_class: Optional[int] = field(default=None, metadata={"help": "train on K seeded examples per class"})
    train_fraction: Optional[float] = field(default=None, metadata={"help": "train on a seeded class-balanced fraction, e.g. 0.01"})
    max_eval_samples: Optional[int] = field(default=None)
    rand_augment: Optional[str] = field(default="rand-m9-mstd0.5-inc1", metadata={"help": "timm RandAugment spec; empty to disable"})
    reprob: float = field(default=0.25, metadata={"help": "random erasing probability"})
    mixup: float = field(default=0.8)
    cutmix: float = field(default=1.0)
    label_smoothing: float = field(default=0.1)
    crop_pct: float = field(default=224 / 256, metadata={"help": "evaluation: resize to size / crop_pct, centre-crop size"})

    def __post_init__(self):
        require_at_least(self, 1, "shots_per_class", "max_eval_samples")
        require(self.train_fraction is None or 0 < self.train_fraction <= 1, "--train_fraction", self.train_fraction, "in (0, 1]")
        require(0 <= self.reprob <= 1, "--reprob", self.reprob, "a probability in [0, 1]")
        require(self.mixup >= 0 and self.cutmix >= 0, "--mixup / --cutmix", (self.mixup, self.cutmix), ">= 0 (0 disables)")
        require(0 <= self.label_smoothing < 1, "--label_smoothing", self.label_smoothing, "in [0, 1)")
        require(0 < self.crop_pct <= 1, "--crop_pct", self.crop_pct, "in (0, 1]")


@dataclass
class ClassificationArguments(TrainingArguments):
    output_dir: str = field(default="outputs/classification")
    overwrite_output_dir: bool = field(default=False, metadata={"help": "write into an output folder that already holds files"})
    learning_rate: Optional[float] = field(default=None, metadata={"help": "peak lr; default: --base_learning_rate x batch / 512"})
    base_learning_rate: float = field(default=2e-3, metadata={"help": "per 512 images (MFM ViT fine-tuning: 2e-3)"})
    adam_beta2: float = field(default=0.999)
    weight_decay: float = field(default=0.05)
    warmup_steps: float = field(default=0.05)
    lr_scheduler_type: str = field(default="cosine")
    eval_strategy: str = field(default="epoch")
    save_strategy: str = field(default="no")
    logging_steps: float = field(default=10)
    remove_unused_columns: bool = field(default=False)

    def __post_init__(self):
        check_training_arguments(self)
        require(self.base_learning_rate > 0, "--base_learning_rate", self.base_learning_rate, "> 0")
        super().__post_init__()


def evaluation_source(data_args: DataArguments) -> tuple[str, Optional[str]]:
    """``(split, folder)`` of the evaluation images: ``--validation_dir``, else the training
    source's ``--eval_split`` (a ``--train_dir`` with split sub-folders, a Hub dataset, the
    embedded Fashion-MNIST), never another dataset than the one trained on."""
    if data_args.validation_dir:
        return "train", data_args.validation_dir
    if data_args.train_dir and Path(data_args.train_dir).is_dir():
        splits = folder_splits(data_args.train_dir)
        if not splits:
            raise ValueError(f"--train_dir {data_args.train_dir} holds class folders but no evaluation images: pass "
                             "--validation_dir (a folder with the same class sub-folders), or give it train/ and val/ sub-folders.")
        if data_args.eval_split not in splits:
            others = [split for split in splits if split != "train"]
            raise ValueError(
                f"--train_dir {data_args.train_dir} has the splits {splits}, not --eval_split {data_args.eval_split!r}: "
                + (f"pass --eval_split {others[0]}" if others else "add a val/ or test/ sub-folder")
                + ", or --validation_dir."
            )
        return data_args.eval_split, data_args.train_dir
    return data_args.eval_split, None


def build_model(model_args: ModelArguments, class_names: list[str]):
    config = resolve_config(
        model_args.model, num_labels=len(class_names), id2label=dict(enumerate(class_names)),
        label2id={n: i for i, n in enumerate(class_names)}, drop_path_rate=model_args.drop_path_rate, **model_args.config_overrides,
    )
    for name, value in config.classifier_options(model_args.use_mean_pooling).items():
        setattr(config, name, value)
    if model_args.model in PRESETS:
        model = AutoModelForImageClassification.from_config(config)
    else:
        model = AutoModelForImageClassification.from_pretrained(model_args.model, config=config)
    if model_args.linear_probe:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("classifier.")
    return model


def training_images(dataset, config, data_args: DataArguments, linear_probe: bool, image_column: str, seed: int) -> AugmentedLabelledImages:
    """The training images under timm's augmentation: crops and flips only for a linear probe
    (MAE-style), else RandAugment + random erasing."""
    norm = evaluation.timm_image_options(config)
    if linear_probe:
        transform = create_transform(config.image_size, is_training=True, no_aug=False, scale=(0.08, 1.0), hflip=0.5,
                                     color_jitter=None, auto_augment=None, re_prob=0.0, **norm)
    else:
        transform = create_transform(config.image_size, is_training=True, auto_augment=data_args.rand_augment or None,
                                     re_prob=data_args.reprob, color_jitter=None, **norm)
    return AugmentedLabelledImages(dataset, image_column, data_args.label_column, transform, seed)


def training_batches(data_args: DataArguments, linear_probe: bool, num_classes: int) -> MixedBatch:
    """The training collator: Mixup / CutMix when fine-tuning with them, plain batches otherwise."""
    use_mix = not linear_probe and (data_args.mixup > 0 or data_args.cutmix > 0)
    return MixedBatch(Mixup(mixup_alpha=data_args.mixup, cutmix_alpha=data_args.cutmix, label_smoothing=data_args.label_smoothing,
                            num_classes=num_classes) if use_mix else None)


def subset_for_training(dataset, data_args: DataArguments, label_column: str, seed: int):
    if data_args.shots_per_class is not None and data_args.train_fraction is not None:
        raise ValueError("Use either --shots_per_class or --train_fraction, not both.")
    labels = dataset[label_column]
    if data_args.shots_per_class is not None:
        return dataset.select(evaluation.k_shot_indices(labels, data_args.shots_per_class, seed))
    if data_args.train_fraction is not None:
        return dataset.select(evaluation.fraction_indices(labels, data_args.train_fraction, seed))
    return dataset


def main(argv: Optional[list[str]] = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, ClassificationArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(sys.argv[1:] if argv is None else argv)
    claim_training_output(args)
    check_model_source(model_args.model)
    setup_training_process(args)
    set_seed(args.seed)

    train, image_column, class_names = evaluation.load_labelled_split(
        data_args.train_split, data_args.train_dir, data_args.dataset_name, data_args.dataset_config_name,
        data_args.image_column, data_args.label_column)
    evaluation_split, eval_dir = evaluation_source(data_args)
    test, _, test_names = evaluation.load_labelled_split(
        evaluation_split, eval_dir, data_args.dataset_name, data_args.dataset_config_name, image_column, data_args.label_column)
    if test_names != class_names:
        raise ValueError(f"Training classes {class_names} differ from evaluation classes {test_names}.")
    train = subset_for_training(train, data_args, data_args.label_column, args.seed)
    test = sample_examples(test, data_args.max_eval_samples, args.seed, data_args.label_column)

    check = evaluation.labelled_image_check(image_column, data_args.label_column, len(class_names))
    evaluation.validate_examples(train, check, "training images")
    evaluation.validate_examples(test, check, "evaluation images")

    model = build_model(model_args, class_names)
    evaluation.check_head_matches(model.config.num_labels, class_names)
    config = model.config
    resolve_learning_rate(args)
    eval_transform = evaluation.eval_transform(config, data_args.crop_pct)

    train_images = training_images(train, config, data_args, model_args.linear_probe, image_column, args.seed)
    sigterm = SaveOnSigterm()
    trainer = ClassificationTrainer(
        model=model, args=args, train_dataset=train_images, eval_dataset=test,
        data_collator=training_batches(data_args, model_args.linear_probe, len(class_names)),
        eval_collator=ImageBatch(image_column, data_args.label_column, eval_transform),
        label_smoothing=data_args.label_smoothing, layer_decay=None if model_args.linear_probe else model_args.layer_decay,
        compute_metrics=top1_during_training, callbacks=[EpochCallback(train_images), sigterm],
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if sigterm.stopped(trainer):
        raise SystemExit(143)
    output = Path(args.output_dir)
    trainer.save_model(output)  # before evaluating: nothing that fails later can lose it
    eval_transform.processor.save_pretrained(output)  # with this run's --crop_pct
    prediction = trainer.predict(test)
    scores, labels = prediction.predictions, prediction.label_ids
    metrics = evaluation.TopKAccuracy().compute(predictions=scores.tolist(), references=labels.tolist())
    results = {
        "model": model_args.model,
        "protocol": "linear_probe" if model_args.linear_probe else "fine_tune",
        "train_examples": len(train),
        "eval_examples": len(test),
        "shots_per_class": data_args.shots_per_class,
        "train_fraction": data_args.train_fraction,
        "seed": args.seed,
        **metrics,
        "validation_curve": [{"step": step, "top1": top1} for step, top1 in logged_series(trainer.state.log_history, "eval_top1")],
    }
    if not trainer.is_world_process_zero():
        return results
    task = "Linear probe" if model_args.linear_probe else "Fine-tuning"
    shots = (
        f", {data_args.shots_per_class}-shot"
        if data_args.shots_per_class
        else f", {data_args.train_fraction:.0%} of labels"
        if data_args.train_fraction
        else ""
    )

    def figures(folder: Path) -> None:
        plot_confusion_matrix(labels, scores.argmax(1), class_names, folder / "confusion_matrix.png",
                              title=f"{results['protocol']}: top-1 {metrics['top1']:.3f}")
        if results["validation_curve"]:
            plot_validation_curve(
                trainer.state.log_history, folder / "validation_curve.png", f"{results['protocol']} ({len(train)} training images)"
            )

    write_model_card(output, "downstream.md", model, source=model_args.model, fields={
        "model_name": output.name, "task_title": f"{task}{shots}", "source": model_args.model, "script": "run_classification.py",
        "dataset_name": dataset_reference(data_args.dataset_name, data_args.train_dir).name,
        "data_summary": f"{len(train)} training images, {len(test)} evaluation images ({evaluation_split}), {len(class_names)} classes",
        "results_summary": ", ".join(f"top-{name.removeprefix('top')} {value:.4f}" for name, value in metrics.items()),
        "figure_title": "confusion matrix", "figure": "confusion_matrix.png",
        "usage": 'classify = pipeline("image-classification", model="<this repo or folder>")\nclassify("image.jpg")'})
    entry = evaluation.ModelIndexEntry(output, output.name, "image-classification", f"{task}{shots}",
                                       dataset_reference(data_args.dataset_name, data_args.train_dir),
                                       {k: v for k, v in metrics.items() if k.startswith("top")})
    evaluation.report_results(output, results, entry, f"top-1 {metrics['top1']:.4f}; results, figure and model", figures)
    return results


if __name__ == "__main__":
    main()
