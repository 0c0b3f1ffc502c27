"""Parity of the official-checkpoint converter.

The reference is built the way the official code builds MFM: timm's `Beit` / `ResNet` with
the official arguments and the official key layout, a Conv1x1 + PixelShuffle decoder, and
the masking / loss transcribed from the official forward. It is saved as the release does
(a dict with ``model``, a pickled yacs ``CfgNode`` config, optimizer state and epoch),
converted, and compared within 1e-5 in float32.
"""

import os
import subprocess
import sys
import types
from functools import partial

import pytest
import torch
from timm.models.beit import Beit
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from mfm_hub import (
    MFMResNetForPreTraining,
    MFMViTForImageClassification,
    MFMViTForPreTraining,
    MFMViTModel,
)
from mfm_hub.convert_official import convert, load_official_checkpoint, main

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TOLERANCE = 1e-5


class OfficialStyleMFM(nn.Module):
    """Encoder + linear decoder in the official layout and forward (transcribed)."""

    def __init__(self, encoder: nn.Module, stride: int, features: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = nn.Sequential(nn.Conv2d(features, stride**2 * 3, kernel_size=1), nn.PixelShuffle(stride))

    def encode(self, x):
        if isinstance(self.encoder, Beit):
            tokens = self.encoder.forward_features(x)[:, 1:]
            side = int(tokens.shape[1] ** 0.5)
            return tokens.transpose(1, 2).reshape(x.shape[0], -1, side, side)
        return self.encoder.forward_features(x)

    def forward(self, x, mask):
        freq = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
        corrupted = torch.fft.ifft2(torch.fft.ifftshift(freq * mask, dim=(-2, -1))).real.clamp(0, 1)
        features = self.encode((corrupted - MEAN) / STD)
        rec = self.decoder(features)
        target = (x - MEAN) / STD
        pf = torch.fft.fftshift(torch.fft.fft2(rec, norm="ortho"), dim=(-2, -1))
        tf = torch.fft.fftshift(torch.fft.fft2(target, norm="ortho"), dim=(-2, -1))
        d = torch.sqrt((pf.real - tf.real) ** 2 + (pf.imag - tf.imag) ** 2 + 1e-12)
        loss = (d * (1 - mask)).sum() / (1 - mask).sum() / 3
        return features, rec, loss


def official_vit(global_pool="token", num_classes=0):
    """The official ViT arguments at the shape of our ``vit-tiny-patch4-32`` preset."""
    return Beit(img_size=32, patch_size=4, num_classes=num_classes, global_pool=global_pool, embed_dim=192, depth=12,
                num_heads=3, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), init_values=None,
                use_abs_pos_emb=True, use_rel_pos_bias=False, use_shared_rel_pos_bias=False)


