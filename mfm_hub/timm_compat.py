"""Compatibility of timm's augmentations with the Pillow on the package index.

**Posterize with 0 bits.** timm (1.0.31 and earlier) maps the top of the RandAugment
magnitude range of ``PosterizeIncreasing`` (the ``inc1`` ops of the MFM fine-tuning recipe,
``rand-m9-mstd0.5-inc1``) and the bottom of ``Posterize`` to *0 bits kept*, and passes that
to ``PIL.ImageOps.posterize``. Pillow 13 refuses it (``ValueError: bits must be between or
equal to 1 and 8``); older Pillow accepted it. With magnitude noise (``mstd0.5``) about one
augmentation in a thousand draws it, so every real fine-tuning run died in its first epoch.

The fix keeps what the op means: its strongest setting becomes the fewest bits Pillow
allows (1), every other setting is unchanged. It is installed when ``mfm_hub`` is imported,
and only if timm's own posterize still refuses 0 bits, so it switches itself off once timm
handles the case; delete this module then (and its call in ``mfm_hub/__init__.py``).
"""

from __future__ import annotations

from PIL import Image
from timm.data import auto_augment

#: timm's op names that resolve to its ``posterize``.
POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")
FEWEST_BITS_PILLOW_ALLOWS = 1

_timm_posterize = auto_augment.posterize


def posterize_at_least_one_bit(image: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize with ``bits_to_keep`` raised to the fewest bits Pillow allows."""
    return _timm_posterize(image, max(FEWEST_BITS_PILLOW_ALLOWS, int(bits_to_keep)), **kwargs)


def timm_posterize_refuses_zero_bits() -> bool:
    try:
        _timm_posterize(Image.new("RGB", (1, 1)), 0)
    except ValueError:
        return True
    return False


def install_posterize_fix() -> bool:
    """Point timm's posterize ops at `posterize_at_least_one_bit` where timm + Pillow need
    it. Idempotent; returns whether the fix is active. Only transforms built afterwards use
    it (timm looks the op up when it builds a RandAugment)."""
    if not timm_posterize_refuses_zero_bits():
        return False
    for name in POSTERIZE_OPS:
        if auto_augment.NAME_TO_OP.get(name) in (_timm_posterize, posterize_at_least_one_bit):
            auto_augment.NAME_TO_OP[name] = posterize_at_least_one_bit
    return True


__all__ = ["install_posterize_fix", "posterize_at_least_one_bit", "timm_posterize_refuses_zero_bits"]
