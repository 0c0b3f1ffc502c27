"""Model API: shapes, heads, Auto classes, pipelines, UperNet, saving/loading and bad input."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_resnet_config, tiny_swin_config, tiny_vit_config
from parity import FLOAT32_NETWORK, FLOAT32_ONE_OP, assert_close
from PIL import Image
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    pipeline,
)

from mfm_hub import (
    FOLKResNetForPreTraining,
    FOLKSwinForPreTraining,
    FOLKViTForPreTraining,
    MFMResNetBackbone,
    MFMResNetForImageClassification,
    MFMResNetForPreTraining,
    MFMResNetModel,
    MFMSwinBackbone,
    MFMSwinForImageClassification,
    MFMSwinForPreTraining,
    MFMSwinModel,
    MFMViTBackbone,
    MFMViTConfig,
    MFMViTForImageClassification,
    MFMViTForPreTraining,
    MFMViTModel,
    backbone_from_pretrained,
    config_from_preset,
)
from mfm_hub.evaluation import eval_transform, frozen_features

FAMILIES_FOLK = {"vit": FOLKViTForPreTraining, "resnet": FOLKResNetForPreTraining, "swin": FOLKSwinForPreTraining}
FAMILIES = {
    "vit": (tiny_vit_config, MFMViTModel, MFMViTForPreTraining, MFMViTForImageClassification, MFMViTBackbone),
    "resnet": (tiny_resnet_config, MFMResNetModel, MFMResNetForPreTraining, MFMResNetForImageClassification, MFMResNetBackbone),
    "swin": (tiny_swin_config, MFMSwinModel, MFMSwinForPreTraining, MFMSwinForImageClassification, MFMSwinBackbone),
}


def test_presets_build_the_published_shapes():
    vit_b = config_from_preset("vit-base-patch16-224")
    assert (vit_b.hidden_size, vit_b.num_hidden_layers, vit_b.num_attention_heads, vit_b.patch_size) == (768, 12, 12, 16)
    assert vit_b.layer_norm_eps == 1e-6 and vit_b.layer_scale_init_value is None and vit_b.low_pass_prob == 0.5
    model = MFMResNetModel(config_from_preset("resnet50"))
    assert sum(p.numel() for p in model.parameters()) == 23_508_032  # timm resnet50 without fc
    assert config_from_preset("resnet50").low_pass_prob == 0.3
    with pytest.raises(KeyError, match="Unknown preset 'vit-gigantic'.*vit-base-patch16-224"):
        config_from_preset("vit-gigantic")


def test_vit_state_dict_has_the_official_layout():
    keys = set(MFMViTForPreTraining(tiny_vit_config()).state_dict())
    for key in ["cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.q_bias",
                "blocks.0.attn.v_bias", "blocks.3.mlp.fc2.weight", "norm.weight"]:
        assert f"mfm_vit.encoder.{key}" in keys
    assert "decoder.0.weight" in keys
    assert not any(k.endswith("qkv.bias") or "k_bias" in k or "gamma" in k or "relative_position" in k for k in keys)


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_vit_patch_embedding_as_one_matmul_equals_timms_convolution(size):
    model = MFMViTModel(tiny_vit_config())
    pixels = torch.randn(2, 3, *size)
    ours = model.embed_patches(pixels)
    assert_close(ours, model.encoder.patch_embed(pixels), FLOAT32_ONE_OP, "patch tokens")
    ours.sum().backward()
    weight_grad = model.encoder.patch_embed.proj.weight.grad.clone()
    model.zero_grad()
    model.encoder.patch_embed(pixels).sum().backward()
    assert_close(weight_grad, model.encoder.patch_embed.proj.weight.grad, FLOAT32_ONE_OP, "weight gradient")


def test_vit_init_follows_beit():
    model = MFMViTModel(tiny_vit_config(num_hidden_layers=8))
    enc = model.encoder
    assert enc.pos_embed.std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.all(enc.blocks[0].attn.q_bias == 0) and torch.all(enc.blocks[0].attn.k_bias == 0)
    # output projections rescaled by 1/sqrt(2 * layer)
    ratio = enc.blocks[0].mlp.fc2.weight.std() / enc.blocks[7].mlp.fc2.weight.std()
    assert ratio.item() == pytest.approx((2 * 8 / (2 * 1)) ** 0.5, rel=0.15)


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_forward_shapes(family):
    make_config, base, pretrain, classify, backbone = FAMILIES[family]
    config = make_config(num_labels=5)
    x = torch.rand(2, 3, 64, 96)  # non-square, not the config's image size
    base_out = base(config)(x, output_hidden_states=True)
    assert base_out.pooler_output.shape[:2] == (2, config.num_features)
    assert len(base_out.hidden_states) == len(config.stage_names)
    pre = pretrain(config)(x)
    assert pre.reconstruction.shape == x.shape and pre.loss.ndim == 0 and torch.isfinite(pre.loss)
    assert pre.frequency_mask.shape == (2, 1, 64, 96)
    cls = classify(config)(x, labels=torch.tensor([0, 4]))
    assert cls.logits.shape == (2, 5) and cls.loss is not None
    bb = backbone(config)
    maps = bb(x).feature_maps
    assert len(maps) == len(bb.out_features) and [m.shape[1] for m in maps] == bb.channels


def test_vit_backbone_fpn_gives_a_pyramid():
    maps = MFMViTBackbone(tiny_vit_config())(torch.rand(1, 3, 64, 64)).feature_maps
    assert [tuple(m.shape[-2:]) for m in maps] == [(64, 64), (32, 32), (16, 16), (8, 8)]  # strides 1,2,4,8 for patch 4
    plain = MFMViTBackbone(tiny_vit_config(add_fpn=False, out_indices=[2, 4]))
    assert [tuple(m.shape[-2:]) for m in plain(torch.rand(1, 3, 64, 64)).feature_maps] == [(16, 16), (16, 16)]


@pytest.mark.parametrize("corruption", ["mfm", "informed", "sr", "deblur", "denoise"])
def test_every_corruption_trains(corruption):
    config = tiny_vit_config(corruption=corruption, sr_factor=4, blur_kernel_sizes=(3, 5, 7))
    model = MFMViTForPreTraining(config)
    out = model(torch.rand(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert model.mfm_vit.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert (out.frequency_mask is not None) == (corruption in ("mfm", "informed"))


def test_pretraining_is_reproducible_with_a_generator():
    model = MFMViTForPreTraining(tiny_vit_config()).eval()
    x = torch.rand(4, 3, 32, 32)
    a = model(x, generator=torch.Generator().manual_seed(5))
    b = model(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.frequency_mask, b.frequency_mask) and torch.equal(a.loss, b.loss)


def test_gradient_checkpointing_gives_the_same_gradients():
    for make_config, model_class in ((tiny_vit_config, MFMViTForPreTraining), (tiny_resnet_config, MFMResNetForPreTraining)):
        model = model_class(make_config())
        x, mask_gen = torch.rand(2, 3, 64, 64), 7
        grads = []
        for checkpointing in (False, True):
            model.zero_grad()
            if checkpointing:
                model.activation_checkpointing_enable()
            model.train()
            model(x, generator=torch.Generator().manual_seed(mask_gen)).loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        assert torch.equal(grads[1], grads[0])  # the recomputed forward runs the same kernels


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_roundtrip_and_auto_classes(family, tmp_path):
    make_config, base, pretrain, classify, backbone = FAMILIES[family]
    model = pretrain(make_config()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(saved["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForPreTraining",
        "AutoModelForImageClassification",
        "AutoBackbone",
    }
    assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    x = torch.rand(2, 3, 64, 64)
    mask = torch.ones(2, 1, 64, 64)
    mask[:, :, 20:40, 20:40] = 0
    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert type(reloaded) is pretrain
    assert torch.equal(model(x, frequency_mask=mask).loss, reloaded(x, frequency_mask=mask).loss)
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert type(encoder) is base
    assert torch.equal(encoder(x).pooler_output, model.base_model(x).pooler_output)
    classifier = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=3)
    assert type(classifier) is classify
    assert torch.equal(next(classifier.base_model.parameters()), next(model.base_model.parameters()))  # the encoder's weights carried over
    assert type(AutoBackbone.from_config(AutoConfig.from_pretrained(tmp_path))) is backbone
    assert type(backbone.from_pretrained(tmp_path)) is backbone
    assert type(backbone_from_pretrained(tmp_path)) is backbone  # AutoBackbone.from_pretrained refuses local folders
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    side = model.config.image_size
    assert processor.crop_size == {"height": side, "width": side} and processor.size == {"shortest_edge": int(side / 0.875)}


def test_save_pretrained_writes_the_processor_only_where_none_is_and_keeps_the_users(tmp_path, caplog):
    from transformers import AutoImageProcessor, CLIPImageProcessor

    model = MFMViTModel(tiny_vit_config())
    model.save_pretrained(tmp_path / "fresh")
    assert AutoImageProcessor.from_pretrained(tmp_path / "fresh").crop_size == {"height": 32, "width": 32}
    CLIPImageProcessor(crop_size={"height": 40, "width": 40}, size={"shortest_edge": 48}).save_pretrained(tmp_path / "mine")
    with caplog.at_level("WARNING"):
        model.save_pretrained(tmp_path / "mine")
    assert AutoImageProcessor.from_pretrained(tmp_path / "mine").crop_size == {"height": 40, "width": 40}
    assert (tmp_path / "mine" / "model.safetensors").exists()
    assert "Kept the image processor already in" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        model.save_pretrained(tmp_path / "fresh")  # its own processor again: nothing to say
    assert "Kept the image processor" not in caplog.text


def test_mismatching_checkpoint_names_the_keys(tmp_path):
    MFMViTModel(tiny_vit_config()).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"different shape: .*encoder\.blocks\.0\.attn\.qkv\.weight"):
        MFMViTModel.from_pretrained(tmp_path / "vit", hidden_size=60)
    with pytest.raises(ValueError, match=r"missing from the checkpoint: .*encoder\.blocks\.4\."):
        MFMViTModel.from_pretrained(tmp_path / "vit", num_hidden_layers=5, add_fpn=False)
    MFMResNetModel(tiny_resnet_config()).save_pretrained(tmp_path / "resnet")
    with pytest.raises(ValueError, match="missing from the checkpoint: .*encoder.cls_token"):  # the saved weights, another config
        MFMViTModel.from_pretrained(tmp_path / "resnet", config=tiny_vit_config())


@pytest.mark.parametrize("saved, loaded", [("vit", "resnet"), ("resnet", "swin"), ("swin", "vit")])
def test_a_checkpoint_of_another_family_is_an_error_naming_both(saved, loaded, tmp_path):
    """Not a list of every missing key (or, for a backbone, a complaint about `out_features`)."""
    make_config, base, *_ = FAMILIES[saved]
    base(make_config()).save_pretrained(tmp_path)
    for model_class in FAMILIES[loaded][1:]:
        with pytest.raises(ValueError, match=rf"holds an mfm_{saved} checkpoint; {model_class.__name__} is an mfm_{loaded} model"):
            model_class.from_pretrained(tmp_path)


def test_a_backbone_with_the_four_scale_neck_refuses_other_out_indices_instead_of_remapping(tmp_path):
    MFMViTBackbone(tiny_vit_config(add_fpn=True)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"4-scale neck \(`add_fpn=True`\) takes exactly 4 `out_indices`, got \[2, 4\]"):
        MFMViTBackbone.from_pretrained(tmp_path, out_indices=[2, 4])
    plain = MFMViTBackbone.from_pretrained(tmp_path, out_indices=[2, 4], add_fpn=False)
    assert [tuple(fm.shape[-2:]) for fm in plain(torch.rand(1, 3, 32, 32)).feature_maps] == [(8, 8), (8, 8)]  # stride p, no remap


@pytest.mark.parametrize("family", FAMILIES)
def test_non_finite_weights_are_refused_where_a_checkpoint_is_read_naming_the_tensor(family, tmp_path):
    """Every head of every family, and the timm export: a NaN or inf weight (a diverged run, a
    damaged file) is an error naming it, not NaN features or a chance-level result later."""
    from safetensors.torch import load_file, save_file

    from mfm_hub.timm_export import export_to_timm

    config_fn, *classes = FAMILIES[family]
    classes[0](config_fn()).save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    state = load_file(weights)
    name = next(key for key, value in state.items() if value.is_floating_point() and value.numel() > 1)
    state[name][0] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    for model_class in classes:
        with pytest.raises(ValueError, match=rf"holds non-finite weights: .*{name.split('.')[-1]} \(1 of \d+ values\)"):
            model_class.from_pretrained(tmp_path / "model")
    model = classes[0](config_fn())
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(ValueError, match="The model to export .* holds non-finite weights"):
        export_to_timm(model, tmp_path / "timm")
    assert not (tmp_path / "timm").exists()


def test_non_finite_features_are_refused_by_every_frozen_feature_protocol():
    model = MFMViTModel(tiny_vit_config()).eval()
    with torch.no_grad():
        model.base_model.encoder.norm.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite features for 2 of 2 images"):
        frozen_features(model, torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_file_is_a_clear_error(damage, tmp_path):
    MFMViTModel(tiny_vit_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00not a safetensors file" * 4)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        MFMViTModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_pixel_values(family):
    make_config, base, pretrain, _, _ = FAMILIES[family]
    model = pretrain(make_config())
    with pytest.raises(ValueError, match=r"un-normalised pixel values in \[0, 1\]"):
        model(torch.randn(2, 3, 64, 64))
    for bad in (float("nan"), float("inf")):
        pixels = torch.rand(2, 3, 64, 64)
        pixels[1, 2, 5, 7] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            model(pixels)
        with pytest.raises(ValueError, match="NaN or infinite"):
            base(make_config())(pixels)
    with pytest.raises(ValueError, match=r"`frequency_mask` values must lie in \[0, 1\]"):
        model(torch.rand(2, 3, 64, 64), frequency_mask=torch.full((2, 1, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="1 channels but the model expects 3.*convert\\('RGB'\\)"):
        model(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match="not divisible by the encoder stride"):
        model(torch.rand(2, 3, 62, 64))
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        base(make_config())(torch.rand(3, 64, 64))



def main_output(output) -> torch.Tensor:
    """The head's image-shaped result: reconstruction, logits, tokens / map or the last feature map."""
    for key in ("reconstruction", "logits", "last_hidden_state", "feature_maps"):
        if key in output:
            return output[key][-1] if key == "feature_maps" else output[key]
    raise KeyError(list(output.keys()))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_head_casts_float_pixels_to_its_dtype_and_refuses_what_is_not_an_image_batch(family):
    """As transformers' ViT and Dinov2: float pixels of another precision are cast to the model's
    dtype (a pre-training loss stays float32: its FFTs run in float32); integer pixels and an empty
    batch are refused naming `pixel_values`."""
    make_config, *classes = FAMILIES[family]
    pixels = torch.rand(2, 3, 64, 64)
    for model_class in classes:
        model = model_class(make_config()).eval()
        with torch.no_grad():
            expected = main_output(model(pixels))
            assert torch.equal(main_output(model(pixels.double())), expected)  # float64 [0, 1] images are exactly float32 ones
            for dtype in (torch.bfloat16, torch.float16):
                out = main_output(model.to(dtype)(pixels))  # float32 pixels into a half-precision model
                assert out.dtype == dtype and torch.isfinite(out.float()).all(), (model_class.__name__, dtype)
                model.float()
        for integers in (pixels.mul(255).to(torch.uint8), (pixels > 0.5).long()):
            with pytest.raises(ValueError, match=rf"`pixel_values` must be a floating-point tensor, got {integers.dtype}"):
                model(integers)
        with pytest.raises(ValueError, match=r"`pixel_values` holds no images \(batch size 0\)"):
            model(pixels[:0])

