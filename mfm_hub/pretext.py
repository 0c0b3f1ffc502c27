"""Pretext tasks: what pre-training does to an image before the model restores it.

One registry entry per task: its name (the config's ``pretext_task``, the CLI's ``--pretext_task``),
its description, the validation of its parameters, the corruption itself and what the loss
targets. Adding a task is one `register_pretext_task` call (plus its tests):

    register_pretext_task(PretextTask(
        name="jpeg", title="JPEG", description="...", check=..., corrupt=lambda pixels, config, generator: Corruption(...),
    ))

The FOLK objective is composed with a task (``informed`` by default), not a task itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .frequency import add_gaussian_noise, circle_mask, downsample_upsample, gaussian_blur, informed_masks, sample_circle_masks
from .validation import check


@dataclass
class Corruption:
    """A corrupted batch: ``pixel_values`` ``(B, C, H, W)`` in [0, 1] (the noise task does not
    clip) and, for frequency-mask tasks, ``frequency_mask`` ``(B, 1, H, W)`` (shifted
    coordinates, 1 = kept)."""

    pixel_values: torch.Tensor
    frequency_mask: Optional[torch.Tensor] = None


def _no_parameters(config) -> None:
    return None


@dataclass(frozen=True)
class TaskParameter:
    """A config field a task reads, with the values a person may pick for it (the demo's
    controls): a range ``minimum..maximum`` in steps of ``step``, or ``choices`` (label -> value).
    ``sequence`` fields hold a tuple the task draws from per image; one picked value sets it
    to that value alone."""

    field: str
    label: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: Optional[float] = None
    choices: Optional[dict[str, object]] = None
    sequence: bool = False

    def config_value(self, value):
        return (value,) if self.sequence else value


@dataclass(frozen=True)
class PretextTask:
    """``corrupt(pixel_values, config, generator) -> Corruption``. A task that
    ``masks_frequencies`` samples a mask (``sample_mask(pixel_values, config, generator)``)
    that the model applies in the spectrum; a given mask then replaces the sampled one, and
    its loss can be restricted to the removed frequencies (``"masked"``, the default for
    such tasks; the others restore the whole image, ``"all"``). ``parameters`` are the config
    fields it reads that a person may vary."""

    name: str
    title: str
    description: str
    check: Callable[[object], None] = _no_parameters
    corrupt: Optional[Callable[[torch.Tensor, object, Optional[torch.Generator]], Corruption]] = None
    sample_mask: Optional[Callable[[torch.Tensor, object, Optional[torch.Generator]], torch.Tensor]] = None
    parameters: tuple[TaskParameter, ...] = ()

    @property
    def masks_frequencies(self) -> bool:
        """Whether the task removes frequencies with a mask (else it corrupts the pixels)."""
        return self.sample_mask is not None

    @property
    def loss_target(self) -> str:
        """The config's ``loss_target`` when it names none: the removed frequencies for a mask."""
        return "masked" if self.masks_frequencies else "all"


PRETEXT_TASKS: dict[str, PretextTask] = {}


def register_pretext_task(task: PretextTask) -> PretextTask:
    if (task.corrupt is None) == (task.sample_mask is None):
        raise ValueError(f"Pretext task {task.name!r} needs exactly one of `corrupt` and `sample_mask`.")
    PRETEXT_TASKS[task.name] = task
    return task


def get_pretext_task(name: str) -> PretextTask:
    if name not in PRETEXT_TASKS:
        raise ValueError(f"Unknown pretext task {name!r}; registered: {', '.join(PRETEXT_TASKS)}.")
    return PRETEXT_TASKS[name]


def _check_probability(config, name: str) -> None:
    value = getattr(config, name)
    check(isinstance(value, (int, float)) and 0.0 <= value <= 1.0, f"`{name}` must be a probability in [0, 1], got {value!r}.")


def _check_circle(config) -> None:
    check(config.mask_radius > 0, f"`mask_radius` must be > 0, got {config.mask_radius!r}.")
    check(config.mask_radius_outer > config.mask_radius,
             f"`mask_radius_outer` must exceed `mask_radius`, got {config.mask_radius_outer!r} <= {config.mask_radius!r}.")
    _check_probability(config, "low_pass_prob")
    # refuses a circle that keeps or removes everything
    circle_mask(config.image_size, config.image_size, config.mask_radius, config.mask_radius_outer, device="cpu")


