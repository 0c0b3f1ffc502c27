"""MFM Swin Transformer: base model, pre-training model, image classifier and backbone.

The encoder is timm's `SwinTransformer` (patch 4, shifted windows, patch merging between
stages) without its classifier, held as ``encoder``. As in the official MFM code (SimMIM's
Swin), pre-training decodes the normed stride-32 map with a 1x1 conv + PixelShuffle(32).
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.models.swin_transformer import SwinTransformer, WindowAttention, checkpoint_filter_fn, get_relative_position_index
from torch import nn
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import can_return_tuple

from .configuration_mfm import MFMSwinConfig
from .modeling_common import (
    AttentionRecorder,
    MFMForImageClassificationMixin,
    MFMForPreTrainingMixin,
    MFMPreTrainedModel,
    MFMStageBackboneMixin,
    default_conv_init,
    linear_decoder,
    make_checkpointable,
    prepare_pixel_values,
    recorded_attentions,
)


class MFMSwinAttention(AttentionRecorder, WindowAttention):
    """timm's window attention, with its kernel choice kept (``fused_kernel``) and its
    probabilities recordable (`mfm_hub.modeling_common.recorded_attentions`)."""

    fused_kernel: bool = False

    def uses_fused_kernel(self) -> bool:
        return self.fused_kernel


class MFMSwinPreTrainedModel(MFMPreTrainedModel):
    config_class = MFMSwinConfig
    base_model_prefix = "mfm_swin"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SwinTransformerBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """timm's Swin initialisation: truncated normal (std 0.02) for linear layers and the
        relative position bias tables, unit LayerNorms, PyTorch's conv init for the patch
        embedding and the MFM decoder. The relative position index is a non-persistent
        buffer (not in checkpoints), so it is recomputed here for models built on the meta
        device by `from_pretrained`."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            default_conv_init(module)
        elif isinstance(module, WindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=self.config.initializer_range)
            init.copy_(module.relative_position_index, get_relative_position_index(*module.window_size).view(-1).to(
                module.relative_position_index.device).view_as(module.relative_position_index))


def _to_map(tokens: torch.Tensor) -> torch.Tensor:
    """timm's NHWC stage output -> ``(B, C, H, W)``."""
    return tokens.permute(0, 3, 1, 2).contiguous()


