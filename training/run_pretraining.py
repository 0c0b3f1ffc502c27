#!/usr/bin/env python
"""Pre-train an MFM backbone (MFM, FOLK, or the SR / deblur / denoise baselines) with the Trainer.

    python training/run_pretraining.py training/configs/quickstart.yaml [--max_steps 50 ...]   # flags override the file
    python training/run_pretraining.py --model vit-base-patch16-224 --train_dir /data/imagenet/train \
        --output_dir outputs/mfm-vit-b --per_device_train_batch_size 128 --bf16 --num_train_epochs 300
    torchrun --nproc_per_node 8 training/run_pretraining.py ...   # or: accelerate launch ...

Arguments are transformers' `TrainingArguments` plus the model and data arguments below; a
single YAML or JSON file with the same keys works too. The MFM recipe is the default
(AdamW betas 0.9/0.95, weight decay 0.05 without decay on norms, biases, position
embedding and cls token, grad clip 3.0, cosine schedule with warmup down to lr/120, lr
3e-4 per 512 images). Masking runs batched on the device inside the model.

At the end the output directory holds the pre-trained **backbone** (``MFM*Model``, loadable by
`AutoModel` / `AutoBackbone`) with its image processor, a model card, ``loss_curve.png`` and
``reconstructions.png``; the Trainer's ``checkpoint-*`` folders keep the full pre-training
model for resuming (``--resume_from_checkpoint``).
"""

