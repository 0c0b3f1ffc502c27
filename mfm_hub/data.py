"""Image data for pre-training and evaluation: `datasets` loading (image folders, Hub datasets,
streaming, the embedded Fashion-MNIST), robust decoding to RGB, and the MFM augmentation.

Images stay undecoded in the dataset (``Image(decode=False)``) and are decoded by
`decode_image`, so that a corrupt file becomes a counted, named, skippable error instead of
a crash deep inside the data loader.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import math
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import datasets
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2 as T

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: Where Debian's ``dataset-fashion-mnist`` package puts its IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class BadImageError(ValueError):
    """An image that cannot be decoded; ``source`` names the file when it is known."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"Cannot read image {source}: {reason}")
        self.source = source


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16-bit and float images are rescaled (not clipped) to
    8 bits; alpha is dropped; palette, grayscale and CMYK are converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        if image.mode == "I" and array.max() <= 255:
            top = 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says (`datasets` decodes images so)."""
    return ImageOps.exif_transpose(image) if image.getexif().get(ExifTags.Base.Orientation, 1) != 1 else image


def decode_image(value: Any) -> Image.Image:
    """Decode a dataset image entry (PIL image, ``{"path", "bytes"}`` dict or a path) to RGB,
    turned upright by its EXIF orientation as `datasets` and transformers' ``load_image`` do
    (a PIL image is taken as already decoded that way)."""
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, dict):
        source, data = value.get("path") or "<in-memory image>", value.get("bytes")
    else:
        source, data = str(value), None
    try:
        with Image.open(io.BytesIO(data) if data is not None else source) as image:
            image.load()  # full decode now: truncated files fail here, not later
            return to_rgb(upright(image))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadImageError(source, f"{type(error).__name__}: {error}") from error


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        magic = struct.unpack(">I", handle.read(4))[0]
        dims = [struct.unpack(">I", handle.read(4))[0] for _ in range(magic & 0xFF)]
        return np.frombuffer(handle.read(), dtype=np.uint8).reshape(dims)


def _fashion_mnist_examples(images_path: str, labels_path: str):
    images, labels = _read_idx(Path(images_path)), _read_idx(Path(labels_path))
    for image, label in zip(images, labels):
        yield {"image": Image.fromarray(image, mode="L"), "label": int(label)}


def fashion_mnist_files(split: str = "train", root: Path = FASHION_MNIST_DIR) -> tuple[Path, Path]:
    """The ``(images, labels)`` IDX files of a Fashion-MNIST split in Debian's package."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}.")
    images_path, labels_path = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed at {root}. Install it with `apt-get install -y dataset-fashion-mnist` "
            "or pass your own data with --train_dir / --dataset_name."
        )
    return images_path, labels_path


def fashion_mnist_samples(count: int, split: str = "test", root: Path = FASHION_MNIST_DIR) -> list[tuple[Image.Image, str]]:
    """The first item of each of ``count`` classes (in the split's order) as ``(image, class name)``."""
    images_path, labels_path = fashion_mnist_files(split, root)
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    first = {}
    for index, label in enumerate(labels.tolist()):
        first.setdefault(label, index)
        if len(first) == count:
            break
    return [(Image.fromarray(images[index], mode="L"), FASHION_MNIST_LABELS[label]) for label, index in first.items()]


def load_fashion_mnist(split: str = "train", root: Path = FASHION_MNIST_DIR) -> datasets.Dataset:
    """Fashion-MNIST (Xiao et al., 2017) from Debian's ``dataset-fashion-mnist`` package:
    60,000 train / 10,000 test real 28x28 grayscale product photos, 10 classes. Built once
    into the `datasets` cache."""
    images_path, labels_path = fashion_mnist_files(split, root)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_LABELS)})
    return datasets.Dataset.from_generator(
        _fashion_mnist_examples,
        gen_kwargs={"images_path": str(images_path), "labels_path": str(labels_path)},
        features=features,
    )


FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"


@dataclass(frozen=True)
class DatasetReference:
    """How model cards name the data: ``type`` is the Hub dataset id where there is one
    (``"imagefolder"``, the `datasets` builder, for a local folder), ``name`` a plain
    description, ``config`` what tells two sources of one ``type`` apart (for a local folder its
    name and a digest of its full path: results on two folders are two results); none is ever a
    local path."""

    type: str
    name: str
    hub_id: Optional[str]
    config: Optional[str] = None


