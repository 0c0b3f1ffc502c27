"""The compute-curve benchmark: MAE's encoder converts exactly, and the curve runs end to end
in smoke mode (a tiny image folder), resumes and refuses what it cannot do."""

import argparse
import json
import math
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import ROOT, run_args, script_env, stop_once_training, tiny_cifar_layout
from transformers import AutoModel

from benchmarks import cifar10_benchmark, compute_curve, mae_contender
from benchmarks.cifar10_benchmark import ENCODER
from mfm_hub import MFMViTConfig
from mfm_hub.trainer import MFMPretrainingTrainer
from training import run_classification, run_pretraining


@pytest.mark.parametrize("encoder_fields", [ENCODER, dict(image_size=16, patch_size=4, hidden_size=48, num_hidden_layers=3,
                                                         num_attention_heads=3, intermediate_size=96)])
def test_the_mae_encoder_becomes_an_mfm_vit_computing_the_same(encoder_fields):
    """Every token of the converted encoder equals MAE's own encoder (no patch removed, kept in
    order) up to float rounding, for random non-zero weights (the key bias included)."""
    encoder = MFMViTConfig(**encoder_fields)
    torch.manual_seed(0)
    mae = mae_contender.ImageInputViTMAE(mae_contender.mae_config(encoder, mask_ratio=0.0)).eval()
    with torch.no_grad():
        for parameter in mae.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    ours = mae_contender.encoder_from_mae(mae, encoder)
    images = torch.rand(3, 3, encoder.image_size, encoder.image_size)
    normalised = (images - torch.tensor(encoder.image_mean).view(1, 3, 1, 1)) / torch.tensor(encoder.image_scale).view(1, 3, 1, 1)
    tokens = (encoder.image_size // encoder.patch_size) ** 2
    with torch.no_grad():
        theirs = mae.vit(normalised, noise=torch.arange(tokens, dtype=torch.float32).expand(3, tokens)).last_hidden_state
        mine = ours(normalised).last_hidden_state
    assert mine.shape == theirs.shape == (3, tokens + 1, encoder.hidden_size)
    assert (mine - theirs).abs().max() <= 1e-5 * theirs.abs().max(), float((mine - theirs).abs().max())
    assert mae.config.mask_ratio == 0.0 and mae_contender.mae_config(encoder).mask_ratio == 0.75 and mae.config.norm_pix_loss


def broken_step(*args, **kwargs):
    raise RuntimeError("a broken step")


@pytest.mark.parametrize("broken", [False, True], ids=["finished", "raised"])
@pytest.mark.parametrize("script", [run_pretraining.main, mae_contender.main], ids=["run_pretraining", "mae_contender"])
def test_after_training_sigterm_is_the_callers_again(script, broken, fashion_folder, tiny_config, tmp_path, monkeypatch):
    """The benchmark trains many times in one process: a SIGTERM between two trainings must reach
    the process's own handler, not a finished run's callback that nothing reads any more; a
    training that raises never reaches `on_train_end` and must give SIGTERM back all the same."""
    if broken:
        monkeypatch.setattr(MFMPretrainingTrainer, "compute_loss", broken_step)
    received = []
    caller = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        argv = run_args(fashion_folder, tiny_config, tmp_path / "run", "--max_steps", "1")
        if broken:
            with pytest.raises(RuntimeError, match="a broken step"):
                script(argv)
        else:
            assert script(argv) == 0
        signal.raise_signal(signal.SIGTERM)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, caller)