def test_vit_rejects_image_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match="30x32 is not divisible by the patch size 4"):
        MFMViTModel(tiny_vit_config())(torch.rand(1, 3, 30, 32))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(image_size=30), "divisible by `patch_size`"),
        (dict(mask_radius=-1.0), "mask_radius"),
        (dict(low_pass_prob=1.2), "low_pass_prob"),
        (dict(compress_prob=-0.5), "compress_prob"),
        (dict(informed_keep_ratios=(0.0,)), "informed_keep_ratios"),
        (dict(pretext_task="jpeg"), "`pretext_task` must be one of"),
        (dict(pretext_task="sr", loss_target="masked"), "needs a frequency-mask"),
        (dict(blur_kernel_sizes=(4,)), "odd"),
        (dict(hidden_size=50), "divisible by `num_attention_heads`"),
        (dict(num_channels=2), "num_channels"),
        (dict(add_fpn=True, out_indices=[1, 2]), "exactly 4"),
        (dict(mask_radius="16"), r"`mask_radius` must be a number, got '16' \(str\)"),
        (dict(hidden_size=48.0), r"`hidden_size` must be an integer, got 48.0"),
        (dict(focal_weighting="yes"), r"`focal_weighting` must be true or false, got 'yes'"),
        (dict(image_mean=("a", "b", "c")), r"`image_mean` must be a list of numbers"),
        (dict(informed_keep_ratios=0.05), r"`informed_keep_ratios` must be a list of numbers, got 0.05"),
        (dict(intermediate_size=0), r"`intermediate_size` must be a positive int, got 0"),
        (dict(hidden_size=48, intermediate_size=96, mlp_ratio=3.0), r"`intermediate_size` \(96\) and `mlp_ratio` \(3.0\) disagree"),
    ],
)
def test_bad_config_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_vit_config(**overrides)


