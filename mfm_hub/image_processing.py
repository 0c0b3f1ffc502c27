"""The image processor saved with every checkpoint: transformers' ViT processor set to the
model's image size and normalisation, so `AutoImageProcessor` and pipelines just work."""

from __future__ import annotations

from transformers import ViTImageProcessor
from transformers.image_utils import PILImageResampling


def image_processor_for_config(config, do_normalize: bool = True) -> ViTImageProcessor:
    """Resize to ``config.image_size`` (bicubic), scale to [0, 1] and, unless
    ``do_normalize=False`` (pre-training inputs), normalise with the config's mean/std."""
    return ViTImageProcessor(
        do_resize=True,
        size={"height": config.image_size, "width": config.image_size},
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=do_normalize,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )


__all__ = ["image_processor_for_config"]
