"""The frequency operations against direct transcriptions of the official formulas."""

import math

import pytest
import torch
import torch.nn.functional as F
from parity import BFLOAT16_OUTPUT, FLOAT32_ONE_OP, assert_close

from mfm_hub import frequency as fq


def official_circle_mask(size, r1=16, r2=999):
    """The official FreqMaskGenerator loop, transcribed (square images only)."""
    mask = torch.ones(size, size)
    c = size // 2
    for y in range(size):
        for x in range(size):
            d2 = (x - c) ** 2 + (y - c) ** 2
            if r1**2 <= d2 < r2**2:
                mask[y, x] = 0
    return mask


def reference_corrupt(x, mask):
    """clamp(real(ifft2(ifftshift(fftshift(fft2(x)) * M))), 0, 1), literally."""
    freq = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    return torch.fft.ifft2(torch.fft.ifftshift(freq * mask, dim=(-2, -1))).real.clamp(0, 1)


def reference_masked_loss(pred, target, mask):
    """The official FrequencyLoss (gamma 1, no matrix) and masked reduction."""
    pf = torch.fft.fftshift(torch.fft.fft2(pred, norm="ortho"), dim=(-2, -1))
    tf = torch.fft.fftshift(torch.fft.fft2(target, norm="ortho"), dim=(-2, -1))
    d = torch.sqrt((pf.real - tf.real) ** 2 + (pf.imag - tf.imag) ** 2 + 1e-12)
    return (d * (1 - mask)).sum() / (1 - mask).sum() / pred.shape[1]


def test_circle_mask_matches_official_at_224():
    ours = fq.circle_mask(224, 224)
    assert torch.equal(ours, official_circle_mask(224))
    assert int(ours.sum()) == 793


