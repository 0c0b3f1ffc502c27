"""The official MFM pre-training step, built the way the official code builds and runs it
(re-written from its description in ../shared/METHOD.md, not copied). It is the baseline of
``pretrain_throughput.py --side-by-side`` and the reference of the converter's parity tests.

What makes it the official structure:

* encoders: timm's ``Beit`` with the official arguments and BEiT's attention written out as
  matmul + softmax + matmul (``fused_attn`` off), or timm's ``ResNet`` (ResNet-50 layout);
* masks: the low-pass circle (a fixed radius in spectrum pixels) or its complement, chosen
  per sample with NumPy on the host, as the official data loader does, then copied in;
* forward: FFT masking in float32 with autocast off, clamp to [0, 1], normalise, encode,
  Conv1x1 + PixelShuffle decoder, and the masked frequency loss from two orthonormal FFTs
  (prediction and target), with one normaliser over the whole batch.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from timm.models.beit import Beit
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def official_vit(image_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, global_pool="token", num_classes=0) -> Beit:
    """timm's Beit with the official MFM ViT arguments (defaults: our ``vit-tiny-patch4-32`` shape)."""
    encoder = Beit(img_size=image_size, patch_size=patch_size, num_classes=num_classes, global_pool=global_pool,
                   embed_dim=embed_dim, depth=depth, num_heads=num_heads, qkv_bias=True,
                   norm_layer=partial(nn.LayerNorm, eps=1e-6), init_values=None, use_abs_pos_emb=True,
                   use_rel_pos_bias=False, use_shared_rel_pos_bias=False)
    for block in encoder.blocks:
        block.attn.fused_attn = False  # BEiT's attention, written out
    return encoder


def official_resnet50() -> ResNet:
    """The official ``ResNetForMFM`` encoder: timm's ResNet-50 without pooling and classifier."""
    return ResNet(block=Bottleneck, layers=[3, 4, 6, 3], num_classes=0)


class HostMasks:
    """Per-sample MFM masks drawn on the host with NumPy, as the official data loader draws
    them: the circle is built once; each sample gets it (low-pass) with probability
    ``low_pass_prob``, else its complement. ``radius`` is in spectrum pixels of this size."""

    def __init__(self, size: int, radius: float, low_pass_prob: float, seed: int = 0):
        offsets = np.arange(size) - size // 2
        rho_sq = offsets[:, None] ** 2 + offsets[None, :] ** 2
        self.low_pass = (rho_sq < radius**2).astype(np.float32)
        self.low_pass_prob = low_pass_prob
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: int) -> torch.Tensor:
        """``(batch, 1, size, size)``, 1 = kept, in shifted coordinates."""
        masks = [self.low_pass if self.rng.random() < self.low_pass_prob else 1 - self.low_pass for _ in range(batch)]
        return torch.from_numpy(np.stack(masks)[:, None])


class ReferenceMFM(nn.Module):
    """Encoder + linear decoder in the official key layout (``encoder.*``, ``decoder.0.*``)
    with the official forward."""

    def __init__(self, encoder: nn.Module, stride: int, features: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = nn.Sequential(nn.Conv2d(features, stride**2 * 3, kernel_size=1), nn.PixelShuffle(stride))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.encoder, Beit):
            tokens = self.encoder.forward_features(x)[:, 1:]
            side = int(tokens.shape[1] ** 0.5)
            return tokens.transpose(1, 2).reshape(x.shape[0], -1, side, side)
        return self.encoder.forward_features(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``(B, 3, H, W)`` in [0, 1], ``mask`` ``(B, 1, H, W)`` -> (features, reconstruction, loss)."""
        mean, std = MEAN.to(x.device), STD.to(x.device)
        with torch.autocast(x.device.type, enabled=False):
            freq = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))
            corrupted = torch.fft.ifft2(torch.fft.ifftshift(freq * mask, dim=(-2, -1))).real.clamp(0, 1)
        features = self.encode((corrupted - mean) / std)
        rec = self.decoder(features)
        with torch.autocast(x.device.type, enabled=False):
            target = (x - mean) / std
            pf = torch.fft.fftshift(torch.fft.fft2(rec.float(), norm="ortho"), dim=(-2, -1))
            tf = torch.fft.fftshift(torch.fft.fft2(target, norm="ortho"), dim=(-2, -1))
            d = torch.sqrt((pf.real - tf.real) ** 2 + (pf.imag - tf.imag) ** 2 + 1e-12)
            loss = (d * (1 - mask)).sum() / (1 - mask).sum() / 3
        return features, rec, loss
