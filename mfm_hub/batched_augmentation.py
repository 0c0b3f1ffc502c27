"""The pre-training input path for images that fit in memory (``--batched_augmentation``):
decoded once into one uint8 tensor, the crops and flips (and FOLK's colour jitter and
grayscale) of a whole batch drawn at once from the same per-(seed, epoch, index, view) seeds
(torchvision's rules, vectorised: the PIL path's distributions, not its draws), and the views
computed for the whole batch on the training device (the FFCV / DALI idea: the data loader
only hands over bytes and a few numbers per view).

The resize is torch's own bicubic (Keys' a = -0.75, taps clamped to the crop) computed for
the whole batch as two batched matrix products; for the crops this path takes (never larger than the output:
upsampling only, nothing to antialias) it equals ``torchvision.transforms.v2.functional.
resized_crop`` on a tensor without antialiasing within float rounding. The PIL path, Pillow's
bicubic (a = -0.5, edge weights renormalised), differs from both by a few grey levels
(docs/TRAINING.md gives the measured figures). Images larger than the training crop need the
antialiased PIL path and are refused here. The colour operations are torchvision's tensor
kernels with a factor per view, rounded to 256 levels after each as the PIL path's are.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv
from tqdm.auto import tqdm

from .data import BadImageError, decode_image, sample_seed

#: Bytes of decoded images this path keeps in memory at most (a size rule: above it, use the PIL path).
MAX_DECODED_BYTES = 8 * 2**30
#: Uniform numbers hashed per (sample, view) seed: 10 crop tries x (scale, ratio, top, left), the
#: flip, then the colour jitter's (applied, brightness, contrast, saturation, hue, 4 for the
#: order) and the grayscale draw.
_CROP_TRIES = 10
_CROP_DRAWS = 4 * _CROP_TRIES + 1
_DRAWS = _CROP_DRAWS + 10


class DecodedImages:
    """Every image of a map-style dataset decoded once (RGB, uint8) into ``pixels``
    ``(N, 3, H, W)``; all must share one size. Unreadable entries keep a zero image and their
    message in ``bad``, to be replaced at draw time as the PIL path replaces them.

    A dataset with `datasets` cache files (an image folder, a Hub dataset) keeps the decoded
    array beside them, named by the dataset's fingerprint (which changes with its files and
    any selection of them): later runs and every DDP rank memory-map it instead of decoding
    again, sharing one copy in the page cache."""

    def __init__(self, dataset, image_column: str, max_bytes: int = MAX_DECODED_BYTES):
        self.cache = _decoded_cache_path(dataset, image_column)
        if self.cache is not None and self.cache.with_suffix(".json").exists():
            self._load(self.cache)
            return
        self.bad: dict[int, str] = {}
        pixels: Optional[torch.Tensor] = None
        for index in tqdm(range(len(dataset)), desc="decoding images once"):
            try:
                image = torch.from_numpy(np.array(decode_image(dataset[index][image_column]))).permute(2, 0, 1)
            except BadImageError as error:
                self.bad[index] = str(error)
                continue
            if pixels is None:
                size = len(dataset) * image.numel()
                if size > max_bytes:
                    raise ValueError(f"--batched_augmentation would keep {size / 2**30:.1f} GiB of decoded images in memory, more "
                                     f"than {max_bytes / 2**30:.0f} GiB; use the default (PIL) input path for this dataset.")
                pixels = torch.zeros((len(dataset), *image.shape), dtype=torch.uint8)
            if image.shape != pixels.shape[1:]:
                raise ValueError(f"--batched_augmentation needs images of one size; image {index} is {image.shape[2]}x{image.shape[1]}, "
                                 f"the first readable one {pixels.shape[3]}x{pixels.shape[2]}. Use the default (PIL) input path.")
            pixels[index] = image
        if pixels is None:
            raise ValueError(f"No image of the {len(dataset)} in the dataset can be read, e.g. {next(iter(self.bad.values()), '')}.")
        self.pixels = pixels
        if self.cache is not None:
            self._save(self.cache)

    def _save(self, path: Path) -> None:
        """The array, then its description (whose presence marks the cache complete), each
        written to a temporary name and renamed, so a reader never sees half a file."""
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as file:
            np.save(file, self.pixels.numpy())
        os.replace(temporary, path)
        temporary.write_text(json.dumps({"shape": list(self.pixels.shape), "bad": self.bad}))
        os.replace(temporary, path.with_suffix(".json"))

    def _load(self, path: Path) -> None:
        description = json.loads(path.with_suffix(".json").read_text())
        array = np.load(path, mmap_mode="r")
        if list(array.shape) != description["shape"]:
            raise ValueError(f"The decoded-image cache {path} holds {list(array.shape)}, its description says {description['shape']}; "
                             f"delete both files to decode again.")
        with warnings.catch_warnings():  # read-only by design: nothing writes into the images
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.pixels = torch.from_numpy(array)
        self.bad = {int(index): message for index, message in description["bad"].items()}

    def __len__(self) -> int:
        return len(self.pixels)


def _decoded_cache_path(dataset, image_column: str) -> Optional[Path]:
    """Where a dataset's decoded images are kept: beside its `datasets` cache files, or
    nowhere for a dataset held in memory."""
    cache_files = getattr(dataset, "cache_files", None)
    if not cache_files:
        return None
    # v2: decoded upright by the EXIF orientation; a cache written before is not read
    return Path(cache_files[0]["filename"]).parent / f"mfm_hub-decoded-v2-{dataset._fingerprint}-{image_column}.npy"


class BatchedPretrainingImages(torch.utils.data.Dataset):
    """`mfm_hub.data.PretrainingImages` for decoded images: yields the sample's uint8 image
    ``(3, H, W)``, its ``crops`` ``(top, left, height, width, flip)`` and, for FOLK's views,
    its ``colours`` (`colour_parameters`), drawn by the rules of ``transform``
    (`pretraining_transform`) from the seed of each (sample, view); ``num_views`` > 1 gives
    them a leading views axis. An unreadable entry is replaced by the next readable one with
    the seeds of its position."""

    def __init__(self, decoded: DecodedImages, transform: T.Compose, seed: int = 0, strict: bool = False, num_views: int = 1):
        steps = list(transform.transforms)
        crop, flip, *colour_steps = steps[:-2]
        jitter = colour_steps[0] if len(colour_steps) == 2 else None
        understood = (isinstance(crop, T.RandomResizedCrop) and isinstance(flip, T.RandomHorizontalFlip)
                      and isinstance(steps[-2], T.PILToTensor) and isinstance(steps[-1], T.ToDtype)
                      and (not colour_steps or (jitter is not None and isinstance(jitter, T.RandomApply)
                                                and len(jitter.transforms) == 1 and isinstance(jitter.transforms[0], T.ColorJitter)
                                                and isinstance(colour_steps[1], T.RandomGrayscale))))
        if not understood:
            raise ValueError(f"--batched_augmentation draws `pretraining_transform`'s steps only (crop, flip, FOLK's colour jitter "
                             f"and grayscale), not {transform}; use the default (PIL) input path.")
        height, width = decoded.pixels.shape[-2:]
        if max(height, width) > crop.size[0]:
            raise ValueError(f"--batched_augmentation upsamples only; these {width}x{height} images are larger than the "
                             f"{crop.size[0]}-px training crop and need the antialiased default (PIL) input path.")
        self.decoded, self.crop, self.flip, self.seed, self.strict, self.num_views = decoded, crop, flip, seed, strict, num_views
        self.jitter, self.grayscale = (jitter, colour_steps[1]) if jitter is not None else (None, None)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.decoded)

    def crop_parameters(self, seeds) -> torch.Tensor:
        """``(N, 5)`` crops ``(top, left, height, width, flip)`` for N per-view seeds, drawn at
        once: torchvision's RandomResizedCrop rule (up to 10 tries of a scale and log-uniform
        aspect ratio, else a centre crop) and a fair flip, from uniform numbers that are a
        hash of (seed, draw). The same distribution as the PIL path (tested), not its draws."""
        seeds = np.asarray(seeds, dtype=np.uint64)
        height, width = self.decoded.pixels.shape[-2:]
        tries = _CROP_TRIES
        uniform = _hash_uniforms(seeds, _CROP_DRAWS)
        scale, log_ratio = self.crop.scale, np.log(self.crop.ratio)
        area = height * width * (scale[0] + uniform[:, 0:tries] * (scale[1] - scale[0]))
        aspect = np.exp(log_ratio[0] + uniform[:, tries:2 * tries] * (log_ratio[1] - log_ratio[0]))
        crop_width, crop_height = np.rint(np.sqrt(area * aspect)), np.rint(np.sqrt(area / aspect))
        valid = (crop_width > 0) & (crop_width <= width) & (crop_height > 0) & (crop_height <= height)
        first = valid.argmax(axis=1)
        rows = np.arange(len(seeds))
        fallback_width, fallback_height = _centre_crop_size(height, width, self.crop.ratio)
        found = valid[rows, first]
        crop_width = np.where(found, crop_width[rows, first], fallback_width)
        crop_height = np.where(found, crop_height[rows, first], fallback_height)
        top = np.where(found, np.floor(uniform[rows, 2 * tries + first] * (height - crop_height + 1)), (height - crop_height) // 2)
        left = np.where(found, np.floor(uniform[rows, 3 * tries + first] * (width - crop_width + 1)), (width - crop_width) // 2)
        flip = uniform[:, -1] < self.flip.p
        return torch.from_numpy(np.stack([top, left, crop_height, crop_width, flip], axis=1).astype(np.float32))

    def colour_parameters(self, seeds) -> torch.Tensor:
        """``(N, 10)`` colour draws for N per-view seeds: whether the jitter applies (p 0.8),
        its brightness, contrast, saturation and hue factors (uniform in the transform's
        ranges), the order of the four operations (a uniformly random permutation, as
        ColorJitter's ``randperm``) and whether the view turns grayscale (p 0.2)."""
        uniform = torch.from_numpy(_hash_uniforms(np.asarray(seeds, dtype=np.uint64), _DRAWS)[:, _CROP_DRAWS:])
        colour = self.jitter.transforms[0]
        ranges = torch.tensor([colour.brightness or (1.0, 1.0), colour.contrast or (1.0, 1.0), colour.saturation or (1.0, 1.0),
                               colour.hue or (0.0, 0.0)], dtype=torch.float64)
        factors = ranges[:, 0] + uniform[:, 1:5] * (ranges[:, 1] - ranges[:, 0])
        order = uniform[:, 5:9].argsort(dim=1)
        applied = uniform[:, :1] < self.jitter.p
        grayscale = uniform[:, 9:] < self.grayscale.p
        return torch.cat([applied, factors, order, grayscale], dim=1).float()

    def _source(self, index: int) -> tuple[int, list[str]]:
        """The readable entry that stands at ``index``: itself, or the next readable one."""
        source, skipped = index, []
        while source in self.decoded.bad:
            if self.strict:
                raise ValueError(f"{self.decoded.bad[source]} (stopping because --strict_data is set)")
            skipped.append(self.decoded.bad[source])
            source = (source + 1) % len(self)
        return source, skipped

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A whole batch at once (the data loader's batched fetch): one vectorised draw of crops
        (and colours) for all its views."""
        seeds = [sample_seed(self.seed, self.epoch, int(index), view) for index in indices for view in range(self.num_views)]
        draws = {"crops": self.crop_parameters(seeds)}
        if self.jitter is not None:
            draws["colours"] = self.colour_parameters(seeds)
        if self.num_views > 1:
            draws = {name: values.unflatten(0, (len(indices), self.num_views)) for name, values in draws.items()}
        samples = []
        for position, index in enumerate(indices):
            source, skipped = self._source(int(index))
            sample = {"images": self.decoded.pixels[source], **{name: values[position] for name, values in draws.items()}}
            samples.append({**sample, "skipped": skipped} if skipped else sample)
        return samples

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


def _hash_uniforms(seeds: np.ndarray, count: int) -> np.ndarray:
    """``(N, count)`` uniform numbers in [0, 1): splitmix64 of (seed, draw), vectorised (no
    generator per sample); draw ``k`` of a seed is the same whatever ``count``."""
    with np.errstate(over="ignore"):
        z = (seeds[:, None] + np.arange(1, count + 1, dtype=np.uint64)[None] * np.uint64(0x9E3779B97F4A7C15)).ravel()
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) / 2.0**53).reshape(len(seeds), count)


def _centre_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """RandomResizedCrop's fallback when no try fits: the largest centre crop within the ratios."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, int(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height


def _cubic_taps(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and output pixel, the 4 input indices and weights of torch's bicubic
    upsampling (Keys' a = -0.75, half-pixel centres, taps clamped to the crop
    ``[start, start + length)``): ``(B, size, 4)`` long indices and float weights."""
    position = (torch.arange(size, device=start.device, dtype=torch.float32)[None] + 0.5) * (length[:, None] / size) - 0.5
    base = position.floor()
    t = (position - base)[..., None]
    a = -0.75
    distances = torch.cat([t + 1, t, 1 - t, 2 - t], dim=-1)  # from each of the 4 taps
    near = ((a + 2) * distances - (a + 3)) * distances * distances + 1
    far = ((a * distances - 5 * a) * distances + 8 * a) * distances - 4 * a
    weights = torch.where(distances <= 1, near, far)
    offsets = torch.arange(-1, 3, device=start.device)
    taps = (base[..., None].long() + offsets).clamp(min=0).minimum(length[:, None, None].long() - 1)
    return taps + start[:, None, None].long(), weights


def _interpolation_matrices(start: torch.Tensor, length: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    """``(B, size, extent)``: each output pixel's bicubic weights over the input pixels of one axis."""
    taps, weights = _cubic_taps(start, length, size)
    return torch.zeros(len(start), size, extent, device=start.device).scatter_add_(2, taps, weights)


def batched_resized_crop(images: torch.Tensor, crops: torch.Tensor, size: int) -> torch.Tensor:
    """Uint8 images ``(B, C, H, W)`` and their ``crops`` ``(B, 5)`` (top, left, height, width,
    flip) -> the resized, flipped crops ``(B, C, size, size)`` as floats in [0, 1], rounded to
    the 256 grey levels the PIL path gives: torch's separable bicubic on each crop (what
    ``torchvision.transforms.v2.functional.resized_crop`` computes on a tensor), for the whole
    batch as two batched matrix products with per-sample interpolation matrices."""
    _, _, height, width = images.shape
    top, left, crop_height, crop_width, flip = crops.to(images.device, torch.float32).unbind(1)
    rows = _interpolation_matrices(top, crop_height, size, height)  # (B, size, H)
    columns = _interpolation_matrices(left, crop_width, size, width)  # (B, size, W)
    columns = torch.where(flip[:, None, None] > 0, columns.flip(1), columns)
    resized = rows[:, None] @ images.float() @ columns.transpose(1, 2)[:, None]
    return resized.clamp_(0, 255).round_().div_(255)


def _quantized(pixels: torch.Tensor) -> torch.Tensor:
    """Rounded to the 256 grey levels the PIL path's images have after each operation."""
    return pixels.mul(255).round_().div_(255)


def _blend(image: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * image + (1 - factor) * other).clamp_(0, 1)


def _adjust_brightness(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (image * factor).clamp_(0, 1)


def _adjust_contrast(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(image, TF.rgb_to_grayscale(image).mean(dim=(-3, -2, -1), keepdim=True), factor)


def _adjust_saturation(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(image, TF.rgb_to_grayscale(image), factor)


def _adjust_hue(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = _rgb_to_hsv(image).unbind(dim=-3)
    return _hsv_to_rgb(torch.stack([(hue + factor[:, 0]).remainder_(1.0), saturation, value], dim=-3))


#: ColorJitter's operations in the order of its factors (its ``fn_idx`` numbering).
_COLOUR_OPERATIONS = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)


def batched_colour_jitter(pixels: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Views ``(N, 3, S, S)`` in [0, 1] and their `BatchedPretrainingImages.colour_parameters`
    ``(N, 10)`` -> the jittered (and, where drawn, grayscale) views: torchvision's tensor
    ColorJitter and RandomGrayscale with one factor per view, each operation applied once to
    the views that draw it at that place in their order."""
    pixels = pixels.clone()
    applied, factors, order, grayscale = colours[:, 0] > 0, colours[:, 1:5], colours[:, 5:9].long(), colours[:, 9] > 0
    for place in range(4):
        for operation_index, operation in enumerate(_COLOUR_OPERATIONS):
            chosen = (applied & (order[:, place] == operation_index)).nonzero()[:, 0]
            if len(chosen):
                pixels[chosen] = _quantized(operation(pixels[chosen], factors[chosen, operation_index, None, None, None]))
    chosen = grayscale.nonzero()[:, 0]
    if len(chosen):
        pixels[chosen] = _quantized(TF.rgb_to_grayscale(pixels[chosen], num_output_channels=3))
    return pixels


def batched_views(images: torch.Tensor, crops: torch.Tensor, size: int, colours: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A collated batch of `BatchedPretrainingImages` -> its views: uint8 ``images`` ``(B, C, H, W)``,
    ``crops`` ``(B, 5)`` or ``(B, V, 5)`` and optional ``colours`` ``(B[, V], 10)`` -> floats in
    [0, 1] ``(B, C, size, size)`` or ``(B, V, C, size, size)``."""
    views = crops.shape[1] if crops.ndim == 3 else None
    if views is not None:
        images, crops = images.repeat_interleave(views, dim=0), crops.flatten(0, 1)
        colours = colours.flatten(0, 1) if colours is not None else None
    pixels = batched_resized_crop(images, crops, size)
    if colours is not None:
        pixels = batched_colour_jitter(pixels, colours.to(pixels.device))
    return pixels.unflatten(0, (-1, views)) if views is not None else pixels


__all__ = ["MAX_DECODED_BYTES", "BatchedPretrainingImages", "DecodedImages", "batched_colour_jitter", "batched_resized_crop",
           "batched_views"]