@pytest.mark.slow
def test_sigterm_stops_the_mae_contender_with_a_resumable_checkpoint(fashion_folder, tiny_config, tmp_path):
    """As `run_pretraining.py` does (tests/test_pretraining.py): finish the step, save, exit 143."""
    output = tmp_path / "run"
    args = run_args(fashion_folder, tiny_config, output, "--max_steps", "100000", "--save_steps", "100000")
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.mae_contender", *args], cwd=ROOT, env=script_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, rest = stop_once_training(process)
    assert process.returncode == 143, log + rest
    checkpoints = list(output.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and "Resume with --resume_from_checkpoint" in rest


@pytest.mark.slow
def test_the_mae_contender_trains_with_the_scripts_arguments_and_resumes_exactly(fashion_folder, tiny_config, tmp_path):
    """Exact resume needs `MFMPretrainingTrainer`'s checkpoint loading: transformers' own drops
    ViTMAE's decoder weights, saved under their old names (huggingface/transformers#43701)."""
    common = ["--batched_augmentation", "--max_steps", "6", "--save_steps", "3", "--save_total_limit", "3"]
    assert mae_contender.main(run_args(fashion_folder, tiny_config, tmp_path / "straight", *common)) == 0
    encoder = AutoModel.from_pretrained(tmp_path / "straight")
    assert type(encoder).__name__ == "MFMViTModel" and (tmp_path / "straight" / "loss_curve.png").exists()
    history = json.loads((tmp_path / "straight" / "train_results.json").read_text())["log_history"]
    assert len([entry["loss"] for entry in history if "loss" in entry]) == 6
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", resumed / "checkpoint-3")
    assert mae_contender.main(run_args(fashion_folder, tiny_config, resumed, *common, "--resume_from_checkpoint",
                                       str(resumed / "checkpoint-3"))) == 0
    straight, again = (AutoModel.from_pretrained(folder).state_dict() for folder in (tmp_path / "straight", resumed))
    assert all(torch.equal(straight[name], again[name]) for name in straight)
    with pytest.raises(ValueError, match="needs a ViT encoder config"):
        mae_contender.main(run_args(fashion_folder, "resnet18", tmp_path / "resnet", "--max_steps", "1"))


def test_a_sigterm_inside_a_driven_pretraining_stops_the_benchmark_resumably(tmp_path, monkeypatch, capsys):
    """The pre-training script saves and returns 143 on SIGTERM; the benchmark then exits 143 too
    (a stop to resume by re-running), keeping the wall time of the stopped segment."""
    def calibrates_then_stops(argv):
        output = Path(argv[argv.index("--output_dir") + 1])
        if "calibration" not in output.parts:
            return 143
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_results.json").write_text(json.dumps({"wall_time_s": 1.0}))
        return 0

    monkeypatch.setattr(run_pretraining, "main", calibrates_then_stops)
    data = tiny_cifar_layout(tmp_path / "data", {"train": 1, "test": 1})
    out = tmp_path / "curve"
    argv = ["--output_dir", str(out), "--data_dir", str(data), "--methods", "mfm", "--seeds", "0", "--end_point_seeds", "0",
            "--pretrain_steps", "16", "--calibration_steps", "2", "--batch_size", "8"]
    with pytest.raises(SystemExit) as stop:
        compute_curve.main(argv)
    assert stop.value.code == 143 and "SIGTERM during mfm seed 0; run the same command again" in capsys.readouterr().out
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert "calibration/mfm" in runs and "mfm/seed0/pretraining" not in runs
    assert len(json.loads((out / "mfm-seed0" / "pretraining_segments.json").read_text())) == 1

    a_checkpoint(out / "mfm-seed0" / "encoder", 4)
    a_checkpoint(out / "mfm-seed0" / "encoder", 8, complete=False)  # a kill cut it short
    resumed = []
    monkeypatch.setattr(run_pretraining, "main", lambda argv: resumed.append(argv) or 143)
    with pytest.raises(SystemExit):
        compute_curve.main(argv)
    assert flag(resumed[0], "--resume_from_checkpoint") == str(out / "mfm-seed0" / "encoder" / "checkpoint-4")
    assert "--overwrite_output_dir" not in resumed[0]
    assert len(json.loads((out / "mfm-seed0" / "pretraining_segments.json").read_text())) == 2

    monkeypatch.setattr(run_pretraining, "main", lambda argv: 143)
    with pytest.raises(SystemExit) as stop:
        compute_curve.main(["--output_dir", str(tmp_path / "other"), *argv[2:]])
    assert stop.value.code == 143
    assert "SIGTERM during the mfm calibration" in capsys.readouterr().out


def a_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    """A ``checkpoint-<step>`` with every file a resume reads, well formed, or one cut short."""
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    safetensors.torch.save_file({"weight": torch.zeros(1)}, checkpoint / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"step": step}, checkpoint / name)
    if not complete:
        (checkpoint / "optimizer.pt").write_bytes(b"PK")
    return checkpoint


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_a_sigterm_inside_a_driven_fine_tune_stops_the_benchmark_and_a_rerun_resumes_it(tmp_path, monkeypatch, capsys):
    """The fine-tuning script saves a checkpoint and exits 143 on SIGTERM; the benchmark says how to
    go on and a re-run continues that fine-tune from its newest complete checkpoint rather than
    training it again over the checkpoint."""
    output = tmp_path / "fine_tune_10pct"
    calls = []

    def stops_then_finishes(argv):
        calls.append(argv)
        if len(calls) == 1:
            a_checkpoint(output, 4)
            a_checkpoint(output, 8, complete=False)
            raise SystemExit(143)
        return {"top1": 0.5, "train_examples": 5, "validation_curve": []}

    monkeypatch.setattr(run_classification, "main", stops_then_finishes)
    args = argparse.Namespace(train_images=50, fine_tune_epochs={0.1: 2}, fine_tune_batch_size=5, dataloader_num_workers=0)
    with pytest.raises(SystemExit) as stop:
        cifar10_benchmark.fine_tune(tmp_path / "encoder", 0.1, 0, tmp_path / "data", output, args)
    assert stop.value.code == 143
    assert f"SIGTERM during the fine-tune in {output}; run the same command again" in capsys.readouterr().out
    assert "--overwrite_output_dir" in calls[0] and "--resume_from_checkpoint" not in calls[0]
    assert cifar10_benchmark.fine_tune(tmp_path / "encoder", 0.1, 0, tmp_path / "data", output, args)["top1"] == 0.5
    assert flag(calls[1], "--resume_from_checkpoint") == str(output / "checkpoint-4") and "--overwrite_output_dir" not in calls[1]
    assert flag(calls[1], "--max_steps") == flag(calls[0], "--max_steps") == "2"


