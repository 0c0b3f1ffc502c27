"""The conventions of transformers' own model tests (`ModelTesterMixin`, `ConfigTester`,
`BackboneTesterMixin`), checked on every registered family, the tests' toy family included:
outputs (attentions, hidden states), activation checkpointing, loading, initialisation on the
meta device, configs. Our own battery, written from what those suites check."""

import json

import pytest
import torch
from conftest import tiny_config_of
from parity import FLOAT32_GRADIENTS, FLOAT32_NETWORK, assert_close
from safetensors.torch import save_file
from transformers.modeling_layers import GradientCheckpointingLayer

from mfm_hub import FAMILIES
from mfm_hub.modeling_common import AttentionRecorder

#: The keyword arguments every transformers config accepts (transformers' `config_common_kwargs`, the vision part).
COMMON_KWARGS = {"return_dict": False, "output_hidden_states": True, "output_attentions": True, "dtype": "float16",
                 "id2label": {0: "a", 1: "b"}, "label2id": {"a": 0, "b": 1}, "problem_type": "single_label_classification",
                 "architectures": ["Anything"], "chunk_size_feed_forward": 5}


def heads(family):
    return (family.model, family.for_pretraining, family.for_image_classification, family.backbone)


def pixels(config, batch=2, seed=0):
    return torch.rand(batch, config.num_channels, config.image_size, config.image_size, generator=torch.Generator().manual_seed(seed))


def main_tensor(output, key: str) -> torch.Tensor:
    return output[key][0] if isinstance(output[key], tuple) else output[key]


def attention_layers(model) -> int:
    """Attention modules, by what they are (timm's ``Attention``, ``WindowAttention``), not by our mixin."""
    return sum("Attention" in type(module).__name__ and hasattr(module, "qkv") for module in model.modules())


