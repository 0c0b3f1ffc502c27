"""MFM Vision Transformer: base model, pre-training model, image classifier and backbone.

The encoder is timm's `Beit` with the official MFM arguments (absolute position embedding
and cls token, q/v biases, no relative position bias, LayerNorm eps 1e-6, no LayerScale),
held as ``encoder`` so its state dict has the official key layout under ``encoder.``.
"""

from __future__ import annotations

import math
import re
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.beit import Attention as BeitAttention
from timm.models.beit import Beit
from torch import nn
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling
from transformers.utils import can_return_tuple

from .attention import resolve_attention_backend
from .configuration_mfm import MFMViTConfig
from .modeling_common import (
    AttentionRecorder,
    MFMForImageClassificationMixin,
    MFMForPreTrainingMixin,
    MFMPreTrainedModel,
    default_conv_init,
    linear_decoder,
    make_checkpointable,
    prepare_pixel_values,
    recorded_attentions,
)


class MFMViTAttention(AttentionRecorder, BeitAttention):
    """timm's BEiT attention whose kernel follows ``backend`` (`mfm_hub.attention`): with
    "auto" it is chosen on every call from the device and compute dtype, so one model runs
    the fastest kernel in fp32 and under bf16 autocast, and torch.compile sees a constant."""

    backend: str = "auto"

    def uses_fused_kernel(self) -> bool:
        return resolve_attention_backend(self.backend, self.qkv.weight) == "sdpa"


def beit_shape(config: MFMViTConfig) -> dict:
    """The arguments of timm's `Beit` that fix the architecture of an MFM ViT (absolute position
    embeddings, no relative position bias), shared by the encoder and its timm export."""
    return dict(
        img_size=config.image_size,
        patch_size=config.patch_size,
        in_chans=config.num_channels,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=config.qkv_bias,
        use_abs_pos_emb=True,
        use_rel_pos_bias=False,
        use_shared_rel_pos_bias=False,
    )


