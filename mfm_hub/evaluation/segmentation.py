"""Semantic segmentation data: SegNet-layout folders (CamVid), label maps read and checked
against their images, and the batch collator (random crop + flip for training, padding to a
multiple of `EVAL_MULTIPLE` for evaluation)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data import IMAGE_EXTENSIONS, decode_image, upright
from ..modeling_common import normalize

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



class SegmentationBatch:
    """Decode, check, (train) random-crop + flip or (eval) pad to a multiple of 32; normalise."""

    def __init__(self, config, num_labels: int, ignore_index: Optional[int], crop_size: Optional[int]):
        self.config = config
        self.num_labels, self.ignore_index, self.crop_size = num_labels, ignore_index, crop_size
        self.fill = ignore_index if ignore_index is not None else 255

    def __call__(self, examples):
        pixels, labels = [], []
        for example in examples:
            image, mask = read_pair(example, self.num_labels, self.ignore_index)
            image = normalize(torch.from_numpy(image).permute(2, 0, 1).float() / 255, self.config)
            mask = torch.from_numpy(mask)
            if self.crop_size:
                image, mask = self._random_crop_flip(image, mask)
            pixels.append(image)
            labels.append(mask)
        if not self.crop_size:
            height = max(p.shape[1] for p in pixels)
            width = max(p.shape[2] for p in pixels)
            height, width = -(-height // EVAL_MULTIPLE) * EVAL_MULTIPLE, -(-width // EVAL_MULTIPLE) * EVAL_MULTIPLE
            pixels = [F.pad(p, (0, width - p.shape[2], 0, height - p.shape[1])) for p in pixels]
            labels = [F.pad(m, (0, width - m.shape[1], 0, height - m.shape[0]), value=self.fill) for m in labels]
        return {"pixel_values": torch.stack(pixels), "labels": torch.stack(labels)}

    def _random_crop_flip(self, image, mask):
        size = self.crop_size
        pad_h, pad_w = max(0, size - image.shape[1]), max(0, size - image.shape[2])
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.fill)
        top = int(torch.randint(0, image.shape[1] - size + 1, ()))
        left = int(torch.randint(0, image.shape[2] - size + 1, ()))
        image, mask = image[:, top:top + size, left:left + size], mask[top:top + size, left:left + size]
        if torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask

