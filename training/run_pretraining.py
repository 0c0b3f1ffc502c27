#!/usr/bin/env python
"""Pre-train an MFM backbone (MFM, FOLK, or the SR / deblur / denoise baselines) with the Trainer.

    python training/run_pretraining.py training/configs/quickstart.yaml [--max_steps 50 ...]   # flags override the file
    python training/run_pretraining.py --model vit-base-patch16-224 --train_dir /data/imagenet/train \
        --output_dir outputs/mfm-vit-b --per_device_train_batch_size 128 --bf16 --num_train_epochs 300
    torchrun --nproc_per_node 8 training/run_pretraining.py ...   # or: accelerate launch ...

Arguments are transformers' `TrainingArguments` plus the model and data arguments below; a
single YAML or JSON file with the same keys works too. Any field of the model's config is set
with ``--config_overrides "mask_radius=24,folk_teacher_temperature=0.04"`` (in a file: a
mapping), checked by the config itself; the most used have flags of their own (`CONFIG_FLAGS`). The MFM recipe is the default
(AdamW betas 0.9/0.95, weight decay 0.05 without decay on norms, biases, position
embedding and cls token, grad clip 3.0, cosine schedule with warmup down to lr/120, lr
3e-4 per 512 images). Masking runs batched on the device inside the model.

At the end the output directory holds the pre-trained **backbone** (``MFM*Model``, loadable by
`AutoModel` / `AutoBackbone`) with its image processor, a model card, ``loss_curve.png`` and
``reconstructions.png``; the Trainer's ``checkpoint-*`` folders keep the full pre-training
model for resuming (``--resume_from_checkpoint``).
"""

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, make_dataclass
from typing import Optional

import torch
from transformers import HfArgumentParser, TrainingArguments, set_seed

from mfm_hub import data as mfm_data
from mfm_hub.arguments import (
    CONFIG_SUFFIXES,
    check_training_arguments,
    claim_training_output,
    config_file_values,
    parse_config_overrides,
    resolve_learning_rate,
    setup_training_process,
    upgrade_old_flags,
)
from mfm_hub.batched_augmentation import BatchedPretrainingImages, DecodedImages
from mfm_hub.configuration_mfm import PRESETS
from mfm_hub.modeling_folk import FOLKScheduleCallback
from mfm_hub.pretext import PRETEXT_TASKS
from mfm_hub.pretraining import FOLK_PRETEXT_TASK, OBJECTIVES, export_pretrained, figure_batch, pretraining_model, push_pretrained
from mfm_hub.trainer import (
    EpochCallback,
    MFMPretrainingTrainer,
    SaveOnSigterm,
    check_ranks_agree,
)
from mfm_hub.validation import require, require_at_least

logger = logging.getLogger("run_pretraining")

#: Config fields with a flag of their own (shorthands of --config_overrides): name -> (type, help).
CONFIG_FLAGS = {
    "image_size": (int, "training crop size (default: the model's)"),
    "mask_radius": (float, "MFM circle radius in spectrum pixels of a 224-px image (16)"),
    "low_pass_prob": (float, "probability of a low-pass mask (0.5 ViT, 0.3 ResNet)"),
    "drop_path_rate": (float, "stochastic depth (0 in MFM)"),
}
#: Arguments of earlier releases under their names now.
RENAMED_ARGUMENTS = {"method": "pretext_task"}


@dataclass
class _ModelArguments:
    model: str = field(
        default="vit-tiny-patch4-32",
        metadata={"help": f"a preset ({', '.join(sorted(PRESETS))}), a config.json, or a checkpoint folder to continue from"},
    )
    pretext_task: Optional[str] = field(
        default=None, metadata={"help": f"{', '.join(PRETEXT_TASKS)} (default: mfm; {FOLK_PRETEXT_TASK} with --objective folk)"}
    )
    objective: str = field(default="reconstruction", metadata={"help": f"{' | '.join(OBJECTIVES)}: restore the image, or FOLK's "
                                                                        "reconstruction + self-distillation"})
    config_overrides: dict | str | None = field(  # `|`, not Union: typing caches Union[str, dict] as equal and may reorder it
        default=None, metadata={"help": "config fields to change: name=value,name=value (e.g. folk_head_output_dim=1024)"}
    )

    def __post_init__(self):
        require(self.objective in OBJECTIVES, "--objective", self.objective, f"one of {', '.join(OBJECTIVES)}")
        if self.pretext_task == "folk":
            raise ValueError("'folk' is an objective, not a pretext task: use --objective folk (FOLK's own Com/RCom filters, "
                             f"--pretext_task {FOLK_PRETEXT_TASK}, are its default task).")
        if self.pretext_task is None:
            self.pretext_task = FOLK_PRETEXT_TASK if self.objective == "folk" else "mfm"
        require(self.pretext_task in PRETEXT_TASKS, "--pretext_task", self.pretext_task, f"one of {', '.join(PRETEXT_TASKS)}")
        self.config_overrides = parse_config_overrides(self.config_overrides)

    @property
    def config_fields(self) -> dict:
        """Every config field this run sets: the pretext task, the flags, then --config_overrides."""
        flags = {name: getattr(self, name) for name in CONFIG_FLAGS if getattr(self, name) is not None}
        return {"pretext_task": self.pretext_task, **flags, **self.config_overrides}


