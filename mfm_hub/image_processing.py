"""The image processor saved with every checkpoint, so that `AutoImageProcessor` and pipelines
feed a model exactly what our evaluation feeds it."""

from __future__ import annotations

import math

from transformers import CLIPImageProcessor, SegformerImageProcessor
from transformers.image_utils import PILImageResampling

#: timm's / the official evaluation's crop: resize the shorter side to size / 0.875 (256 for 224).
EVAL_CROP_PCT = 224 / 256


def image_processor_for_config(config, do_normalize: bool = True, crop_pct: float = EVAL_CROP_PCT) -> CLIPImageProcessor:
    """The evaluation preprocessing of the MFM recipe: convert to RGB, resize the shorter side
    to ``floor(image_size / crop_pct)`` (bicubic, aspect kept), centre-crop ``image_size``,
    scale to [0, 1] and, unless ``do_normalize=False`` (pre-training inputs), normalise with
    the config's mean/std. The evaluation scripts use this same processor (see
    `mfm_hub.evaluation.eval_transform`), so pipelines and our reported numbers see identical
    inputs. (transformers' CLIP processor is the one that resizes the shorter side and then
    crops; nothing else of CLIP is involved.)"""
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"`crop_pct` must be in (0, 1], got {crop_pct!r}.")
    size = config.image_size
    return CLIPImageProcessor(
        do_convert_rgb=True,
        do_resize=True,
        size={"shortest_edge": math.floor(size / crop_pct)},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=do_normalize,
        image_mean=list(config.image_mean),
        image_std=list(config.image_scale),
    )


def segmentation_image_processor(config, height: int, width: int) -> SegformerImageProcessor:
    """The processor saved with a segmentation checkpoint, for
    ``pipeline("image-segmentation")``: resize to ``height x width`` (a size the backbone's
    stride divides; the scripts use the evaluation images' padded size), scale, normalise;
    its `post_process_semantic_segmentation` resizes the logits back to each image."""
    return SegformerImageProcessor(
        do_resize=True,
        size={"height": height, "width": width},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_scale),
        do_reduce_labels=False,
    )


__all__ = ["EVAL_CROP_PCT", "image_processor_for_config", "segmentation_image_processor"]