@pytest.mark.slow
def test_compute_curve_smoke_resume_and_report(tmp_path):
    data = tiny_cifar_layout(tmp_path / "data", {"train": 12, "test": 20})
    argv = ["--output_dir", str(tmp_path / "curve"), "--data_dir", str(data), "--methods", "scratch", "mfm", "mae",
            "--seeds", "0", "--end_point_seeds", "0", "1", "--scratch_seeds", "0", "1", "--pretrain_steps", "16",
            "--calibration_steps", "2", "--batch_size", "8", "--fine_tune_batch_size", "16", "--fine_tune_epochs_10pct", "1",
            "--episodes", "5", "--dataloader_num_workers", "0"]
    results = compute_curve.main(argv)
    runs, out = results["runs"], tmp_path / "curve"
    for method in ("mfm", "mae"):  # FOLK's part, its teacher's entropy, is tested on its own below
        assert results["pretraining_steps"][method] == 16 and runs[f"calibration/{method}"]["images_per_second"] > 0
        for step in (1, 2, 4, 8, 16):  # the log-spaced points of the curve, seed 0
            for protocol in compute_curve.CURVE_PROTOCOLS:
                assert 0 <= runs[f"{method}/seed0/step{step}/{protocol}"]["top1"] <= 1
        assert f"{method}/seed1/step8/knn" not in runs  # seed 1: the end point only
        for seed in (0, 1):
            for protocol in [*compute_curve.CURVE_PROTOCOLS, *compute_curve.END_PROTOCOLS]:
                assert 0 <= runs[f"{method}/seed{seed}/step16/{protocol}"]["top1"] <= 1
        assert results["summary"][method]["end_point"]["knn"]["seeds"] == 2
    assert results["summary"]["scratch"]["end_point"]["fine_tune_10pct"]["seeds"] == 2
    assert (out / "compute_curve.png").stat().st_size > 0 and "| mae |" in (out / "curve.md").read_text()
    assert (out / "mfm-seed0" / "curve" / "step-4" / "config.json").exists()

    before = json.loads((out / "results.json").read_text())["runs"]
    mtime = (out / "mae-seed0" / "encoder" / "model.safetensors").stat().st_mtime_ns
    assert compute_curve.main(argv)["runs"] == before  # a re-run finds everything done
    assert (out / "mae-seed0" / "encoder" / "model.safetensors").stat().st_mtime_ns == mtime
    (out / "curve.md").unlink()
    assert compute_curve.main([*argv, "--report_only"])["runs"] == before and (out / "curve.md").exists()
    compute_curve.main([*argv, "--end_point_seeds", "0", "--report_only"])  # a value from one seed says so, not a bare mean
    table = (out / "curve.md").read_text()
    assert re.search(r"\| mfm \| [0-9.]+ \(1 seed\) \|", table) and re.search(r"\| scratch \| [0-9.]+ ± [0-9.]+ \|", table)
    with pytest.raises(ValueError, match="other settings"):
        compute_curve.main([*argv[:-2], "--dataloader_num_workers", "1"])

    moved = tmp_path / "moved"  # a finished item needs only its entry: a copy of results.json continues the run
    moved.mkdir()
    shutil.copy(out / "results.json", moved / "results.json")
    assert compute_curve.main([*argv, "--output_dir", str(moved)])["runs"] == before and not (moved / "mfm-seed0").exists()
    longer = [*argv, "--output_dir", str(tmp_path / "longer"), "--pretrain_steps", "32", "--reuse_from", str(out / "results.json")]
    reused = compute_curve.main([*longer, "--report_only"])
    assert reused["runs"] == {key: value for key, value in before.items() if key.startswith(("calibration/", "scratch/"))}
    assert reused["pretraining_steps"] == {"mfm": 32, "mae": 32} and not (tmp_path / "longer" / "calibration").exists()
    with pytest.raises(FileNotFoundError, match="no such file"):
        compute_curve.main([*longer[:-2], "--output_dir", str(tmp_path / "other"), "--reuse_from", str(out / "missing.json")])
    with pytest.raises(ValueError, match="only methods, seeds.* may differ"):
        compute_curve.main([*longer[:-2], "--output_dir", str(tmp_path / "other"), "--batch_size", "4", *longer[-2:]])
    with pytest.raises(ValueError, match="a positive multiple of 16"):
        compute_curve.main([*argv, "--pretrain_steps", "20"])

    # a third end-point seed of one method in the same folder: only its items are added
    third = ["--output_dir", str(out), *argv[2:4], "--methods", "mfm", "--seeds", "0", "--end_point_seeds", "0", "1", "2",
             *argv[argv.index("--scratch_seeds"):]]
    grown = compute_curve.main(third)
    assert all(grown["runs"][key] == value for key, value in before.items())
    assert {key.split("/")[:2] == ["mfm", "seed2"] for key in grown["runs"].keys() - before.keys()} == {True}
    assert grown["summary"]["mfm"]["end_point"]["knn"]["seeds"] == 3


def test_folk_on_the_batched_path_logs_the_teacher_entropy_the_curve_draws(fashion_folder, tiny_config, tmp_path):
    """FOLK on --batched_augmentation (two jittered views per image, its figure from them); the
    curve reads its teacher's entropy per logged step, between 0 and log K."""
    output = tmp_path / "folk"
    assert run_pretraining.main(run_args(fashion_folder, tiny_config, output, "--objective", "folk", "--batched_augmentation",
                                         "--max_steps", "3", "--config_overrides", "folk_head_output_dim=64")) == 0
    entropy = compute_curve.teacher_entropy(output)
    assert [step for step, _ in entropy] == [1, 2, 3] and all(0 < value <= math.log(64) + 1e-4 for _, value in entropy)
    assert (output / "reconstructions.png").stat().st_size > 0
