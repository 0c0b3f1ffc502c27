"""What the documentation promises holds: every config field is documented in transformers'
form (name, type, default) in the class that declares it, and the docstrings' examples run."""

import doctest
import re

import pytest

import mfm_hub
from mfm_hub import configuration_mfm

ENTRY = re.compile(r"^ {8}(\w+) \(`[^`]+`, \*optional\*(?:, defaults to .+)?\):$", re.MULTILINE)


@pytest.mark.parametrize("config_class", [configuration_mfm.MFMConfigBase, *(family.config for family in mfm_hub.FAMILIES.values())],
                         ids=lambda cls: cls.__name__)
def test_every_config_field_is_documented_with_its_type_and_default(config_class):
    documented = set(ENTRY.findall(config_class.__doc__))
    declared = {name for name in vars(config_class).get("__annotations__", {}) if not name.startswith("_")}
    if config_class is not configuration_mfm.MFMConfigBase:  # the backbone outputs are documented as `out_features`
        declared |= {"out_features"} if "_out_features" in vars(config_class).get("__annotations__", {}) else set()
    assert declared - documented == set(), f"{config_class.__name__} does not document {sorted(declared - documented)}"
    assert documented - declared == set(), f"{config_class.__name__} documents fields it does not have: {sorted(documented - declared)}"
    if config_class is not configuration_mfm.MFMConfigBase:
        assert "Example:" in config_class.__doc__


def test_the_config_examples_run():
    results = doctest.testmod(configuration_mfm, optionflags=doctest.ELLIPSIS)
    assert results.attempted >= 3 and results.failed == 0


def test_every_public_forward_documents_its_inputs_and_outputs_with_shapes():
    for family in mfm_hub.FAMILIES.values():
        for model_class in (family.model, family.for_pretraining, family.for_image_classification, family.backbone, family.folk):
            doc = model_class.forward.__doc__ or ""
            assert "pixel_values" in doc and "(batch" in doc and "Returns" in doc, f"{model_class.__name__}.forward"
