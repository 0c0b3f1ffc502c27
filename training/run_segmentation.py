#!/usr/bin/env python
"""Semantic segmentation with UperNet (transformers' `UperNetForSemanticSegmentation`) on an
MFM / FOLK backbone (`AutoBackbone`), trained with the Trainer.

    python training/run_segmentation.py --model outputs/quickstart --data_dir /data/CamVid --num_labels 11 --ignore_index 11

Data: a folder in the SegNet layout (``train/`` + ``trainannot/``, ``val/`` + ``valannot/``,
``test/`` + ``testannot/``, images and label maps matched by file stem), or a `datasets`
dataset with an image and a mask column (``--dataset_name``). Label maps hold class indices;
``--ignore_index`` marks pixels left out of the loss and the metrics (CamVid: 11,
"unlabelled"). Training uses random crops of ``--crop_size`` and flips; evaluation runs on
whole images padded to a multiple of 32.

Writes ``results.json`` (mIoU, mean accuracy, overall accuracy and per-class IoU on the
evaluation split, via an `evaluate` metric), ``segmentation_overlays.png`` (image, ground
truth, prediction), the trained model, and a `model-index` entry in its model card. SIGTERM
saves a checkpoint and exits 143; ``--resume_from_checkpoint`` (a checkpoint, or ``True`` for
the newest complete one) continues such a run exactly (crops are seeded per image and epoch).
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
import torch
from transformers import (
    HfArgumentParser,
    TrainingArguments,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    default_data_collator,
    set_seed,
)

import mfm_hub  # noqa: F401  (registers the MFM classes with the Auto classes)
from mfm_hub import evaluation
from mfm_hub.arguments import check_training_arguments, claim_training_output, setup_training_process
from mfm_hub.configuration_mfm import PRESETS, check_model_source, resolve_config
from mfm_hub.data import dataset_reference, sample_examples
from mfm_hub.evaluation.segmentation import (
    EVAL_MULTIPLE,
    SegmentationBatch,
    SegmentationCrops,
    SegmentationTrainer,
    class_names,
    load_segnet_folder,
    read_pair,
)
from mfm_hub.image_processing import segmentation_image_processor
from mfm_hub.model_card import write_model_card
from mfm_hub.trainer import EpochCallback, SaveOnSigterm
from mfm_hub.validation import require, require_at_least
from mfm_hub.visualization import plot_overlays

logger = logging.getLogger("run_segmentation")


@dataclass
class ModelArguments:
    model: str = field(default="vit-tiny-patch4-32", metadata={"help": "an MFM checkpoint folder or Hub id, or a preset (from scratch)"})
    num_labels: int = field(default=11)
    class_names: Optional[str] = field(default=None, metadata={"help": "class names, comma separated, or a known set: camvid"})
    ignore_index: Optional[int] = field(default=None, metadata={"help": "label of pixels left out of loss and metrics"})
    decoder_channels: int = field(default=256, metadata={"help": "UperNet hidden size"})
    freeze_backbone: bool = field(default=False)

    def __post_init__(self):
        require_at_least(self, 1, "num_labels")
        require_at_least(self, 2, "decoder_channels")
        require(self.ignore_index is None or not 0 <= self.ignore_index < self.num_labels, "--ignore_index", self.ignore_index,
                f"outside the class indices 0..{self.num_labels - 1} (it would erase a class)")
        self.classes = class_names(self.class_names, self.num_labels)


@dataclass
class DataArguments:
    data_dir: Optional[str] = field(default=None, metadata={"help": "SegNet-layout folder (train/, trainannot/, ...)"})
    dataset_name: Optional[str] = field(default=None)
    image_column: str = field(default="image")
    mask_column: str = field(default="mask")
    train_split: str = field(default="train")
    eval_split: str = field(default="val")
    crop_size: int = field(default=128)
    max_train_samples: Optional[int] = field(default=None)
    max_eval_samples: Optional[int] = field(default=None)
    num_figure_images: int = field(default=4)

    def __post_init__(self):
        require_at_least(self, 1, "crop_size", "max_train_samples", "max_eval_samples")
        require_at_least(self, 0, "num_figure_images")


@dataclass
class SegmentationArguments(TrainingArguments):
    output_dir: str = field(default="outputs/segmentation")
    overwrite_output_dir: bool = field(default=False, metadata={"help": "write into an output folder that already holds files"})
    learning_rate: float = field(default=2e-4)
    weight_decay: float = field(default=0.05)
    warmup_steps: float = field(default=0.05)
    lr_scheduler_type: str = field(default="polynomial")
    save_strategy: str = field(default="no")
    logging_steps: float = field(default=10)
    remove_unused_columns: bool = field(default=False)

    def __post_init__(self):
        check_training_arguments(self)
        super().__post_init__()


def load_split(data_args: DataArguments, split: str) -> datasets.Dataset:
    if data_args.data_dir:
        return load_segnet_folder(data_args.data_dir, split)
    if not data_args.dataset_name:
        raise ValueError("Pass --data_dir (SegNet layout) or --dataset_name.")
    dataset = datasets.load_dataset(data_args.dataset_name, split=split)
    for column in (data_args.image_column, data_args.mask_column):
        if column not in dataset.features:
            raise ValueError(f"No column {column!r}; columns are {list(dataset.features)}.")
    dataset = dataset.select_columns([data_args.image_column, data_args.mask_column])
    dataset = dataset.rename_columns({data_args.image_column: "image", data_args.mask_column: "mask"})
    return dataset.cast_column("image", datasets.Image(decode=False)).cast_column("mask", datasets.Image(decode=False))


def build_model(model_args: ModelArguments):
    config = UperNetConfig(
        backbone_config=resolve_config(model_args.model), num_labels=model_args.num_labels, hidden_size=model_args.decoder_channels,
        id2label=dict(enumerate(model_args.classes)), label2id={name: index for index, name in enumerate(model_args.classes)},
        auxiliary_channels=model_args.decoder_channels // 2,
        loss_ignore_index=model_args.ignore_index if model_args.ignore_index is not None else 255,
    )
    model = UperNetForSemanticSegmentation(config)
    if model_args.model not in PRESETS:
        model.backbone.base_model.load_state_dict(evaluation.load_encoder(model_args.model).state_dict())
    if model_args.freeze_backbone:
        model.backbone.requires_grad_(False)
    return model


def main(argv: Optional[list[str]] = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, SegmentationArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(sys.argv[1:] if argv is None else argv)
    claim_training_output(args)
    check_model_source(model_args.model)
    setup_training_process(args)
    set_seed(args.seed)
    train, test = load_split(data_args, data_args.train_split), load_split(data_args, data_args.eval_split)
    train, test = (
        sample_examples(train, data_args.max_train_samples, args.seed),
        sample_examples(test, data_args.max_eval_samples, args.seed),
    )
    for split, what in ((train, "training images"), (test, "evaluation images")):
        evaluation.validate_examples(split, lambda example: read_pair(example, model_args.num_labels, model_args.ignore_index), what)
    model = build_model(model_args)
    backbone_config = model.config.backbone_config
    crops = SegmentationCrops(train, backbone_config, model_args.num_labels, model_args.ignore_index, data_args.crop_size, args.seed)
    sigterm = SaveOnSigterm()
    trainer = SegmentationTrainer(model=model, args=args, train_dataset=crops, data_collator=default_data_collator,
                                  callbacks=[EpochCallback(crops), sigterm])
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if sigterm.stopped(trainer):
        raise SystemExit(143)
    output = Path(args.output_dir)
    trainer.save_model(output)  # before evaluating: nothing that fails later can lose it
    height, width = read_pair(test[0], model_args.num_labels, model_args.ignore_index)[1].shape
    segmentation_image_processor(backbone_config, -(-height // EVAL_MULTIPLE) * EVAL_MULTIPLE,
                                 -(-width // EVAL_MULTIPLE) * EVAL_MULTIPLE).save_pretrained(output)

    evaluate_batch = SegmentationBatch(backbone_config, model_args.num_labels, model_args.ignore_index)
    metric = evaluation.MeanIoU()
    figure = []
    model.eval()
    for index in range(len(test)):
        example = test[index]
        image, reference = read_pair(example, model_args.num_labels, model_args.ignore_index)
        with torch.no_grad():
            logits = model(pixel_values=evaluate_batch([example])["pixel_values"].to(model.device)).logits
        prediction = logits[0, :, :reference.shape[0], :reference.shape[1]].argmax(0).cpu().numpy()
        metric.add(predictions=prediction, references=reference)
        if len(figure) < data_args.num_figure_images:
            figure.append((image, reference, prediction))
    scores = metric.compute(num_labels=model_args.num_labels, ignore_index=model_args.ignore_index)
    results = {"model": model_args.model, "eval_split": data_args.eval_split, "eval_images": len(test), "train_images": len(train),
               "seed": args.seed, "class_names": model_args.classes, **scores}
    if not trainer.is_world_process_zero():
        return results
    write_model_card(output, "downstream.md", model, source=model_args.model, fields={
        "model_name": output.name, "task_title": "Semantic segmentation (UperNet)", "source": model_args.model,
        "script": "run_segmentation.py", "dataset_name": dataset_reference(data_args.dataset_name, data_args.data_dir).name,
        "data_summary": f"{len(train)} training images, {len(test)} evaluation images ({data_args.eval_split}), "
                        f"{model_args.num_labels} classes",
        "results_summary": f"mIoU {scores['mean_iou']:.4f}, mean accuracy {scores['mean_accuracy']:.4f}, "
                           f"overall accuracy {scores['overall_accuracy']:.4f}",
        "figure_title": "image, ground truth and prediction", "figure": "segmentation_overlays.png",
        "usage": 'segment = pipeline("image-segmentation", model="<this repo or folder>")\nsegment("street.png")'})
    entry = evaluation.ModelIndexEntry(output, output.name, "image-segmentation", "Semantic segmentation (UperNet)",
                                       dataset_reference(data_args.dataset_name, data_args.data_dir),
                                       {k: scores[k] for k in ("mean_iou", "mean_accuracy", "overall_accuracy")}, data_args.eval_split)
    evaluation.report_results(
        output, results, entry,
        f"mIoU {scores['mean_iou']:.4f}, mean accuracy {scores['mean_accuracy']:.4f}, overall accuracy {scores['overall_accuracy']:.4f}",
        lambda folder: plot_overlays(*zip(*figure), model_args.ignore_index, folder / "segmentation_overlays.png",
                                     f"UperNet on {Path(model_args.model).name}: mIoU {scores['mean_iou']:.3f}"))
    return results


if __name__ == "__main__":
    main()