import itertools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import transformers
from transformers import (
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

import mfm_hub
from mfm_hub import data as mfm_data
from mfm_hub.arguments import (
    CONFIG_SUFFIXES,
    check_training_arguments,
    config_file_values,
    guard_output_dir,
    require,
    require_at_least,
    resolve_learning_rate,
    setup_training_process,
)
from mfm_hub.configuration_mfm import PRESETS, check_model_source, resolve_config
from mfm_hub.model_card import write_model_card
from mfm_hub.modeling_folk import ema_momentum, prototypes_frozen, teacher_temperature
from mfm_hub.pretext import PRETEXT_TASKS, get_pretext_task
from mfm_hub.trainer import SaveOnSigterm, SignalSafeWorkersMixin, check_resumable, newest_complete_checkpoint, resolve_resume_checkpoint
from mfm_hub.visualization import logged_losses, plot_loss_curve, reconstruction_grid

logger = logging.getLogger("run_pretraining")

OBJECTIVES = {
    "reconstruction": "the model restores the corrupted image (frequency loss)",
    "folk": "FOLK: two augmented views; the student reconstructs the removed frequencies and matches an EMA teacher's "
            "output on the other, unfiltered view",
}
#: What the benchmarks call a method: a pretext task, or "folk" (the FOLK objective with its default task).
METHODS = [*PRETEXT_TASKS, "folk"]


def method_flags(method: str) -> list[str]:
    """The command-line flags of a benchmark method."""
    return ["--objective", "folk"] if method == "folk" else ["--method", method]


@dataclass
class ModelArguments:
    model: str = field(
        default="vit-tiny-patch4-32",
        metadata={"help": f"a preset ({', '.join(sorted(PRESETS))}), a config.json, or a checkpoint folder to continue from"},
    )
    method: Optional[str] = field(default=None, metadata={"help": f"pretext task: {', '.join(PRETEXT_TASKS)} (default: mfm; "
                                                                "informed with --objective folk)"})
    objective: str = field(default="reconstruction", metadata={"help": f"{' | '.join(OBJECTIVES)}: restore the image, or FOLK's "
                                                                        "reconstruction + self-distillation"})
    image_size: Optional[int] = field(default=None, metadata={"help": "training crop size (default: the model's)"})
    mask_radius: Optional[float] = field(default=None, metadata={"help": "MFM circle radius in spectrum pixels of a 224-px image (16)"})
    low_pass_prob: Optional[float] = field(default=None, metadata={"help": "probability of a low-pass mask (0.5 ViT, 0.3 ResNet)"})
    sr_factor: Optional[int] = field(default=None, metadata={"help": "SR down-sampling factor (8)"})
    blur_sigma: Optional[float] = field(default=None, metadata={"help": "deblur Gaussian sigma (5)"})
    noise_sigma: Optional[float] = field(default=None, metadata={"help": "denoise noise sigma on [0, 1] images (75/255)"})
    drop_path_rate: Optional[float] = field(default=None, metadata={"help": "stochastic depth (0 in MFM)"})
    folk_head_output_dim: Optional[int] = field(default=None, metadata={"help": "FOLK: prototypes of the projection head (4096)"})
    folk_teacher_temperature: Optional[float] = field(default=None, metadata={"help": "FOLK: teacher softmax temperature (0.02)"})
    folk_student_temperature: Optional[float] = field(default=None, metadata={"help": "FOLK: student softmax temperature (0.1)"})
    folk_ema_momentum: Optional[float] = field(default=None, metadata={"help": "FOLK: initial teacher EMA momentum, cosine to 1 (0.996)"})
    folk_distillation_weight: Optional[float] = field(default=None, metadata={"help": "FOLK: weight of the distillation loss (1)"})
    folk_reconstruction_weight: Optional[float] = field(default=None, metadata={"help": "FOLK: weight of the reconstruction loss (1)"})
    folk_warmup_teacher_temperature: Optional[float] = field(
        default=None, metadata={"help": "FOLK: teacher temperature at the start of the warm-up (0.02)"}
    )
    folk_teacher_temperature_warmup_ratio: Optional[float] = field(
        default=None, metadata={"help": "FOLK: fraction of the run over which the teacher temperature warms up (0)"})
    folk_normalize_prototypes: Optional[bool] = field(default=None, metadata={"help": "FOLK: unit-norm prototypes (true)"})
    folk_freeze_prototypes_ratio: Optional[float] = field(
        default=None, metadata={"help": "FOLK: fraction of the run during which the student's prototypes stay frozen (0)"})
    folk_head_pooling: Optional[str] = field(
        default=None, metadata={"help": "FOLK ViT: heads read the 'mean' patch token (default) or 'cls'"}
    )
    folk_center_momentum: Optional[float] = field(default=None, metadata={"help": "FOLK: momentum of the teacher-output centre (0.9)"})
    folk_export: Optional[str] = field(default=None, metadata={"help": "FOLK: export the 'teacher' (default) or 'student' encoder"})

    def __post_init__(self):
        require(self.objective in OBJECTIVES, "--objective", self.objective, f"one of {', '.join(OBJECTIVES)}")
        if self.method == "folk":
            raise ValueError("'folk' is an objective, not a pretext task: use --objective folk (FOLK's own Com/RCom filters, "
                             "--method informed, are its default task).")
        if self.method is None:
            self.method = "informed" if self.objective == "folk" else "mfm"
        require(self.method in PRETEXT_TASKS, "--method", self.method, f"a pretext task: {', '.join(PRETEXT_TASKS)}")


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


class NonFiniteLossError(FloatingPointError):
    pass


class MFMPretrainingTrainer(SignalSafeWorkersMixin, Trainer):
    """Trainer with the MFM weight-decay split, data-loader workers that leave SIGTERM to this
    process (`mfm_hub.trainer`), a stop on a non-finite loss (before the optimizer step, so no
    checkpoint ever holds the damage), and, for FOLK, the two loss terms and the teacher's
    target statistics logged beside the total (this process's mean since the last log)."""

    LOSS_TERMS = ("reconstruction_loss", "distillation_loss", "teacher_entropy", "teacher_marginal_kl")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._term_sums = {name: 0.0 for name in self.LOSS_TERMS}
        self._term_count = 0
        self.unreadable_images: dict[str, int] = {}  # message (names the file) -> times replaced

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        skipped = inputs.pop("skipped_images", None)
        if skipped and model.training:
            self._count_skipped(skipped)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if getattr(outputs, "distillation_loss", None) is not None and model.training:
            for name in self.LOSS_TERMS:  # summed on the device; read (one sync) only when logging
                self._term_sums[name] = self._term_sums[name] + getattr(outputs, name)
            self._term_count += 1
        return (loss, outputs) if return_outputs else loss

    def _count_skipped(self, messages: list[str]) -> None:
        """Unreadable images replaced in the data pipeline (possibly in worker processes): one
        warning naming the first, and per distinct file how often it was replaced (every epoch
        draws it again), for the end of the run."""
        if not self.unreadable_images:
            logger.warning("%s; replaced by the next readable image, as will be any further unreadable one "
                           "(use --strict_data to stop instead).", messages[0])
        for message in messages:
            self.unreadable_images[message] = self.unreadable_images.get(message, 0) + 1

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._term_count:
            logs.update({name: float(total) / self._term_count for name, total in self._term_sums.items()})
            self._term_sums = {name: 0.0 for name in self.LOSS_TERMS}
            self._term_count = 0
        super().log(logs, *args, **kwargs)

    def get_decay_parameter_names(self, model) -> list[str]:
        return [
            name for name, param in model.named_parameters()
            if param.ndim > 1 and not name.endswith(("pos_embed", "cls_token"))
        ]

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            last = newest_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLossError(
                f"The loss became {loss.item()} at step {self.state.global_step + 1}; stopped before updating the "
                f"weights. Last good checkpoint: {last or 'none saved yet'}. Lower the learning rate, "
                "use bf16 instead of fp16, or check the data for NaN pixels."
            )
        return loss


class EpochCallback(TrainerCallback):
    """Tells the dataset which epoch it is, so every epoch draws new crops."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(mfm_data.epoch_of(state.epoch))


class FOLKScheduleCallback(TrainerCallback):
    """FOLK's per-step schedules, all functions of the Trainer's global step (so a resumed run
    continues exactly, and every DDP rank does the same): the teacher temperature is set
    before each optimizer step, the student's prototypes sit out the steps
    `prototypes_frozen` names, and after every optimizer step (once per accumulated batch)
    the teacher moves towards the student with the cosine momentum schedule. The teacher and
    centre live in the model's state dict, so checkpoints restore them."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.teacher_temperature = teacher_temperature(state.global_step, state.max_steps, model.config)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if prototypes_frozen(state.global_step, state.max_steps, model.config):
            model.drop_prototype_gradients()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        model.update_teacher(ema_momentum(state.global_step, state.max_steps, model.config.folk_ema_momentum))


def build_model(model_args: ModelArguments):
    overrides = {
        key: value
        for key, value in {
            "corruption": model_args.method,
            "image_size": model_args.image_size,
            "mask_radius": model_args.mask_radius,
            "low_pass_prob": model_args.low_pass_prob,
            "sr_factor": model_args.sr_factor,
            "blur_sigma": model_args.blur_sigma,
            "noise_sigma": model_args.noise_sigma,
            "drop_path_rate": model_args.drop_path_rate,
            **{
                name: getattr(model_args, name)
                for name in (
                    "folk_head_output_dim",
                    "folk_teacher_temperature",
                    "folk_student_temperature",
                    "folk_ema_momentum",
                    "folk_distillation_weight",
                    "folk_reconstruction_weight",
                    "folk_export",
                    "folk_warmup_teacher_temperature",
                    "folk_teacher_temperature_warmup_ratio",
                    "folk_normalize_prototypes",
                    "folk_freeze_prototypes_ratio",
                    "folk_center_momentum",
                    "folk_head_pooling",
                )
            },
        }.items()
        if value is not None
    }
    is_folk = model_args.objective == "folk"
    check_model_source(model_args.model)
    source = Path(model_args.model)
    if model_args.model not in PRESETS and not (source.is_dir() or (source.suffix == ".json" and source.is_file())):
        raise ValueError(
            f"--model {model_args.model!r} is neither a preset ({', '.join(sorted(PRESETS))}), a config.json nor a checkpoint folder."
        )
    config = resolve_config(model_args.model, **overrides)
    if source.is_dir():
        model_class = mfm_hub.family_of(config).folk if is_folk else transformers.AutoModelForPreTraining
        return model_class.from_pretrained(source, config=config)
    if is_folk:
        return mfm_hub.family_of(config).folk(config)
    return transformers.AutoModelForPreTraining.from_config(config)


def build_dataset(data_args: DataArguments, image_size: int, seed: int, two_views: bool = False):
    """The training images; FOLK (``two_views``) gets two colour-jittered views per image."""
    dataset, column = mfm_data.load_image_dataset(
        data_args.train_dir, data_args.dataset_name, data_args.dataset_config_name,
        streaming=data_args.streaming, image_column=data_args.image_column,
    )
    dataset = mfm_data.sample_examples(dataset, data_args.max_train_samples, seed)
    transform = mfm_data.pretraining_transform(image_size, data_args.min_crop_scale, color_jitter=two_views)
    wrapper = mfm_data.StreamingPretrainingImages if data_args.streaming else mfm_data.PretrainingImages
    return wrapper(dataset, column, transform, seed, num_views=2 if two_views else 1, strict=data_args.strict_data), dataset, column


def figure_batch(train_images, dataset, column: str, config, count: int, two_views: bool) -> torch.Tensor:
    """``count`` images for the figure: the first readable ones resized without augmentation
    (MFM), or the first training samples' two augmented views (FOLK)."""
    if two_views:
        # iter() serves map-style (by index) and streaming datasets alike
        return torch.stack([sample["pixel_values"] for sample in itertools.islice(iter(train_images), count)])
    processor = mfm_hub.image_processor_for_config(config, do_normalize=False)
    images = []
    for example in dataset:
        try:
            images.append(mfm_data.decode_image(example[column]))
        except mfm_data.BadImageError:
            continue
        if len(images) == count:
            break
    return processor(images, return_tensors="pt")["pixel_values"]


def check_ranks_agree(model) -> None:
    """Under DDP, confirm every process ends with the same weights (a cheap checksum)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    with torch.no_grad():
        checksum = sum(p.double().sum().item() + p.double().pow(2).sum().item() for p in model.parameters())
    checksums = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(checksums, checksum)
    if len(set(checksums)) != 1:
        raise RuntimeError(f"Processes ended with different weights: checksums {checksums}.")
    logger.info("Weights identical across %d processes (checksum %.6e).", len(checksums), checksum)
    print(f"weights identical across {len(checksums)} processes")


def describe_hardware(args: TrainingArguments) -> str:
    if args.device.type == "cuda":
        device = torch.cuda.get_device_name(args.device)
    else:
        device = f"CPU ({os.cpu_count()} cores)"
    return f"{args.world_size} x {device}"


def export(trainer, model_args, data_args, args, train_images, dataset, column, wall_time: float) -> Path:
    """Save the backbone, processor, figures and model card into ``args.output_dir``."""
    model = trainer.model
    config = model.config
    task = get_pretext_task(config.corruption)
    is_folk = model_args.objective == "folk"
    title = f"FOLK ({task.title})" if is_folk else task.title
    output = Path(args.output_dir)
    backbone = model.exported_backbone() if is_folk else model.base_model
    backbone.save_pretrained(output)
    plot_loss_curve(trainer.state.log_history, output / "loss_curve.png", title=f"{title} pre-training",
                    num_prototypes=config.folk_head_output_dim if is_folk else None)
    pixels = figure_batch(train_images, dataset, column, config, data_args.num_figure_images // (2 if is_folk else 1), is_folk)
    reconstruction_grid(model, pixels, output / "reconstructions.png", generator=torch.Generator(model.device).manual_seed(args.seed),
                        title=f"{title} pre-training")
    losses = [loss for _, loss in logged_losses(trainer.state.log_history)]
    data = mfm_data.dataset_reference(data_args.dataset_name, data_args.train_dir)
    total_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    recipe = (
        f"AdamW (betas {args.adam_beta1}/{args.adam_beta2}, weight decay {args.weight_decay}), peak lr {args.learning_rate:.3g} "
        f"({schedule}, warmup {args.warmup_steps}), batch {total_batch}, {trainer.state.global_step} steps, "
        f"grad clip {args.max_grad_norm}, {precision}, seed {args.seed}"
    )
    write_model_card(output, "pretrained.md", backbone, {
        "model_name": args.hub_model_id or output.name,
        "datasets": f"datasets:\n- {data.hub_id}\n" if data.hub_id else "",
        "dataset_name": data.name,
        "num_images": str(len(dataset)) if hasattr(dataset, "__len__") else "streamed",
        "image_size": str(config.image_size),
        "method_name": title,
        "method_description": (f"{OBJECTIVES['folk']}, with {task.description}; this is the {config.folk_export} encoder" if is_folk
                               else task.description),
        "recipe": recipe,
        "hardware": describe_hardware(args),
        "wall_time": f"{wall_time / 60:.1f} min",
        "final_loss": f"{losses[-1]:.4f}",
        "first_loss": f"{losses[0]:.4f}",
    })
    return output


def push_outputs(output: Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(output), ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**"],
                      commit_message="Upload MFM pre-trained backbone")


def parse_arguments(argv: list[str]):
    """Flags, or a YAML / JSON file first and flags after it that override the file."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainingArguments))
    if argv and argv[0].endswith(CONFIG_SUFFIXES):
        parser.set_defaults(**config_file_values(parser, argv[0]))
        argv = argv[1:]
    return parser.parse_args_into_dataclasses(argv)


def main(argv: Optional[list[str]] = None) -> int:
    model_args, data_args, args = parse_arguments(sys.argv[1:] if argv is None else argv)
    args.resume_from_checkpoint = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir, args.world_size)
    guard_output_dir(args.output_dir, args.overwrite_output_dir, resuming=bool(args.resume_from_checkpoint))
    if args.resume_from_checkpoint:
        check_resumable(args.resume_from_checkpoint, args.world_size)
    setup_training_process(args)
    push_to = args.hub_model_id if args.push_to_hub else None
    if args.push_to_hub and not push_to:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/mfm-vit-small).")
    args.push_to_hub = False  # we upload the exported backbone ourselves, once, at the end
    resolve_learning_rate(args)
    set_seed(args.seed)

    model = build_model(model_args)
    is_folk = model_args.objective == "folk"
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
    if sigterm.received:
        print(f"Stopped by SIGTERM at step {trainer.state.global_step}; checkpoint saved in {args.output_dir}. "
              f"Resume with --resume_from_checkpoint {args.output_dir}/checkpoint-{trainer.state.global_step}")
        return 143
    check_ranks_agree(trainer.model)
    if not trainer.is_world_process_zero():
        return 0
    output = export(trainer, model_args, data_args, args, train_images, raw_dataset, column, wall_time)
    (output / "train_results.json").write_text(json.dumps({"global_step": trainer.state.global_step, "wall_time_s": round(wall_time, 1),
                                                            "log_history": trainer.state.log_history}, indent=1))
    print(f"\nPre-trained backbone, image processor and model card: {output.resolve()}")
    print(f"Figures: {(output / 'loss_curve.png').resolve()} and {(output / 'reconstructions.png').resolve()}")
    if push_to:
        try:
            push_outputs(output, push_to)
        except Exception as error:  # report any upload failure; the local output is already complete
            print(f"Upload to {push_to} failed ({type(error).__name__}: {error}). The local output in {output} is "
                  f"complete; upload it later with `hf upload {push_to} {output}`.")
            return 1
        print(f"Pushed to {push_to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
