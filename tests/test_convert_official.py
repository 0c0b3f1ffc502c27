"""Parity of the official-checkpoint converter.

The reference (`benchmarks/reference_mfm.py`, also the baseline of the speed comparison) is
built the way the official code builds MFM: timm's `Beit` / `ResNet` with the official
arguments and key layout, a Conv1x1 + PixelShuffle decoder, and the masking / loss as the
official forward does them. It is saved as the release does
(a dict with ``model``, a pickled yacs ``CfgNode`` config, optimizer state and epoch),
converted, and compared in float32 within `parity.FLOAT32_NETWORK` of their magnitude.
"""

import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from official_release import random_masks, randomize_, save_like_the_release
from parity import FLOAT32_NETWORK, assert_close
from torch import nn

from benchmarks.reference_mfm import MEAN, STD, HostMasks, ReferenceMFM, official_resnet50, official_vit
from mfm_hub import (
    MFMResNetForPreTraining,
    MFMViTForImageClassification,
    MFMViTForPreTraining,
    MFMViTModel,
)
from mfm_hub.convert_official import convert, load_official_checkpoint, main


def assert_map_family_parity(reference: ReferenceMFM, arch: str, model_class, size: int, tmp_path) -> None:
    """Save ``reference`` (randomised) like the release, convert it as ``arch`` and compare the
    stride-32 feature map, the reconstruction and the loss, relative to their scale."""
    randomize_(reference)
    reference.eval()
    save_like_the_release(reference.state_dict(), tmp_path / "release.pth")
    convert(tmp_path / "release.pth", arch, tmp_path / "hf")
    ours = model_class.from_pretrained(tmp_path / "hf").eval()
    x, mask = torch.rand(2, 3, size, size), random_masks(2, size)
    with torch.no_grad():
        ref_features, ref_rec, ref_loss = reference(x, mask)
        out = ours(x, frequency_mask=mask)
        features = ours.base_model((out.corrupted_pixel_values - MEAN) / STD).last_hidden_state
    assert_close(features, ref_features, FLOAT32_NETWORK, "features")
    assert_close(out.reconstruction, ref_rec, FLOAT32_NETWORK, "reconstruction")
    assert_close(out.loss, ref_loss, FLOAT32_NETWORK, "loss")


def test_vit_pretrained_checkpoint_parity(tmp_path):
    reference = ReferenceMFM(official_vit(), stride=4, features=192)
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
    assert_close(tokens.transpose(1, 2).reshape(ref_features.shape), ref_features, FLOAT32_NETWORK, "features")
    assert_close(out.reconstruction, ref_rec, FLOAT32_NETWORK, "reconstruction")
    assert_close(out.loss, ref_loss, FLOAT32_NETWORK, "loss")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "S-Lab License 1.0" in card and "mfm_vit.pth" in card


def test_resnet_pretrained_checkpoint_parity(tmp_path):
    reference = ReferenceMFM(official_resnet50(), stride=32, features=2048)
    assert_map_family_parity(reference, "resnet50", MFMResNetForPreTraining, 64, tmp_path)


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
        assert_close(ours(x).logits, reference(x), FLOAT32_NETWORK, "logits")
    assert ours.config.id2label[3] == "LABEL_3"  # not ImageNet: no names to give
    card = ModelCard.load(tmp_path / "hf" / "README.md").data
    assert (card.pipeline_tag, card.license, card.license_name) == ("image-classification", "other", "s-lab-license-1.0")


def test_an_imagenet_classifier_carries_the_class_names(tmp_path):
    reference = official_vit(global_pool="avg", num_classes=1000)
    save_like_the_release(reference.state_dict(), tmp_path / "in1k.pth")
    convert(tmp_path / "in1k.pth", "vit-tiny-patch4-32", tmp_path / "hf")
    config = MFMViTForImageClassification.from_pretrained(tmp_path / "hf").config
    assert config.id2label[0] == "tench, Tinca tinca" and config.id2label[207] == "golden retriever"
    assert config.label2id["golden retriever"] == 207 and len(config.id2label) == 1000