class MFMViTPreTrainedModel(MFMPreTrainedModel):
    config_class = MFMViTConfig
    base_model_prefix = "mfm_vit"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["Block"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official (BEiT) initialisation: truncated normal for linear layers and the
        cls/position embeddings, zero q/v biases, and attention/MLP output projections
        rescaled by 1/sqrt(2 * layer)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            default_conv_init(module)
        elif isinstance(module, BeitAttention) and module.q_bias is not None:
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
            init.zeros_(module.k_bias)
        elif isinstance(module, Beit):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.pos_embed, std=std)
            for layer_id, block in enumerate(module.blocks, start=1):
                for weight in (block.attn.proj.weight, block.mlp.fc2.weight):
                    if not getattr(weight, "_is_hf_initialized", False):
                        weight.div_(math.sqrt(2.0 * layer_id))


    @staticmethod
    def official_config_fields(state_dict: dict[str, torch.Tensor]) -> dict:
        """An official fine-tuned ViT with ``fc_norm`` used the mean-pooling head."""
        return {"use_mean_pooling": "fc_norm.weight" in state_dict}

    def folk_head_input(self, encoded) -> torch.Tensor:
        """The mean of the final patch tokens, or the cls token with ``folk_head_pooling="cls"``."""
        if self.config.folk_head_pooling == "cls":
            return encoded.last_hidden_state[:, 0]
        return encoded.last_hidden_state[:, 1:].mean(dim=1)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter grouping (used by its layer-wise lr decay helpers), as the official
        fine-tuning assigns layers: the embeddings are layer 0, block ``i`` is layer ``i + 1``,
        and everything else (``norm``/``fc_norm``, the classifier) is the last layer."""
        prefix = "encoder\\." if self is self.base_model else re.escape(f"{self.base_model_prefix}.encoder.")
        return {
            "stem": rf"^{prefix}(?:cls_token|pos_embed|patch_embed)",
            "blocks": rf"^{prefix}blocks\.(\d+)",
        }


class MFMViTModel(MFMViTPreTrainedModel):
    """The bare MFM ViT encoder.

    Input: normalised ``pixel_values`` ``(B, C, H, W)``, H and W divisible by the patch size
    (position embeddings are interpolated when the grid differs from ``image_size``).
    Output: `BaseModelOutputWithPooling` with ``last_hidden_state`` ``(B, 1 + H*W/p^2, D)``
    (cls token first), ``pooler_output`` ``(B, D)`` (``fc_norm`` of the mean patch token with
    ``use_mean_pooling``; else the mean of the normed patch tokens, or the cls token with
    ``pooling="cls"``) and, on request, ``hidden_states``: the
    embeddings and every block's output.
    """

    def __init__(self, config: MFMViTConfig):
        super().__init__(config)
        self.encoder = Beit(
            **beit_shape(config),
            num_classes=0,
            global_pool="avg" if config.use_mean_pooling else "token",
            proj_drop_rate=config.hidden_dropout_prob,
            attn_drop_rate=config.attention_dropout_prob,
            drop_path_rate=config.drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
            init_values=config.layer_scale_init_value,
        )
        self.encoder.patch_embed.strict_img_size = False
        backend = "math" if config._attn_implementation == "eager" else config.attention_backend
        for block in self.encoder.blocks:
            block.attn.__class__ = MFMViTAttention  # same parameters; only how the kernel is chosen differs
            vars(block.attn).pop("fused_attn")
            block.attn.backend = backend
        make_checkpointable(self.encoder.blocks)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.patch_embed

    def embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> patch tokens ``(B, H*W/p^2, D)``: timm's ``PatchEmbed`` (a
        stride-p convolution, no norm) computed as the linear map of each flattened p x p patch
        it is, one matrix multiply with the same weights, which on CPU runs forward + backward
        faster than the convolution (docs/SPEED.md)."""
        patch = self.config.patch_size
        batch, channels, height, width = pixel_values.shape
        patches = (
            pixel_values.reshape(batch, channels, height // patch, patch, width // patch, patch)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(batch, (height // patch) * (width // patch), channels * patch * patch)
        )
        projection = self.encoder.patch_embed.proj
        return F.linear(patches, projection.weight.flatten(1), projection.bias)

    def embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch + position embeddings with the cls token: ``(B, 1 + N, D)`` and the patch grid."""
        pixel_values = prepare_pixel_values(pixel_values, self.config.num_channels, self.config.patch_size, "patch size", self.dtype)
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        tokens = self.embed_patches(pixel_values)
        tokens = torch.cat((self.encoder.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        pos_embed = self.encoder.pos_embed
        if grid != tuple(self.encoder.patch_embed.grid_size):
            pos_embed = resample_abs_pos_embed(
                pos_embed, new_size=list(grid), old_size=list(self.encoder.patch_embed.grid_size), num_prefix_tokens=1
            )
        return self.encoder.pos_drop(tokens + pos_embed), grid

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

        Returns `BaseModelOutputWithPooling`: ``last_hidden_state`` ``(batch, 1 + patches, hidden_size)``,
        ``pooler_output`` ``(batch, hidden_size)``, ``hidden_states`` (``num_hidden_layers + 1`` of
        ``(batch, 1 + patches, hidden_size)``) and ``attentions`` (``num_hidden_layers`` of
        ``(batch, num_attention_heads, 1 + patches, 1 + patches)``, computed with the written-out
        kernel) on request.
        """
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        hidden, _ = self.embed(pixel_values)
        all_hidden = [hidden] if output_hidden_states else None
        with recorded_attentions(self.encoder, output_attentions) as attentions:
            for block in self.encoder.blocks:
                hidden = block(hidden)
                if output_hidden_states:
                    all_hidden.append(hidden)
        last_hidden_state = self.encoder.norm(hidden)
        if self.config.use_mean_pooling:
            pooled = self.encoder.fc_norm(hidden[:, 1:].mean(dim=1))
        elif self.config.pooling == "mean":
            pooled = last_hidden_state[:, 1:].mean(dim=1)
        else:
            pooled = last_hidden_state[:, 0]
        output = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
        return output

    def frozen_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, D)``: the mean of the normed patch tokens, what the frozen-feature evaluation
        reads whatever ``pooling`` says (MFM trains the patch tokens, never the cls token)."""
        return self(pixel_values, return_dict=True).last_hidden_state[:, 1:].mean(dim=1)

    def timm_architecture(self) -> tuple[str, dict, str]:
        """timm's name and arguments for this encoder, and its classifier's name (`mfm_hub.timm_export`):
        timm's Beit with the MFM arguments. timm's ``create_model`` drops ``None`` arguments, so
        LayerScale is switched off with ``init_values=0.0``."""
        config = self.config
        if config.layer_scale_init_value:
            raise ValueError(
                "A ViT with LayerScale has no timm counterpart here (MFM uses none); export needs layer_scale_init_value=None."
            )
        if config.layer_norm_eps != 1e-6:
            raise ValueError(f"timm's Beit uses LayerNorm eps 1e-6; this model has {config.layer_norm_eps}.")
        arguments = dict(
            **beit_shape(config),
            init_values=0.0,
            # timm then pools as pooler_output does: fc_norm(mean) in the fine-tuning layout, else the normed mean or cls token
            global_pool="avg" if config.use_mean_pooling or config.pooling == "mean" else "token",
            use_fc_norm=bool(config.use_mean_pooling),
        )
        return "beit_base_patch16_224", arguments, "head"


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens ``(B, N, D)`` (no cls) -> feature map ``(B, D, gh, gw)``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


class MFMViTForPreTraining(MFMForPreTrainingMixin, MFMViTPreTrainedModel):
    """MFM pre-training: corrupt the input in frequency (or with the SR/deblur/denoise
    baselines), encode, predict the original with the linear decoder (patch tokens ->
    1x1 conv -> PixelShuffle(patch)), and score the prediction with the frequency loss.
    See `MFMForPreTrainingMixin.forward` for inputs and `MFMPreTrainingOutput` for outputs."""

    _new_weight_prefixes = ("decoder.",)

    def __init__(self, config: MFMViTConfig):
        super().__init__(config)
        self.mfm_vit = MFMViTModel(config)
        self.decoder = linear_decoder(config.hidden_size, config.patch_size, config.num_channels)
        self.post_init()

    def encode_feature_map(self, pixel_values, output_hidden_states=None, output_attentions=None):
        outputs = self.mfm_vit(pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                               return_dict=True)
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        return tokens_to_map(outputs.last_hidden_state[:, 1:], grid), outputs


class MFMViTForImageClassification(MFMForImageClassificationMixin, MFMViTPreTrainedModel):
    """MFM ViT with a linear classifier on the pooled output (``fc_norm`` + mean pooling in
    the official fine-tuning recipe: set ``use_mean_pooling=True``); see
    `MFMForImageClassificationMixin.forward`."""

    _new_weight_prefixes = ("classifier.", "encoder.fc_norm.")

    def __init__(self, config: MFMViTConfig):
        super().__init__(config)
        self.mfm_vit = MFMViTModel(config)
        self._add_classifier()


class MFMViTBackbone(BackboneMixin, MFMViTPreTrainedModel):
    """MFM ViT as a dense-prediction backbone (`AutoBackbone`, UperNet).

    Returns the hidden states of ``out_features`` as maps ``(B, D, H/p, W/p)``; with
    ``add_fpn`` the four maps are resampled to strides p/4, p/2, p, 2p (BEiT's neck:
    two transposed convs, one, identity, max-pool), the layout UperNet expects.
    """

    _new_weight_prefixes = ("fpn", "encoder.fc_norm.")

    def __init__(self, config: MFMViTConfig):
        if config.add_fpn and len(config.out_indices) != 4:  # set after the config's own check, e.g. by from_pretrained(out_indices=)
            raise ValueError(f"The 4-scale neck (`add_fpn=True`) takes exactly 4 `out_indices`, got {list(config.out_indices)}; "
                             "pass `add_fpn=False` as well for plain stride-p maps of those blocks.")
        super().__init__(config)
        self.mfm_vit = MFMViTModel(config)
        self.num_features = [config.hidden_size] * len(self.stage_names)
        if config.add_fpn:
            dim = config.hidden_size
            self.fpn1 = nn.Sequential(
                nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
                nn.BatchNorm2d(dim),
                nn.GELU(),
                nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            )
            self.fpn2 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
            self.fpn3 = nn.Identity()
            self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: Optional[bool] = None,
        **kwargs,
    ) -> BackboneOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`): normalised images.

        Returns `BackboneOutput`: ``feature_maps``, one ``(batch, hidden_size, height_i, width_i)`` map per
        ``out_features`` block (strides p/4, p/2, p, 2p with ``add_fpn``, else p); ``hidden_states`` and
        ``attentions`` of the encoder on request.
        """
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        outputs = self.mfm_vit(pixel_values, output_hidden_states=True, return_dict=True, **kwargs)
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        feature_maps = [
            tokens_to_map(hidden[:, 1:], grid)
            for stage, hidden in zip(self.stage_names, outputs.hidden_states)
            if stage in self.out_features
        ]
        if self.config.add_fpn:
            feature_maps = [neck(fm) for neck, fm in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), feature_maps)]
        output = BackboneOutput(
            feature_maps=tuple(feature_maps),
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )
        return output


__all__ = [
    "MFMViTBackbone",
    "MFMViTForImageClassification",
    "MFMViTForPreTraining",
    "MFMViTModel",
    "MFMViTPreTrainedModel",
]