#: Examples a stream is shuffled over before ``--max_*_samples`` takes its share.
STREAM_SHUFFLE_BUFFER = 10_000


def _class_label_column(dataset) -> Optional[str]:
    return next((name for name, feature in (dataset.features or {}).items() if isinstance(feature, datasets.ClassLabel)), None)


def sample_examples(dataset, limit: Optional[int], seed: int, label_column: Optional[str] = None):
    """``--max_*_samples``: at most ``limit`` examples drawn with ``seed`` (the same on every
    process and on resume), all of them for ``None``. With class labels (``label_column``, or the
    dataset's `ClassLabel` column) the sample is class-balanced: classes take turns, each giving
    its next seeded pick (image folders list their files class by class, so the first N would
    hold the first classes only); without labels it is uniform; a stream is shuffled over
    `STREAM_SHUFFLE_BUFFER` examples, then cut. Logs the classes the sample holds."""
    if limit is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.shuffle(seed=seed, buffer_size=STREAM_SHUFFLE_BUFFER).take(limit)
    if limit >= len(dataset):
        return dataset
    generator = np.random.default_rng(seed)
    label_column = label_column or _class_label_column(dataset)
    if label_column is None:
        return dataset.select(np.sort(generator.permutation(len(dataset))[:limit]))
    labels = np.asarray(dataset[label_column])
    picks = {label: generator.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)}
    turns = [members[turn] for turn in range(max(map(len, picks.values()))) for members in picks.values() if turn < len(members)]
    chosen = np.sort(np.asarray(turns[:limit]))
    counts = np.unique(labels[chosen], return_counts=True)[1]
    logger.info("Sampled %d of %d examples (seed %d): %d of %d classes, %d to %d per class.", limit, len(dataset), seed,
                len(counts), len(picks), counts.min(), counts.max())
    return dataset.select(chosen)


def dataset_reference(dataset_name: Optional[str], data_dir: Optional[str]) -> DatasetReference:
    """The model-card reference of the data a script read: a Hub dataset, a local image
    folder (by its folder name only) or the embedded Fashion-MNIST."""
    if dataset_name:
        return DatasetReference(dataset_name, dataset_name, dataset_name)
    if data_dir:
        folder = Path(data_dir).resolve()
        digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]
        return DatasetReference("imagefolder", f"local image folder '{folder.name}'", None, f"{folder.name}-{digest}")
    return DatasetReference(FASHION_MNIST_HUB_ID, "Fashion-MNIST (Debian package dataset-fashion-mnist)", FASHION_MNIST_HUB_ID)


def _find_images(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]


#: Sub-folder names that `datasets`' imagefolder reads as splits, and the split each becomes.
SPLIT_FOLDERS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test", "testing": "test", "eval": "test", "evaluation": "test"}


def folder_splits(folder: str | Path) -> list[str]:
    """The splits an image folder's sub-folders define (``train/``, ``val/``, ...), sorted; none
    for a folder of class sub-folders."""
    return sorted({SPLIT_FOLDERS[child.name.lower()] for child in Path(folder).iterdir()
                   if child.is_dir() and child.name.lower() in SPLIT_FOLDERS})


def _load_imagefolder(folder: Path, images: list[Path], split: str, streaming: bool):
    """`datasets`' imagefolder. Given only a folder it infers splits by globbing dozens of
    patterns over every file, on every load (slow for tens of thousands of images); where
    there is nothing to infer (no split sub-folders, no metadata file) the image list is
    passed directly, with the same labels from the class folders."""
    children = {child.name.lower() for child in folder.iterdir()}
    if children & SPLIT_FOLDERS.keys() or any(name.startswith("metadata.") for name in children):
        return datasets.load_dataset("imagefolder", data_dir=str(folder), split=split, streaming=streaming)
    return datasets.load_dataset("imagefolder", data_files={split: sorted(map(str, images))}, split=split, streaming=streaming)