def test_vit_intermediate_size_sets_the_mlp_width_as_in_transformers_vit(tmp_path):
    """transformers' ViT names the MLP width ``intermediate_size``: it sets the model's width
    (it was kept as an unread attribute while the MLP stayed 4x wide) and survives saving."""
    config = tiny_vit_config(hidden_size=48, num_attention_heads=3, intermediate_size=96)
    assert (config.mlp_ratio, config.intermediate_size) == (2.0, 96)
    model = MFMViTModel(config)
    assert all(block.mlp.fc1.out_features == 96 for block in model.encoder.blocks)
    model.save_pretrained(tmp_path)
    assert MFMViTModel.from_pretrained(tmp_path).config.intermediate_size == 96 and "intermediate_size" not in config.to_dict()


def test_configs_saved_with_the_old_field_names_load_under_the_new_ones(tmp_path):
    saved = tiny_vit_config().to_dict()
    saved.pop("pretext_task"), saved.pop("loss_target")
    (tmp_path / "config.json").write_text(json.dumps({**saved, "corruption": "sr", "reconstruction_target": "all"}))
    config = MFMViTConfig.from_pretrained(tmp_path)
    assert (config.pretext_task, config.loss_target) == ("sr", "all")
    assert "corruption" not in config.to_dict() and "reconstruction_target" not in config.to_dict()
    with pytest.raises(ValueError, match="needs a frequency-mask pretext task"):  # the old names are validated as the new ones
        tiny_vit_config(corruption="sr", reconstruction_target="masked")


