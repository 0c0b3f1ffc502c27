"""FOLK: the EMA teacher, the distillation loss, gradients, and the Trainer integration."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SCRIPT, run_args, script_env, tiny_resnet_config, tiny_swin_config, tiny_vit_config
from parity import FLOAT32_NETWORK, FLOAT32_ONE_OP, assert_close, relative_error
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from mfm_hub import (
    FOLKResNetForPreTraining,
    FOLKSwinForPreTraining,
    FOLKViTForPreTraining,
    MFMViTForPreTraining,
    MFMViTModel,
)
from mfm_hub.data import FASHION_MNIST_DIR
from mfm_hub.modeling_folk import (
    FOLKScheduleCallback,
    Prototypes,
    cross_view_distillation_loss,
    distribution_statistics,
    ema_momentum,
    prototypes_frozen,
    teacher_temperature,
)
from training import run_pretraining

SMALL_HEAD = dict(pretext_task="informed", folk_head_output_dim=64, folk_head_hidden_dim=32, folk_head_bottleneck_dim=16)
FAMILIES = {"vit": (FOLKViTForPreTraining, tiny_vit_config), "resnet": (FOLKResNetForPreTraining, tiny_resnet_config),
            "swin": (FOLKSwinForPreTraining, tiny_swin_config)}
needs_data = pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="needs `apt-get install dataset-fashion-mnist`")


def folk_model(family="vit", **overrides):
    model_class, make_config = FAMILIES[family]
    return model_class(make_config(**{**SMALL_HEAD, **overrides}))


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_starts_as_the_student_and_gets_no_gradient(family):
    model = folk_model(family)
    for teacher, student in model._teacher_student_pairs():
        assert all(torch.equal(t, s) for t, s in zip(teacher.state_dict().values(), student.state_dict().values()))
    out = model(torch.rand(3, 2, 3, 64, 64))
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.teacher_head.parameters())
    assert model.student_head.prototypes.weight.grad.abs().sum() > 0
    assert next(model.base_model.parameters()).grad.abs().sum() > 0  # the student's encoder learns
    assert_close(out.loss, out.reconstruction_loss + out.distillation_loss, FLOAT32_ONE_OP, "loss")
    assert out.reconstruction.shape == (6, 3, 64, 64) and out.frequency_mask.shape == (6, 1, 64, 64)


def test_ema_update_matches_its_formula():
    model = folk_model()
    with torch.no_grad():
        for p in model.base_model.parameters():
            p.add_(torch.randn_like(p))
        for p in model.student_head.parameters():
            p.mul_(3.0)
    before_teacher = [p.clone() for p in model.teacher.parameters()] + [p.clone() for p in model.teacher_head.parameters()]
    student = list(model.base_model.parameters()) + list(model.student_head.parameters())
    model.update_teacher(0.9)
    after = list(model.teacher.parameters()) + list(model.teacher_head.parameters())
    for t_before, s, t_after in zip(before_teacher, student, after):
        assert_close(t_after, 0.9 * t_before + 0.1 * s, FLOAT32_ONE_OP, "teacher")


def test_momentum_schedule():
    assert ema_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert ema_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert ema_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert ema_momentum(25, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


def test_distillation_loss_pairs_views_across():
    student = torch.randn(4, 8)  # rows: u~_0, u~_1, v~_0, v~_1
    teacher = F.softmax(torch.randn(4, 8), dim=-1)  # rows: u_0, u_1, v_0, v_1
    expected = 0
    for s_row, t_row in ((0, 2), (1, 3), (2, 0), (3, 1)):
        expected += -(teacher[t_row] * F.log_softmax(student[s_row] / 0.1, dim=-1)).sum()
    assert_close(cross_view_distillation_loss(student, teacher, 0.1), expected / 4, FLOAT32_ONE_OP, "loss")


def test_centre_moves_towards_the_teacher_mean():
    model = folk_model(folk_center_momentum=0.5).train()
    pixels = torch.rand(2, 2, 3, 32, 32)
    views = pixels.transpose(0, 1).reshape(4, 3, 32, 32)
    from mfm_hub.modeling_common import normalize

    with torch.no_grad():
        teacher_mean = model.teacher_head(model.head_features(model.teacher(normalize(views, model.config)))).mean(0, keepdim=True)
    model(pixels)
    assert_close(model.center, 0.5 * teacher_mean, FLOAT32_NETWORK, "centre")
    model.eval()
    model(pixels)
    assert_close(model.center, 0.5 * teacher_mean, FLOAT32_NETWORK, "centre after eval")  # no update in eval


def test_unit_norm_prototypes_give_cosines_whatever_the_weight_scale():
    layer = Prototypes(16, 32, normalize=True)
    features = F.normalize(torch.randn(5, 16), dim=-1)
    logits = layer(features)
    assert logits.abs().max() <= 1 + 1e-6
    with torch.no_grad():
        layer.weight.mul_(0.01)  # what weight decay does to the raw weights
    assert_close(layer(features), logits, FLOAT32_ONE_OP, "scaled weights")
    plain = Prototypes(16, 32, normalize=False)
    plain.weight.data.copy_(layer.weight)
    assert_close(plain(features), features @ layer.weight.T, FLOAT32_ONE_OP, "plain")


def test_teacher_temperature_warms_up_linearly():
    config = tiny_vit_config(folk_warmup_teacher_temperature=0.02, folk_teacher_temperature=0.06, folk_teacher_temperature_warmup_ratio=0.5)
    assert teacher_temperature(0, 100, config) == pytest.approx(0.02)
    assert teacher_temperature(25, 100, config) == pytest.approx(0.04)
    assert teacher_temperature(50, 100, config) == pytest.approx(0.06)
    assert teacher_temperature(99, 100, config) == pytest.approx(0.06)
    assert teacher_temperature(0, 100, tiny_vit_config(folk_teacher_temperature=0.05)) == pytest.approx(0.05)  # no warm-up


def test_target_statistics_recognise_both_collapses():
    k = 16
    uniform = torch.full((4, k), 1 / k)
    entropy, kl = distribution_statistics(uniform)
    assert entropy.item() == pytest.approx(math.log(k), rel=1e-5) and kl.item() == pytest.approx(0, abs=1e-6)
    one_prototype = F.one_hot(torch.zeros(4, dtype=torch.long), k).float()
    entropy, kl = distribution_statistics(one_prototype)
    assert entropy.item() == pytest.approx(0, abs=1e-6) and kl.item() == pytest.approx(math.log(k), rel=1e-5)
    spread = F.one_hot(torch.arange(4), k).float()  # sharp and every image a different prototype
    entropy, kl = distribution_statistics(spread)
    assert entropy.item() == pytest.approx(0, abs=1e-6) and kl.item() == pytest.approx(math.log(k / 4), rel=1e-5)


def test_forward_reports_target_statistics_and_uses_the_scheduled_temperature():
    model = folk_model().eval()
    pixels = torch.rand(3, 2, 3, 32, 32)
    out = model(pixels)
    assert 0 <= out.teacher_entropy.item() <= math.log(64) + 1e-4 and 0 <= out.teacher_marginal_kl.item() <= math.log(64) + 1e-4
    model.teacher_temperature = 0.001  # sharper targets
    assert model(pixels).teacher_entropy < out.teacher_entropy


def test_frozen_prototypes_sit_out_the_optimizer_step():  # noqa: F811
    model = folk_model(folk_freeze_prototypes_ratio=0.1).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.05)
    callback = FOLKScheduleCallback()
    for step, frozen in ((0, True), (9, True), (10, False)):
        assert prototypes_frozen(step, 100, model.config) == frozen
        before = model.student_head.prototypes.weight.detach().clone()
        mlp_before = model.student_head.mlp[0].weight.detach().clone()
        state = type("State", (), {"global_step": step, "max_steps": 100})()
        callback.on_step_begin(None, state, None, model=model)
        model(torch.rand(2, 2, 3, 32, 32)).loss.backward()
        callback.on_pre_optimizer_step(None, state, None, model=model)
        optimizer.step()
        optimizer.zero_grad()
        assert torch.equal(model.student_head.prototypes.weight, before) == frozen
        assert not torch.equal(model.student_head.mlp[0].weight, mlp_before)


def test_vit_heads_read_mean_patch_tokens_or_the_cls_token():
    pixels = torch.rand(2, 2, 3, 32, 32)
    for pooling, pick in (("mean", lambda h: h[:, 1:].mean(1)), ("cls", lambda h: h[:, 0])):
        model = folk_model(folk_head_pooling=pooling).eval()
        encoded = model.teacher(torch.rand(4, 3, 32, 32))
        assert torch.equal(model.head_features(encoded), pick(encoded.last_hidden_state))
        model(pixels)
    with pytest.raises(ValueError, match="folk_head_pooling"):
        tiny_vit_config(folk_head_pooling="max")


def test_folk_needs_two_finite_views():
    with pytest.raises(ValueError, match="two views per image"):
        folk_model()(torch.rand(2, 3, 32, 32))
    pixels = torch.rand(2, 2, 3, 32, 32)
    pixels[0, 1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        folk_model()(pixels)


def test_folk_starts_from_an_mfm_checkpoint(tmp_path):
    mfm = MFMViTForPreTraining(tiny_vit_config(**SMALL_HEAD))
    mfm.save_pretrained(tmp_path)
    folk = FOLKViTForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(folk.teacher.encoder.pos_embed, mfm.mfm_vit.encoder.pos_embed)
    assert torch.equal(folk.base_model.encoder.pos_embed, mfm.mfm_vit.encoder.pos_embed)
    assert torch.equal(folk.student.decoder[0].weight, mfm.decoder[0].weight)
    assert torch.equal(folk.center, torch.zeros_like(folk.center))  # not left as uninitialised memory (it held NaN at times)


@pytest.mark.parametrize("family", FAMILIES)
def test_folk_is_a_student_a_teacher_and_two_heads_and_round_trips(family, tmp_path):
    model = folk_model(family)
    student_class = type(model).student_class
    assert isinstance(model.student, student_class) and type(model.teacher) is type(model.student.base_model)
    assert model.base_model is model.student.base_model
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))  # teacher != student, so a swap would show
        model.center.normal_()
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_folk_checkpoints_from_before_composition_still_load(tmp_path):
    """Before FOLK was composed, the student's encoder and decoder sat at the top level
    (``mfm_vit.*``, ``decoder.*``); ``from_pretrained`` and the Trainer's resume
    (``load_state_dict``) both read that layout."""
    model = folk_model()
    with torch.no_grad():
        for parameter in model.teacher.parameters():
            parameter.mul_(0.5)
    flat = {key.removeprefix("student."): tensor.clone() for key, tensor in model.state_dict().items()}
    assert "mfm_vit.encoder.pos_embed" in flat and "decoder.0.weight" in flat and "teacher.encoder.pos_embed" in flat
    model.save_pretrained(tmp_path)
    save_file({key: tensor.contiguous() for key, tensor in flat.items()}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    resumed = folk_model()
    resumed.load_state_dict(dict(flat))  # what the Trainer's resume does with model.safetensors
    for loaded in (FOLKViTForPreTraining.from_pretrained(tmp_path), resumed):
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name


def test_folk_starts_from_a_backbone_checkpoint(tmp_path):
    encoder = MFMViTModel(tiny_vit_config(**SMALL_HEAD))
    encoder.save_pretrained(tmp_path)
    folk = FOLKViTForPreTraining.from_pretrained(tmp_path)
    for loaded in (folk.base_model, folk.teacher):
        for name, tensor in encoder.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name


def test_bad_folk_config_values():
    with pytest.raises(ValueError, match="folk_teacher_temperature"):
        tiny_vit_config(folk_teacher_temperature=0.0)
    with pytest.raises(ValueError, match="folk_export"):
        tiny_vit_config(folk_export="both")
    with pytest.raises(ValueError, match="folk_ema_momentum"):
        tiny_vit_config(folk_ema_momentum=1.5)
    with pytest.raises(ValueError, match="folk_warmup_teacher_temperature"):
        tiny_vit_config(folk_warmup_teacher_temperature=-0.01)
    with pytest.raises(ValueError, match="folk_freeze_prototypes_ratio"):
        tiny_vit_config(folk_freeze_prototypes_ratio=1.2)


def folk_args(**config_fields) -> list[str]:
    """`run_pretraining.py` flags of a FOLK run with a small head and ``config_fields``."""
    fields = {"folk_head_output_dim": 64, **config_fields}
    return ["--objective", "folk", "--config_overrides", ",".join(f"{name}={value}" for name, value in fields.items())]


@needs_data
@pytest.mark.slow
def test_folk_run_exports_a_backbone_and_its_loss_falls(fashion_folder, tiny_config, tmp_path):  # noqa: F811
    output = tmp_path / "folk"
    assert run_pretraining.main(run_args(fashion_folder, tiny_config, output, *folk_args(), "--max_steps", "30", "--save_strategy", "no",
                                         "--learning_rate", "2e-3")) == 0
    backbone = AutoModel.from_pretrained(output)
    assert isinstance(backbone, MFMViTModel)
    history = [e for e in json.loads((output / "train_results.json").read_text())["log_history"] if "loss" in e]
    reconstruction = [e["reconstruction_loss"] for e in history]
    assert sum(reconstruction[-5:]) < 0.9 * sum(reconstruction[:5]), reconstruction
    assert all(e["loss"] == pytest.approx(e["reconstruction_loss"] + e["distillation_loss"], rel=1e-4) for e in history)
    # the distillation term learns: targets well below log K (not uniform), their mean well
    # away from one prototype (no collapse), and the student follows them
    log_k = math.log(64)
    last = history[-10:]
    mean = {term: sum(e[term] for e in last) / len(last) for term in ("distillation_loss", "teacher_entropy", "teacher_marginal_kl")}
    assert mean["distillation_loss"] < log_k - 0.5 and mean["teacher_entropy"] < log_k - 1.0, mean
    assert 0 < mean["teacher_marginal_kl"] < log_k - 1.0, mean
    figure_terms = ("teacher_entropy", "teacher_marginal_kl")
    assert all(term in e for e in history for term in figure_terms)
    card = (output / "README.md").read_text()
    assert "pre-trained with FOLK" in card and "teacher encoder" in card
    assert (output / "reconstructions.png").exists()


@needs_data
@pytest.mark.slow
def test_first_release_folk_settings_stay_at_log_k(fashion_folder, tiny_config, tmp_path):  # noqa: F811
    """The same run with the first release's head (plain prototypes, cls token, teacher
    temperature 0.04) keeps its distillation term at log K: what the test above guards."""
    output = tmp_path / "before"
    first_release = folk_args(folk_normalize_prototypes="false", folk_head_pooling="cls", folk_teacher_temperature=0.04)
    assert run_pretraining.main(run_args(fashion_folder, tiny_config, output, *first_release, "--max_steps", "30", "--save_strategy", "no",
                                         "--learning_rate", "2e-3")) == 0
    history = [e for e in json.loads((output / "train_results.json").read_text())["log_history"] if "loss" in e]
    assert all(abs(e["distillation_loss"] - math.log(64)) < 0.25 for e in history[-10:]), [e["distillation_loss"] for e in history]


@needs_data
@pytest.mark.slow
def test_folk_resume_is_exact_teacher_and_centre_included(fashion_folder, tiny_config, tmp_path):  # noqa: F811
    # the schedules (temperature warm-up, frozen prototypes) run across the resume point
    common = [
        *folk_args(folk_warmup_teacher_temperature=0.01, folk_teacher_temperature_warmup_ratio=0.75, folk_freeze_prototypes_ratio=0.5),
        "--max_steps",
        "8",
        "--save_steps",
        "3",
        "--save_total_limit",
        "5",
        "--gradient_accumulation_steps",
        "2",
    ]
    run_pretraining.main(run_args(fashion_folder, tiny_config, tmp_path / "straight", *common))
    import shutil

    shutil.copytree(tmp_path / "straight" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    run_pretraining.main(run_args(fashion_folder, tiny_config, tmp_path / "resumed", *common,
                                  "--resume_from_checkpoint", str(tmp_path / "resumed" / "checkpoint-3")))
    straight = load_file(tmp_path / "straight" / "checkpoint-8" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "checkpoint-8" / "model.safetensors")
    assert any(k.startswith("teacher.") for k in straight) and "center" in straight
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # frozen student prototypes leave the teacher's copy where it started, equal to them
    early = load_file(tmp_path / "straight" / "checkpoint-3" / "model.safetensors")
    assert_close(early["teacher_head.prototypes.weight"], early["student_head.prototypes.weight"], FLOAT32_ONE_OP, "frozen")
    moved = relative_error(straight["teacher_head.prototypes.weight"], straight["student_head.prototypes.weight"])
    assert moved > 100 * FLOAT32_ONE_OP.relative, moved
    # the teacher moved, but slower than the student
    start = load_file(tmp_path / "resumed" / "checkpoint-3" / "model.safetensors")
    student_key, teacher_key = "student.mfm_vit.encoder.pos_embed", "teacher.encoder.pos_embed"
    student_move = (straight[student_key] - start[student_key]).abs().sum()
    teacher_move = (straight[teacher_key] - start[teacher_key]).abs().sum()
    assert 0 < teacher_move < student_move


@needs_data
@pytest.mark.slow
def test_folk_two_process_ddp_keeps_one_teacher(fashion_folder, tiny_config, tmp_path):  # noqa: F811
    """On the batched input path (views made on each rank's device; the MFM DDP test keeps the PIL path)."""
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29535", str(SCRIPT),
               *run_args(fashion_folder, tiny_config, output, *folk_args(), "--max_steps", "3", "--save_steps", "3",
                         "--ddp_backend", "gloo", "--batched_augmentation")]
    result = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the end-of-run check covers every parameter, the teacher's included
    assert "weights identical across 2 processes" in result.stdout
    saved = load_file(Path(output) / "checkpoint-3" / "model.safetensors")
    assert any(k.startswith("teacher.") for k in saved)


@pytest.mark.parametrize("family", FAMILIES)
def test_folk_casts_float_views_to_its_dtype_and_refuses_integer_or_empty_ones(family):
    model = folk_model(family).eval()
    size = model.config.image_size
    views = torch.rand(2, 2, 3, size, size)
    with torch.no_grad():
        out = model.to(torch.bfloat16)(views)
    assert out.reconstruction.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="`pixel_values` must be a floating-point tensor, got torch.int64"):
        model((views > 0.5).long())
    with pytest.raises(ValueError, match=r"holds no images \(batch size 0\)"):
        model(views[:0])
    for not_views in ([views], views.numpy(), views[:, 0], None):
        with pytest.raises(ValueError, match=r"FOLK takes two views per image, `pixel_values` of shape \(batch, 2, C, H, W\)"):
            model(not_views)
    with pytest.raises(ValueError, match="`generator` must be a torch.Generator"):
        model(views.float(), generator=0)