def test_mismatching_keys_are_listed(tmp_path):
    reference = ReferenceMFM(official_vit(), stride=4, features=192)
    state = reference.state_dict()
    del state["encoder.blocks.1.attn.q_bias"]
    state["encoder.extra.weight"] = torch.zeros(1)
    save_like_the_release(state, tmp_path / "bad.pth")
    with pytest.raises(
        ValueError, match=r"missing \['mfm_vit.encoder.blocks.1.attn.q_bias'\]; unexpected \['mfm_vit.encoder.extra.weight'\]"
    ):
        convert(tmp_path / "bad.pth", "vit-tiny-patch4-32", tmp_path / "hf")
    with pytest.raises(KeyError, match="Unknown --arch 'vit-huge'"):
        convert(tmp_path / "bad.pth", "vit-huge", tmp_path / "hf")


def test_wrong_arch_names_the_architecture_the_file_has(tmp_path):
    vit = ReferenceMFM(official_vit(), stride=4, features=192)
    save_like_the_release(vit.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"different shapes .*The file matches --arch vit-tiny-patch4-32\.") as error:
        convert(tmp_path / "vit.pth", "vit-small-patch16-224", tmp_path / "hf")
    assert "size mismatch" not in str(error.value)  # not torch's raw dump
    resnet = ReferenceMFM(official_resnet50(), stride=32, features=2048)
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
    with pytest.raises(ValueError, match=r"holds a pickled `posix.system`, which a safe load refuses to create") as refusal:
        load_official_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    assert "weights_only" not in str(refusal.value)  # never the advice to load it unsafely


def test_truncated_file_is_a_clear_error(tmp_path):
    save_like_the_release({"encoder.cls_token": torch.zeros(1, 1, 192)}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint: it is a zip archive, but not a PyTorch one, or a truncated one"):
        load_official_checkpoint(tmp_path / "cut.pth")


def test_an_official_file_with_non_finite_weights_is_refused_naming_them(tmp_path):
    save_like_the_release({"encoder.cls_token": torch.full((1, 1, 192), float("inf"))}, tmp_path / "diverged.pth")
    with pytest.raises(ValueError, match=r"diverged.pth holds non-finite weights: encoder.cls_token \(192 of 192 values\)"):
        load_official_checkpoint(tmp_path / "diverged.pth")


@pytest.mark.parametrize("content, kind", [
    (b"", "it is empty"),
    (b"hello, this is not a checkpoint", "it is text \('hello, this is not a checkpo"),
    (b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}", "it is a NumPy array file"),
    (bytes(range(200, 256)), "its format is unknown"),
])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, content, kind):
    """Not the unpickler's internals (a text file used to give `KeyError: 101`)."""
    (tmp_path / "file.pth").write_bytes(content)
    with pytest.raises(ValueError, match=f"file.pth is not a PyTorch checkpoint: {kind}"):
        load_official_checkpoint(tmp_path / "file.pth")