def test_bad_resnet_config_values():
    with pytest.raises(ValueError, match="block_type"):
        tiny_resnet_config(block_type="bottle")
    with pytest.raises(ValueError, match="layers"):
        tiny_resnet_config(layers=(1, 1, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_upernet_on_our_backbone(family, tmp_path):
    make_config, *_ = FAMILIES[family]
    config = UperNetConfig(backbone_config=make_config(), num_labels=4, hidden_size=32, auxiliary_channels=16, auxiliary_in_channels=None)
    model = UperNetForSemanticSegmentation(config)
    pixels = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 4, (2, 64, 64))
    out = model(pixel_values=pixels, labels=labels)
    assert out.logits.shape == (2, 4, 64, 64) and torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path)
    model.eval(), reloaded.eval()
    assert torch.equal(reloaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def test_pipelines_run_on_our_checkpoints(tmp_path):
    config = tiny_vit_config(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}, use_mean_pooling=True)
    MFMViTForImageClassification(config).save_pretrained(tmp_path)
    rgb = Image.fromarray(np.random.randint(0, 255, (40, 50, 3), dtype=np.uint8))
    gray = Image.fromarray(np.random.randint(0, 255, (40, 50), dtype=np.uint8))
    classify = pipeline("image-classification", model=str(tmp_path))
    for image in (rgb, gray):
        predictions = classify(image)
        assert {p["label"] for p in predictions} <= {"a", "b", "c"}
        assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)
    features = pipeline("image-feature-extraction", model=str(tmp_path))
    out = np.asarray(features(rgb))
    assert out.shape == (1, 1 + 64, 48)


