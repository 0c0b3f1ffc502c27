"""timm export: ``local-dir:`` and ``hf-hub:`` (loopback Hub) load every weight strictly, with
the evaluation preprocessing in ``pretrained_cfg`` and features equal to ours."""

import json

import pytest
import timm
import torch
from conftest import tiny_resnet_config, tiny_swin_config, tiny_vit_config
from parity import FLOAT32_NETWORK, assert_close
from safetensors.torch import load_file

from mfm_hub import MFMResNetConfig, MFMResNetModel, MFMSwinForImageClassification, MFMViTForImageClassification, MFMViTModel
from mfm_hub.timm_export import export_to_timm


def load_local(folder, **kwargs):
    return timm.create_model(f"local-dir:{folder}", pretrained=True, **kwargs).eval()


def assert_same_features(timm_model, ours, x):
    """timm's token / map features and pooled output equal our last_hidden_state and pooler_output
    (timm runs some kernels in another layout, e.g. contiguous convolutions where ours are channels-last)."""
    with torch.no_grad():
        expected = ours(x)
        assert_close(timm_model.forward_features(x), expected.last_hidden_state, FLOAT32_NETWORK, "features")
        assert_close(timm_model(x), expected.pooler_output, FLOAT32_NETWORK, "pooled")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_vit_encoder_loads_in_timm_with_equal_features(pooling, tmp_path):
    ours = MFMViTModel(tiny_vit_config(pooling=pooling)).eval()
    ours.save_pretrained(tmp_path / "hf")
    export_to_timm(str(tmp_path / "hf"), tmp_path / "timm")
    model = load_local(tmp_path / "timm")
    x = torch.randn(2, 3, 32, 32)
    assert_same_features(model, ours, x)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
    assert list(cfg["mean"]) == [0.485, 0.456, 0.406] and list(cfg["std"]) == [0.229, 0.224, 0.225] and cfg["tag"] == "mfm_hub"
    assert not any("gamma" in name for name in model.state_dict())  # no LayerScale crept in
    maps = load_local(tmp_path / "timm", features_only=True)(x)
    assert [tuple(m.shape) for m in maps][-1] == (2, 48, 8, 8)


def test_vit_classifier_gives_equal_logits_and_label_names(tmp_path):
    config = tiny_vit_config(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}, use_mean_pooling=True)
    ours = MFMViTForImageClassification(config).eval()
    export_to_timm(ours, tmp_path / "timm")
    model = load_local(tmp_path / "timm")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(model(x), ours(x).logits, FLOAT32_NETWORK, "logits")
    assert model.pretrained_cfg["label_names"] == ["a", "b", "c"]


def test_resnet_loads_in_timm_with_equal_features(tmp_path):
    ours = MFMResNetModel(MFMResNetConfig(block_type="basic", layers=(2, 2, 2, 2), image_size=64)).eval()
    export_to_timm(ours, tmp_path / "timm")
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["architecture"] == "resnet18"
    model = load_local(tmp_path / "timm")
    x = torch.randn(2, 3, 64, 64)
    assert_same_features(model, ours, x)
    maps = load_local(tmp_path / "timm", features_only=True)(x)
    assert [m.shape[1] for m in maps] == [64, 64, 128, 256, 512]


def test_swin_loads_in_timm_with_equal_features_and_logits(tmp_path):
    config = tiny_swin_config(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    ours = MFMSwinForImageClassification(config).eval()
    with torch.no_grad():
        ours.classifier.bias.normal_()  # a zero-initialised bias would hide a missing one
    export_to_timm(ours, tmp_path / "timm")
    model = load_local(tmp_path / "timm")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ours.mfm_swin(x)
        assert_close(model.forward_features(x).permute(0, 3, 1, 2), expected.last_hidden_state, FLOAT32_NETWORK, "features")
        assert_close(model(x), ours(x).logits, FLOAT32_NETWORK, "logits")
    maps = load_local(tmp_path / "timm", features_only=True)(x)
    assert [m.shape[-1] for m in maps] == [24, 48, 96, 192]  # timm's Swin feature maps are NHWC


def test_unsupported_models_say_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match=r"No timm architecture has basic blocks with layers \[1, 1, 1, 1\].*resnet18 \(basic"):
        export_to_timm(MFMResNetModel(tiny_resnet_config()), tmp_path / "a")
    with pytest.raises(ValueError, match=r"basic blocks with layers \[2, 2, 2, 2\] and channels \[16, 32, 64, 128\]"):
        export_to_timm(MFMResNetModel(tiny_resnet_config(layers=(2, 2, 2, 2))), tmp_path / "a")  # a narrow ResNet-18
    with pytest.raises(ValueError, match="LayerScale"):
        export_to_timm(MFMViTModel(tiny_vit_config(layer_scale_init_value=0.1)), tmp_path / "b")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


@pytest.mark.slow
def test_hf_hub_round_trip_through_the_loopback_hub(tmp_path):
    from hub_server import LocalHub
    from test_hub import run_against_hub

    MFMViTModel(tiny_vit_config()).save_pretrained(tmp_path / "hf")
    hub = LocalHub().start()
    code = f"""
        import timm, torch
        from safetensors.torch import save_file
        from mfm_hub import MFMViTModel
        from mfm_hub.timm_export import export_to_timm
        export_to_timm({str(tmp_path / "hf")!r}, {str(tmp_path / "timm")!r}, push_to_hub="tester/mfm-timm")
        model = timm.create_model("hf-hub:tester/mfm-timm", pretrained=True).eval()
        ours = MFMViTModel.from_pretrained({str(tmp_path / "hf")!r}).eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            save_file({{"timm": model(x), "ours": ours(x).pooler_output}}, {str(tmp_path / "outputs.safetensors")!r})
        print(len(timm.create_model("hf-hub:tester/mfm-timm", pretrained=True, features_only=True)(x)))
    """
    try:
        out = run_against_hub(hub, code, tmp_path)
    finally:
        hub.stop()
    outputs = load_file(tmp_path / "outputs.safetensors")
    assert_close(outputs["timm"], outputs["ours"], FLOAT32_NETWORK, "pooled")
    assert out.strip().endswith("3")
