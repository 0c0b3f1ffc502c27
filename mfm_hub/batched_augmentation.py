"""The pre-training input path for images that fit in memory (``--batched_augmentation``):
decoded once into one uint8 tensor, the crops and flips of a whole batch drawn at once from
the same per-(seed, epoch, index) seeds (torchvision's RandomResizedCrop rule, vectorised:
the PIL path's distribution, not its draws), and the resized crops computed for the whole
batch on the training device (the FFCV / DALI idea: the data loader only hands over bytes and
five numbers per image).

The resize is torch's own bicubic (Keys' a = -0.75, taps clamped to the crop) computed for
the whole batch as two batched matrix products; for the crops this path takes (never larger than the output:
upsampling only, nothing to antialias) it equals ``torchvision.transforms.v2.functional.
resized_crop`` on a tensor without antialiasing within float rounding. The PIL path, Pillow's
bicubic (a = -0.5, edge weights renormalised), differs from both by a few grey levels
(docs/TRAINING.md gives the measured figures). Images larger than the training crop need the
antialiased PIL path and are refused here.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from .data import BadImageError, decode_image, sample_seed

#: Bytes of decoded images this path keeps in memory at most (a size rule: above it, use the PIL path).
MAX_DECODED_BYTES = 8 * 2**30


class DecodedImages:
    """Every image of a map-style dataset decoded once (RGB, uint8) into ``pixels``
    ``(N, 3, H, W)``; all must share one size. Unreadable entries keep a zero image and their
    message in ``bad``, to be replaced at draw time as the PIL path replaces them."""

    def __init__(self, dataset, image_column: str, max_bytes: int = MAX_DECODED_BYTES):
        self.bad: dict[int, str] = {}
        pixels: Optional[torch.Tensor] = None
        for index in tqdm(range(len(dataset)), desc="decoding images once"):
            try:
                image = torch.from_numpy(np.asarray(decode_image(dataset[index][image_column]))).permute(2, 0, 1)
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

    def __len__(self) -> int:
        return len(self.pixels)


class BatchedPretrainingImages(torch.utils.data.Dataset):
    """`mfm_hub.data.PretrainingImages` for decoded images: yields the sample's uint8 image
    ``(3, H, W)`` and its ``crops`` ``(top, left, height, width, flip)``, drawn by the rule of
    ``transform`` (`pretraining_transform`'s crop and flip) from the sample's seed, and
    replaces an unreadable entry by the next readable one with the seed of its position."""

    def __init__(self, decoded: DecodedImages, transform: T.Compose, seed: int = 0, strict: bool = False):
        crop, flip = transform.transforms[:2]
        if not (isinstance(crop, T.RandomResizedCrop) and isinstance(flip, T.RandomHorizontalFlip)) or len(transform.transforms) != 4:
            raise ValueError("--batched_augmentation draws MFM's crop and flip only; FOLK's colour-jittered views need the default "
                             "(PIL) input path.")
        height, width = decoded.pixels.shape[-2:]
        if max(height, width) > crop.size[0]:
            raise ValueError(f"--batched_augmentation upsamples only; these {width}x{height} images are larger than the "
                             f"{crop.size[0]}-px training crop and need the antialiased default (PIL) input path.")
        self.decoded, self.crop, self.flip, self.seed, self.strict = decoded, crop, flip, seed, strict
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.decoded)

    def crop_parameters(self, seeds) -> torch.Tensor:
        """``(N, 5)`` crops ``(top, left, height, width, flip)`` for N per-sample seeds, drawn at
        once: torchvision's RandomResizedCrop rule (up to 10 tries of a scale and log-uniform
        aspect ratio, else a centre crop) and a fair flip, from uniform numbers that are a
        hash of (seed, draw). The same distribution as the PIL path (tested), not its draws."""
        seeds = np.asarray(seeds, dtype=np.uint64)
        height, width = self.decoded.pixels.shape[-2:]
        tries = 10
        uniform = _hash_uniforms(seeds, 4 * tries + 1).reshape(len(seeds), 4 * tries + 1)
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
        """A whole batch at once (the data loader's batched fetch): one vectorised draw of crops."""
        crops = self.crop_parameters([sample_seed(self.seed, self.epoch, int(index)) for index in indices])
        samples = []
        for index, crop in zip(indices, crops):
            source, skipped = self._source(int(index))
            sample = {"images": self.decoded.pixels[source], "crops": crop}
            samples.append({**sample, "skipped": skipped} if skipped else sample)
        return samples

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


def _hash_uniforms(seeds: np.ndarray, count: int) -> np.ndarray:
    """``(N * count)`` uniform numbers in [0, 1): splitmix64 of (seed, draw), vectorised (no
    generator per sample)."""
    with np.errstate(over="ignore"):
        z = (seeds[:, None] + np.arange(1, count + 1, dtype=np.uint64)[None] * np.uint64(0x9E3779B97F4A7C15)).ravel()
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


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


__all__ = ["MAX_DECODED_BYTES", "BatchedPretrainingImages", "DecodedImages", "batched_resized_crop"]
