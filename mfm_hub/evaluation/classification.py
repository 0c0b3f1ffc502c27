"""Fine-tuning and linear probing with the Trainer: the Trainer (soft targets for Mixup / CutMix,
timm's layer-decay parameter groups, evaluation batches without augmentation), the batch
collator and the top-1 the Trainer logs during training."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from transformers import Trainer

from ..data import decode_image


class ClassificationTrainer(Trainer):
    """Soft-target loss for Mixup/CutMix batches, label smoothing otherwise, timm's
    layer-decay parameter groups (lr scaled per group before the scheduler sees it), and
    evaluation / prediction batches built by ``eval_collator`` (no augmentation, no Mixup)."""

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



class ImageBatch:
    """Decode (RGB) + transform a list of examples into ``pixel_values`` and ``labels``, with
    timm's Mixup/CutMix on training batches when enabled."""

    def __init__(self, image_column: str, label_column: str, transform, mixup: Optional[Mixup] = None):
        self.image_column, self.label_column, self.transform, self.mixup = image_column, label_column, transform, mixup

    def __call__(self, examples):
        pixels = torch.stack([self.transform(decode_image(e[self.image_column])) for e in examples])
        labels = torch.tensor([int(e[self.label_column]) for e in examples])
        if self.mixup is not None and len(examples) % 2 == 0:
            pixels, labels = self.mixup(pixels, labels)
        return {"pixel_values": pixels, "labels": labels}



def top1_during_training(prediction) -> dict:
    """Validation top-1 for the Trainer's periodic evaluation (``eval_top1`` in the logs)."""
    return {"top1": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