def _check_informed(config) -> None:
    check(len(config.informed_keep_ratios) > 0 and all(0.0 < q < 1.0 for q in config.informed_keep_ratios),
             f"`informed_keep_ratios` must be fractions in (0, 1), got {list(config.informed_keep_ratios)!r}.")
    _check_probability(config, "compress_prob")


def _check_sr(config) -> None:
    check(isinstance(config.sr_factor, int) and config.sr_factor >= 2, f"`sr_factor` must be an int >= 2, got {config.sr_factor!r}.")


def _check_blur(config) -> None:
    check(config.blur_sigma > 0, f"`blur_sigma` must be > 0, got {config.blur_sigma!r}.")
    check(len(config.blur_kernel_sizes) > 0 and all(k % 2 == 1 and k > 0 for k in config.blur_kernel_sizes),
             f"`blur_kernel_sizes` must be odd positive ints, got {list(config.blur_kernel_sizes)!r}.")


def _check_noise(config) -> None:
    check(config.noise_sigma > 0, f"`noise_sigma` must be > 0, got {config.noise_sigma!r}.")


register_pretext_task(PretextTask(
    name="mfm", title="MFM",
    description="masked frequency modeling: each image is low- or high-pass filtered with a circle mask in its 2-D spectrum "
                "and the model predicts the removed frequencies (frequency loss on them only)",
    check=_check_circle,
    sample_mask=lambda pixels, config, generator: sample_circle_masks(
        pixels.shape[0], pixels.shape[-2], pixels.shape[-1], config.mask_radius, config.mask_radius_outer, config.low_pass_prob,
        generator=generator, device=pixels.device),
    parameters=(
        TaskParameter("mask_radius", "radius (spectrum pixels of a 224-px image)", 1, 160, 1),
        TaskParameter("low_pass_prob", "filter", choices={"low-pass: keep inside the circle": 1.0, "high-pass: keep outside": 0.0}),
    ),
))
register_pretext_task(PretextTask(
    name="informed", title="MFM with informed masks",
    description="FOLK's Com/RCom filters (keep or remove the highest-magnitude frequencies of each image) with the MFM "
                "reconstruction loss",
    check=_check_informed,
    sample_mask=lambda pixels, config, generator: informed_masks(pixels, config.informed_keep_ratios, config.compress_prob, generator)[0],
    parameters=(
        TaskParameter("informed_keep_ratios", "keep ratio (fraction of the strongest frequencies)", 0.001, 0.5, 0.001, sequence=True),
        TaskParameter("compress_prob", "filter", choices={"Com: keep the strongest": 1.0, "RCom: remove the strongest": 0.0}),
    ),
))
register_pretext_task(PretextTask(
    name="sr", title="SR",
    description="super-resolution: bicubic down x8 and up, the model restores the image (loss on all frequencies)",
    check=_check_sr,
    corrupt=lambda pixels, config, generator: Corruption(downsample_upsample(pixels, config.sr_factor)),
    parameters=(TaskParameter("sr_factor", "down-sampling factor", choices={"2": 2, "4": 4, "8": 8, "16": 16}),),
))
register_pretext_task(PretextTask(
    name="deblur", title="Deblur",
    description="deblurring: Gaussian blur (sigma 5, kernel 7-21), the model restores the image",
    check=_check_blur,
    corrupt=lambda pixels, config, generator: Corruption(gaussian_blur(pixels, config.blur_sigma, config.blur_kernel_sizes, generator)),
    parameters=(
        TaskParameter("blur_sigma", "blur sigma (pixels)", 0.5, 10, 0.5),
        TaskParameter("blur_kernel_sizes", "kernel size", choices={str(k): k for k in range(3, 23, 2)}, sequence=True),
    ),
))
register_pretext_task(PretextTask(
    name="denoise", title="Denoise",
    description="denoising: Gaussian noise (sigma 75/255), the model restores the image",
    check=_check_noise,
    corrupt=lambda pixels, config, generator: Corruption(add_gaussian_noise(pixels, config.noise_sigma, generator)),
    parameters=(TaskParameter("noise_sigma", "noise sigma (fraction of the pixel range)", 0.01, 1, 0.01),),
))


__all__ = ["PRETEXT_TASKS", "Corruption", "PretextTask", "TaskParameter", "get_pretext_task", "register_pretext_task"]
