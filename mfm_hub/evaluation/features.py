"""Frozen-feature protocols: encoders, the evaluation preprocessing, features, weighted kNN,
logistic regression and the linear probe."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import AutoModel

from ..configuration_mfm import PRESETS, check_model_source, resolve_config
from ..image_processing import EVAL_CROP_PCT, image_processor_for_config


def frozen_features(model, pixel_values):
    """One feature vector per image from a frozen encoder, ``(B, D)``: the family's own
    ``frozen_features`` (ViT: mean of the normed patch tokens; ResNet: global average).
    Non-finite features are refused: every protocol on them would report a number (chance
    accuracy, say) that means nothing."""
    features = model.frozen_features(pixel_values)
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features).all(dim=1)).sum())
        raise ValueError(f"The encoder gave non-finite features for {bad} of {len(features)} images; its weights or the "
                         "inputs are damaged, and no metric on them would mean anything.")
    return features


def weighted_knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor, num_classes: int,
                         k: int = 20, temperature: float = 0.07, chunk_size: int = 1024) -> torch.Tensor:
    """Weighted k-nearest-neighbour classification on cosine similarity (the instance-
    discrimination / DINO protocol): each of the ``k`` nearest training features votes for
    its class with weight ``exp(similarity / temperature)``. Returns ``(N,)`` class indices."""
    if not 1 <= k <= len(train_features):
        raise ValueError(f"k must be between 1 and the {len(train_features)} training features, got {k}.")
    train = F.normalize(train_features.float(), dim=1)
    predictions = []
    for queries in F.normalize(query_features.float(), dim=1).split(chunk_size):
        similarity, neighbours = (queries @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(queries), num_classes).scatter_add_(1, train_labels[neighbours], (similarity / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 100,
                        l2: float = 1e-3) -> torch.nn.Linear:
    """Multinomial logistic regression fitted with full-batch L-BFGS and an L2 penalty
    ``l2 * ||W||^2``."""
    classifier = torch.nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(classifier.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(features), labels) + l2 * classifier.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return classifier


def linear_probe_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor, num_classes: int,
                         steps: int = 500, l2: float = 1e-4) -> torch.Tensor:
    """Linear probe on frozen features: standardise with the training statistics (like
    MAE's affine-free BatchNorm before the linear head), fit `logistic_regression`, return
    ``(N,)`` class indices of the queries."""
    mean, std = train_features.mean(dim=0), train_features.std(dim=0).clamp_min(1e-6)
    classifier = logistic_regression((train_features - mean) / std, train_labels, num_classes, steps=steps, l2=l2)
    with torch.no_grad():
        return classifier((query_features - mean) / std).argmax(dim=1)


def load_encoder(name: str):
    """An MFM encoder from a checkpoint / Hub id, or a randomly initialised preset (the
    from-scratch baseline)."""
    if name in PRESETS:
        return AutoModel.from_config(resolve_config(name))
    check_model_source(name)
    return AutoModel.from_pretrained(name)


def timm_image_options(config) -> dict:
    """The model's normalisation and interpolation, as timm's `create_transform` takes them."""
    return dict(mean=tuple(config.image_mean), std=tuple(config.image_scale), interpolation="bicubic")


class EvalPreprocessing:
    """Evaluation preprocessing through the checkpoint's own image processor
    (`image_processor_for_config`), so a pipeline and these scripts see identical inputs.
    Call it on one PIL image -> ``(C, H, W)``, or use `batch` on a list -> ``(B, C, H, W)``."""

    def __init__(self, config, crop_pct: float = EVAL_CROP_PCT):
        self.processor = image_processor_for_config(config, crop_pct=crop_pct)

    def batch(self, images: Sequence) -> torch.Tensor:
        return self.processor(list(images), return_tensors="pt")["pixel_values"]

    def __call__(self, image) -> torch.Tensor:
        return self.batch([image])[0]


def eval_transform(config, crop_pct: float = EVAL_CROP_PCT) -> EvalPreprocessing:
    """Evaluation preprocessing: resize the shorter side to ``image_size / crop_pct``,
    centre-crop, normalise (the saved image processor, see `EvalPreprocessing`)."""
    return EvalPreprocessing(config, crop_pct)
