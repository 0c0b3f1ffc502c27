"""FOLK: the EMA teacher, the distillation loss, gradients, and the Trainer integration."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_resnet_config, tiny_vit_config
from safetensors.torch import load_file
from test_pretraining import (  # noqa: F401
    SCRIPT,
    fashion_folder,
    run_args,
    run_pretraining,
    script_env,
    tiny_config,
)
from transformers import AutoModel

from mfm_hub import (
    FOLKResNetForPreTraining,
    FOLKViTForPreTraining,
    MFMViTForPreTraining,
    MFMViTModel,
)
from mfm_hub.data import FASHION_MNIST_DIR
from mfm_hub.modeling_folk import cross_view_distillation_loss, ema_momentum

SMALL_HEAD = dict(corruption="informed", folk_head_output_dim=64, folk_head_hidden_dim=32, folk_head_bottleneck_dim=16)
FAMILIES = {"vit": (FOLKViTForPreTraining, tiny_vit_config), "resnet": (FOLKResNetForPreTraining, tiny_resnet_config)}
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
    assert model.base_model.encoder.conv1.weight.grad.abs().sum() > 0 if family == "resnet" else model.base_model.encoder.pos_embed.grad.abs().sum() > 0
    assert torch.isclose(out.loss, out.reconstruction_loss + out.distillation_loss)
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
        assert torch.allclose(t_after, 0.9 * t_before + 0.1 * s, atol=1e-6)


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
    assert cross_view_distillation_loss(student, teacher, 0.1).item() == pytest.approx(expected.item() / 4, rel=1e-6)


def test_centre_moves_towards_the_teacher_mean():
    model = folk_model(folk_center_momentum=0.5).train()
    pixels = torch.rand(2, 2, 3, 32, 32)
    views = pixels.transpose(0, 1).reshape(4, 3, 32, 32)
    from mfm_hub.modeling_common import normalize

    with torch.no_grad():
        teacher_mean = model.teacher_head(model.teacher(normalize(views, model.config)).pooler_output).mean(0, keepdim=True)
    model(pixels)
    assert torch.allclose(model.center, 0.5 * teacher_mean, atol=1e-6)
    model.eval()
    model(pixels)
    assert torch.allclose(model.center, 0.5 * teacher_mean, atol=1e-6)  # no update in eval


def test_folk_needs_two_views():
    with pytest.raises(ValueError, match="two views per image"):
        folk_model()(torch.rand(2, 3, 32, 32))


def test_folk_starts_from_an_mfm_checkpoint(tmp_path):
    mfm = MFMViTForPreTraining(tiny_vit_config(**SMALL_HEAD))
    mfm.save_pretrained(tmp_path)
    folk = FOLKViTForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(folk.teacher.encoder.pos_embed, mfm.mfm_vit.encoder.pos_embed)
    assert torch.equal(folk.base_model.encoder.pos_embed, mfm.mfm_vit.encoder.pos_embed)


def test_bad_folk_config_values():
    with pytest.raises(ValueError, match="folk_teacher_temperature"):
        tiny_vit_config(folk_teacher_temperature=0.0)
    with pytest.raises(ValueError, match="folk_export"):
        tiny_vit_config(folk_export="both")
    with pytest.raises(ValueError, match="folk_ema_momentum"):
        tiny_vit_config(folk_ema_momentum=1.5)


FOLK_ARGS = ["--method", "folk", "--folk_head_output_dim", "64"]


@needs_data
@pytest.mark.slow
def test_folk_run_exports_a_backbone_and_its_loss_falls(fashion_folder, tiny_config, tmp_path):  # noqa: F811
    output = tmp_path / "folk"
    assert run_pretraining.main(run_args(fashion_folder, tiny_config, output, *FOLK_ARGS, "--max_steps", "30", "--save_strategy", "no",
                                         "--learning_rate", "2e-3")) == 0
    backbone = AutoModel.from_pretrained(output)
    assert isinstance(backbone, MFMViTModel)
    history = [e for e in json.loads((output / "train_results.json").read_text())["log_history"] if "loss" in e]
    reconstruction = [e["reconstruction_loss"] for e in history]
    assert sum(reconstruction[-5:]) < 0.9 * sum(reconstruction[:5]), reconstruction
    # with near-uniform heads the distillation term starts at its floor, log(K)
    distillation = [e["distillation_loss"] for e in history]
    assert all(0 < d < math.log(64) + 0.5 for d in distillation), distillation
    assert all(e["loss"] == pytest.approx(e["reconstruction_loss"] + e["distillation_loss"], rel=1e-4) for e in history)
    card = (output / "README.md").read_text()
    assert "FOLK pre-training" in card and "teacher encoder" in card
    assert (output / "reconstructions.png").exists()


@needs_data
@pytest.mark.slow
def test_folk_resume_is_exact_teacher_and_centre_included(fashion_folder, tiny_config, tmp_path):  # noqa: F811
    common = [*FOLK_ARGS, "--max_steps", "8", "--save_steps", "3", "--save_total_limit", "5", "--gradient_accumulation_steps", "2"]
    run_pretraining.main(run_args(fashion_folder, tiny_config, tmp_path / "straight", *common))
    import shutil

    shutil.copytree(tmp_path / "straight" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    run_pretraining.main(run_args(fashion_folder, tiny_config, tmp_path / "resumed", *common,
                                  "--resume_from_checkpoint", str(tmp_path / "resumed" / "checkpoint-3")))
    straight = load_file(tmp_path / "straight" / "checkpoint-8" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "checkpoint-8" / "model.safetensors")
    assert any(k.startswith("teacher.") for k in straight) and "center" in straight
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # the teacher moved, but slower than the student
    start = load_file(tmp_path / "resumed" / "checkpoint-3" / "model.safetensors")
    key = "mfm_vit.encoder.pos_embed"
    student_move = (straight[key] - start[key]).abs().sum()
    teacher_move = (straight["teacher." + key.split(".", 1)[1]] - start["teacher." + key.split(".", 1)[1]]).abs().sum()
    assert 0 < teacher_move < student_move


@needs_data
@pytest.mark.slow
def test_folk_two_process_ddp_keeps_one_teacher(fashion_folder, tiny_config, tmp_path):  # noqa: F811
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29535", str(SCRIPT),
               *run_args(fashion_folder, tiny_config, output, *FOLK_ARGS, "--max_steps", "3", "--save_steps", "3", "--ddp_backend", "gloo")]
    result = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the end-of-run check covers every parameter, the teacher's included
    assert "weights identical across 2 processes" in result.stdout
    saved = load_file(Path(output) / "checkpoint-3" / "model.safetensors")
    assert any(k.startswith("teacher.") for k in saved)
