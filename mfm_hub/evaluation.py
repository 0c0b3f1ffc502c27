"""Shared pieces of the downstream evaluation scripts: labelled data with input checks,
k-shot subsets, `evaluate` metrics, results files, model-card `model-index` entries and
figures.

The metrics are `evaluate.Metric` modules defined here: `evaluate.load("accuracy")` and
`evaluate.load("mean_iou")` fetch their scripts from the Hub at run time, which offline
machines cannot do, so the same computations are provided as local modules with the same
output keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import datasets
import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import EvalResult, ModelCard, ModelCardData  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoModel  # noqa: E402

from .configuration_mfm import PRESETS, resolve_config  # noqa: E402
from .data import DatasetReference, decode_image, load_image_dataset  # noqa: E402
from .image_processing import EVAL_CROP_PCT, image_processor_for_config  # noqa: E402

# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


class TopKAccuracy(evaluate.Metric):
    """Top-1 and top-k accuracy from class scores. ``predictions``: ``(N, num_classes)``
    scores or logits; ``references``: ``(N,)`` class indices. Returns ``{"top1", "top5"}``
    (``top{k}`` for ``k`` given to `compute`)."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Top-1 and top-k classification accuracy from scores.",
            citation="",
            inputs_description="predictions: (N, C) scores; references: (N,) int labels",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, k: int = 5):
        scores = np.asarray(predictions, dtype=np.float64)
        labels = np.asarray(references)
        if scores.ndim != 2 or len(scores) == 0 or not np.isfinite(scores).all():
            raise ValueError(f"Top-k accuracy needs a non-empty (N, num_classes) array of finite scores, got shape {scores.shape}.")
        k = min(k, scores.shape[1])
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return {"top1": float((top[:, 0] == labels).mean()), f"top{k}": float((top == labels[:, None]).any(axis=1).mean())}


class MeanIoU(evaluate.Metric):
    """Semantic-segmentation metrics with the outputs of `evaluate`'s ``mean_iou``:
    ``mean_iou``, ``mean_accuracy``, ``overall_accuracy``, ``per_category_iou``,
    ``per_category_accuracy``. Pixels labelled ``ignore_index`` are left out; a class absent
    from both prediction and reference gets NaN and is skipped in the means."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Mean intersection-over-union for semantic segmentation.",
            citation="",
            inputs_description="predictions, references: (H, W) int label maps",
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                "references": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
            }),
        )

    def _compute(self, predictions, references, num_labels: int, ignore_index: Optional[int] = None):
        intersection = np.zeros(num_labels, dtype=np.int64)
        union = np.zeros(num_labels, dtype=np.int64)
        label_area = np.zeros(num_labels, dtype=np.int64)
        for prediction, reference in zip(predictions, references):
            prediction, reference = np.asarray(prediction), np.asarray(reference)
            valid = reference != ignore_index if ignore_index is not None else np.ones_like(reference, dtype=bool)
            prediction, reference = prediction[valid], reference[valid]
            hit = prediction[prediction == reference]
            area_hit = np.bincount(hit, minlength=num_labels)[:num_labels]
            area_pred = np.bincount(prediction, minlength=num_labels)[:num_labels]
            area_ref = np.bincount(reference, minlength=num_labels)[:num_labels]
            intersection += area_hit
            union += area_pred + area_ref - area_hit
            label_area += area_ref
        if label_area.sum() == 0:
            raise ValueError("Mean IoU needs at least one labelled pixel; every reference pixel is ignored or there is none.")
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = intersection / union
            accuracy = intersection / label_area
        return {
            "mean_iou": float(np.nanmean(iou)),
            "mean_accuracy": float(np.nanmean(accuracy)),
            "overall_accuracy": float(intersection.sum() / max(label_area.sum(), 1)),
            "per_category_iou": iou.tolist(),
            "per_category_accuracy": accuracy.tolist(),
        }


# --------------------------------------------------------------------------------------
# Frozen features
# --------------------------------------------------------------------------------------


def frozen_features(model, pixel_values):
    """One feature vector per image from a frozen encoder, ``(B, D)``: the family's own
    ``frozen_features`` (ViT: mean of the normed patch tokens; ResNet: global average)."""
    return model.frozen_features(pixel_values)


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
    return AutoModel.from_pretrained(name)


def timm_image_options(config) -> dict:
    """The model's normalisation and interpolation, as timm's `create_transform` takes them."""
    return dict(mean=tuple(config.image_mean), std=tuple(config.image_std), interpolation="bicubic")


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


# --------------------------------------------------------------------------------------
# Labelled data
# --------------------------------------------------------------------------------------


def load_labelled_split(
    split: str,
    data_dir: Optional[str] = None,
    dataset_name: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    image_column: Optional[str] = None,
    label_column: str = "label",
) -> tuple[datasets.Dataset, str, list[str]]:
    """A labelled split (image folder ``data_dir`` with class sub-folders, a `datasets`
    dataset, or the embedded Fashion-MNIST), its image column and its class names.

    Raises a `ValueError` naming the problem when the label column is missing or is not a
    class label / integer column."""
    dataset, image_column = load_image_dataset(data_dir, dataset_name, dataset_config_name, split=split, image_column=image_column)
    if label_column not in dataset.features:
        raise ValueError(f"No label column {label_column!r}; columns are {list(dataset.features)}. Pass --label_column.")
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    elif isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        names = [str(i) for i in range(int(max(dataset[label_column])) + 1)]
    else:
        raise ValueError(f"Label column {label_column!r} must hold class labels or integers, not {feature}.")
    return dataset, image_column, names


def validate_examples(dataset, check: Callable[[dict], object], what: str, max_listed: int = 5) -> None:
    """Run ``check`` on every example of ``dataset`` before any training, so that bad data
    stops a run before compute is spent and before a trained model could be lost. Raises
    one `ValueError` that counts the bad examples and names the first ``max_listed``."""
    problems, index = [], 0
    with tqdm(total=len(dataset), desc=f"checking {what}", leave=False) as progress:
        for columns in dataset.iter(batch_size=256):  # column batches: far faster than row by row
            for row in (dict(zip(columns, values)) for values in zip(*columns.values())):
                try:
                    check(row)
                except (ValueError, OSError) as error:
                    problems.append(f"#{index}: {error}")
                index += 1
            progress.update(len(next(iter(columns.values()))))
    if problems:
        listed = "; ".join(problems[:max_listed]) + (f"; and {len(problems) - max_listed} more" if len(problems) > max_listed else "")
        raise ValueError(f"{len(problems)} of {len(dataset)} {what} cannot be used, so nothing was trained: {listed}")


def labelled_image_check(image_column: str, label_column: str, num_classes: int) -> Callable[[dict], None]:
    """A `validate_examples` check: the image decodes to RGB and the label is a class index."""

    def check(example: dict) -> None:
        decode_image(example[image_column])
        label = example[label_column]
        if not isinstance(label, int) or not 0 <= label < num_classes:
            raise ValueError(f"label {label!r} is not a class index in 0..{num_classes - 1}")

    return check


def check_head_matches(num_labels: int, class_names: Sequence[str], what: str = "the classifier head") -> None:
    if num_labels != len(class_names):
        raise ValueError(f"The data has {len(class_names)} classes but {what} has {num_labels} outputs.")


def k_shot_indices(labels: Sequence[int], shots: int, seed: int) -> list[int]:
    """``shots`` random examples of every class (seeded). Errors if a class has fewer."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if shots > counts.min():
        smallest = classes[counts.argmin()]
        raise ValueError(f"Asked for {shots} examples per class, but class {smallest} has only {counts.min()}.")
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=shots, replace=False) for c in classes]
    return sorted(int(i) for i in np.concatenate(chosen))