@pytest.mark.parametrize("size", [(32, 32), (33, 33), (28, 40), (31, 64)])
def test_circle_mask_scales_with_image_size(size):
    h, w = size
    mask = fq.circle_mask(h, w)
    assert mask[h // 2, w // 2] == 1  # DC kept by the low-pass
    # symmetric under f -> -f (a real filter), for odd and even sides
    # index i holds frequency i - n//2, so -f sits at index (2 * (n//2) - i) mod n
    mirror_y = (2 * (h // 2) - torch.arange(h)) % h
    mirror_x = (2 * (w // 2) - torch.arange(w)) % w
    mirrored = mask[mirror_y][:, mirror_x]
    assert torch.equal(mask, mirrored)
    # the kept band covers about the official fraction of the spectrum (793 / 50176)
    kept_fraction = mask.mean().item()
    assert 0.5 * 793 / 50176 < kept_fraction < 3 * 793 / 50176


def test_sample_circle_masks_probability_and_seed():
    gen = torch.Generator().manual_seed(0)
    masks = fq.sample_circle_masks(4000, 16, 16, low_pass_prob=0.3, generator=gen)
    low = fq.circle_mask(16, 16)
    is_low = (masks[:, 0] == low).flatten(1).all(1)
    is_high = (masks[:, 0] == 1 - low).flatten(1).all(1)
    assert torch.all(is_low ^ is_high)
    assert abs(is_low.float().mean().item() - 0.3) < 0.03
    again = fq.sample_circle_masks(4000, 16, 16, low_pass_prob=0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)
    assert fq.sample_circle_masks(8, 16, 16, low_pass_prob=1.0).eq(low).all()
    assert fq.sample_circle_masks(8, 16, 16, low_pass_prob=0.0).eq(1 - low).all()


@pytest.mark.parametrize("size", [(32, 32), (27, 35)])
def test_apply_frequency_mask_matches_reference(size):
    x = torch.rand(3, 3, *size)
    masks = fq.sample_circle_masks(3, *size, generator=torch.Generator().manual_seed(1))
    ours = fq.apply_frequency_mask(x, masks)
    assert_close(ours, reference_corrupt(x, masks), FLOAT32_ONE_OP, "corrupted")
    high_pass = fq.apply_frequency_mask(x, 1 - fq.circle_mask(*size).expand(3, 1, *size))
    assert (high_pass == 0).float().mean() > 0.3  # the clamp clips about half the pixels


@pytest.mark.parametrize("size", [(16, 16), (15, 20), (21, 17)])
def test_half_spectrum_filter_equals_the_full_filter_for_any_mask(size):
    """`apply_frequency_mask` runs rfft2/irfft2; for asymmetric masks (informed masks can break
    ties one-sidedly) it must still equal the literal full-spectrum formula, odd sides included."""
    x = torch.rand(4, 3, *size, dtype=torch.float64).float()
    masks = (torch.rand(4, 1, *size, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    unshifted = torch.fft.ifftshift(masks, dim=(-2, -1))
    assert not torch.equal(unshifted, fq.mirrored(unshifted))  # really asymmetric
    assert_close(fq.apply_frequency_mask(x, masks), reference_corrupt(x, masks), FLOAT32_ONE_OP, "corrupted")


@pytest.mark.parametrize("size", [(16, 16), (15, 20), (21, 17)])
@pytest.mark.parametrize("focal", [False, True])
def test_onesided_loss_equals_the_full_spectrum_loss_and_gradients(size, focal):
    pred = torch.randn(3, 3, *size, requires_grad=True)
    target = torch.randn(3, 3, *size)
    masks = (torch.rand(3, 1, *size, generator=torch.Generator().manual_seed(1)) < 0.3).float()  # FFT order, asymmetric
    options = dict(focal_weighting=focal, matrix_gamma=2.0, log_matrix=focal)
    for mask in (masks, None):
        full = fq.masked_frequency_loss(torch.fft.ifftshift(fq.frequency_distance(pred, target, **options), dim=(-2, -1)), mask)
        half = fq.masked_frequency_loss(fq.frequency_distance(pred, target, layout="onesided", **options), mask, onesided_width=size[1])
        full_grad, = torch.autograd.grad(full, pred)
        half_grad, = torch.autograd.grad(half, pred)
        assert_close(half, full, FLOAT32_ONE_OP, "loss")
        assert_close(half_grad, full_grad, FLOAT32_ONE_OP, "gradient")


def test_fold_to_onesided_keeps_every_weight_once():
    weights = torch.arange(5 * 6, dtype=torch.float32).view(5, 6)
    folded = fq.fold_to_onesided(weights)
    assert folded.shape == (5, 4)
    assert folded.sum() == weights.sum()
    # column 1 also carries column 5 (= -1) of the mirrored row; columns 0 and 3 are their own mirrors
    assert folded[2, 1] == weights[2, 1] + weights[3, 5]
    assert folded[2, 0] == weights[2, 0] and folded[2, 3] == weights[2, 3]
    with pytest.raises(ValueError, match="need masks 6 wide"):
        fq.masked_frequency_loss(torch.ones(1, 3, 5, 4), torch.ones(1, 1, 5, 7), onesided_width=6)


def test_apply_frequency_mask_runs_fft_in_float32_under_autocast():
    x = torch.rand(2, 3, 16, 16)
    masks = fq.sample_circle_masks(2, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fq.apply_frequency_mask(x.bfloat16(), masks)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), reference_corrupt(x.bfloat16().float(), masks), BFLOAT16_OUTPUT, "corrupted")


def test_informed_masks_keep_exactly_the_top_fraction():
    x = torch.rand(6, 3, 20, 24)
    masks, is_compress = fq.informed_masks(x, keep_ratios=(0.05, 0.1), compress_prob=0.5, generator=torch.Generator().manual_seed(3))
    magnitude = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)).abs().mean(1).flatten(1)
    for i in range(6):
        mask = masks[i, 0].flatten()
        top = mask if is_compress[i] else 1 - mask
        k = int(top.sum())
        assert k in (round(0.05 * 480), round(0.1 * 480))
        # the selected set is exactly the k largest magnitudes
        threshold = magnitude[i].sort(descending=True).values[k - 1]
        assert torch.all(magnitude[i][top.bool()] >= threshold)
        assert torch.all(magnitude[i][~top.bool()] <= threshold)
    assert is_compress.any() and (~is_compress).any()


def test_informed_masks_compress_prob_extremes():
    x = torch.rand(4, 3, 16, 16)
    com, flags = fq.informed_masks(x, keep_ratios=(0.1,), compress_prob=1.0)
    rcom, flags_r = fq.informed_masks(x, keep_ratios=(0.1,), compress_prob=0.0)
    assert flags.all() and not flags_r.any()
    assert torch.equal(com, 1 - rcom)


def test_sr_corruption():
    x = torch.rand(2, 3, 32, 32)
    out = fq.downsample_upsample(x, 8)
    expected = F.interpolate(F.interpolate(x, size=(4, 4), mode="bicubic").clamp(0, 1), size=(32, 32), mode="bicubic").clamp(0, 1)
    assert torch.equal(out, expected)


def test_gaussian_blur_equals_per_image_kernels():
    x = torch.rand(5, 3, 30, 26)
    sizes = (7, 13, 21)
    out = fq.gaussian_blur(x, sigma=5.0, kernel_sizes=sizes, generator=torch.Generator().manual_seed(0))
    # redraw the same choices to build the per-image reference
    choice = (torch.rand(5, generator=torch.Generator().manual_seed(0)) * len(sizes)).long()
    for i in range(5):
        k = sizes[choice[i]]
        weight = fq.gaussian_kernel(k, 5.0).expand(3, 1, k, k)
        ref = F.conv2d(F.pad(x[i : i + 1], [k // 2] * 4, mode="reflect"), weight, groups=3)
        assert_close(out[i : i + 1], ref, FLOAT32_ONE_OP, f"image {i}")


def test_gaussian_noise_is_unclipped_with_the_right_sigma():
    x = torch.full((4, 3, 64, 64), 0.5)
    noisy = fq.add_gaussian_noise(x, 75 / 255, generator=torch.Generator().manual_seed(0))
    assert abs((noisy - x).std().item() - 75 / 255) < 0.01
    assert (noisy > 1).any() and (noisy < 0).any()


def test_masked_loss_matches_official_reduction():
    pred, target = torch.randn(4, 3, 24, 24), torch.randn(4, 3, 24, 24)
    masks = fq.sample_circle_masks(4, 24, 24, low_pass_prob=0.5, generator=torch.Generator().manual_seed(0))
    ours = fq.masked_frequency_loss(fq.frequency_distance(pred, target), masks)
    assert_close(ours, reference_masked_loss(pred, target, masks), FLOAT32_ONE_OP, "loss")
    perfect = fq.masked_frequency_loss(fq.frequency_distance(target, target), masks)
    assert perfect.item() == pytest.approx(1e-6, rel=1e-3)  # only the sqrt epsilon is left
    everything = fq.masked_frequency_loss(fq.frequency_distance(pred, target), None)
    assert_close(everything, fq.frequency_distance(pred, target).mean(), FLOAT32_ONE_OP, "unmasked loss")


def test_focal_weighting_matches_its_definition():
    pred, target = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    pf = torch.fft.fftshift(torch.fft.fft2(pred, norm="ortho"), dim=(-2, -1))
    tf = torch.fft.fftshift(torch.fft.fft2(target, norm="ortho"), dim=(-2, -1))
    dist = (pf - tf).abs()
    weight = torch.log1p(dist**2.0)
    weight = weight / weight.amax(dim=(-2, -1), keepdim=True)
    expected = weight * torch.sqrt(dist**2 + 1e-12)
    ours = fq.frequency_distance(pred, target, focal_weighting=True, matrix_gamma=2.0, log_matrix=True)
    assert_close(ours, expected, FLOAT32_ONE_OP, "distance")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: fq.circle_mask(32, 32, radius=0), "radius"),
        (lambda: fq.circle_mask(32, 32, radius=10, radius_outer=5), "radius_outer"),
        (lambda: fq.circle_mask(32, 32, radius=500), "removes no frequency"),
        (lambda: fq.sample_circle_masks(2, 8, 8, low_pass_prob=1.5), "low_pass_prob"),
        (lambda: fq.informed_masks(torch.rand(1, 3, 8, 8), keep_ratios=(1.5,)), "keep_ratios"),
        (lambda: fq.informed_masks(torch.rand(1, 3, 8, 8), compress_prob=-0.1), "compress_prob"),
        (lambda: fq.downsample_upsample(torch.rand(1, 3, 8, 8), 16), "too large"),
        (lambda: fq.gaussian_blur(torch.rand(1, 3, 8, 8)), "larger than"),
        (lambda: fq.gaussian_blur(torch.rand(1, 3, 32, 32), sigma=0), "blur_sigma"),
        (lambda: fq.gaussian_kernel(4, 1.0), "odd"),
        (lambda: fq.add_gaussian_noise(torch.rand(1, 3, 8, 8), sigma=-1), "noise_sigma"),
    ],
)
def test_invalid_values_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_spectrum_image_range():
    img = fq.spectrum_image(torch.rand(2, 3, 16, 20))
    assert img.shape == (2, 16, 20) and img.min() >= 0 and img.max() <= 1 + 1e-6
    assert not math.isnan(img.sum().item())
