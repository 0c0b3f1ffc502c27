"""Fine-tuning and linear probing with the Trainer: the Trainer (soft targets for Mixup / CutMix,
timm's layer-decay parameter groups, evaluation batches without augmentation), the seeded
training images and batches (a resumed run draws the augmentations the uninterrupted one
would have), the evaluation batches and the top-1 the Trainer logs during training."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from transformers import Trainer

from ..data import EpochSeeded, decode_image, seeded_generators
from ..trainer import SignalSafeTrainingMixin


class ClassificationTrainer(SignalSafeTrainingMixin, Trainer):
    """Soft-target loss for Mixup/CutMix batches, label smoothing otherwise, timm's
    layer-decay parameter groups (lr scaled per group before the scheduler sees it),
    evaluation / prediction batches built by ``eval_collator`` (no augmentation, no Mixup),
    and data-loader workers that leave SIGTERM to this process."""

    def __init__(self, *args, eval_collator, label_smoothing: float = 0.0, layer_decay: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator
        self.label_smoothing = label_smoothing
        self.layer_decay = layer_decay

    def _with_eval_collator(self, make_loader, dataset):
        training_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return make_loader(dataset)
        finally:
            self.data_collator = training_collator

    def get_eval_dataloader(self, eval_dataset=None):
        return self._with_eval_collator(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset):
        return self._with_eval_collator(super().get_test_dataloader, test_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        if labels.ndim == 2:
            loss = SoftTargetCrossEntropy()(outputs.logits, labels)
        else:
            loss = F.cross_entropy(outputs.logits, labels, label_smoothing=self.label_smoothing if model.training else 0.0)
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        model = model if model is not None else self.model
        if self.optimizer is None:
            groups = param_groups_layer_decay(
                model, weight_decay=self.args.weight_decay, no_weight_decay_list=["*pos_embed", "*cls_token"],
                layer_decay=self.layer_decay if self.layer_decay else 1.0,
            )
            for group in groups:
                group["lr"] = self.args.learning_rate * group.pop("lr_scale")
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, betas=(self.args.adam_beta1, self.args.adam_beta2),
                                               eps=self.args.adam_epsilon)
        return self.optimizer



class AugmentedLabelledImages(EpochSeeded, torch.utils.data.Dataset):
    """Training view of a labelled dataset: ``{"pixel_values": (C, H, W), "labels": int,
    "mix_seed": int}`` per example, its augmentation seeded by (seed, epoch, index) as the
    pre-training images are, never by the global generators, and ``mix_seed`` for the batch's
    Mixup / CutMix. transformers restores the generators of a resumed run only after it has
    drawn the first batch, so a pipeline that drew from them would continue differently.
    `EpochCallback` sets the epoch. Every image was validated before training; one that can no
    longer be read stops the run, naming it."""

    def __init__(self, dataset, image_column: str, label_column: str, transform, seed: int):
        self.dataset, self.image_column, self.label_column, self.transform, self.seed = dataset, image_column, label_column, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        example = self.dataset[index]
        image = decode_image(example[self.image_column])
        with seeded_generators(self.seed_of(index)):
            pixels = self.transform(image)
        return {"pixel_values": pixels, "labels": int(example[self.label_column]), "mix_seed": self.seed_of(index, view=1)}


class MixedBatch:
    """Stack `AugmentedLabelledImages` examples into ``pixel_values`` (B, C, H, W) and ``labels``
    (B,), or (B, num_classes) soft targets after timm's Mixup / CutMix (when given; seeded by the
    batch's first example; an odd-sized batch, which Mixup cannot pair, stays unmixed)."""

    def __init__(self, mixup: Optional[Mixup] = None):
        self.mixup = mixup

    def __call__(self, examples):
        pixels = torch.stack([e["pixel_values"] for e in examples])
        labels = torch.tensor([e["labels"] for e in examples])
        if self.mixup is not None and len(examples) % 2 == 0:
            with seeded_generators(examples[0]["mix_seed"]):
                pixels, labels = self.mixup(pixels, labels)
        return {"pixel_values": pixels, "labels": labels}


class ImageBatch:
    """Decode (RGB) + transform a list of examples into ``pixel_values`` and ``labels``: the
    evaluation batches (a deterministic transform)."""

    def __init__(self, image_column: str, label_column: str, transform):
        self.image_column, self.label_column, self.transform = image_column, label_column, transform

    def __call__(self, examples):
        pixels = torch.stack([self.transform(decode_image(e[self.image_column])) for e in examples])
        labels = torch.tensor([int(e[self.label_column]) for e in examples])
        return {"pixel_values": pixels, "labels": labels}



def top1_during_training(prediction) -> dict:
    """Validation top-1 for the Trainer's periodic evaluation (``eval_top1`` in the logs)."""
    return {"top1": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

