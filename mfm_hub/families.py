"""Model families: one registry entry per backbone family, and the one place that registers
their classes with transformers' Auto classes.

Everything family-specific that code outside the modeling files needs is either here (which
classes make up the family, its FOLK student) or a method of the family's own classes
(`summary` on the config, `frozen_features` and `timm_architecture` on the base model,
`group_matcher` for layer decay), so no module branches on ``model_type`` strings. Adding a
family = its modeling file, its config class (and presets) and one `register_family` call.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

from .configuration_mfm import MFMResNetConfig, MFMSwinConfig, MFMViTConfig
from .modeling_folk import FOLKResNetForPreTraining, FOLKSwinForPreTraining, FOLKViTForPreTraining
from .modeling_mfm_resnet import MFMResNetBackbone, MFMResNetForImageClassification, MFMResNetForPreTraining, MFMResNetModel
from .modeling_mfm_swin import MFMSwinBackbone, MFMSwinForImageClassification, MFMSwinForPreTraining, MFMSwinModel
from .modeling_mfm_vit import MFMViTBackbone, MFMViTForImageClassification, MFMViTForPreTraining, MFMViTModel


@dataclass(frozen=True)
class ModelFamily:
    config_class: type
    model: type
    for_pretraining: type
    for_image_classification: type
    backbone: type
    folk: type

    @property
    def model_type(self) -> str:
        return self.config_class.model_type


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Register ``family`` with the Auto classes, both in this process (``AutoModel`` etc.)
    and in saved checkpoints (``register_for_auto_class``: the modeling files travel with a
    checkpoint for ``trust_remote_code`` users)."""
    AutoConfig.register(family.model_type, family.config_class, exist_ok=True)
    family.config_class.register_for_auto_class()
    heads = ((AutoModel, family.model), (AutoModelForPreTraining, family.for_pretraining),
             (AutoModelForImageClassification, family.for_image_classification), (AutoBackbone, family.backbone))
    for auto_class, model_class in heads:
        auto_class.register(family.config_class, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class.__name__)
    family.config_class.family_auto_map = {
        auto_class.__name__: f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
        for auto_class, cls in ((AutoConfig, family.config_class), *heads)
    }
    FAMILIES[family.model_type] = family
    return family


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


register_family(ModelFamily(MFMViTConfig, MFMViTModel, MFMViTForPreTraining, MFMViTForImageClassification, MFMViTBackbone,
                            FOLKViTForPreTraining))
register_family(ModelFamily(MFMResNetConfig, MFMResNetModel, MFMResNetForPreTraining, MFMResNetForImageClassification, MFMResNetBackbone,
                            FOLKResNetForPreTraining))
register_family(ModelFamily(MFMSwinConfig, MFMSwinModel, MFMSwinForPreTraining, MFMSwinForImageClassification, MFMSwinBackbone,
                            FOLKSwinForPreTraining))

__all__ = ["FAMILIES", "ModelFamily", "family_of", "register_family", "saved_model_class"]