def test_processor_feeds_pretraining_unnormalised(tmp_path):
    from mfm_hub import image_processor_for_config

    config = tiny_vit_config()
    processor = image_processor_for_config(config, do_normalize=False)
    image = Image.fromarray(np.random.randint(0, 255, (50, 40, 3), dtype=np.uint8))
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32) and 0 <= pixels.min() and pixels.max() <= 1
    assert torch.isfinite(MFMViTForPreTraining(config)(pixels).loss)


def test_vit_config_serialises_backbone_fields():
    config = MFMViTConfig(out_indices=[3, 6, 9, 12])
    restored = MFMViTConfig.from_dict(config.to_dict())
    assert restored.out_features == ["stage3", "stage6", "stage9", "stage12"] and restored.add_fpn


def test_pipelines_see_exactly_what_the_evaluation_sees(tmp_path):
    """The saved image processor is the evaluation preprocessing (shorter side to size / 0.875,
    bicubic, centre crop, ImageNet mean/std): identical pixels, identical features and scores."""
    labels = dict(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    config = tiny_vit_config(**labels)
    MFMViTModel(config).save_pretrained(tmp_path / "encoder")
    image = Image.fromarray(np.random.randint(0, 255, (45, 70, 3), dtype=np.uint8))  # neither square nor the model's size
    evaluated = eval_transform(config)(image)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path / "encoder"))
    assert torch.equal(extractor.image_processor(image, return_tensors="pt")["pixel_values"][0], evaluated)
    encoder = MFMViTModel.from_pretrained(tmp_path / "encoder").eval()
    with torch.no_grad():
        ours = frozen_features(encoder, evaluated[None])[0]
        pooled = encoder(evaluated[None]).pooler_output[0]
    assert torch.equal(torch.tensor(extractor(image, pool=True))[0], ours)  # the same model on the same pixels
    assert_close(pooled, ours, FLOAT32_ONE_OP, "pooled")  # pooler_output = the mean patch token the evaluation uses

    MFMViTForImageClassification(tiny_vit_config(**labels, use_mean_pooling=True)).save_pretrained(tmp_path / "classifier")
    classifier = MFMViTForImageClassification.from_pretrained(tmp_path / "classifier").eval()
    with torch.no_grad():
        probabilities = classifier(evaluated[None]).logits.softmax(-1)[0]
    scores = {p["label"]: p["score"] for p in pipeline("image-classification", model=str(tmp_path / "classifier"))(image)}
    assert_close(torch.tensor([scores[name] for name in "abc"]), probabilities, FLOAT32_NETWORK, "scores")