def load_image_dataset(
    train_dir: Optional[str] = None,
    dataset_name: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    split: str = "train",
    streaming: bool = False,
    image_column: Optional[str] = None,
) -> tuple[datasets.Dataset | datasets.IterableDataset, str]:
    """Load images from an image folder (``train_dir``), a `datasets` dataset
    (``dataset_name``) or, with neither, the embedded Fashion-MNIST. Returns the dataset,
    with its image column left undecoded, and the image column's name."""
    if train_dir is not None:
        folder = Path(train_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"--train_dir {folder} is not a directory.")
        images = _find_images(folder)
        if not images:
            raise ValueError(f"No images found in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).")
        dataset = _load_imagefolder(folder, images, split, streaming)
    elif dataset_name is not None:
        dataset = datasets.load_dataset(dataset_name, dataset_config_name, split=split, streaming=streaming)
    else:
        dataset = load_fashion_mnist(split)
        if streaming:
            dataset = dataset.to_iterable_dataset()
    features = dataset.features or {}
    if image_column is None:
        candidates = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
        if not candidates:
            raise ValueError(f"No image column found; columns are {list(features)}. Pass --image_column.")
        image_column = candidates[0]
    elif image_column not in features:
        raise ValueError(f"--image_column {image_column!r} is not a column; columns are {list(features)}.")
    return dataset.cast_column(image_column, datasets.Image(decode=False)), image_column


# --------------------------------------------------------------------------------------
# Pre-training augmentation and loaders
# --------------------------------------------------------------------------------------


def pretraining_transform(image_size: int, min_crop_scale: float = 0.2, color_jitter: bool = False) -> T.Compose:
    """The MFM input pipeline: RandomResizedCrop (bicubic), horizontal flip, to [0, 1]
    floats. No normalisation: the model corrupts first and normalises after. FOLK's views add
    colour jitter (DINO's: brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1 with p 0.8,
    grayscale with p 0.2)."""
    if not 0.0 < min_crop_scale <= 1.0:
        raise ValueError(f"`min_crop_scale` must be in (0, 1], got {min_crop_scale!r}.")
    steps = [
        T.RandomResizedCrop(image_size, scale=(min_crop_scale, 1.0), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.RandomHorizontalFlip(),
    ]
    if color_jitter:
        steps += [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)]
    return T.Compose(steps + [T.PILToTensor(), T.ToDtype(torch.float32, scale=True)])


def sample_seed(seed: int, epoch: int, index: int, view: int = 0) -> int:
    """A per-sample (and per-view) seed: augmentations depend only on (seed, epoch, sample
    index, view), never on the global RNG, so resuming, DDP and worker processes all see
    the same crops."""
    return (((seed * 1_000_003 + epoch) * 998_244_353 + index) * 4 + view) % (2**63 - 1)


@contextlib.contextmanager
def seeded_generators(seed: int, python_and_numpy: bool = True):
    """Inside the block, torch's CPU generator, and Python's and numpy's unless told not to,
    start from ``seed``. torchvision's transforms draw from torch's; timm's (RandAugment, random
    erasing, Mixup / CutMix) from Python's and numpy's. After the block torch's continues where
    it was, and so do Python's and numpy's in the main process; in a data-loader worker, whose
    generators only the pipeline draws from, they are left as the block left them."""
    # Saving and restoring numpy's state costs about 115 us, more than a third of a 32-px
    # fine-tuning image's transform, hence not in workers and not for torchvision-only pipelines.
    # Seeding only the CPU generator: `torch.manual_seed` also queues a CUDA seeding call,
    # recording a stack trace each time, which was half the per-image cost of the pre-training pipeline.
    restore = python_and_numpy and torch.utils.data.get_worker_info() is None
    python_state, numpy_state = (random.getstate(), np.random.get_state()) if restore else (None, None)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        if python_and_numpy:
            random.seed(seed)
            np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            if restore:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


def augment(transform, image: Image.Image, seed: int) -> torch.Tensor:
    """``transform(image)`` drawn with ``seed``: a torchvision transform (torch's generator only)."""
    with seeded_generators(seed, python_and_numpy=False):
        return transform(image)


class EpochSeeded:
    """What every training view of a dataset shares: the epoch (`EpochCallback` sets it) and
    the seed of each sample's random draws, `sample_seed` of (seed, epoch, index, view)."""

    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def seed_of(self, index: int, view: int = 0) -> int:
        return sample_seed(self.seed, self.epoch, index, view)


