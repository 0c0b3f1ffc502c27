"""Nothing lost, nothing silent: every entry point refuses an output folder that already holds
files (unless asked to write over it or, for pre-training, to resume the run in it) and every
argument that cannot give a meaningful result, before it runs."""

import sys
from pathlib import Path

import pytest
from test_convert_official import ReferenceMFM, official_vit, save_like_the_release

from mfm_hub import MFMViTForPreTraining
from mfm_hub.arguments import guard_output_dir
from mfm_hub.convert_official import main as convert_main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
import run_classification  # noqa: E402
import run_few_shot  # noqa: E402
import run_pretraining  # noqa: E402
import run_robustness  # noqa: E402
import run_segmentation  # noqa: E402


@pytest.fixture
def earlier_run(tmp_path):
    """An output folder holding an earlier run: a result, a figure and a checkpoint."""
    folder = tmp_path / "earlier"
    (folder / "checkpoint-3").mkdir(parents=True)
    (folder / "results.json").write_text('{"top1": 0.5}')
    (folder / "checkpoint-3" / "model.safetensors").write_bytes(b"weights")
    return folder


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


ENTRY_POINTS = {
    "pretraining": lambda out: run_pretraining.main(["--output_dir", str(out), "--max_steps", "1"]),
    "classification": lambda out: run_classification.main(["--output_dir", str(out), "--max_steps", "1"]),
    "segmentation": lambda out: run_segmentation.main(["--output_dir", str(out), "--max_steps", "1"]),
    "few_shot": lambda out: run_few_shot.main(["--model", "vit-tiny-patch4-32", "--output_dir", str(out)]),
    "robustness": lambda out: run_robustness.main(["--model", "a", "--baseline", "b", "--output_dir", str(out)]),
    "convert_official": lambda out: convert_main(["--checkpoint", "missing.pth", "--arch", "vit-base", "--output", str(out)]),
}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_every_entry_point_refuses_an_earlier_output_and_changes_nothing(entry_point, earlier_run):
    before = snapshot(earlier_run)
    flag = "--overwrite" if entry_point == "convert_official" else "--overwrite_output_dir"
    with pytest.raises(FileExistsError, match=f"already holds checkpoint-3, results.json; nothing was changed.*{flag}"):
        ENTRY_POINTS[entry_point](earlier_run)
    assert snapshot(earlier_run) == before


def test_pretraining_points_at_resuming_and_a_resume_is_allowed(earlier_run):
    with pytest.raises(FileExistsError, match=f"--resume_from_checkpoint {earlier_run / 'checkpoint-3'}"):
        guard_output_dir(earlier_run, overwrite=False)
    guard_output_dir(earlier_run, overwrite=False, resuming=True)
    guard_output_dir(earlier_run, overwrite=True)
    guard_output_dir(earlier_run.parent / "new", overwrite=False)
    (earlier_run.parent / "empty").mkdir()
    guard_output_dir(earlier_run.parent / "empty", overwrite=False)
    with pytest.raises(NotADirectoryError):
        guard_output_dir(earlier_run / "results.json", overwrite=True)


def test_the_converter_writes_over_only_when_asked(tmp_path):
    save_like_the_release(ReferenceMFM(official_vit(), stride=4, features=192).state_dict(), tmp_path / "mfm.pth")
    common = ["--checkpoint", str(tmp_path / "mfm.pth"), "--arch", "vit-tiny-patch4-32", "--output", str(tmp_path / "hf")]
    convert_main(common)
    first = snapshot(tmp_path / "hf")
    with pytest.raises(FileExistsError):
        convert_main(common)
    assert snapshot(tmp_path / "hf") == first
    convert_main([*common, "--overwrite"])
    assert snapshot(tmp_path / "hf").keys() == first.keys()
    assert isinstance(MFMViTForPreTraining.from_pretrained(tmp_path / "hf"), MFMViTForPreTraining)


DEGENERATE_ARGUMENTS = [
    (run_few_shot.main, ["--model", "m", "--episodes", "0"], "--episodes must be an integer >= 1, got 0"),
    (run_few_shot.main, ["--model", "m", "--ways", "1"], "--ways must be at least 2"),
    (run_few_shot.main, ["--model", "m", "--shots", "0"], "--shots must be an integer >= 1"),
    (run_few_shot.main, ["--model", "m", "--crop_pct", "0"], r"--crop_pct must be in \(0, 1\]"),
    (run_robustness.main, ["--model", "a", "--baseline", "b", "--max_eval_samples", "0"], "--max_eval_samples must be an integer >= 1"),
    (run_robustness.main, ["--model", "a", "--baseline", "b", "--crop_pct", "1.5"], r"--crop_pct must be in \(0, 1\]"),
    (run_classification.main, ["--shots_per_class", "0"], "--shots_per_class must be an integer >= 1"),
    (run_classification.main, ["--train_fraction", "0"], r"--train_fraction must be in \(0, 1\]"),
    (run_classification.main, ["--label_smoothing", "1"], r"--label_smoothing must be in \[0, 1\)"),
    (run_classification.main, ["--layer_decay", "0"], r"--layer_decay must be in \(0, 1\]"),
    (run_classification.main, ["--reprob", "2"], "--reprob must be a probability"),
    (run_classification.main, ["--learning_rate", "0"], "--learning_rate must be > 0"),
    (run_segmentation.main, ["--num_labels", "11", "--ignore_index", "3"], "--ignore_index must be outside the class indices 0..10"),
    (run_segmentation.main, ["--crop_size", "0"], "--crop_size must be an integer >= 1"),
    (run_segmentation.main, ["--num_labels", "0"], "--num_labels must be an integer >= 1"),
    (run_pretraining.main, ["--max_train_samples", "0"], "--max_train_samples must be an integer >= 1"),
    (run_pretraining.main, ["--num_figure_images", "1"], "--num_figure_images must be an integer >= 2"),
    (run_pretraining.main, ["--max_steps", "1", "--learning_rate=-1e-3"], "--learning_rate must be > 0"),
    (run_pretraining.main, ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be an integer >= 1"),
    (run_pretraining.main, ["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be an integer >= 1"),
    (run_pretraining.main, ["--num_train_epochs", "0"], "--max_steps / --num_train_epochs must be a positive number"),
    (run_classification.main, ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be an integer >= 1"),
    (run_segmentation.main, ["--num_train_epochs", "0"], "--max_steps / --num_train_epochs must be a positive number"),
]


@pytest.mark.parametrize("main, argv, message", DEGENERATE_ARGUMENTS, ids=[f"{m.__module__}:{a[-1]}" for m, a, _ in DEGENERATE_ARGUMENTS])
def test_degenerate_arguments_are_refused_before_anything_runs(main, argv, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        main([*argv, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
