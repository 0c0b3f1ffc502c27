"""Labelled splits for the downstream scripts: loading, checking every example before training,
class-head checks and seeded k-shot / fractional subsets."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import datasets
import numpy as np
from tqdm.auto import tqdm

from ..data import decode_image, load_image_dataset


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