def fraction_indices(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """A class-balanced ``fraction`` of the examples (at least one per class)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"The labelled fraction must be in (0, 1], got {fraction!r}.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen.append(rng.choice(members, size=max(1, round(fraction * len(members))), replace=False))
    return sorted(int(i) for i in np.concatenate(chosen))


# --------------------------------------------------------------------------------------
# Results: JSON, model card, figures
# --------------------------------------------------------------------------------------


def write_results(output_dir: str | Path, results: dict) -> Path:
    path = Path(output_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    return path


def _protocol_key(result: EvalResult) -> tuple:
    return (result.task_type, result.dataset_type, result.dataset_split, result.metric_type, result.metric_name)


def add_to_model_index(card_dir: str | Path, model_name: str, task_type: str, task_name: str, dataset: DatasetReference,
                       metrics: dict[str, float], split: str = "test") -> Path:
    """Add ``metrics`` to the ``model-index`` of ``card_dir/README.md`` (created if absent).

    ``task_type`` is a Hub task id (``image-classification``, ``image-segmentation``),
    ``dataset`` a `DatasetReference` (Hub id or ``imagefolder`` + a plain description).
    ``task_name`` is the protocol with its settings (e.g. ``"Few-shot, 5-way 5-shot
    episodes"``) and names each metric (``"<task_name>: <metric>"``), because the Hub's
    model-index groups results by task type, dataset and split only, not by task name.
    Results accumulate: an earlier result is replaced only by one of the same protocol,
    dataset, split and metric."""
    path = Path(card_dir) / "README.md"
    card = ModelCard.load(path) if path.exists() else ModelCard(f"---\nlibrary_name: transformers\n---\n\n# {model_name}\n")
    if card.data is None:
        card.data = ModelCardData()
    new = [
        EvalResult(task_type=task_type, task_name=task_name, dataset_type=dataset.type, dataset_name=dataset.name,
                   dataset_split=split, metric_type=metric, metric_name=f"{task_name}: {metric}", metric_value=round(float(value), 6))
        for metric, value in metrics.items()
    ]
    replaced = {_protocol_key(result) for result in new}
    keep = [result for result in (card.data.eval_results or []) if _protocol_key(result) not in replaced]
    card.data.eval_results = keep + new
    card.data.model_name = card.data.model_name or model_name
    card.save(path)
    return path


__all__ = [
    "MeanIoU",
    "frozen_features",
    "load_encoder",
    "TopKAccuracy",
    "add_to_model_index",
    "EvalPreprocessing",
    "eval_transform",
    "check_head_matches",
    "fraction_indices",
    "k_shot_indices",
    "labelled_image_check",
    "load_labelled_split",
    "timm_image_options",
    "validate_examples",
    "write_results",
]