ModelArguments = make_dataclass("ModelArguments", [
    (name, Optional[kind], field(default=None, metadata={"help": f"{text}; config field `{name}`"}))
    for name, (kind, text) in CONFIG_FLAGS.items()
], bases=(_ModelArguments,))


@dataclass
class DataArguments:
    train_dir: Optional[str] = field(default=None, metadata={"help": "an image folder (class sub-folders optional)"})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "a `datasets` dataset (needs a reachable Hub)"})
    dataset_config_name: Optional[str] = field(default=None)
    image_column: Optional[str] = field(default=None, metadata={"help": "image column (default: the first Image feature)"})
    streaming: bool = field(default=False, metadata={"help": "stream the dataset instead of downloading it (set --max_steps)"})
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "use N images, a seeded class-balanced sample (uniform without class labels)"}
    )
    min_crop_scale: float = field(default=0.2, metadata={"help": "RandomResizedCrop minimum area (0.2)"})
    strict_data: bool = field(default=False, metadata={"help": "stop at the first unreadable image instead of replacing it"})
    batched_augmentation: bool = field(default=False, metadata={"help": "decode once, crop whole batches on the device (docs/TRAINING.md)"})
    num_figure_images: int = field(default=6, metadata={"help": "images in reconstructions.png"})

    def __post_init__(self):
        require_at_least(self, 1, "max_train_samples")
        require_at_least(self, 2, "num_figure_images")  # FOLK draws half as many view pairs


@dataclass
class PretrainingArguments(TrainingArguments):
    """`TrainingArguments` with the MFM recipe as defaults."""

    output_dir: str = field(default="outputs/mfm-pretraining")
    overwrite_output_dir: bool = field(default=False, metadata={"help": "write into an output folder that already holds files"})
    learning_rate: Optional[float] = field(default=None, metadata={"help": "peak lr; default: --base_learning_rate scaled by batch/512"})
    base_learning_rate: float = field(default=3e-4, metadata={"help": "peak lr per 512 images (official 3e-4)"})
    adam_beta2: float = field(default=0.95)
    weight_decay: float = field(default=0.05)
    max_grad_norm: float = field(default=3.0)
    lr_scheduler_type: str = field(default="cosine_with_min_lr")
    warmup_steps: float = field(default=20 / 300, metadata={"help": "warmup steps, or a fraction of the run (20 of 300 epochs)"})
    logging_steps: float = field(default=10)
    save_steps: float = field(default=500)
    save_total_limit: Optional[int] = field(default=2)
    remove_unused_columns: bool = field(default=False)

    def __post_init__(self):
        check_training_arguments(self)
        require(self.base_learning_rate > 0, "--base_learning_rate", self.base_learning_rate, "> 0")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu and not torch.cuda.is_available():
            # accelerate only runs multi-process CPU training (gloo DDP) with use_cpu; without it each
            # process launched by torchrun would silently train its own copy
            self.use_cpu = True
        if self.lr_scheduler_type == "cosine_with_min_lr" and not self.lr_scheduler_kwargs:
            self.lr_scheduler_kwargs = {"min_lr_rate": MIN_LR_RATE}
        super().__post_init__()


#: The official schedule ends at min_lr 2.5e-6 for a peak of 3e-4 (both scaled with the batch).
MIN_LR_RATE = 2.5e-6 / 3e-4


