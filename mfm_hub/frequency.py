"""Frequency-domain operations of MFM and FOLK, batched and device/dtype agnostic.

Conventions used throughout:

* images are ``(batch, channels, height, width)`` tensors; every function works for
  non-square and odd-sized images;
* frequency masks are ``(batch, 1, height, width)`` float tensors in **shifted**
  coordinates (DC at ``(height // 2, width // 2)``, as after ``torch.fft.fftshift``),
  1 where a frequency is kept and 0 where it is removed;
* FFTs always run in float32 with autocast disabled, whatever the input dtype: half
  precision FFTs are inexact and cuFFT only supports powers of two in fp16;
* randomness comes from an optional ``torch.Generator`` so that a seed reproduces masks,
  blur kernels and noise exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

#: Image side the official MFM radius (16 spectrum pixels) refers to.
REFERENCE_IMAGE_SIZE = 224


@contextmanager
def _float32_fft_region(device: torch.device):
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _random(sampler, shape, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """Samples of ``sampler`` (``torch.rand`` / ``torch.randn``) drawn on the generator's device,
    so that a CPU-seeded generator reproduces the same draws for GPU tensors, moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return sampler(shape, generator=generator, device=gen_device).to(device)


def validate_probability(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"`{name}` must be a probability in [0, 1], got {value!r}.")


# --------------------------------------------------------------------------------------
# Circle masks (MFM)
# --------------------------------------------------------------------------------------


def squared_frequency_radius(height: int, width: int, reference_size: int = REFERENCE_IMAGE_SIZE,
                             device: Optional[torch.device] = None) -> torch.Tensor:
    """``(height, width)`` float64: ``rho^2`` of each shifted frequency, its squared distance from
    DC in spectrum pixels of a ``reference_size``-px image, the unit of the MFM radius (see
    `circle_mask`). Squared so that masks compare it with ``radius^2`` without a rounded root."""
    dy = torch.arange(height, device=device, dtype=torch.float64) - height // 2
    dx = torch.arange(width, device=device, dtype=torch.float64) - width // 2
    return (dy[:, None] * (reference_size / height)) ** 2 + (dx[None, :] * (reference_size / width)) ** 2


