"""Semantic segmentation data: SegNet-layout folders (CamVid), label maps read and checked
against their images, the training crops (random crop + flip, seeded per image and epoch) and
the evaluation batches (padded to a multiple of `EVAL_MULTIPLE`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Trainer

from ..data import IMAGE_EXTENSIONS, EpochSeeded, decode_image, upright
from ..modeling_common import normalize
from ..trainer import SignalSafeTrainingMixin

#: Class names of known label sets, in label order: CamVid's 11 classes as the SegNet layout numbers them (11 is unlabelled).
LABEL_SETS = {
    "camvid": ("sky", "building", "pole", "road", "pavement", "tree", "sign-symbol", "fence", "car", "pedestrian", "bicyclist"),
}


def class_names(names: Optional[str], num_labels: int) -> list[str]:
    """``--class_names``: a known set (`LABEL_SETS`), or names separated by commas; one per
    label. None gives transformers' ``LABEL_<i>``."""
    if names is None:
        return [f"LABEL_{index}" for index in range(num_labels)]
    listed = list(LABEL_SETS.get(names.lower(), [name.strip() for name in names.split(",")]))
    if len(listed) != num_labels or not all(listed) or len(set(listed)) != len(listed):
        raise ValueError(f"--class_names must give {num_labels} distinct names (one per label, or one of {', '.join(LABEL_SETS)}), "
                         f"got {len(listed)}: {listed}.")
    return listed

EVAL_MULTIPLE = 32



def load_segnet_folder(data_dir: str, split: str) -> datasets.Dataset:
    """Pairs ``<split>/<stem>.*`` with ``<split>annot/<stem>.*``."""
    images_dir, masks_dir = Path(data_dir) / split, Path(data_dir) / f"{split}annot"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise FileNotFoundError(f"Expected {images_dir} and {masks_dir} (SegNet layout).")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    unmatched = [p.name for p in images if p.stem not in masks]
    if unmatched:
        raise ValueError(f"No label map in {masks_dir} for {len(unmatched)} images, e.g. {unmatched[:3]}.")
    if not images:
        raise ValueError(f"No images in {images_dir}.")
    features = datasets.Features({"image": datasets.Image(decode=False), "mask": datasets.Image(decode=False)})
    return datasets.Dataset.from_dict({"image": [str(p) for p in images], "mask": [str(masks[p.stem]) for p in images]}, features=features)



def read_label_map(value) -> tuple[np.ndarray, str]:
    """A label map entry (``{"path", "bytes"}`` or a path) as ``(H, W)`` int64 class indices
    (palette images give their indices), and its name for messages."""
    if isinstance(value, dict):
        name = value.get("path") or "<in-memory label map>"
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
    else:
        name = source = str(value)
    with Image.open(source) as label_image:
        keep_values = label_image.mode in ("L", "P", "I", "I;16")
        label_image = upright(label_image)  # a map with an EXIF orientation of its own, as `datasets` decodes it
        return np.asarray(label_image if keep_values else label_image.convert("L")).astype(np.int64), name



def read_pair(example: dict, num_labels: int, ignore_index: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """RGB image ``(H, W, 3)`` uint8 and label map ``(H, W)`` int64, checked."""
    image = np.array(decode_image(example["image"]))
    mask, name = read_label_map(example["mask"])
    if mask.shape != image.shape[:2]:
        raise ValueError(f"Label map {name} is {mask.shape[1]}x{mask.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}.")
    valid = (mask >= 0) & (mask < num_labels)
    if ignore_index is not None:
        valid |= mask == ignore_index
    if not valid.all():
        bad = sorted(set(np.unique(mask[~valid]).tolist()))
        hint = "" if ignore_index is not None else "; set --ignore_index if one of them marks unlabelled pixels"
        raise ValueError(f"Label map {name} has labels {bad[:10]} outside 0..{num_labels - 1}{hint}.")
    return image, mask



def normalised_pair(example: dict, config, num_labels: int, ignore_index: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`read_pair`, as the model takes it: pixels ``(3, H, W)`` normalised for ``config``, labels ``(H, W)``."""
    image, mask = read_pair(example, num_labels, ignore_index)
    return normalize(torch.from_numpy(image).permute(2, 0, 1).float() / 255, config), torch.from_numpy(mask)


def unlabelled(ignore_index: Optional[int]) -> int:
    """The label of padding: the ignored one (255, transformers' default loss ignore index, without one)."""
    return ignore_index if ignore_index is not None else 255


class SegmentationCrops(EpochSeeded, torch.utils.data.Dataset):
    """Training view of a segmentation dataset: ``{"pixel_values": (3, S, S), "labels": (S, S)}``
    per example, a random ``S = crop_size`` crop (an image smaller than it is padded, with
    unlabelled pixels) flipped half of the time, drawn with the seed of (seed, epoch, index)
    so a resumed run crops what the uninterrupted one would have. `EpochCallback` sets the epoch."""

    def __init__(self, dataset, config, num_labels: int, ignore_index: Optional[int], crop_size: int, seed: int):
        self.dataset, self.config, self.num_labels, self.ignore_index = dataset, config, num_labels, ignore_index
        self.crop_size, self.seed = crop_size, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        image, mask = normalised_pair(self.dataset[index], self.config, self.num_labels, self.ignore_index)
        size = self.crop_size
        pad_h, pad_w = max(0, size - image.shape[1]), max(0, size - image.shape[2])
        image = F.pad(image, (0, pad_w, 0, pad_h))
        mask = F.pad(mask, (0, pad_w, 0, pad_h), value=unlabelled(self.ignore_index))
        generator = torch.Generator().manual_seed(self.seed_of(index))
        top = int(torch.randint(0, image.shape[1] - size + 1, (), generator=generator))
        left = int(torch.randint(0, image.shape[2] - size + 1, (), generator=generator))
        image, mask = image[:, top:top + size, left:left + size], mask[top:top + size, left:left + size]
        if torch.rand((), generator=generator) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return {"pixel_values": image, "labels": mask}


class SegmentationTrainer(SignalSafeTrainingMixin, Trainer):
    """The Trainer with data-loader workers that leave SIGTERM to this process."""


class SegmentationBatch:
    """Evaluation batches: decode, check and normalise each example, pad them (unlabelled
    pixels) to a common size that is a multiple of `EVAL_MULTIPLE`: ``pixel_values`` (B, 3, H, W),
    ``labels`` (B, H, W)."""

    def __init__(self, config, num_labels: int, ignore_index: Optional[int]):
        self.config, self.num_labels, self.ignore_index = config, num_labels, ignore_index

    def __call__(self, examples):
        pairs = [normalised_pair(example, self.config, self.num_labels, self.ignore_index) for example in examples]
        height = -(-max(image.shape[1] for image, _ in pairs) // EVAL_MULTIPLE) * EVAL_MULTIPLE
        width = -(-max(image.shape[2] for image, _ in pairs) // EVAL_MULTIPLE) * EVAL_MULTIPLE
        fill = unlabelled(self.ignore_index)
        return {
            "pixel_values": torch.stack([F.pad(image, (0, width - image.shape[2], 0, height - image.shape[1])) for image, _ in pairs]),
            "labels": torch.stack([F.pad(mask, (0, width - mask.shape[1], 0, height - mask.shape[0]), value=fill) for _, mask in pairs]),
        }