def randomize_(module: nn.Module) -> None:
    """Random values everywhere (norms and biases too) so no default can hide a mismatch."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + [b for n, b in module.named_buffers() if "running" in n]:
            tensor.copy_(torch.rand_like(tensor) * 0.2 + (0.9 if tensor.ndim == 1 else -0.1))


def save_like_the_release(state_dict, path):
    """torch.save a release-style dict, with the config pickled as a ``yacs.config.CfgNode``."""
    yacs, yacs_config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, *args):
            super().__init__(*args)
            self.__dict__["__immutable__"] = True

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    yacs_config.CfgNode, yacs.config = CfgNode, yacs_config
    sys.modules.update({"yacs": yacs, "yacs.config": yacs_config})
    try:
        config = CfgNode({"MODEL": CfgNode({"TYPE": "vit"}), "DATA": CfgNode({"IMG_SIZE": 32})})
        torch.save({"model": state_dict, "config": config, "epoch": 299, "optimizer": {"state": {}, "param_groups": []}}, path)
    finally:
        del sys.modules["yacs"], sys.modules["yacs.config"]


def random_masks(batch, size):
    low = torch.zeros(size, size)
    c = size // 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    low[((yy - c) ** 2 + (xx - c) ** 2) < 3**2] = 1
    return torch.stack([low if i % 2 else 1 - low for i in range(batch)]).unsqueeze(1)


def test_vit_pretrained_checkpoint_parity(tmp_path):
    reference = OfficialStyleMFM(official_vit(), stride=4, features=192)
    randomize_(reference)
    reference.eval()
    save_like_the_release(reference.state_dict(), tmp_path / "mfm_vit.pth")
    convert(tmp_path / "mfm_vit.pth", "vit-tiny-patch4-32", tmp_path / "hf", image_size=None)
    ours = MFMViTForPreTraining.from_pretrained(tmp_path / "hf").eval()

    x, mask = torch.rand(4, 3, 32, 32), random_masks(4, 32)
    with torch.no_grad():
        ref_features, ref_rec, ref_loss = reference(x, mask)
        out = ours(x, frequency_mask=mask, output_hidden_states=True)
        tokens = ours.mfm_vit(((out.corrupted_pixel_values - MEAN) / STD)).last_hidden_state[:, 1:]
    assert torch.allclose(tokens.transpose(1, 2).reshape(ref_features.shape), ref_features, atol=TOLERANCE)
    assert torch.allclose(out.reconstruction, ref_rec, atol=TOLERANCE)
    assert abs(out.loss.item() - ref_loss.item()) < TOLERANCE
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "S-Lab License 1.0" in card and "mfm_vit.pth" in card


def test_resnet_pretrained_checkpoint_parity(tmp_path):
    encoder = ResNet(block=Bottleneck, layers=[3, 4, 6, 3], num_classes=0)  # official ResNetForMFM arguments
    reference = OfficialStyleMFM(encoder, stride=32, features=2048)
    randomize_(reference)
    reference.eval()
    save_like_the_release(reference.state_dict(), tmp_path / "mfm_r50.pth")
    convert(tmp_path / "mfm_r50.pth", "resnet50", tmp_path / "hf")
    ours = MFMResNetForPreTraining.from_pretrained(tmp_path / "hf").eval()
    x, mask = torch.rand(2, 3, 64, 64), random_masks(2, 64)
    with torch.no_grad():
        ref_features, ref_rec, ref_loss = reference(x, mask)
        out = ours(x, frequency_mask=mask)
        features = ours.mfm_resnet((out.corrupted_pixel_values - MEAN) / STD).last_hidden_state
    assert torch.allclose(features, ref_features, atol=TOLERANCE * ref_features.abs().max())
    assert torch.allclose(out.reconstruction, ref_rec, atol=TOLERANCE * ref_rec.abs().max())
    assert abs(out.loss.item() - ref_loss.item()) < TOLERANCE * abs(ref_loss.item())


def test_vit_finetuned_checkpoint_parity(tmp_path):
    reference = official_vit(global_pool="avg", num_classes=10)  # fine-tuned: fc_norm + head, no norm
    randomize_(reference)
    reference.eval()
    keys = set(reference.state_dict())
    assert "fc_norm.weight" in keys and "head.weight" in keys and "norm.weight" not in keys
    save_like_the_release(reference.state_dict(), tmp_path / "ft.pth")
    convert(tmp_path / "ft.pth", "vit-tiny-patch4-32", tmp_path / "hf")
    ours = MFMViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert ours.config.use_mean_pooling and ours.config.num_labels == 10
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x).logits, reference(x), atol=TOLERANCE)


def test_mismatching_keys_are_listed(tmp_path):
    reference = OfficialStyleMFM(official_vit(), stride=4, features=192)
    state = reference.state_dict()
    del state["encoder.blocks.1.attn.q_bias"]
    state["encoder.extra.weight"] = torch.zeros(1)
    save_like_the_release(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing \['mfm_vit.encoder.blocks.1.attn.q_bias'\]; unexpected \['mfm_vit.encoder.extra.weight'\]"):
        convert(tmp_path / "bad.pth", "vit-tiny-patch4-32", tmp_path / "hf")
    with pytest.raises(KeyError, match="Unknown --arch 'vit-huge'"):
        convert(tmp_path / "bad.pth", "vit-huge", tmp_path / "hf")


def test_wrong_arch_names_the_architecture_the_file_has(tmp_path):
    vit = OfficialStyleMFM(official_vit(), stride=4, features=192)
    save_like_the_release(vit.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"different shapes .*The file matches --arch vit-tiny-patch4-32\.") as error:
        convert(tmp_path / "vit.pth", "vit-small-patch16-224", tmp_path / "hf")
    assert "size mismatch" not in str(error.value)  # not torch's raw dump
    resnet = OfficialStyleMFM(ResNet(block=Bottleneck, layers=[3, 4, 6, 3], num_classes=0), stride=32, features=2048)
    save_like_the_release(resnet.state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match=r"The file matches --arch resnet50\."):
        convert(tmp_path / "r50.pth", "resnet18", tmp_path / "hf")
    with pytest.raises(ValueError, match=r"The file matches --arch resnet50\."):
        convert(tmp_path / "r50.pth", "vit-base", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()  # nothing written on a refusal


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {"encoder.cls_token": torch.zeros(1)}, "payload": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="safe load refuses"):
        load_official_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def test_truncated_file_is_a_clear_error(tmp_path):
    save_like_the_release({"encoder.cls_token": torch.zeros(1, 1, 192)}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_official_checkpoint(tmp_path / "cut.pth")


def test_command_line(tmp_path):
    reference = OfficialStyleMFM(official_vit(), stride=4, features=192)
    save_like_the_release(reference.state_dict(), tmp_path / "mfm.pth")
    main(["--checkpoint", str(tmp_path / "mfm.pth"), "--arch", "vit-tiny-patch4-32", "--output", str(tmp_path / "out")])
    assert isinstance(MFMViTModel.from_pretrained(tmp_path / "out"), MFMViTModel)
    help_text = subprocess.run([sys.executable, "-m", "mfm_hub.convert_official", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--push-to-hub" in help_text.stdout