class MFMSwinModel(MFMSwinPreTrainedModel):
    """The bare MFM Swin encoder.

    Input: normalised ``pixel_values`` ``(B, C, H, W)``, H and W divisible by 32 (timm's
    dynamic size mode pads grids that the window does not divide and builds the shifted
    window masks per input).
    Output: `BaseModelOutputWithPooling` with ``last_hidden_state`` the normed
    stride-32 map ``(B, 8 * embed_dim, H/32, W/32)``, ``pooler_output`` its global average
    ``(B, 8 * embed_dim)`` and, on request, ``hidden_states``: the patch embedding and the
    four stages as ``(B, C_i, H_i, W_i)`` maps, matching ``config.stage_names``.
    """

    def __init__(self, config: MFMSwinConfig):
        super().__init__(config)
        self.encoder = SwinTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=config.num_channels,
            num_classes=0,
            embed_dim=config.embed_dim,
            depths=tuple(config.depths),
            num_heads=tuple(config.num_heads),
            window_size=config.window_size,
            mlp_ratio=config.mlp_ratio,
            qkv_bias=config.qkv_bias,
            drop_path_rate=config.drop_path_rate,
            dynamic_img_size=True,
        )
        blocks = [block for stage in self.encoder.layers for block in stage.blocks]
        for block in blocks:
            block.attn.__class__ = MFMSwinAttention  # same parameters; its probabilities become recordable
            block.attn.fused_kernel = vars(block.attn).pop("fused_attn")
        make_checkpointable(blocks)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.patch_embed

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`): normalised images.
        output_hidden_states, output_attentions (`bool`, *optional*): default: the config's.

        Returns `BaseModelOutputWithPooling` (see the class docstring); ``attentions`` on request: one per
        block, ``(batch * windows, num_heads_i, window_size^2, window_size^2)``, as transformers' Swin.
        """
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        pixel_values = prepare_pixel_values(
            pixel_values, self.config.num_channels, self.config.encoder_stride, "encoder stride", self.dtype
        )
        hidden = self.encoder.patch_embed(pixel_values)
        all_hidden = [_to_map(hidden)]
        with recorded_attentions(self.encoder, output_attentions) as attentions:
            for stage in self.encoder.layers:
                hidden = stage(hidden)
                all_hidden.append(_to_map(hidden))
        last = _to_map(self.encoder.norm(hidden))
        output = BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=last.mean(dim=(-2, -1)),
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
        return output

    def frozen_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 8 * embed_dim)``: the global average of the normed last map."""
        return self(pixel_values, return_dict=True).pooler_output

    def timm_architecture(self) -> tuple[str, dict, str]:
        """timm's name and arguments for this encoder, and its classifier's name (`mfm_hub.timm_export`):
        timm's SwinTransformer with this config's shape, in the same dynamic-size mode, pooling
        the normed last map as ``pooler_output`` does."""
        config = self.config
        arguments = dict(img_size=config.image_size, patch_size=config.patch_size, in_chans=config.num_channels,
                         embed_dim=config.embed_dim, depths=tuple(config.depths), num_heads=tuple(config.num_heads),
                         window_size=config.window_size, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
                         dynamic_img_size=True, global_pool="avg")
        return "swin_tiny_patch4_window7_224", arguments, "head.fc"

    def official_encoder_keys(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The official code's Swin (Microsoft's original) merges patches at the *end* of a
        stage and stores its index / mask buffers; timm merges at the start of the next stage
        and recomputes the buffers. timm's own converter for original Swin weights does this."""
        return checkpoint_filter_fn(state_dict, self.encoder)


class MFMSwinForPreTraining(MFMForPreTrainingMixin, MFMSwinPreTrainedModel):
    """MFM pre-training of a Swin: the normed stride-32 map -> 1x1 conv -> PixelShuffle(32)
    (the official ``SwinTransformerForMFM``). See `MFMForPreTrainingMixin.forward`."""

    _new_weight_prefixes = ("decoder.",)

    def __init__(self, config: MFMSwinConfig):
        super().__init__(config)
        self.mfm_swin = MFMSwinModel(config)
        self.decoder = linear_decoder(config.num_features, config.encoder_stride, config.num_channels)
        self.post_init()

    def encode_feature_map(self, pixel_values, output_hidden_states=None, output_attentions=None):
        outputs = self.mfm_swin(pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                                return_dict=True)
        return outputs.last_hidden_state, outputs


class MFMSwinForImageClassification(MFMForImageClassificationMixin, MFMSwinPreTrainedModel):
    """MFM Swin with global average pooling and a linear classifier; see
    `MFMForImageClassificationMixin.forward`."""

    def __init__(self, config: MFMSwinConfig):
        super().__init__(config)
        self.mfm_swin = MFMSwinModel(config)
        self._add_classifier()


class MFMSwinBackbone(MFMStageBackboneMixin, BackboneMixin, MFMSwinPreTrainedModel):
    """MFM Swin as a dense-prediction backbone: the maps of ``out_features`` (strides 4, 8,
    16, 32 for stage1..4; ``stem`` is the patch embedding at stride 4), UperNet's pyramid."""

    has_attentions = False

    def __init__(self, config: MFMSwinConfig):
        super().__init__(config)
        self.mfm_swin = MFMSwinModel(config)
        self.num_features = config.stage_channels
        self.post_init()


__all__ = ["MFMSwinBackbone", "MFMSwinForImageClassification", "MFMSwinForPreTraining", "MFMSwinModel", "MFMSwinPreTrainedModel"]
