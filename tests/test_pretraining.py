"""training/run_pretraining.py end to end on tiny data: outputs, exact resume, faults,
bad images, 2-process DDP and the Hub push (loopback test hub)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import SCRIPT, run_args, script_env, stop_once_training, tiny_resnet_config, tiny_swin_config, tiny_vit_config
from parity import FLOAT32_TRAINING, assert_close
from PIL import ExifTags, Image
from safetensors.torch import load_file
from transformers import AutoModel

from mfm_hub import MFMViTBackbone, MFMViTModel
from mfm_hub.arguments import guard_output_dir
from mfm_hub.data import (
    FASHION_MNIST_DIR,
    BadImageError,
    collate_pretraining,
    decode_image,
)
from mfm_hub.evaluation.segmentation import read_label_map
from mfm_hub.pretext import get_pretext_task
from mfm_hub.pretraining import pretraining_model
from mfm_hub.trainer import MFMPretrainingTrainer, NonFiniteLossError, checkpoint_problem, resolve_resume_checkpoint
from training import run_pretraining

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="needs `apt-get install dataset-fashion-mnist`")


def test_quickstart_config_parses():
    model_args, data_args, args = run_pretraining.parse_arguments([str(ROOT / "training/configs/quickstart.yaml")])
    assert model_args.model == "vit-tiny-patch4-32" and model_args.pretext_task == "mfm"
    assert args.max_steps > 0 and data_args.train_dir is None  # the embedded Fashion-MNIST
    assert args.adam_beta2 == 0.95 and args.weight_decay == 0.05 and args.max_grad_norm == 3.0
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr_rate": 2.5e-6 / 3e-4}


@pytest.mark.parametrize("text, message", [
    ("- model\n- vit-tiny-patch4-32\n", "must hold a mapping of argument names to values"),
    ("per_device_train_batch_size: abc\n", "`per_device_train_batch_size` must be int, got 'abc'"),
    ("max_steps: 3.5\n", "`max_steps` must be int, got 3.5"),
    ("pretext_task: mae\n", "--pretext_task must be one of mfm, informed, sr, deblur, denoise"),
    ("pretext_task: folk\n", "'folk' is an objective, not a pretext task: use --objective folk"),
    ("modle: vit-tiny-patch4-32\n", r"unknown arguments \['modle'\]"),
    ("streaming: perhaps\n", "`streaming` must be string_to_bool"),
    ("model: [vit, resnet]\n", "`model` takes a single value"),
    ("max_steps: [3\n", "is not valid YAML"),
    ("max_steps: null\n", r"`max_steps` cannot be empty \(null\); it must be int \(default -1\)"),
    ("max_steps: {a: 1}\n", r"`max_steps` must be int, not a mapping"),
    ("model: {name: vit}\n", r"`model` must be str, not a mapping"),
])
def test_bad_config_files_name_the_key_and_what_is_allowed(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        run_pretraining.parse_arguments([str(path)])


def test_flags_after_a_config_file_override_it():
    model_args, _, args = run_pretraining.parse_arguments([str(ROOT / "training/configs/quickstart.yaml"), "--max_steps", "5",
                                                           "--overwrite_output_dir"])
    assert args.max_steps == 5 and args.overwrite_output_dir and args.learning_rate == 1.5e-3 and model_args.model == "vit-tiny-patch4-32"


def test_config_file_values_are_converted_like_flags(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(
        '{"learning_rate": "3e-4", "max_steps": "7", "config_overrides": {"folk_normalize_prototypes": false}, '
        '"lr_scheduler_kwargs": {"min_lr_rate": 0.1}}'
    )
    model_args, _, args = run_pretraining.parse_arguments([str(path)])
    assert args.learning_rate == 3e-4 and args.max_steps == 7 and model_args.config_overrides["folk_normalize_prototypes"] is False
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}


def build_model(**flags):
    model_args = run_pretraining.ModelArguments(**flags)
    return pretraining_model(model_args.model, model_args.objective, **model_args.config_fields)


def test_method_overrides_are_validated_and_reloadable(tiny_config):
    for flags, target in ((dict(pretext_task="sr"), "all"), (dict(pretext_task="mfm"), "masked"), (dict(objective="folk"), "masked")):
        config = build_model(model=str(tiny_config), **flags).config
        reloaded = type(config).from_dict(config.to_dict())  # the saved config reloads
        for loaded in (config, reloaded):
            assert (loaded.loss_target or get_pretext_task(loaded.pretext_task).loss_target) == target
    with pytest.raises(ValueError, match="low_pass_prob"):
        build_model(model=str(tiny_config), low_pass_prob=2.0)
    with pytest.raises(ValueError, match="folk_teacher_temperature"):
        build_model(model=str(tiny_config), config_overrides="folk_teacher_temperature=0")
    with pytest.raises(ValueError, match="has no field `mask_radious`. Did you mean mask_radius"):
        build_model(model=str(tiny_config), config_overrides="mask_radious=3")


def test_any_config_field_is_set_by_config_overrides_and_old_flags_still_work_with_a_warning(tiny_config):
    overrides = "mask_radius=24,informed_keep_ratios=[0.01,0.02],folk_head_pooling=cls,folk_normalize_prototypes=false"
    model_args, _, _ = run_pretraining.parse_arguments(["--model", str(tiny_config), "--config_overrides", overrides])
    expected = {"mask_radius": 24, "informed_keep_ratios": [0.01, 0.02], "folk_head_pooling": "cls", "folk_normalize_prototypes": False}
    assert model_args.config_overrides == expected
    config = pretraining_model(model_args.model, "folk", **model_args.config_fields).config
    assert (config.mask_radius, list(config.informed_keep_ratios), config.folk_head_pooling) == (24, [0.01, 0.02], "cls")
    with pytest.warns(FutureWarning) as warned:
        old, _, _ = run_pretraining.parse_arguments(["--model", str(tiny_config), "--method", "sr", "--folk_teacher_temperature", "0.04",
                                                     "--mask_radius", "20"])
    assert old.pretext_task == "sr" and old.config_fields == {"pretext_task": "sr", "mask_radius": 20.0, "folk_teacher_temperature": 0.04}
    assert any("`--method` is now `--pretext_task`" in str(w.message) for w in warned)
    assert any("folk_teacher_temperature" in str(w.message) and "--config_overrides" in str(w.message) for w in warned)
    with pytest.warns(FutureWarning):  # an old boolean flag given bare, before another flag, means true
        bare, _, args = run_pretraining.parse_arguments(["--model", str(tiny_config), "--folk_normalize_prototypes", "--max_steps", "5"])
    assert bare.config_overrides == {"folk_normalize_prototypes": True} and args.max_steps == 5
    with pytest.raises(ValueError, match="name=value pairs"):
        run_pretraining.ModelArguments(config_overrides="mask_radius")


def test_weight_decay_split_follows_mfm():
    trainer_cls = MFMPretrainingTrainer
    from mfm_hub import MFMViTForPreTraining

    names = trainer_cls.get_decay_parameter_names(None, MFMViTForPreTraining(tiny_vit_config()))
    assert "mfm_vit.encoder.blocks.0.attn.qkv.weight" in names and "decoder.0.weight" in names
    assert not any(n.endswith(("pos_embed", "cls_token", "bias")) or "norm" in n for n in names)


@pytest.mark.slow
def test_pretraining_writes_a_loadable_backbone_card_and_figures(fashion_folder, tiny_config, tmp_path):
    output = tmp_path / "run"
    assert run_pretraining.main(run_args(fashion_folder, tiny_config, output, "--max_steps", "4")) == 0
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "loss_curve.png", "reconstructions.png"):
        assert (output / name).exists(), name
    assert isinstance(AutoModel.from_pretrained(output), MFMViTModel)
    assert isinstance(MFMViTBackbone.from_pretrained(output), MFMViTBackbone)
    card = (output / "README.md").read_text()
    assert "pre-trained with MFM" in card and "Xie" in card and "Monsefi" in card
    # valid Hub metadata: no pre-training loss posing as an evaluation, no local path, the folder name as model name
    assert "\nmodel-index:" not in card and str(fashion_folder) not in card and "datasets:" not in card
    assert f"local image folder '{fashion_folder.name}'" in card and card.count(f"# {output.name}") == 1
    assert "![loss curve](loss_curve.png)" in card
    history = json.loads((output / "train_results.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4]
    assert Image.open(output / "reconstructions.png").size[0] > 400


@pytest.mark.slow
def test_streaming_a_local_folder(fashion_folder, tiny_config, tmp_path):
    output = tmp_path / "streamed"
    assert (
        run_pretraining.main(run_args(fashion_folder, tiny_config, output, "--streaming", "--max_steps", "3", "--save_strategy", "no")) == 0
    )
    assert json.loads((output / "train_results.json").read_text())["global_step"] == 3
    assert "streamed" in (output / "README.md").read_text()
    folk = tmp_path / "folk_streamed"  # FOLK's figure takes its view pairs from the stream too
    assert run_pretraining.main(run_args(fashion_folder, tiny_config, folk, "--streaming", "--max_steps", "2", "--save_strategy", "no",
                                         "--objective", "folk", "--config_overrides", "folk_head_output_dim=64")) == 0
    assert (folk / "reconstructions.png").exists()


@pytest.mark.slow
def test_loss_falls_on_a_tiny_dataset(fashion_folder, tiny_config, tmp_path):
    # all low-pass so that every step's loss measures the same task
    output = tmp_path / "run"
    run_pretraining.main(run_args(fashion_folder, tiny_config, output, "--max_steps", "60", "--low_pass_prob", "1.0",
                                  "--save_strategy", "no", "--learning_rate", "2e-3"))
    losses = [e["loss"] for e in json.loads((output / "train_results.json").read_text())["log_history"] if "loss" in e]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "resnet", "swin"])
def test_resume_continues_exactly(family, fashion_folder, tmp_path):
    # 24 images / batch 4 = 6 steps per epoch: the run crosses an epoch, resumed mid-epoch
    tiny_config = tmp_path / "config.json"
    {"vit": tiny_vit_config, "resnet": tiny_resnet_config, "swin": tiny_swin_config}[family]().to_json_file(tiny_config)
    straight, resumed, start = straight_and_resumed(fashion_folder, tiny_config, tmp_path)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not all(torch.equal(start[k], resumed[k]) for k in start)  # it did train after resuming


def straight_and_resumed(folder, config, tmp_path, *flags):
    """The weights after 9 steps run straight, after 9 steps resumed from step 4, and at step 4."""
    common = [*flags, "--max_steps", "9", "--save_steps", "4", "--save_total_limit", "5"]
    assert run_pretraining.main(run_args(folder, config, tmp_path / "straight", *common)) == 0
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "straight" / "checkpoint-4", interrupted / "checkpoint-4")
    run_pretraining.main(run_args(folder, config, interrupted, *common, "--resume_from_checkpoint", str(interrupted / "checkpoint-4")))
    checkpoints = (tmp_path / "straight" / "checkpoint-9", interrupted / "checkpoint-9", interrupted / "checkpoint-4")
    return tuple(load_file(checkpoint / "model.safetensors") for checkpoint in checkpoints)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["reconstruction", "folk"])
def test_batched_augmentation_trains_and_resumes_exactly(fashion_folder, tiny_config, tmp_path, objective):
    straight, resumed, _ = straight_and_resumed(fashion_folder, tiny_config, tmp_path, "--batched_augmentation", "--objective", objective)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    losses = [e["loss"] for e in json.loads((tmp_path / "straight" / "train_results.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) == 9 and all(np.isfinite(losses))
    assert (tmp_path / "straight" / "reconstructions.png").exists()
    with pytest.raises(ValueError, match="--batched_augmentation must be used without --streaming"):
        run_pretraining.main(run_args(fashion_folder, tiny_config, tmp_path / "stream", "--batched_augmentation", "--streaming",
                                      "--max_steps", "2"))


def test_non_finite_loss_stops_before_the_update_and_keeps_the_checkpoint(fashion_folder, tiny_config, tmp_path):
    from mfm_hub import MFMViTForPreTraining

    model = MFMViTForPreTraining(tiny_vit_config())
    real_forward = model.forward
    calls = {"n": 0}

    def forward_with_nan(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    model.forward = forward_with_nan
    model_args, data_args, args = run_pretraining.parse_arguments(
        run_args(fashion_folder, tiny_config, tmp_path, "--max_steps", "5", "--save_steps", "2")
    )
    args.learning_rate = 1e-3
    images, _, _ = run_pretraining.build_dataset(data_args, 32, 0)
    trainer = MFMPretrainingTrainer(model=model, args=args, train_dataset=images,
                                                    data_collator=collate_pretraining)
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 3.*checkpoint-2"):
        trainer.train()
    assert not (tmp_path / "checkpoint-3").exists()
    saved = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())


@pytest.fixture
def messy_folder(fashion_folder, tmp_path):
    folder = tmp_path / "messy"
    shutil.copytree(fashion_folder, folder)
    extra = folder / "class0"
    (extra / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    png = (extra / "000.png").read_bytes() if (extra / "000.png").exists() else next(folder.rglob("*.png")).read_bytes()
    (extra / "truncated.png").write_bytes(png[: len(png) // 2])
    (extra / "notes.txt").write_text("not an image")
    Image.fromarray(np.random.randint(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA").save(extra / "rgba.png")
    Image.fromarray((np.random.rand(40, 40) * 65535).astype(np.uint16)).save(extra / "sixteen_bit.png")
    Image.fromarray(np.random.randint(0, 255, (8, 8, 3), dtype=np.uint8)).save(extra / "smaller_than_crop.png")
    return folder


def test_decode_image_handles_modes_and_names_bad_files(messy_folder):
    extra = messy_folder / "class0"
    sixteen = decode_image(str(extra / "sixteen_bit.png"))
    assert sixteen.mode == "RGB" and 100 < np.asarray(sixteen).mean() < 155  # rescaled, not clipped to white
    assert decode_image(str(extra / "rgba.png")).mode == "RGB"
    with pytest.raises(BadImageError, match="truncated.png"):
        decode_image(str(extra / "truncated.png"))
    with pytest.raises(BadImageError, match="corrupt.jpg"):
        decode_image({"path": str(extra / "corrupt.jpg"), "bytes": (extra / "corrupt.jpg").read_bytes()})


def test_a_photo_stored_sideways_decodes_upright_as_datasets_decodes_it(tmp_path):
    """A camera JPEG kept as shot with EXIF orientation 6 (turn 90 degrees clockwise to view)
    decodes upright, pixel for pixel as `datasets`' Image feature (and so the demo and every
    evaluation); a label map carrying its own orientation turns the same way."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a bright left edge: the top edge once upright
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(pixels).save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    ours = decode_image(str(tmp_path / "sideways.jpg"))
    theirs = datasets.Image().decode_example({"path": str(tmp_path / "sideways.jpg"), "bytes": None})
    assert ours.size == theirs.size == (20, 40) and np.array_equal(np.asarray(ours), np.asarray(theirs))
    assert np.asarray(ours)[:10].mean() > 200 and np.asarray(ours)[-10:].mean() < 50
    assert decode_image({"path": None, "bytes": (tmp_path / "sideways.jpg").read_bytes()}).size == (20, 40)
    Image.fromarray(pixels[..., 0] // 255).save(tmp_path / "sideways_labels.png", exif=exif)
    labels, _ = read_label_map(str(tmp_path / "sideways_labels.png"))
    assert labels.shape == (40, 20) and labels[:10].all() and not labels[-10:].any()


@pytest.mark.slow
def test_bad_images_are_skipped_or_fatal_with_strict_data(messy_folder, tiny_config, tmp_path, caplog):
    args = run_args(
        messy_folder, tiny_config, tmp_path / "lenient", "--max_steps", "8", "--per_device_train_batch_size", "8", "--save_strategy", "no"
    )
    assert run_pretraining.main(args) == 0
    warnings = [r.getMessage() for r in caplog.records if "Cannot read image" in r.getMessage()]
    assert len(warnings) == 1 and ("corrupt.jpg" in warnings[0] or "truncated.png" in warnings[0])
    strict = run_args(
        messy_folder, tiny_config, tmp_path / "strict", "--max_steps", "8", "--per_device_train_batch_size", "8", "--strict_data"
    )
    with pytest.raises(ValueError, match=r"Cannot read image .*(corrupt\.jpg|truncated\.png).*--strict_data"):
        run_pretraining.main(strict)


@pytest.mark.slow
def test_batches_of_only_unreadable_images_never_stop_a_run_and_workers_report_them(fashion_folder, tiny_config, tmp_path, caplog):
    folder = tmp_path / "mostly_bad"
    (folder / "a").mkdir(parents=True)
    shutil.copy(next(fashion_folder.rglob("*.png")), folder / "a" / "zz_good.png")
    for index in range(11):
        (folder / "a" / f"bad{index:02d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    args = run_args(folder, tiny_config, tmp_path / "out", "--max_steps", "3", "--per_device_train_batch_size", "4",
                    "--save_strategy", "no", "--dataloader_num_workers", "1")
    assert run_pretraining.main(args) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Cannot read image" in m and "bad" in m for m in messages) == 1
    totals = [m for m in messages if m.startswith("Skipped ")]
    # 12 draws, each walking past unreadable files to the one good image: 11 distinct files, replaced more often
    assert len(totals) == 1 and totals[0].startswith("Skipped 11 distinct unreadable images (replaced "), totals
    assert int(totals[0].split("replaced ")[1].split()[0]) > 11, totals


@pytest.mark.slow
def test_damaged_checkpoints_stop_the_resume_naming_the_file_and_the_last_good_one(fashion_folder, tiny_config, tmp_path):
    output = tmp_path / "run"
    common = ["--save_steps", "2", "--save_total_limit", "5"]
    assert run_pretraining.main(run_args(fashion_folder, tiny_config, output, "--max_steps", "4", *common)) == 0
    latest = output / "checkpoint-4"

    def truncate(name):
        data = (latest / name).read_bytes()
        (latest / name).write_bytes(data[: len(data) // 2])

    damages = {"optimizer.pt": truncate, "scheduler.pt": lambda name: (latest / name).unlink(), "rng_state.pth": truncate,
               "trainer_state.json": truncate, "model.safetensors": truncate}
    pristine = {name: (latest / name).read_bytes() for name in damages}
    for name, damage in damages.items():
        damage(name)
        before = {p.name: p.read_bytes() for p in latest.iterdir() if p.is_file()}
        with pytest.raises(ValueError, match=rf"Cannot resume exactly from .*checkpoint-4: .*{name} is (missing|unreadable).*"
                                             rf"--resume_from_checkpoint .*checkpoint-2"):
            run_pretraining.main(run_args(fashion_folder, tiny_config, output, "--max_steps", "6", *common,
                                          "--resume_from_checkpoint", str(latest)))
        assert {p.name: p.read_bytes() for p in latest.iterdir() if p.is_file()} == before
        (latest / name).write_bytes(pristine[name])
    assert checkpoint_problem(latest, world_size=1) is None

    (latest / "scheduler.pt").unlink()  # half-written, as after a kill during the save: never suggested
    with pytest.raises(FileExistsError, match=rf"--resume_from_checkpoint {output / 'checkpoint-2'} to continue its run"):
        guard_output_dir(output, overwrite=False)
    assert resolve_resume_checkpoint("True", output, world_size=1) == str(output / "checkpoint-2")
    (latest / "scheduler.pt").write_bytes(pristine["scheduler.pt"])
    # transformers' convention: True resumes from the newest checkpoint in the output folder
    assert run_pretraining.main(run_args(fashion_folder, tiny_config, output, "--max_steps", "6", *common,
                                         "--resume_from_checkpoint", "True")) == 0
    assert json.loads((output / "train_results.json").read_text())["global_step"] == 6
    with pytest.raises(ValueError, match=r"newest complete checkpoint in .*, but it holds no checkpoint-\* folder"):
        resolve_resume_checkpoint("true", tmp_path, world_size=1)
    assert resolve_resume_checkpoint("False", output, world_size=1) is None


def test_empty_folder_and_bad_arguments(tiny_config, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images found"):
        run_pretraining.main(run_args(tmp_path / "empty", tiny_config, tmp_path / "out", "--max_steps", "1"))
    with pytest.raises(ValueError, match="--pretext_task must be one of"):
        run_pretraining.main(["--pretext_task", "jpeg", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        run_pretraining.main(["--model", "vit-enormous", "--output_dir", str(tmp_path / "o")])


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint(fashion_folder, tiny_config, tmp_path):
    output = tmp_path / "run"
    args = run_args(fashion_folder, tiny_config, output, "--max_steps", "100000", "--save_steps", "100000")
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log, rest = stop_once_training(process)
    assert process.returncode == 143, log + rest
    checkpoints = list(output.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and "Resume with --resume_from_checkpoint" in rest
    step = int(checkpoints[0].name.split("-")[1])
    resumed = run_args(fashion_folder, tiny_config, output, "--max_steps", str(step + 2), "--save_steps", "100000",
                       "--resume_from_checkpoint", str(checkpoints[0]))
    assert run_pretraining.main(resumed) == 0
    assert json.loads((output / "train_results.json").read_text())["global_step"] == step + 2


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_alive_saves_a_checkpoint(fashion_folder, tiny_config, tmp_path):
    """What torchrun and Kubernetes do: SIGTERM to every process of the group, data-loader workers
    included. The workers ignore it; the main process finishes the step, saves and exits 143."""
    output = tmp_path / "run"
    args = run_args(fashion_folder, tiny_config, output, "--max_steps", "100000", "--save_steps", "100000",
                    "--dataloader_num_workers", "2")
    process = subprocess.Popen([sys.executable, str(SCRIPT), *args], env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    workers = []

    def stop_the_group(running):
        workers.extend(subprocess.run(["pgrep", "-g", str(running.pid)], capture_output=True, text=True).stdout.split())
        os.killpg(running.pid, signal.SIGTERM)

    log, rest = stop_once_training(process, stop_the_group)
    assert len(workers) >= 3, workers  # the main process and its two workers share the group
    assert process.returncode == 143, log + rest
    assert "killed by signal" not in rest, rest
    checkpoints = list(output.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and "Resume with --resume_from_checkpoint" in rest


@pytest.mark.slow
def test_two_process_ddp_on_cpu(fashion_folder, tiny_config, tmp_path):
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", str(SCRIPT),
               *run_args(fashion_folder, tiny_config, output, "--max_steps", "3", "--save_steps", "3", "--ddp_backend", "gloo")]
    result = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "weights identical across 2 processes" in result.stdout
    state = json.loads((output / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and (output / "model.safetensors").exists()


@pytest.mark.slow
def test_push_to_loopback_hub_and_failed_push_keeps_local_output(fashion_folder, tiny_config, tmp_path):
    from hub_server import LocalHub

    hub = LocalHub().start()
    try:
        env = script_env(HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", HF_TOKEN="hf_local_test_token", HF_HUB_DISABLE_XET="1",
                         HF_HOME=str(tmp_path / "hf_home"))
        base = run_args(
            fashion_folder, tiny_config, tmp_path / "pushed", "--max_steps", "2", "--push_to_hub", "--hub_model_id", "org/mfm-test"
        )
        result = subprocess.run([sys.executable, str(SCRIPT), *base], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        files = hub.repos["org/mfm-test"]["files"]
        assert {"model.safetensors", "README.md", "loss_curve.png", "reconstructions.png", "preprocessor_config.json"} <= set(files)
        assert not any(name.startswith("checkpoint-") for name in files)

        hub.fail_commits = True
        failing = run_args(
            fashion_folder, tiny_config, tmp_path / "failed", "--max_steps", "2", "--push_to_hub", "--hub_model_id", "org/mfm-fail"
        )
        result = subprocess.run([sys.executable, str(SCRIPT), *failing], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 1 and "Upload to org/mfm-fail failed" in result.stdout
        assert isinstance(MFMViTModel.from_pretrained(tmp_path / "failed"), MFMViTModel)
        assert (tmp_path / "failed" / "README.md").exists()
    finally:
        hub.stop()


@pytest.mark.slow
def test_torch_compile_gives_the_eager_losses(fashion_folder, tiny_config, tmp_path):
    import torch._inductor.config as inductor_config

    losses = {}
    for flags in ((), ("--torch_compile",)):
        output = tmp_path / f"run{len(flags)}"
        with inductor_config.patch(fallback_random=True):  # eager's random numbers, so the same masks
            assert run_pretraining.main(run_args(fashion_folder, tiny_config, output, "--max_steps", "4", *flags)) == 0
        history = json.loads((output / "train_results.json").read_text())["log_history"]
        losses[flags] = torch.tensor([entry["loss"] for entry in history if "loss" in entry])
    assert len(losses[()]) == 4
    assert_close(losses[("--torch_compile",)], losses[()], FLOAT32_TRAINING, "losses")
