"""The family registry: one `register_family` call makes a family loadable through every Auto
class, in checkpoints (``auto_map``) and in the scripts' family lookups; nothing outside the
registry branches on ``model_type``."""

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import ToyBackbone, ToyConfig, ToyFOLK, ToyForImageClassification, ToyForPreTraining, ToyModel
from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

import mfm_hub
from mfm_hub import FAMILIES, ModelFamily, family_of, register_family
from mfm_hub.evaluation import frozen_features

ROOT = Path(__file__).resolve().parents[1]


def test_a_family_missing_part_of_the_contract_is_refused_at_registration_naming_it():
    class HalfConfig(mfm_hub.configuration_mfm.MFMConfigBase):  # no summary, num_features, ...
        model_type = "mfm_half"

    class HalfModel(torch.nn.Module):  # a plain module: none of the encoder's methods
        pass

    class HalfForPreTraining(torch.nn.Module):
        pass

    family = ModelFamily(config=HalfConfig, model=HalfModel, for_pretraining=HalfForPreTraining,
                         for_image_classification=ToyForImageClassification, backbone=ToyBackbone, folk=ToyFOLK)
    with pytest.raises(TypeError, match="'mfm_half' misses part of the family contract") as refused:
        register_family(family)
    message = str(refused.value)
    for member in ("HalfConfig.summary", "HalfConfig.classifier_options", "HalfModel.frozen_features", "HalfModel.timm_architecture",
                   "HalfForPreTraining.encode_feature_map"):
        assert member in message
    assert "timm model name" in message and "for model cards" in message  # each missing member says what it is for
    assert "mfm_half" not in FAMILIES
    with pytest.raises(TypeError):  # classes are named, never given by position
        ModelFamily(ToyConfig, ToyModel, ToyForPreTraining, ToyForImageClassification, ToyBackbone, ToyFOLK)


def test_one_registry_entry_makes_a_family_loadable_everywhere(toy_family, tmp_path):
    config = ToyConfig(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=4, num_attention_heads=3)
    ToyForPreTraining(config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoBackbone"].endswith("ToyBackbone") and saved["auto_map"]["AutoConfig"].endswith("ToyConfig")
    assert type(AutoConfig.from_pretrained(tmp_path)) is ToyConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is ToyModel
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is ToyForPreTraining
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=2)) is ToyForImageClassification
    assert type(AutoBackbone.from_config(config)) is ToyBackbone
    assert family_of(config).folk is ToyFOLK
    folk = ToyFOLK(config)
    assert type(folk.student) is ToyForPreTraining and type(folk.teacher) is type(folk.student.base_model)
    assert torch.isfinite(folk(torch.rand(2, 2, 3, 32, 32)).loss)
    features = frozen_features(ToyModel(config).eval(), torch.rand(2, 3, 32, 32))
    assert features.shape == (2, config.hidden_size)


def test_built_in_families_and_unknown_types():
    assert {name: family.model.__name__ for name, family in FAMILIES.items()} == {
        "mfm_vit": "MFMViTModel", "mfm_resnet": "MFMResNetModel", "mfm_swin": "MFMSwinModel"}
    with pytest.raises(ValueError, match="No registered model family for model_type 'upernet'"):
        family_of(type("Config", (), {"model_type": "upernet"})())


def test_no_module_branches_on_model_type_strings():
    offenders = [str(path.relative_to(ROOT)) for folder in ("mfm_hub", "training", "benchmarks") for path in (ROOT / folder).rglob("*.py")
                 if re.search(r"model_type\s*(==|!=|in\s*[\(\[\{])", path.read_text())]
    assert offenders == []