def test_command_line(tmp_path):
    reference = ReferenceMFM(official_vit(), stride=4, features=192)
    save_like_the_release(reference.state_dict(), tmp_path / "mfm.pth")
    main(["--checkpoint", str(tmp_path / "mfm.pth"), "--arch", "vit-tiny-patch4-32", "--output", str(tmp_path / "out")])
    assert isinstance(MFMViTModel.from_pretrained(tmp_path / "out"), MFMViTModel)
    help_text = subprocess.run([sys.executable, "-m", "mfm_hub.convert_official", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--push-to-hub" in help_text.stdout


# --------------------------------------------------------------------------------------
# Swin: the official code uses Microsoft's original Swin (patch merging at the end of a
# stage, index and mask buffers in the state dict); a transcription of its forward below
# --------------------------------------------------------------------------------------


def window_partition(x, window):  # (B, H, W, C) -> (B * nW, window * window, C)
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def window_reverse(windows, window, H, W):
    B = windows.shape[0] // (H * W // window**2)
    x = windows.view(B, H // window, W // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, -1)


class OfficialWindowAttention(nn.Module):
    def __init__(self, dim, window, heads):
        super().__init__()
        self.window, self.heads, self.scale = window, heads, (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", relative[..., 0] * (2 * window - 1) + relative[..., 1])
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            attn = attn.view(B // mask.shape[0], mask.shape[0], self.heads, N, N) + mask[None, :, None]
            attn = attn.view(-1, self.heads, N, N)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))


class OfficialSwinBlock(nn.Module):
    def __init__(self, dim, resolution, heads, window, shift):
        super().__init__()
        if min(resolution) <= window:  # the original's rule: one window, no shift
            window, shift = min(resolution), 0
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = OfficialWindowAttention(dim, window, heads)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, 4 * dim))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(4 * dim, dim))
        mask = None
        if shift:
            H, W = resolution
            regions = torch.zeros(1, H, W, 1)
            spans = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
            for n, (h, w) in enumerate((h, w) for h in spans for w in spans):
                regions[:, h, w, :] = n
            ids = window_partition(regions, window).squeeze(-1)
            mask = (ids[:, None, :] - ids[:, :, None]).ne(0).float() * -100.0
        self.register_buffer("attn_mask", mask)

    def forward(self, x):
        H, W = self.resolution
        B, L, C = x.shape
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), dims=(1, 2))
        x = window_reverse(self.attn(window_partition(x, self.window), self.attn_mask), self.window, H, W)
        if self.shift:
            x = torch.roll(x, (self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(B, L, C)
        return x + self.mlp(self.norm2(x))


class OfficialPatchMerging(nn.Module):
    def __init__(self, dim, resolution):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        H, W = self.resolution
        x = x.view(x.shape[0], H, W, -1)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(x.shape[0], -1, x.shape[-1])))


class OfficialSwin(nn.Module):
    def __init__(self, image_size, embed_dim, depths, heads, window, patch=4):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch, patch)
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        self.layers = nn.ModuleList()
        grid = image_size // patch
        for i, (depth, h) in enumerate(zip(depths, heads)):
            dim, resolution = embed_dim * 2**i, (grid // 2**i, grid // 2**i)
            stage = nn.Module()
            stage.blocks = nn.ModuleList(
                OfficialSwinBlock(dim, resolution, h, window, 0 if j % 2 == 0 else window // 2) for j in range(depth)
            )
            stage.downsample = OfficialPatchMerging(dim, resolution) if i < len(depths) - 1 else None
            self.layers.append(stage)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)

    def forward_features(self, x):
        x = self.patch_embed.norm(self.patch_embed.proj(x).flatten(2).transpose(1, 2))
        for stage in self.layers:
            for block in stage.blocks:
                x = block(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        x = self.norm(x)
        side = int(x.shape[1] ** 0.5)
        return x.transpose(1, 2).reshape(x.shape[0], -1, side, side)


def test_swin_pretrained_checkpoint_parity(tmp_path):
    from mfm_hub import MFMSwinForPreTraining

    encoder = OfficialSwin(224, 96, (2, 2, 6, 2), (3, 6, 12, 24), window=7)  # swin-tiny-patch4-window7-224
    reference = ReferenceMFM(encoder, stride=32, features=768)  # encodes with forward_features: the normed stride-32 map
    assert any(key.endswith("attn_mask") for key in reference.state_dict())  # buffers the release stores
    assert_map_family_parity(reference, "swin-tiny-patch4-window7-224", MFMSwinForPreTraining, 224, tmp_path)


@pytest.mark.parametrize("size", [32, 224])
def test_the_reference_host_masks_are_our_circles(size):
    from mfm_hub.frequency import circle_mask

    masks = HostMasks(size, radius=16 * size / 224, low_pass_prob=0.5)
    ours = circle_mask(size, size, radius=16.0)
    assert torch.equal(torch.from_numpy(masks.low_pass), ours)
    drawn = masks(64)
    assert drawn.shape == (64, 1, size, size) and 0 < sum(torch.equal(m[0], ours) for m in drawn) < 64
    assert all(torch.equal(m[0], ours) or torch.equal(m[0], 1 - ours) for m in drawn)