class _AugmentedViews(EpochSeeded):
    """What both pre-training datasets share: decode an entry and draw ``num_views``
    augmented views of it, seeded by (seed, epoch, position, view).

    An undecodable entry stops the run naming the file when ``strict``; otherwise it is
    replaced by the next readable entry, drawn with the seeds of the position it fills (so
    batches keep their size, every DDP rank still runs every step, and a resumed run draws
    the same), and its message travels with the sample (``"skipped"``) to be counted in the
    main process even when data-loader workers do the decoding."""

    def __init__(self, dataset, image_column: str, transform, seed: int = 0, num_views: int = 1, strict: bool = False):
        self.dataset, self.image_column, self.transform, self.seed = dataset, image_column, transform, seed
        self.num_views, self.strict = num_views, strict

    def _views(self, example: dict, position: int) -> dict:
        seeds = [self.seed_of(position, view) for view in range(self.num_views)]
        sample = transform_entry(example[self.image_column], self.transform, seeds)
        if "bad_image" in sample and self.strict:
            raise ValueError(f"{sample['bad_image']} (stopping because --strict_data is set)")
        return sample


class PretrainingImages(_AugmentedViews, torch.utils.data.Dataset):
    """Map-style view of a `datasets` dataset that yields ``{"pixel_values": (C, H, W)}`` in
    [0, 1] (``(num_views, C, H, W)`` with several views), plus ``"skipped"`` (the messages
    of the unreadable entries it replaced) when there were any. `set_epoch` is called by
    `EpochCallback` so every epoch draws new crops."""

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        sample, skipped = self._views(self.dataset[index], index), []
        for offset in range(1, len(self)):
            if "bad_image" not in sample:
                break
            skipped.append(sample["bad_image"])
            sample = self._views(self.dataset[(index + offset) % len(self)], index)
        if "bad_image" in sample:
            raise ValueError(f"No image of the {len(self)} in the dataset can be read, e.g. {sample['bad_image']}.")
        return {**sample, "skipped": skipped} if skipped else sample


class StreamingPretrainingImages(_AugmentedViews, torch.utils.data.IterableDataset):
    """Iterable counterpart of `PretrainingImages` for ``--streaming`` datasets (seeded per
    position in the stream, an unreadable entry is replaced by the next readable one; exact
    resume is not guaranteed for streams)."""

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterable[dict]:
        position, skipped = 0, []
        for example in self.dataset:
            sample = self._views(example, position)
            if "bad_image" in sample:
                skipped.append(sample["bad_image"])
                continue
            yield {**sample, "skipped": skipped} if skipped else sample
            position, skipped = position + 1, []


def transform_entry(value, transform, seeds: list[int]) -> dict:
    """Decode and augment one entry, one view per seed (a single view is not stacked);
    ``{"bad_image": message}`` for an undecodable entry."""
    try:
        image = decode_image(value)
    except BadImageError as error:
        return {"bad_image": str(error)}
    views = [augment(transform, image, seed) for seed in seeds]
    return {"pixel_values": views[0] if len(views) == 1 else torch.stack(views)}


def collate_pretraining(examples: list[dict]) -> dict:
    """Stacks what the dataset yields (``pixel_values``, or the decoded ``images`` and their
    ``crops`` of `mfm_hub.batched_augmentation`); the messages of replaced unreadable images,
    if any, go along as ``"skipped_images"`` (a list of str) for the trainer to count and report."""
    batch = {key: torch.stack([example[key] for example in examples]) for key in examples[0] if key != "skipped"}
    skipped = [message for example in examples for message in example.get("skipped", ())]
    if skipped:
        batch["skipped_images"] = skipped
    return batch


def epoch_of(state_epoch: Optional[float]) -> int:
    """The epoch index from the Trainer's fractional ``state.epoch`` (robust to float error)."""
    return int(math.floor((state_epoch or 0.0) + 1e-6))


__all__ = [
    "BadImageError",
    "DatasetReference",
    "upright",
    "dataset_reference",
    "sample_examples",
    "FASHION_MNIST_LABELS",
    "fashion_mnist_files",
    "folder_splits",
    "fashion_mnist_samples",
    "PretrainingImages",
    "StreamingPretrainingImages",
    "collate_pretraining",
    "decode_image",
    "epoch_of",
    "load_fashion_mnist",
    "load_image_dataset",
    "pretraining_transform",
    "to_rgb",
]
