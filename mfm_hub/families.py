"""Model families: one registry entry per backbone family, the contract its classes keep, and
the one place that registers them with transformers' Auto classes.

Everything family-specific that code outside the modeling files needs is a method of the
family's own classes (the contract below: `FamilyConfig`, `FamilyModel`,
`FamilyForPreTraining`), so no module branches on ``model_type`` strings. Adding a family =
its modeling file, its config class (and presets) and one `register_family` call, which
refuses classes that miss part of the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Protocol

import torch
from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

from .configuration_mfm import MFMResNetConfig, MFMSwinConfig, MFMViTConfig, config_field_names
from .modeling_folk import FOLKResNetForPreTraining, FOLKSwinForPreTraining, FOLKViTForPreTraining
from .modeling_mfm_resnet import MFMResNetBackbone, MFMResNetForImageClassification, MFMResNetForPreTraining, MFMResNetModel
from .modeling_mfm_swin import MFMSwinBackbone, MFMSwinForImageClassification, MFMSwinForPreTraining, MFMSwinModel
from .modeling_mfm_vit import MFMViTBackbone, MFMViTForImageClassification, MFMViTForPreTraining, MFMViTModel


class FamilyConfig(Protocol):
    """What a family's config provides beyond `transformers.PreTrainedConfig`."""

    @property
    def summary(self) -> str:
        """One line naming the architecture (``ViT-B/16 224px``), for model cards."""

    @property
    def num_features(self) -> int:
        """Channels of the encoder's final feature map, read by the decoder, heads and FOLK."""

    @property
    def encoder_stride(self) -> int:
        """Input pixels per feature-map pixel; input sides must be divisible by it."""

    def classifier_options(self, official_head: bool) -> dict:
        """Config fields of a classifier: the official fine-tuning head (True) or transformers' convention."""


class FamilyModel(Protocol):
    """What a family's base model (``*Model``) provides beyond `transformers.PreTrainedModel`."""

    def frozen_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` features of normalised images for the frozen-feature protocols (kNN, linear probe, few-shot)."""

    def timm_architecture(self) -> tuple[str, dict, str]:
        """The timm model name, its keyword arguments and the classifier key, for the timm export."""

    def folk_head_input(self, encoded) -> torch.Tensor:
        """``(B, D)``: what FOLK's projection heads read from this model's output."""

    def official_encoder_keys(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An official release's encoder weights in this family's layout, for the converter."""

    @staticmethod
    def official_config_fields(state_dict: dict[str, torch.Tensor]) -> dict:
        """Config fields an official fine-tuned file's keys imply (e.g. its pooling)."""


class FamilyForPreTraining(Protocol):
    """What a family's ``*ForPreTraining`` provides to the shared reconstruction forward."""

    def encode_feature_map(self, pixel_values: torch.Tensor, output_hidden_states=None, output_attentions=None):
        """``(feature map (B, num_features, H / stride, W / stride), encoder outputs)`` of normalised images."""


def _contract(protocol: type) -> list[str]:
    return sorted(name for name in vars(protocol) if not name.startswith("_"))


@dataclass(frozen=True, kw_only=True)
class ModelFamily:
    """The classes of one backbone family, e.g. ``ModelFamily(config=MFMViTConfig, model=MFMViTModel,
    for_pretraining=MFMViTForPreTraining, for_image_classification=MFMViTForImageClassification,
    backbone=MFMViTBackbone, folk=FOLKViTForPreTraining)``."""

    config: type
    model: type
    for_pretraining: type
    for_image_classification: type
    backbone: type
    folk: type

    @property
    def model_type(self) -> str:
        return self.config.model_type

    def check_contract(self) -> None:
        """Refuse classes that miss part of the contract (`FamilyConfig`, `FamilyModel`,
        `FamilyForPreTraining`), naming each missing member and what it is for."""
        problems = []
        for cls, protocol in ((self.config, FamilyConfig), (self.model, FamilyModel), (self.for_pretraining, FamilyForPreTraining)):
            for name in _contract(protocol):
                if not hasattr(cls, name):
                    problems.append(f"{cls.__name__}.{name} ({vars(protocol)[name].__doc__.strip()})")
        if problems:
            raise TypeError(f"Model family {self.model_type!r} misses part of the family contract: {'; '.join(problems)}.")


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Register ``family`` with the Auto classes, both in this process (``AutoModel`` etc.)
    and in saved checkpoints (``register_for_auto_class``: the modeling files travel with a
    checkpoint for ``trust_remote_code`` users), once its classes keep the contract."""
    family.check_contract()
    AutoConfig.register(family.model_type, family.config, exist_ok=True)
    family.config.register_for_auto_class()
    heads = ((AutoModel, family.model), (AutoModelForPreTraining, family.for_pretraining),
             (AutoModelForImageClassification, family.for_image_classification), (AutoBackbone, family.backbone))
    for auto_class, model_class in heads:
        auto_class.register(family.config, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class.__name__)
    family.config.family_auto_map = {
        auto_class.__name__: f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
        for auto_class, cls in ((AutoConfig, family.config), *heads)
    }
    FAMILIES[family.model_type] = family
    config_fields.cache_clear()
    return family


@cache
def config_fields() -> frozenset[str]:
    """Every field name of a registered family's config (`config_field_names`)."""
    return frozenset(name for family in FAMILIES.values() for name in config_field_names(family.config))


def saved_model_class(source) -> type:
    """The registered class a checkpoint folder / Hub id was saved as (its config's
    ``architectures`` entry), e.g. ``MFMViTForPreTraining`` for a converted pre-training file."""
    config = AutoConfig.from_pretrained(source)
    family = family_of(config)
    classes = {cls.__name__: cls for cls in (family.model, family.for_pretraining, family.for_image_classification, family.backbone,
                                             family.folk)}
    saved = (config.architectures or [family.model.__name__])[0]
    if saved not in classes:
        raise ValueError(f"{source} was saved as {saved!r}, not one of the {family.model_type} classes {sorted(classes)}.")
    return classes[saved]


def family_of(config) -> ModelFamily:
    if config.model_type not in FAMILIES:
        raise ValueError(f"No registered model family for model_type {config.model_type!r}; registered: {', '.join(FAMILIES)}.")
    return FAMILIES[config.model_type]


register_family(ModelFamily(config=MFMViTConfig, model=MFMViTModel, for_pretraining=MFMViTForPreTraining,
                            for_image_classification=MFMViTForImageClassification, backbone=MFMViTBackbone, folk=FOLKViTForPreTraining))
register_family(ModelFamily(config=MFMResNetConfig, model=MFMResNetModel, for_pretraining=MFMResNetForPreTraining,
                            for_image_classification=MFMResNetForImageClassification, backbone=MFMResNetBackbone,
                            folk=FOLKResNetForPreTraining))
register_family(ModelFamily(config=MFMSwinConfig, model=MFMSwinModel, for_pretraining=MFMSwinForPreTraining,
                            for_image_classification=MFMSwinForImageClassification, backbone=MFMSwinBackbone, folk=FOLKSwinForPreTraining))

__all__ = ["FAMILIES", "FamilyConfig", "FamilyForPreTraining", "FamilyModel", "ModelFamily", "config_fields", "family_of",
           "register_family", "saved_model_class"]
