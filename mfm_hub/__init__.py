"""mfm_hub: Masked Frequency Modeling (MFM) and FOLK backbones as Hugging Face models.

Importing the package registers every config and model with transformers' Auto classes, the
official checkpoints under timm's names (`mfm_hub.timm_models`), and makes timm's RandAugment
work with the installed Pillow (`mfm_hub.timm_compat`).
"""

import importlib

from . import frequency, pretext, timm_compat, timm_models
from .configuration_mfm import (
    PRESETS,
    MFMResNetConfig,
    MFMSwinConfig,
    MFMViTConfig,
    config_from_preset,
)
from .families import FAMILIES, ModelFamily, family_of, register_family
from .image_processing import image_processor_for_config
from .modeling_common import MFMPreTrainingOutput, backbone_from_pretrained
from .modeling_folk import (
    FOLKForPreTraining,
    FOLKPreTrainingOutput,
    FOLKResNetForPreTraining,
    FOLKSwinForPreTraining,
    FOLKViTForPreTraining,
)
from .modeling_mfm_resnet import (
    MFMResNetBackbone,
    MFMResNetForImageClassification,
    MFMResNetForPreTraining,
    MFMResNetModel,
)
from .modeling_mfm_swin import (
    MFMSwinBackbone,
    MFMSwinForImageClassification,
    MFMSwinForPreTraining,
    MFMSwinModel,
)
from .modeling_mfm_vit import (
    MFMViTBackbone,
    MFMViTForImageClassification,
    MFMViTForPreTraining,
    MFMViTModel,
)

__version__ = "0.1.0"

timm_compat.install_posterize_fix()


def __getattr__(name: str):
    # `zoo` (and the converter it imports) load on first use, so that `python -m mfm_hub.zoo` and
    # `python -m mfm_hub.convert_official` run their module once (runpy warns about a module imported twice)
    if name == "zoo":
        return importlib.import_module(".zoo", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FAMILIES",
    "ModelFamily",
    "family_of",
    "pretext",
    "register_family",
    "timm_models",
    "FOLKForPreTraining",
    "FOLKPreTrainingOutput",
    "FOLKResNetForPreTraining",
    "FOLKViTForPreTraining",
    "PRESETS",
    "MFMPreTrainingOutput",
    "MFMResNetBackbone",
    "MFMResNetConfig",
    "MFMResNetForImageClassification",
    "MFMResNetForPreTraining",
    "MFMResNetModel",
    "MFMSwinBackbone",
    "MFMSwinConfig",
    "MFMSwinForImageClassification",
    "MFMSwinForPreTraining",
    "MFMSwinModel",
    "FOLKSwinForPreTraining",
    "MFMViTBackbone",
    "MFMViTConfig",
    "MFMViTForImageClassification",
    "MFMViTForPreTraining",
    "MFMViTModel",
    "backbone_from_pretrained",
    "config_from_preset",
    "frequency",
    "image_processor_for_config",
    "zoo",
]
