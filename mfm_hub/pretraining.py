"""A pre-training run apart from its command line: the objectives, the model a run trains,
and what it leaves in its output folder (the backbone, figures, model card). The Trainer
subclass and callbacks are in `mfm_hub.trainer`; `training/run_pretraining.py` is the glue."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Optional

import torch
import transformers

from . import data as mfm_data
from .batched_augmentation import batched_views
from .configuration_mfm import PRESETS, check_model_source, resolve_config
from .families import family_of
from .hub import upload_folder
from .image_processing import image_processor_for_config
from .model_card import write_model_card
from .pretext import PRETEXT_TASKS, get_pretext_task
from .visualization import logged_losses, plot_loss_curve, reconstruction_grid

OBJECTIVES = {
    "reconstruction": "the model restores the corrupted image (frequency loss)",
    "folk": "FOLK: two augmented views; the student reconstructs the removed frequencies and matches an EMA teacher's "
            "output on the other, unfiltered view",
}
#: What the benchmarks call a method: a pretext task, or "folk" (the FOLK objective with its default task).
METHODS = [*PRETEXT_TASKS, "folk"]
#: FOLK's own pretext task (its Com/RCom filters), the one `--objective folk` uses unless told otherwise.
FOLK_PRETEXT_TASK = "informed"


def method_flags(method: str) -> list[str]:
    """The `run_pretraining.py` flags of a benchmark method."""
    return ["--objective", "folk"] if method == "folk" else ["--pretext_task", method]


def pretraining_model(source: str, objective: str = "reconstruction", **config_overrides) -> transformers.PreTrainedModel:
    """The model a run trains: a preset, ``config.json`` or checkpoint folder (its weights are
    loaded) as the objective's pre-training class, FOLK's or the family's ``*ForPreTraining``,
    with ``config_overrides`` applied through the config's own validation."""
    if objective not in OBJECTIVES:
        raise ValueError(f"The objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}.")
    check_model_source(source)
    path = Path(source)
    if source not in PRESETS and not (path.is_dir() or (path.suffix == ".json" and path.is_file())):
        raise ValueError(f"--model {source!r} is neither a preset ({', '.join(sorted(PRESETS))}), a config.json nor a checkpoint folder.")
    config = resolve_config(source, **config_overrides)
    model_class = family_of(config).folk if objective == "folk" else transformers.AutoModelForPreTraining
    if path.is_dir():
        return model_class.from_pretrained(path, config=config)
    return model_class(config) if objective == "folk" else model_class.from_config(config)


def pretrained_backbone(model: transformers.PreTrainedModel, objective: str) -> transformers.PreTrainedModel:
    """The backbone a run leaves of its pre-training model: FOLK's ``folk_export`` encoder, or the
    family's base model."""
    return model.exported_backbone() if objective == "folk" else model.base_model


def figure_batch(train_images, dataset, column: str, config, count: int, two_views: bool) -> torch.Tensor:
    """``count`` images for the figure: the first readable ones resized without augmentation
    (MFM), or the first training samples' two augmented views (FOLK)."""
    if two_views:
        # iter() serves map-style (by index) and streaming datasets alike
        batch = mfm_data.collate_pretraining(list(itertools.islice(iter(train_images), count)))
        if "crops" in batch:  # --batched_augmentation: views are made from the decoded images
            return batched_views(batch["images"], batch["crops"], config.image_size, batch.get("colours"))
        return batch["pixel_values"]
    processor = image_processor_for_config(config, do_normalize=False)
    images = []
    for example in dataset:
        try:
            images.append(mfm_data.decode_image(example[column]))
        except mfm_data.BadImageError:
            continue
        if len(images) == count:
            break
    return processor(images, return_tensors="pt")["pixel_values"]


def describe_hardware(args: transformers.TrainingArguments) -> str:
    device = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return f"{args.world_size} x {device}"


def describe_recipe(args: transformers.TrainingArguments, steps: int) -> str:
    """The optimisation recipe of a run in one line, for its model card."""
    total_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    return (
        f"AdamW (betas {args.adam_beta1}/{args.adam_beta2}, weight decay {args.weight_decay}), peak lr {args.learning_rate:.3g} "
        f"({schedule}, warmup {args.warmup_steps}), batch {total_batch}, {steps} steps, "
        f"grad clip {args.max_grad_norm}, {precision}, seed {args.seed}"
    )


def export_pretrained(trainer: transformers.Trainer, objective: str, figure_pixels: torch.Tensor, data: mfm_data.DatasetReference,
                      num_images: Optional[int], wall_time: float, source: str) -> Path:
    """Save the backbone (FOLK: the encoder ``folk_export`` names), its image processor,
    ``loss_curve.png``, ``reconstructions.png`` (of ``figure_pixels``) and the model card into
    the run's output folder. A run that continued from a checkpoint (``source``, the script's
    ``--model``) keeps that checkpoint's licence."""
    model, args = trainer.model, trainer.args
    config = model.config
    task = get_pretext_task(config.pretext_task)
    is_folk = objective == "folk"
    title = f"FOLK ({task.title})" if is_folk else task.title
    output = Path(args.output_dir)
    backbone = pretrained_backbone(model, objective)
    backbone.save_pretrained(output)
    image_processor_for_config(backbone.config).save_pretrained(output)  # the run's folder: its processor, whatever was there
    plot_loss_curve(trainer.state.log_history, output / "loss_curve.png", title=f"{title} pre-training",
                    num_prototypes=config.folk_head_output_dim if is_folk else None)
    reconstruction_grid(model, figure_pixels, output / "reconstructions.png",
                        generator=torch.Generator(model.device).manual_seed(args.seed), title=f"{title} pre-training")
    losses = [loss for _, loss in logged_losses(trainer.state.log_history)]
    write_model_card(output, "pretrained.md", backbone, source=source, fields={
        "model_name": args.hub_model_id or output.name,
        "datasets": f"datasets:\n- {data.hub_id}\n" if data.hub_id else "",
        "dataset_name": data.name,
        "num_images": "streamed" if num_images is None else str(num_images),
        "image_size": str(config.image_size),
        "method_name": title,
        "method_description": (f"{OBJECTIVES['folk']}, with {task.description}; this is the {config.folk_export} encoder" if is_folk
                               else task.description),
        "recipe": describe_recipe(args, trainer.state.global_step),
        "hardware": describe_hardware(args),
        "wall_time": f"{wall_time / 60:.1f} min",
        "final_loss": f"{losses[-1]:.4f}",
        "first_loss": f"{losses[0]:.4f}",
    })
    return output


def push_pretrained(output: Path, repo_id: str) -> None:
    """Upload an exported run (without its Trainer checkpoints and logs) to the Hub."""
    upload_folder(output, repo_id, "Upload MFM pre-trained backbone", ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**"])


__all__ = ["FOLK_PRETEXT_TASK", "METHODS", "OBJECTIVES", "describe_hardware", "describe_recipe", "export_pretrained", "figure_batch",
           "method_flags", "pretrained_backbone", "pretraining_model", "push_pretrained"]
