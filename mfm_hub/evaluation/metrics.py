"""`evaluate` metrics as local modules: `evaluate.load("accuracy")` / `("mean_iou")` fetch
their scripts from the Hub at run time, which offline machines cannot do, so the same
computations are provided here with the same output keys."""

from __future__ import annotations

from typing import Optional

import datasets
import evaluate
import numpy as np


class TopKAccuracy(evaluate.Metric):
    """Top-1 and top-k accuracy from class scores. ``predictions``: ``(N, num_classes)``
    scores or logits; ``references``: ``(N,)`` class indices. Returns ``{"top1", "top5"}``
    (``top{k}`` for ``k`` given to `compute`; ``k`` is capped at the number of classes: two
    classes give ``{"top1", "top2"}``)."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Top-1 and top-k classification accuracy from scores.",
            citation="",
            inputs_description="predictions: (N, C) scores; references: (N,) int labels",
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
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
