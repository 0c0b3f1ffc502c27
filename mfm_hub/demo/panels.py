"""What the demo computes, without any user interface: read an upload, put a pretext task to a
pre-training model, and measure per frequency band how much of the removed signal came back.

Everything here is plain torch / PIL, so it is tested without a browser (`tests/test_demo.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers.trainer_utils import get_last_checkpoint

from ..configuration_mfm import check_model_source
from ..data import BadImageError, decode_image
from ..families import saved_model_class
from ..frequency import spectrum_image, squared_frequency_radius
from ..image_processing import image_processor_for_config
from ..modeling_common import MFMForPreTrainingMixin, denormalize
from ..modeling_folk import FOLKForPreTraining
from ..pretext import get_pretext_task
from ..visualization import colormapped

#: Uploads above this many pixels are refused before decoding (a decompression bomb or a
#: photo far larger than the model's input, which the demo would only shrink).
MAX_IMAGE_PIXELS = 40_000_000
#: Radial bands of the per-band error plot (fewer for small images: a band needs frequencies).
NUM_BANDS = 24
#: Panels are shown at least this large (nearest-neighbour), so a 32-px model's stay legible.
MIN_DISPLAY_SIDE = 224


class DemoInputError(ValueError):
    """An input the demo refuses, with a message meant for the person who gave it."""


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


def load_reconstruction_model(source: str) -> MFMForPreTrainingMixin:
    """The ``MFM*ForPreTraining`` model (encoder + decoder) of a zoo name, a checkpoint folder
    or a Hub id, in eval mode. A FOLK checkpoint gives its student; a training output folder
    whose exported encoder has no decoder gives its last Trainer checkpoint."""
    from .. import zoo

    if source in zoo.OFFICIAL_CHECKPOINTS:
        if zoo.get(source).finetune_epochs:
            pretrained = ", ".join(name for name, entry in zoo.OFFICIAL_CHECKPOINTS.items() if not entry.finetune_epochs)
            raise ValueError(
                f"{source} is a fine-tuned classifier without the reconstruction decoder; pick a pre-trained one: {pretrained}."
            )
        model = zoo.load(source)
    else:
        check_model_source(source)
        model_class = saved_model_class(source)
        if not issubclass(model_class, (MFMForPreTrainingMixin, FOLKForPreTraining)):
            checkpoint = get_last_checkpoint(source) if Path(source).is_dir() else None
            if checkpoint is None:
                raise ValueError(
                    f"{source} holds a {model_class.__name__}, which has no reconstruction decoder. The demo needs a "
                    "pre-training checkpoint: a zoo name such as mfm-vit-b16-pt300, or a training run's checkpoint-* folder."
                )
            return load_reconstruction_model(checkpoint)
        model = model_class.from_pretrained(source)
    if isinstance(model, FOLKForPreTraining):
        model = model.student
    return model.eval()


def objective_config(config, task_name: str, values: dict):
    """``config`` with the pretext task ``task_name`` and its parameters ``values`` (field ->
    picked value, see `mfm_hub.pretext.TaskParameter`), validated by the config class."""
    task = get_pretext_task(task_name)
    parameters = {parameter.field: parameter for parameter in task.parameters}
    unknown = set(values) - set(parameters)
    if unknown:
        raise ValueError(f"Task {task_name!r} has no parameters {sorted(unknown)}; it has {sorted(parameters)}.")
    updates = {field: parameters[field].config_value(value) for field, value in values.items()}
    return type(config).from_dict({**config.to_dict(), "pretext_task": task_name, "loss_target": None, **updates})


# --------------------------------------------------------------------------------------
# The input
# --------------------------------------------------------------------------------------


def read_image(path: str | Path) -> Image.Image:
    """An uploaded file as an RGB image; `DemoInputError` for a file that is not an image or
    is too large. Every PIL mode is accepted (`mfm_hub.data.to_rgb` converts it)."""
    name = Path(path).name
    limit = (f"the demo takes up to {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels (it would only shrink a larger image to the "
             "model's input). Downscale it first.")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as error:
        raise DemoInputError(f"{name} is too large: {limit}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DemoInputError(f"{name} is not an image this demo can read ({type(error).__name__}). Upload a PNG, JPEG or WebP.") from error
    if width * height > MAX_IMAGE_PIXELS:
        raise DemoInputError(f"{name} is {width}x{height}: {limit}")
    try:
        return decode_image(str(path))
    except BadImageError as error:
        raise DemoInputError(f"{name} is damaged or truncated and cannot be decoded. Upload another file.") from error


def image_to_pixels(image: Image.Image, config) -> torch.Tensor:
    """``(1, C, S, S)`` in [0, 1]: the shorter side resized to the model's ``image_size`` S and
    centre-cropped. A flat image is refused: its spectrum is the DC term alone, nothing a task
    could remove or a model restore."""
    processor = image_processor_for_config(config, do_normalize=False, crop_pct=1.0)
    pixels = processor(image, return_tensors="pt").pixel_values
    if config.num_channels == 1:
        pixels = pixels.mean(dim=1, keepdim=True)
    if ((pixels.amax(dim=(-2, -1)) - pixels.amin(dim=(-2, -1))) < 1 / 255).all():
        raise DemoInputError("The image is one flat colour: its spectrum holds only the mean, nothing to remove or restore.")
    return pixels


# --------------------------------------------------------------------------------------
# The task and its result
# --------------------------------------------------------------------------------------


@dataclass
class BandErrors:
    """Per radial frequency band (only bands that hold signal): ``radius`` (centres, in
    spectrum pixels of a 224-px image: the unit of the MFM radius), the error energy of the
    ``corrupted`` input and of the ``reconstruction`` relative to the original's energy in
    the band (0 = exact, 1 = as far off as an empty band), and ``removed`` (fraction of the
    band's frequencies the mask removed; ``None`` for pixel-space tasks), all ``(K,)``."""

    radius: torch.Tensor
    corrupted: torch.Tensor
    reconstruction: torch.Tensor
    removed: Optional[torch.Tensor]


def band_errors(original: torch.Tensor, corrupted: torch.Tensor, reconstruction: torch.Tensor,
                frequency_mask: Optional[torch.Tensor] = None, num_bands: int = NUM_BANDS) -> BandErrors:
    """Compare ``(1, C, H, W)`` images in [0, 1] band by band in the 2-D spectrum (all channels
    together); ``frequency_mask`` ``(1, 1, H, W)`` is the task's mask, if it has one."""
    height, width = original.shape[-2:]

    def spectrum(images):
        return torch.fft.fftshift(torch.fft.fft2(images[0].float()), dim=(-2, -1))

    reference = spectrum(original)
    energy = reference.abs().square().sum(0)
    radius = squared_frequency_radius(height, width).sqrt().float()
    num_bands = max(2, min(num_bands, min(height, width) // 2))
    edges = torch.linspace(0, radius.max().item() * (1 + 1e-6), num_bands + 1)
    band = (torch.bucketize(radius, edges, right=True) - 1).flatten()

    def per_band(values):
        return torch.zeros(num_bands).index_add_(0, band, values.flatten())

    band_energy = per_band(energy)
    has_signal = band_energy > band_energy.sum() * 1e-12
    centres = (edges[1:] + edges[:-1]) / 2

    def relative_error(images):
        return (per_band((spectrum(images) - reference).abs().square().sum(0)) / band_energy.clamp_min(1e-30))[has_signal]

    removed = None
    if frequency_mask is not None:
        counts = per_band(torch.ones_like(radius))
        removed = (per_band(1 - frequency_mask[0, 0].float()) / counts.clamp_min(1))[has_signal]
    return BandErrors(centres[has_signal], relative_error(corrupted), relative_error(reconstruction), removed)


@dataclass
class TaskResult:
    """One image through one pretext task and the model: ``original``, ``corrupted`` and the
    de-normalised ``reconstruction`` ``(1, C, H, W)`` (unclipped), the task's
    ``frequency_mask`` ``(1, 1, H, W)`` (1 = kept; ``None`` for pixel-space tasks), the
    model's frequency ``loss`` for this task and the `BandErrors`."""

    task: str
    original: torch.Tensor
    corrupted: torch.Tensor
    reconstruction: torch.Tensor
    frequency_mask: Optional[torch.Tensor]
    loss: float
    bands: BandErrors

    @property
    def removed_fraction(self) -> Optional[float]:
        """Fraction of the spectrum the mask removed (``None`` without a mask)."""
        return None if self.frequency_mask is None else 1.0 - self.frequency_mask.float().mean().item()


@torch.no_grad()
def run_task(model: MFMForPreTrainingMixin, pixel_values: torch.Tensor, task_name: str, values: dict, seed: int = 0) -> TaskResult:
    """Corrupt ``pixel_values`` ``(1, C, H, W)`` in [0, 1] with task ``task_name`` and the
    parameter ``values``, seeded by ``seed`` (random per-image choices such as a blur kernel
    or the noise), and let ``model`` reconstruct it, exactly as its pre-training forward does."""
    objective = objective_config(model.config, task_name, values)
    generator = torch.Generator().manual_seed(seed)
    result = model.reconstruct(pixel_values.to(model.device), generator=generator, objective_config=objective)
    if not torch.isfinite(result.reconstruction).all():
        raise ValueError("The model's reconstruction is not finite: the checkpoint's weights are damaged.")
    corruption = result.corruption
    reconstruction = denormalize(result.reconstruction.float(), model.config).cpu()
    original, corrupted = pixel_values.float().cpu(), corruption.pixel_values.float().cpu()
    mask = None if corruption.frequency_mask is None else corruption.frequency_mask.float().cpu()
    return TaskResult(task_name, original, corrupted, reconstruction, mask, result.loss.item(),
                      band_errors(original, corrupted, reconstruction, mask))


def _enlarged(pixels: np.ndarray) -> np.ndarray:
    factor = math.ceil(MIN_DISPLAY_SIDE / min(pixels.shape[:2]))
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else pixels


def _rgb(images: torch.Tensor) -> np.ndarray:
    """``(1, C, H, W)`` in [0, 1] (clipped) -> ``(H, W, 3)`` uint8."""
    image = images[0].clamp(0, 1).expand(3, -1, -1)
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def kept_frequencies(result: TaskResult) -> torch.Tensor:
    """``(H, W)`` in [0, 1], shifted: the mask itself, or for pixel-space tasks the magnitude
    the corruption kept of each frequency, ``|F(corrupted)| / |F(original)|`` clipped to 1."""
    if result.frequency_mask is not None:
        return result.frequency_mask[0, 0]

    def magnitude(images):
        return torch.fft.fftshift(torch.fft.fft2(images[0].mean(0)), dim=(-2, -1)).abs()

    return (magnitude(result.corrupted) / magnitude(result.original).clamp_min(1e-8)).clamp(0, 1)


def panel_images(result: TaskResult) -> dict[str, np.ndarray]:
    """The demo's six pictures, title -> ``(H, W, 3)`` uint8, enlarged to at least
    `MIN_DISPLAY_SIDE` pixels: input, its spectrum, the kept frequencies, the corrupted input,
    the reconstruction and its spectrum (log magnitude, each scaled to its own range)."""
    kept_title = "kept frequencies (mask)" if result.frequency_mask is not None else "kept magnitude |F(corrupted)| / |F(input)|"
    panels = {
        "input": _rgb(result.original),
        "input spectrum": colormapped(spectrum_image(result.original)[0], "magma"),
        kept_title: colormapped(kept_frequencies(result), "gray"),
        "corrupted input": _rgb(result.corrupted),
        "reconstruction": _rgb(result.reconstruction),
        "reconstruction spectrum": colormapped(spectrum_image(result.reconstruction)[0], "magma"),
    }
    return {title: _enlarged(pixels) for title, pixels in panels.items()}


__all__ = [
    "BandErrors",
    "DemoInputError",
    "MAX_IMAGE_PIXELS",
    "TaskResult",
    "band_errors",
    "image_to_pixels",
    "kept_frequencies",
    "load_reconstruction_model",
    "objective_config",
    "panel_images",
    "read_image",
    "run_task",
]
