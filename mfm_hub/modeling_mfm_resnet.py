"""MFM ResNet: base model, pre-training model, image classifier and backbone.

The encoder is timm's `ResNet` (``conv1``, ``bn1``, ``layer1..4``) with the pooling and
classifier removed, held as ``encoder`` so its state dict has the official key layout.
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndNoAttention,
)
from transformers.utils import can_return_tuple

from .configuration_mfm import MFMResNetConfig
from .modeling_common import (
    MFMForImageClassificationMixin,
    MFMForPreTrainingMixin,
    MFMPreTrainedModel,
    MFMStageBackboneMixin,
    default_conv_init,
    linear_decoder,
    make_checkpointable,
    prepare_pixel_values,
)


class MFMResNetPreTrainedModel(MFMPreTrainedModel):
    config_class = MFMResNetConfig
    base_model_prefix = "mfm_resnet"
    official_classifier = "fc"  # timm's ResNet classifier, which the official ResNet fine-tuning used
    supports_gradient_checkpointing = True
    _no_split_modules = ["Bottleneck", "BasicBlock"]

    #: layout of the inputs, and so of every activation: channels-last (NHWC) makes the ResNet's
    #: pre-training step faster on CPU in fp32 and bf16 (docs/SPEED.md). The weights keep the
    #: default layout, as transformers expects of parameters; the convolutions follow the input.
    memory_format = torch.channels_last

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """timm's ResNet initialisation: He-normal (fan-out) convolutions, unit BatchNorm with
        the last BatchNorm of every residual block zeroed; the MFM decoder keeps PyTorch's
        default conv init, as in the official code."""
        decoder = getattr(self, "decoder", None)
        if decoder is not None and module is decoder[0]:
            default_conv_init(module)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, Bottleneck):
            init.zeros_(module.bn3.weight)
        elif isinstance(module, BasicBlock):
            init.zeros_(module.bn2.weight)


#: MFM ResNet shapes that a timm architecture reproduces.
TIMM_RESNETS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


class MFMResNetModel(MFMResNetPreTrainedModel):
    """The bare MFM ResNet encoder.

    Input: normalised ``pixel_values`` ``(B, C, H, W)`` of any size.
    Output: `BaseModelOutputWithPoolingAndNoAttention` with ``last_hidden_state`` the
    stride-32 map ``(B, F, H/32, W/32)`` (F = 2048 for ResNet-50), ``pooler_output`` its
    global average ``(B, F)`` and, on request, ``hidden_states``: the stem (after max-pool)
    and the four stages, matching ``config.stage_names``.
    """

    def __init__(self, config: MFMResNetConfig):
        super().__init__(config)
        self.encoder = ResNet(
            block=Bottleneck if config.block_type == "bottleneck" else BasicBlock,
            layers=list(config.layers),
            channels=tuple(config.channels),
            in_chans=config.num_channels,
            num_classes=0,
            global_pool="",
            drop_path_rate=config.drop_path_rate,
        )
        make_checkpointable(block for stage in (self.encoder.layer1, self.encoder.layer2, self.encoder.layer3, self.encoder.layer4)
                            for block in stage)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.conv1

    def frozen_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, F)``: the global average of the last map, what the frozen-feature evaluation reads."""
        return self(pixel_values, return_dict=True).pooler_output

    def timm_architecture(self) -> tuple[str, dict, str]:
        """timm's name and arguments for this encoder, and its classifier's name (`mfm_hub.timm_export`)."""
        key = (self.config.block_type, tuple(self.config.layers))
        widths = tuple(self.config.channels)
        if key not in TIMM_RESNETS or widths != (64, 128, 256, 512):
            shapes = ", ".join(f"{name} ({block}, layers {list(layers)})" for (block, layers), name in TIMM_RESNETS.items())
            raise ValueError(f"No timm architecture has {key[0]} blocks with layers {list(key[1])} and channels {list(widths)}; "
                             f"timm export supports {shapes}, each with channels [64, 128, 256, 512].")
        return TIMM_RESNETS[key], dict(in_chans=self.config.num_channels, global_pool="avg"), "fc"

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: Optional[bool] = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`): normalised images.
        output_hidden_states (`bool`, *optional*): default: the config's. A ResNet has no attentions.

        Returns `BaseModelOutputWithPoolingAndNoAttention`: ``last_hidden_state`` ``(batch, num_features,
        height / 32, width / 32)``, ``pooler_output`` ``(batch, num_features)``, ``hidden_states`` (the stem
        and the four stages, ``(batch, channels_i, height_i, width_i)``) on request.
        """
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        pixel_values = prepare_pixel_values(pixel_values, self.config.num_channels, 1, "stride", self.dtype)
        pixel_values = pixel_values.contiguous(memory_format=self.memory_format)
        enc = self.encoder
        hidden = enc.maxpool(enc.act1(enc.bn1(enc.conv1(pixel_values))))
        all_hidden = [hidden]
        for stage in (enc.layer1, enc.layer2, enc.layer3, enc.layer4):
            hidden = stage(hidden)
            all_hidden.append(hidden)
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden,
            pooler_output=hidden.mean(dim=(-2, -1)),
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
        )
        return output


class MFMResNetForPreTraining(MFMForPreTrainingMixin, MFMResNetPreTrainedModel):
    """MFM pre-training of a ResNet: the stride-32 map -> 1x1 conv -> PixelShuffle(32).
    Images must be divisible by 32. See `MFMForPreTrainingMixin.forward`."""

    _new_weight_prefixes = ("decoder.",)

    def __init__(self, config: MFMResNetConfig):
        super().__init__(config)
        self.mfm_resnet = MFMResNetModel(config)
        self.decoder = linear_decoder(config.num_features, config.encoder_stride, config.num_channels)
        self.post_init()

    def encode_feature_map(self, pixel_values, output_hidden_states=None, output_attentions=None):
        outputs = self.mfm_resnet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        return outputs.last_hidden_state, outputs


class MFMResNetForImageClassification(MFMForImageClassificationMixin, MFMResNetPreTrainedModel):
    """MFM ResNet with global average pooling and a linear classifier; see
    `MFMForImageClassificationMixin.forward`."""

    def __init__(self, config: MFMResNetConfig):
        super().__init__(config)
        self.mfm_resnet = MFMResNetModel(config)
        self._add_classifier()


class MFMResNetBackbone(MFMStageBackboneMixin, BackboneMixin, MFMResNetPreTrainedModel):
    """MFM ResNet as a dense-prediction backbone: the maps of ``out_features`` (strides 4,
    4, 8, 16, 32 for stem, stage1..4)."""

    has_attentions = False

    def __init__(self, config: MFMResNetConfig):
        super().__init__(config)
        self.mfm_resnet = MFMResNetModel(config)
        self.num_features = config.stage_channels
        self.post_init()


__all__ = [
    "MFMResNetBackbone",
    "MFMResNetForImageClassification",
    "MFMResNetForPreTraining",
    "MFMResNetModel",
    "MFMResNetPreTrainedModel",
]