def build_dataset(data_args: DataArguments, image_size: int, seed: int, two_views: bool = False):
    """The training images; FOLK (``two_views``) gets two colour-jittered views per image."""
    dataset, column = mfm_data.load_image_dataset(
        data_args.train_dir, data_args.dataset_name, data_args.dataset_config_name,
        streaming=data_args.streaming, image_column=data_args.image_column,
    )
    dataset = mfm_data.sample_examples(dataset, data_args.max_train_samples, seed)
    transform = mfm_data.pretraining_transform(image_size, data_args.min_crop_scale, color_jitter=two_views)
    if data_args.batched_augmentation:
        require(not data_args.streaming, "--batched_augmentation", True, "used without --streaming (it decodes every image once)")
        return BatchedPretrainingImages(DecodedImages(dataset, column), transform, seed, strict=data_args.strict_data,
                                        num_views=2 if two_views else 1), dataset, column
    wrapper = mfm_data.StreamingPretrainingImages if data_args.streaming else mfm_data.PretrainingImages
    return wrapper(dataset, column, transform, seed, num_views=2 if two_views else 1, strict=data_args.strict_data), dataset, column


def parse_arguments(argv: list[str]):
    """Flags, or a YAML / JSON file first and flags after it that override the file. Arguments
    of earlier releases (``--method``, a config field as its own flag) still work, with a warning."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainingArguments))
    argv, old_config_flags = upgrade_old_flags(argv, parser, RENAMED_ARGUMENTS)
    if argv and argv[0].endswith(CONFIG_SUFFIXES):
        parser.set_defaults(**config_file_values(parser, argv[0], RENAMED_ARGUMENTS))
        argv = argv[1:]
    model_args, data_args, args = parser.parse_args_into_dataclasses(argv)
    model_args.config_overrides.update(old_config_flags)
    return model_args, data_args, args


def main(argv: Optional[list[str]] = None) -> int:
    model_args, data_args, args = parse_arguments(sys.argv[1:] if argv is None else argv)
    claim_training_output(args)
    setup_training_process(args)
    push_to = args.hub_model_id if args.push_to_hub else None
    if args.push_to_hub and not push_to:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/mfm-vit-small).")
    args.push_to_hub = False  # we upload the exported backbone ourselves, once, at the end
    resolve_learning_rate(args)
    set_seed(args.seed)

    is_folk = model_args.objective == "folk"
    model = pretraining_model(model_args.model, model_args.objective, **model_args.config_fields)
    train_images, raw_dataset, column = build_dataset(data_args, model.config.image_size, args.seed, two_views=is_folk)
    sigterm = SaveOnSigterm()
    trainer = MFMPretrainingTrainer(
        model=model, args=args, train_dataset=train_images, data_collator=mfm_data.collate_pretraining,
        callbacks=[EpochCallback(train_images), sigterm] + ([FOLKScheduleCallback()] if is_folk else []),
    )
    started = time.time()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    wall_time = time.time() - started
    if trainer.unreadable_images:
        logger.warning("Skipped %d distinct unreadable images (replaced %d times in all, this process).",
                       len(trainer.unreadable_images), sum(trainer.unreadable_images.values()))
    if sigterm.stopped(trainer):
        return 143
    check_ranks_agree(trainer.model)
    if not trainer.is_world_process_zero():
        return 0
    figure_pixels = figure_batch(train_images, raw_dataset, column, model.config,
                                 data_args.num_figure_images // (2 if is_folk else 1), two_views=is_folk)
    output = export_pretrained(trainer, model_args.objective, figure_pixels,
                               mfm_data.dataset_reference(data_args.dataset_name, data_args.train_dir),
                               len(raw_dataset) if hasattr(raw_dataset, "__len__") else None, wall_time, model_args.model)
    (output / "train_results.json").write_text(json.dumps({"global_step": trainer.state.global_step, "wall_time_s": round(wall_time, 1),
                                                            "log_history": trainer.state.log_history}, indent=1))
    print(f"\nPre-trained backbone, image processor and model card: {output.resolve()}")
    print(f"Figures: {(output / 'loss_curve.png').resolve()} and {(output / 'reconstructions.png').resolve()}")
    if push_to:
        try:
            push_pretrained(output, push_to)
        except Exception as error:  # report any upload failure; the local output is already complete
            print(f"Upload to {push_to} failed ({type(error).__name__}: {error}). The local output in {output} is "
                  f"complete; upload it later with `hf upload {push_to} {output}`.")
            return 1
        print(f"Pushed to {push_to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