def test_every_head_returns_attentions_on_request_or_config_and_the_outputs_do_not_change(registered_family):
    config = tiny_config_of(registered_family.config, num_labels=3)
    for model_class in heads(registered_family):
        model = model_class(config).eval()
        layers = attention_layers(model)
        seeded = (lambda: {"generator": torch.Generator().manual_seed(1)}) if model_class is registered_family.for_pretraining else dict
        with torch.no_grad():
            plain = model(pixels(config), **seeded())
            recorded = model(pixels(config), output_attentions=True, **seeded())
        main = "feature_maps" if "feature_maps" in plain else "loss" if "loss" in plain else next(iter(plain.keys()))
        assert_close(main_tensor(recorded, main), main_tensor(plain, main), FLOAT32_NETWORK, model_class.__name__)
        if not layers:  # a ResNet has no attention (transformers' `has_attentions=False`)
            assert recorded.get("attentions") is None, model_class.__name__
            continue
        attentions = recorded.attentions
        assert len(attentions) == layers, model_class.__name__
        for probabilities in attentions:
            assert probabilities.ndim == 4 and probabilities.shape[-1] == probabilities.shape[-2], model_class.__name__
            assert_close(probabilities.sum(-1), torch.ones_like(probabilities.sum(-1)), FLOAT32_NETWORK, "rows of attention probabilities")
        if hasattr(config, "num_attention_heads"):  # ViT: (batch, heads, 1 + patches, 1 + patches), as transformers' ViT
            tokens = 1 + (config.image_size // config.patch_size) ** 2
            assert attentions[0].shape == (2, config.num_attention_heads, tokens, tokens)
        from_config = model_class(tiny_config_of(registered_family.config, num_labels=3, output_attentions=True)).eval()
        with torch.no_grad():
            assert len(from_config(pixels(config)).attentions) == layers, model_class.__name__
        assert all(not module.recording for module in model.modules() if isinstance(module, AttentionRecorder))


def counting(function, calls: list):
    def counted(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)
    return counted


def test_activation_checkpointing_is_transformers_own_and_gives_the_same_gradients(registered_family):
    config = tiny_config_of(registered_family.config)
    model = registered_family.for_pretraining(config).train()
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    assert layers, "the repeated layers are GradientCheckpointingLayers"

    def gradients():
        model.zero_grad()
        model(pixels(config), generator=torch.Generator().manual_seed(3)).loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    reference = gradients()
    for reentrant in (True, False):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        assert model.is_activation_checkpointing and all(layer.gradient_checkpointing for layer in layers)
        calls = []
        for layer in layers:
            layer._gradient_checkpointing_func = counting(layer._gradient_checkpointing_func, calls)
        assert_close(gradients(), reference, FLOAT32_GRADIENTS, f"gradients with use_reentrant={reentrant}")
        assert len(calls) == len(layers)
        model.activation_checkpointing_disable()
        assert not model.is_activation_checkpointing
        calls.clear()
        gradients()
        assert calls == [], "disabled checkpointing still checkpointed"


def test_new_heads_are_reported_and_other_shapes_need_ignore_mismatched_sizes(registered_family, tmp_path):
    config = tiny_config_of(registered_family.config, num_labels=3)
    registered_family.model(config).save_pretrained(tmp_path / "encoder")
    classifier, info = registered_family.for_image_classification.from_pretrained(tmp_path / "encoder", num_labels=3,
                                                                                output_loading_info=True)
    assert any(key.startswith("classifier.") for key in info["missing_keys"]), info
    classifier.save_pretrained(tmp_path / "classifier")
    with pytest.raises(ValueError, match="with a different shape: .*classifier"):
        registered_family.for_image_classification.from_pretrained(tmp_path / "classifier", num_labels=5)
    relabelled, info = registered_family.for_image_classification.from_pretrained(
        tmp_path / "classifier", num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    assert relabelled.classifier.out_features == 5 and any("classifier" in str(entry) for entry in info["mismatched_keys"])


def test_missing_encoder_weights_are_an_error_unless_strict_is_off(registered_family, tmp_path, caplog):
    config = tiny_config_of(registered_family.config)
    model = registered_family.model(config)
    state = model.state_dict()
    dropped = sorted(state)[0]
    model.save_pretrained(tmp_path)
    save_file({key: value.contiguous() for key, value in state.items() if key != dropped}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"missing from the checkpoint: {dropped}.*strict=False"):
        registered_family.model.from_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        loaded = registered_family.model.from_pretrained(tmp_path, strict=False)
    assert dropped in caplog.text and "initialised instead" in caplog.text
    assert torch.isfinite(loaded.state_dict()[dropped].float()).all()


def test_a_model_built_on_the_meta_device_initialises_every_weight_and_buffer(registered_family):
    """What transformers does for weights a checkpoint lacks: the model is built on the meta
    device and `_init_weights` fills it; every tensor must come out as `__init__` makes it
    (the same constants, random ones of the same scale), never as uninitialised memory."""
    config = tiny_config_of(registered_family.config)
    for model_class in heads(registered_family):
        reference = model_class(config)
        with torch.device("meta"):
            model = model_class(config)
        model.to_empty(device="cpu")
        for tensor in model.state_dict().values():
            tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor.fill_(-7)
        model.init_weights()
        expected = reference.state_dict()
        for name, tensor in model.state_dict().items():
            wanted = expected[name]
            assert tensor.shape == wanted.shape and tensor.dtype == wanted.dtype, name
            if not tensor.is_floating_point() or wanted.unique().numel() <= 2:  # constants, indices, counters
                assert torch.equal(tensor, wanted), f"{model_class.__name__}.{name}"
            else:
                assert torch.isfinite(tensor).all(), f"{model_class.__name__}.{name} was left uninitialised"
                ratio = tensor.std() / wanted.std()
                assert 0.5 < ratio < 2, f"{model_class.__name__}.{name}: std {tensor.std():.3g} vs {wanted.std():.3g} from __init__"
        for name, parameter in model.named_parameters():
            assert parameter.is_contiguous(), f"{model_class.__name__}.{name} is not contiguous"


def test_every_config_keeps_transformers_common_arguments_and_round_trips(registered_family, tmp_path):
    """`ConfigTester`'s checks: the common keyword arguments land, JSON and save/load round-trip
    (subfolders too), ``num_labels`` sizes the label maps, and no argument is required."""
    config_class = registered_family.config
    config = tiny_config_of(config_class, **COMMON_KWARGS)
    wrong = {key: getattr(config, key) for key, value in COMMON_KWARGS.items()
             if key != "dtype" and getattr(config, key) != value}
    assert not wrong and config.dtype == torch.float16, wrong
    saved = json.loads(config.to_json_string())
    assert saved["problem_type"] == "single_label_classification" and saved["return_dict"] is False
    config.save_pretrained(tmp_path / "sub")
    assert config_class.from_pretrained(tmp_path, subfolder="sub").to_dict() == config.to_dict()
    config.to_json_file(tmp_path / "config.json")
    assert config_class.from_json_file(tmp_path / "config.json").to_dict() == config.to_dict()
    labelled = tiny_config_of(config_class, num_labels=5)
    assert len(labelled.id2label) == len(labelled.label2id) == 5
    labelled.num_labels = 3
    assert len(labelled.id2label) == len(labelled.label2id) == 3
    assert config_class() is not None


def test_no_config_field_is_mistaken_for_an_initializer_setting(registered_family):
    """transformers' tests set every config attribute named like an initializer setting
    (``*_range``, ``*_std``, ``initializer_factor``, ``layer_scale*``) to 1e-10 to check
    initialisation; a preprocessing statistic under such a name would then break the model."""
    config = tiny_config_of(registered_family.config)
    looks_like_init = [key for key in config.to_dict() if "_range" in key or "_std" in key or "initializer_factor" in key
                       or "layer_scale" in key]
    assert set(looks_like_init) <= {"initializer_range", "layer_scale_init_value"}, looks_like_init
    assert {name for name in FAMILIES} >= {"mfm_vit", "mfm_resnet", "mfm_swin"}


def test_backbones_follow_the_backbone_config_conventions(registered_family):
    """`BackboneTesterMixin`'s checks: ``out_features`` / ``out_indices`` name stages of
    ``stage_names`` and agree, the backbone returns one map per chosen stage with the channels
    it announces, and a stage selection that does not exist or disagrees is refused."""
    config_class = registered_family.config
    config = tiny_config_of(config_class)
    backbone = registered_family.backbone(config).eval()
    assert set(backbone.out_features) <= set(config.stage_names)
    assert [config.stage_names[index] for index in backbone.out_indices] == list(backbone.out_features)
    with torch.no_grad():
        maps = backbone(pixels(config)).feature_maps
    assert len(maps) == len(backbone.out_features) and [m.shape[1] for m in maps] == list(backbone.channels)
    chosen = [config.stage_names[2], config.stage_names[-1]]
    plain = {"add_fpn": False} if "add_fpn" in config.to_dict() else {}  # the ViT's 4-scale neck takes exactly four
    selected = registered_family.backbone(tiny_config_of(config_class, out_features=chosen, **plain)).eval()
    with torch.no_grad():
        assert selected.out_features == chosen and len(selected(pixels(config)).feature_maps) == 2
    with pytest.raises(ValueError):
        tiny_config_of(config_class, out_features=["stage99"])
    with pytest.raises(ValueError):
        tiny_config_of(config_class, out_features=chosen, out_indices=[0, 1], **plain)