def circle_mask(
    height: int,
    width: int,
    radius: float = 16.0,
    radius_outer: float = 999.0,
    reference_size: int = REFERENCE_IMAGE_SIZE,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """The MFM low-pass circle in shifted coordinates, shape ``(height, width)``.

    A frequency is **removed** (0) when ``radius <= rho < radius_outer`` and kept (1)
    otherwise, where ``rho`` is its distance from DC measured in spectrum pixels *of a
    reference_size x reference_size image*::

        rho^2 = (reference_size * dy / height)^2 + (reference_size * dx / width)^2

    For a 224 x 224 image this is exactly the official mask (radius 16 keeps 793 of
    50,176 coefficients). For other sizes the radius scales with the side, so the kept
    band covers the same normalised frequencies (cycles per pixel) and about the same
    fraction of the spectrum; for non-square images the circle becomes the ellipse
    that is isotropic in cycles per pixel.
    """
    if radius <= 0:
        raise ValueError(f"`radius` must be > 0 spectrum pixels, got {radius!r}.")
    if radius_outer <= radius:
        raise ValueError(f"`radius_outer` ({radius_outer!r}) must be larger than `radius` ({radius!r}).")
    if height < 2 or width < 2:
        raise ValueError(f"Images must be at least 2x2 for frequency masking, got {height}x{width}.")
    rho_sq = squared_frequency_radius(height, width, reference_size, device)
    removed = (rho_sq >= radius**2) & (rho_sq < radius_outer**2)
    if torch.compiler.is_compiling():  # checked when the run is validated, before compiling
        return (~removed).float()
    if removed.all():
        raise ValueError(f"`radius` {radius!r} keeps no frequency of a {height}x{width} image.")
    if not removed.any():
        raise ValueError(f"`radius` {radius!r} removes no frequency of a {height}x{width} image.")
    return (~removed).float()


def sample_circle_masks(
    batch_size: int,
    height: int,
    width: int,
    radius: float = 16.0,
    radius_outer: float = 999.0,
    low_pass_prob: float = 0.5,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Per-image MFM masks ``(batch, 1, H, W)``: the low-pass circle with probability
    ``low_pass_prob``, its complement (high-pass) otherwise."""
    validate_probability("low_pass_prob", low_pass_prob)
    device = torch.device(device) if device is not None else torch.device("cpu")
    low_pass = circle_mask(height, width, radius, radius_outer, device=device)
    is_low_pass = (_random(torch.rand, (batch_size,), generator, device) < low_pass_prob).float().view(-1, 1, 1, 1)
    return is_low_pass * low_pass + (1 - is_low_pass) * (1 - low_pass)


# --------------------------------------------------------------------------------------
# Informed masks (FOLK's Com / RCom)
# --------------------------------------------------------------------------------------


def informed_masks(
    images: torch.Tensor,
    keep_ratios: Sequence[float] = (0.005, 0.01, 0.05),
    compress_prob: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FOLK's per-image informed filters, chosen from each image's own spectrum.

    For every image a ratio ``q`` is drawn uniformly from ``keep_ratios`` and
    ``k = round(q * H * W)`` frequencies with the largest magnitude (averaged over
    channels, so all channels share one mask) are selected. **Com** keeps exactly those
    ``k`` and removes the rest; **RCom** removes exactly those ``k`` and keeps the rest.
    Com is chosen with probability ``compress_prob``.

    Returns ``(masks, is_compress)``: masks ``(batch, 1, H, W)`` in shifted
    coordinates and a bool tensor ``(batch,)`` telling which images got Com.
    """
    validate_probability("compress_prob", compress_prob)
    if len(keep_ratios) == 0 or any(not 0.0 < q < 1.0 for q in keep_ratios):
        raise ValueError(f"`keep_ratios` must be a non-empty list of fractions in (0, 1), got {list(keep_ratios)!r}.")
    batch, _, height, width = images.shape
    device = images.device
    with _float32_fft_region(device):
        spectrum = torch.fft.fftshift(torch.fft.fft2(images.float()), dim=(-2, -1))
        magnitude = spectrum.abs().mean(dim=1).flatten(1)  # (B, H*W)
    ratio_index = (_random(torch.rand, (batch,), generator, device) * len(keep_ratios)).long().clamp_max(len(keep_ratios) - 1)
    ratios = torch.tensor(list(keep_ratios), device=device, dtype=torch.float64)[ratio_index]
    num_kept = (ratios * height * width).round().long().clamp(1, height * width - 1)
    # rank of every frequency by magnitude (0 = largest); stable so that ties break by position
    order = magnitude.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(height * width, device=device).expand(batch, -1))
    top = (rank < num_kept[:, None]).float().view(batch, 1, height, width)
    is_compress = _random(torch.rand, (batch,), generator, device) < compress_prob
    masks = torch.where(is_compress.view(-1, 1, 1, 1), top, 1 - top)
    return masks, is_compress


# --------------------------------------------------------------------------------------
# Applying masks
# --------------------------------------------------------------------------------------


def mirrored(weights: torch.Tensor) -> torch.Tensor:
    """``w(-f)`` for a map ``w`` over the FFT's own (unshifted) frequency grid ``(..., H, W)``:
    index ``(u, v)`` reads ``(-u mod H, -v mod W)``."""
    return torch.roll(torch.flip(weights, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))


def fold_to_onesided(weights: torch.Tensor) -> torch.Tensor:
    """Weights over the full unshifted grid ``(..., H, W)`` -> weights over ``rfft2``'s half
    grid ``(..., H, W // 2 + 1)`` with ``sum(w * d) == sum(fold(w) * d_half)`` for every ``d``
    with ``d(f) == d(-f)``, as any function of ``|FFT|`` of a real image: each dropped
    frequency's weight moves to its mirror; the columns that are their own mirror (0, and
    ``W / 2`` for even ``W``) keep their own."""
    width = weights.shape[-1]
    half = width // 2 + 1
    folded = weights[..., :half] + mirrored(weights)[..., :half]
    self_mirrored = [0, width // 2] if width % 2 == 0 else [0]
    folded[..., self_mirrored] = weights[..., self_mirrored]
    return folded


def apply_frequency_mask(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Filter ``images`` in the frequency domain as the official MFM code does:
    ``clamp(real(ifft2(ifftshift(fftshift(fft2(x)) * mask))), 0, 1)``.

    ``images`` are in [0, 1]; ``masks`` broadcast against ``(B, C, H, W)``. The result has
    the dtype of ``images``. The clamp matters: a high-pass image has no DC component, so
    about half of its pixels clip to 0.

    Computed on half the spectrum: for a real image the real part of the filtered image is
    the filter with the symmetric mask ``(M(f) + M(-f)) / 2`` (identical to ``M`` for the
    MFM circles), whose output is real, so ``rfft2`` / ``irfft2`` give the same result with
    half the transform work.
    """
    with _float32_fft_region(images.device):
        unshifted = torch.fft.ifftshift(masks.float(), dim=(-2, -1))
        symmetric = (unshifted + mirrored(unshifted)) / 2
        half = images.shape[-1] // 2 + 1
        spectrum = torch.fft.rfft2(images.float())
        filtered = torch.fft.irfft2(spectrum * symmetric[..., :half], s=images.shape[-2:])
    return filtered.clamp(0.0, 1.0).to(images.dtype)


# --------------------------------------------------------------------------------------
# The corruption baselines of the MFM paper (SR, deblur, denoise)
# --------------------------------------------------------------------------------------


def downsample_upsample(images: torch.Tensor, factor: int = 8, mode: str = "bicubic") -> torch.Tensor:
    """Super-resolution corruption: resize down by ``factor`` then back up, clamping to
    [0, 1] after each step (as the official code does)."""
    if not isinstance(factor, int) or factor < 2:
        raise ValueError(f"`sr_factor` must be an integer >= 2, got {factor!r}.")
    height, width = images.shape[-2:]
    if height // factor < 1 or width // factor < 1:
        raise ValueError(f"`sr_factor` {factor} is too large for {height}x{width} images.")
    low = F.interpolate(images, size=(height // factor, width // factor), mode=mode).clamp(0.0, 1.0)
    return F.interpolate(low, size=(height, width), mode=mode).clamp(0.0, 1.0)


def gaussian_kernel(size: int, sigma: float, device=None) -> torch.Tensor:
    """Normalised isotropic 2-D Gaussian kernel ``(size, size)`` (odd ``size``)."""
    if size % 2 != 1 or size < 1:
        raise ValueError(f"Blur kernel sizes must be odd positive integers, got {size!r}.")
    offsets = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    one_d = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = one_d[:, None] * one_d[None, :]
    return kernel / kernel.sum()


def gaussian_blur(
    images: torch.Tensor,
    sigma: float = 5.0,
    kernel_sizes: Sequence[int] = (7, 9, 11, 13, 15, 17, 19, 21),
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Deblurring corruption: per image, an isotropic Gaussian blur with a kernel size drawn
    uniformly from ``kernel_sizes``; borders reflect without repeating the edge (OpenCV's
    default, which the official code uses).

    All kernels are zero-padded to the largest size so the batch is blurred by one grouped
    convolution; zero taps read reflected pixels that the smaller kernel never weighs, so
    the result equals blurring each image with its own kernel.
    """
    if sigma <= 0:
        raise ValueError(f"`blur_sigma` must be > 0, got {sigma!r}.")
    batch, channels, height, width = images.shape
    max_size = max(kernel_sizes)
    pad = max_size // 2
    if pad >= min(height, width):
        raise ValueError(f"Blur kernels up to {max_size} px need images larger than {pad} px, got {height}x{width}.")
    device = images.device
    kernels = torch.stack([F.pad(gaussian_kernel(k, sigma, device), [(max_size - k) // 2] * 4) for k in kernel_sizes])
    choice = (_random(torch.rand, (batch,), generator, device) * len(kernel_sizes)).long().clamp_max(len(kernel_sizes) - 1)
    weight = kernels[choice].repeat_interleave(channels, dim=0).unsqueeze(1).to(images.dtype)
    padded = F.pad(images.reshape(1, batch * channels, height, width), [pad] * 4, mode="reflect")
    return F.conv2d(padded, weight, groups=batch * channels).reshape(batch, channels, height, width)


def add_gaussian_noise(
    images: torch.Tensor, sigma: float = 75.0 / 255.0, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Denoising corruption: additive per-pixel, per-channel Gaussian noise, not clipped."""
    if sigma <= 0:
        raise ValueError(f"`noise_sigma` must be > 0, got {sigma!r}.")
    return images + sigma * _random(torch.randn, images.shape, generator, images.device).to(images.dtype)


# --------------------------------------------------------------------------------------
# Frequency loss
# --------------------------------------------------------------------------------------


def frequency_distance(
    prediction: torch.Tensor,
    target: torch.Tensor,
    loss_gamma: float = 1.0,
    focal_weighting: bool = False,
    matrix_gamma: float = 1.0,
    log_matrix: bool = False,
    batch_matrix: bool = False,
    average_spectrum: bool = False,
    layout: str = "shifted",
) -> torch.Tensor:
    """Per-frequency distance of the focal frequency loss: ``(B, C, H, W)`` in shifted
    coordinates (``layout="shifted"``), or ``(B, C, H, W // 2 + 1)``, ``rfft2``'s half of the
    spectrum in the FFT's own order (``layout="onesided"``, for `masked_frequency_loss`: the
    distance of real images is symmetric, ``d(f) == d(-f)``, so half the spectrum holds it all).

    Both inputs are transformed with an orthonormal 2-D FFT in float32; the distance at each
    frequency is ``sqrt(dRe^2 + dIm^2 + 1e-12) ** loss_gamma``. With ``focal_weighting`` it
    is multiplied by the (detached) focal spectrum weight matrix, normalised per image and
    channel (or per batch with ``batch_matrix``), optionally log-scaled. MFM uses none of the
    focal options (``loss_gamma=1``, no weighting).
    """
    if layout not in ("shifted", "onesided"):
        raise ValueError(f"`layout` must be 'shifted' or 'onesided', got {layout!r}.")
    with _float32_fft_region(prediction.device):
        # the FFT is linear: one transform of the difference instead of one per input
        residual = prediction.float() - target.float()
        if average_spectrum:
            residual = residual.mean(0, keepdim=True)
        if layout == "onesided":
            diff = torch.fft.rfft2(residual, norm="ortho")
        else:
            diff = torch.fft.fftshift(torch.fft.fft2(residual, norm="ortho"), dim=(-2, -1))
        squared = torch.view_as_real(diff).square().sum(-1)
        distance = torch.sqrt(squared + 1e-12)
        if loss_gamma != 1:
            distance = distance**loss_gamma
        if focal_weighting:
            # the largest |d| of the half spectrum is the largest of the whole one
            weight = torch.sqrt(squared.detach()) ** matrix_gamma
            if log_matrix:
                weight = torch.log1p(weight)
            peak = weight.amax() if batch_matrix else weight.amax(dim=(-2, -1), keepdim=True)
            weight = torch.nan_to_num(weight / peak, nan=0.0).clamp(0.0, 1.0)
            distance = weight * distance
    return distance


def masked_frequency_loss(distance: torch.Tensor, masks: Optional[torch.Tensor], onesided_width: Optional[int] = None) -> torch.Tensor:
    """Reduce a per-frequency distance ``(B, C, H, W)`` to the MFM loss.

    With ``masks`` (``(B, 1, H, W)``, 1 = kept, in the same frequency order as ``distance``)
    only the **removed** frequencies count, and the normaliser is one ratio over the whole
    batch, as in the official code::

        sum_{b,c,u,v} d * (1 - M) / sum_{b,u,v} (1 - M) / C

    so images that lost many frequencies (low-pass) weigh more than those that lost few.
    With ``masks=None`` every frequency counts (the "all" target of SR/deblur/denoise).

    With ``onesided_width`` (the images' width), ``distance`` is the one-sided half
    (``frequency_distance(layout="onesided")``), ``masks`` are full-size in the FFT's own order,
    and the loss is the same number as over the full spectrum.
    """
    if masks is None:
        if onesided_width is None:
            return distance.mean()
        multiplicity = fold_to_onesided(distance.new_ones(distance.shape[-2], onesided_width))
        return (distance * multiplicity).sum() / (distance.shape[:-1].numel() * onesided_width)
    removed = 1.0 - masks.float()
    weights = removed
    if onesided_width is not None:
        if masks.shape[-1] != onesided_width or distance.shape[-1] != onesided_width // 2 + 1:
            raise ValueError(f"One-sided distances of {onesided_width}-wide images need masks {onesided_width} wide and "
                             f"distances {onesided_width // 2 + 1} wide, got {masks.shape[-1]} and {distance.shape[-1]}.")
        weights = fold_to_onesided(removed)
    return (distance * weights).sum() / removed.sum().clamp_min(1.0) / distance.shape[1]


def spectrum_image(images: torch.Tensor) -> torch.Tensor:
    """log(1 + |F|) of the channel mean, shifted and scaled to [0, 1] per image: ``(B, H, W)``,
    for figures."""
    with _float32_fft_region(images.device):
        magnitude = torch.fft.fftshift(torch.fft.fft2(images.float().mean(1)), dim=(-2, -1)).abs()
    log_mag = torch.log1p(magnitude)
    flat = log_mag.flatten(1)
    low, high = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    return (log_mag - low) / (high - low).clamp_min(1e-12)


__all__ = [
    "REFERENCE_IMAGE_SIZE",
    "add_gaussian_noise",
    "apply_frequency_mask",
    "circle_mask",
    "downsample_upsample",
    "fold_to_onesided",
    "frequency_distance",
    "gaussian_blur",
    "gaussian_kernel",
    "informed_masks",
    "masked_frequency_loss",
    "mirrored",
    "sample_circle_masks",
    "spectrum_image",
    "squared_frequency_radius",
    "validate_probability",
]