def test_vit_pooling_default_option_and_old_checkpoints(tmp_path):
    config = tiny_vit_config()
    assert config.pooling == "mean" and not config.use_mean_pooling
    model = MFMViTModel(config).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert_close(out.pooler_output, out.last_hidden_state[:, 1:].mean(1), FLOAT32_ONE_OP, "mean pooling")
        model.config.pooling = "cls"
        assert torch.equal(model(x).pooler_output, out.last_hidden_state[:, 0])
    with pytest.raises(ValueError, match="`pooling` must be 'mean' or 'cls'"):
        tiny_vit_config(pooling="max")
    # a checkpoint saved before `pooling` existed pooled the cls token, and still does
    MFMViTModel(config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["pooling"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert AutoConfig.from_pretrained(tmp_path).pooling == "cls"
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = reloaded(x)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_config_json_with_wrong_types_is_refused_naming_the_field(family, tmp_path):
    config_fn, model_class, *_ = FAMILIES[family]
    model_class(config_fn()).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "mask_radius": "sixteen", "image_size": "64"}))
    with pytest.raises(ValueError, match=r"`(image_size` must be an integer, got '64'|mask_radius` must be a number, got 'sixteen')"):
        model_class.from_pretrained(tmp_path)


# Every argument of every public forward of every family, against inputs a careless or hostile
# caller passes: each is a ValueError naming the argument (never an IndexError, AttributeError,
# dtype error or a silent broadcast deep inside).
PIXEL_CASES = {
    "None": lambda x: None,
    "a list": lambda x: [x],
    "a NumPy array": lambda x: x.numpy(),
    "3-D": lambda x: x[0],
    "5-D": lambda x: x[None],
    "bool": lambda x: x > 0.5,
    "uint8": lambda x: (x * 255).to(torch.uint8),
    "empty batch": lambda x: x[:0],
    "NaN": lambda x: x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill_(3, torch.tensor([1]), True), float("nan")),
    "one channel": lambda x: x[:, :1],
    "indivisible size": lambda x: x[..., :-2],
}
LABEL_CASES = {
    "a list": (lambda: [0, 1], "must be a tensor of class indices"),
    "too many": (lambda: torch.tensor([0, 1, 2]), r"one class index per image, shape \(2,\)"),
    "out of range": (lambda: torch.tensor([0, 7]), "holds 7, outside the 3 classes"),
    "negative": (lambda: torch.tensor([-3, 0]), "holds -3, outside the 3 classes"),
    "multi-label, wrong shape": (lambda: torch.rand(2), r"floats of shape \(2, 3\)"),
    "multi-label, NaN": (lambda: torch.full((2, 3), float("nan")), "NaN or infinite"),
    "bool": (lambda: torch.tensor([True, False]), r"floats of shape \(2, 3\)"),
}
PRETRAINING_CASES = {
    "mask as a NumPy array": (dict(frequency_mask=lambda size: np.ones((2, 1, size, size))), "`frequency_mask` must be a tensor"),
    "mask of the wrong shape": (dict(frequency_mask=lambda size: torch.ones(2, size, size)), "`frequency_mask` must have shape"),
    "mask with NaN": (
        dict(frequency_mask=lambda size: torch.full((2, 1, size, size), float("nan"))),
        r"`frequency_mask` values must lie in",
    ),
    "mask above 1": (dict(frequency_mask=lambda size: torch.full((2, 1, size, size), 2.0)), r"`frequency_mask` values must lie in"),
    "generator as a seed": (dict(generator=lambda size: 3), "`generator` must be a torch.Generator"),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def every_head(request):
    make_config, base, pretrain, classify, backbone = FAMILIES[request.param]
    config = make_config(num_labels=3)
    return request.param, config.image_size, {"model": base(config), "pre-training": pretrain(config), "classification": classify(config),
                                              "backbone": backbone(config)}


@pytest.mark.parametrize("case", PIXEL_CASES)
def test_every_forward_refuses_bad_pixel_values_naming_them(every_head, case):
    family, size, heads = every_head
    pixels = PIXEL_CASES[case](torch.rand(2, 3, size, size))
    for name, head in heads.items():
        if case == "indivisible size" and family == "resnet" and name != "pre-training":
            assert main_output(head(pixels)).isfinite().all()  # a CNN takes any size; only its decoder needs the stride
            continue
        with pytest.raises(ValueError, match="(?i)pixel_values|image size"):
            head(pixels)


@pytest.mark.parametrize("case", LABEL_CASES)
def test_every_classifier_refuses_bad_labels_naming_them(every_head, case):
    _, size, heads = every_head
    make_labels, message = LABEL_CASES[case]
    classifier = heads["classification"]
    classifier.config.problem_type = None  # transformers infers the problem from the labels (and keeps it)
    with pytest.raises(ValueError, match=message):
        classifier(torch.rand(2, 3, size, size), labels=make_labels())
    assert classifier(torch.rand(2, 3, size, size), labels=torch.tensor([2, -100])).loss.isfinite()


@pytest.mark.parametrize("case", PRETRAINING_CASES)
def test_every_pretraining_forward_refuses_bad_masks_and_generators_naming_them(every_head, case):
    _, size, heads = every_head
    arguments, message = PRETRAINING_CASES[case]
    with pytest.raises(ValueError, match=message):
        heads["pre-training"](torch.rand(2, 3, size, size), **{name: make(size) for name, make in arguments.items()})


@pytest.mark.parametrize("family", FAMILIES)
def test_from_pretrained_in_bfloat16_takes_float32_pixels(family, tmp_path):
    make_config, base, pretrain, classify, backbone = FAMILIES[family]
    pretrain(make_config()).save_pretrained(tmp_path)
    size = make_config().image_size
    for model_class in (base, pretrain, classify, backbone):
        model = model_class.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
        assert next(model.parameters()).dtype == torch.bfloat16
        with torch.no_grad():
            output = main_output(model(torch.rand(2, 3, size, size)))
        assert output.dtype == torch.bfloat16 and torch.isfinite(output.float()).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_head_follows_the_config_for_tuples_and_hidden_states_as_transformers_models_do(family):
    """``config.return_dict=False`` (or the argument) gives tuples, ``config.output_hidden_states``
    is the default of the argument, backbones included; the models' own inner calls are unaffected."""
    make_config, *classes = FAMILIES[family]
    config = make_config(num_labels=3, return_dict=False, output_hidden_states=True)
    size = config.image_size
    for model_class in classes:
        model = model_class(config).eval()
        with torch.no_grad():
            as_tuple = model(torch.rand(2, 3, size, size))
            as_output = model(torch.rand(2, 3, size, size), return_dict=True)
        assert isinstance(as_tuple, tuple) and not isinstance(as_output, tuple), model_class.__name__
        assert as_output.hidden_states is not None and len(as_output.hidden_states) > 1, model_class.__name__
        with torch.no_grad():
            quiet = model(torch.rand(2, 3, size, size), return_dict=True, output_hidden_states=False)
        assert quiet.hidden_states is None, model_class.__name__
    folk_config = make_config(return_dict=False, folk_head_hidden_dim=16, folk_head_bottleneck_dim=8, folk_head_output_dim=8)
    folk = FAMILIES_FOLK[family](folk_config).eval()
    with torch.no_grad():
        assert isinstance(folk(torch.rand(2, 2, 3, size, size)), tuple)
