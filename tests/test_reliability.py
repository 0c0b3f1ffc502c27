"""Nothing lost, nothing silent: every entry point refuses an output folder that already holds
files (unless asked to write over it or, for pre-training, to resume the run in it) and every
argument that cannot give a meaningful result, before it runs."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from official_release import save_like_the_release
from transformers import HfArgumentParser

from benchmarks.reference_mfm import ReferenceMFM, official_vit
from mfm_hub import MFMViTForPreTraining
from mfm_hub.arguments import guard_output_dir
from mfm_hub.configuration_mfm import check_model_source
from mfm_hub.convert_official import main as convert_main
from mfm_hub.demo.panels import load_reconstruction_model
from mfm_hub.folder_lock import claim_folder, holds_folder, lock_path, release_folder
from mfm_hub.timm_export import export_to_timm
from training import run_classification, run_few_shot, run_pretraining, run_robustness, run_segmentation

ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.raises(FileExistsError) as refusal:  # its checkpoint-3 is incomplete: never suggested (a complete one is:
        guard_output_dir(earlier_run, overwrite=False)  # test_pretraining.py::test_damaged_checkpoints_stop_the_resume_...)
    assert "--resume_from_checkpoint" not in str(refusal.value)
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


# --------------------------------------------------------------------------------------
# One run per output folder (mfm_hub.folder_lock)
# --------------------------------------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from mfm_hub.arguments import guard_output_dir
folder, go, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(go.parent / f"ready-{name}").touch()
while not go.exists():
    time.sleep(0.001)
guard_output_dir(folder, overwrite=False)
time.sleep(0.5)  # loading data and model: a real run writes its first file seconds after the check
folder.mkdir(parents=True, exist_ok=True)
for step in range(5):  # a run writing its checkpoints
    (folder / f"checkpoint-{step}").write_text(name)
    time.sleep(0.05)
if len(sys.argv) > 4:
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
"""


def start_writers(tmp_path, folder, names, *extra):
    (tmp_path / "writer.py").write_text(WRITER)
    processes = {name: subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(folder), str(tmp_path / "go"), name, *extra],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names}
    deadline = time.time() + 120
    while not all((tmp_path / f"ready-{name}").exists() for name in names) and time.time() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()  # both call guard_output_dir now
    return {name: (process, *process.communicate(timeout=120)) for name, process in processes.items()}


def test_two_runs_started_together_into_one_folder_one_is_refused_and_nothing_interleaves(tmp_path):
    folder = tmp_path / "out"
    results = start_writers(tmp_path, folder, ["first", "second"])
    codes = {name: process.returncode for name, (process, _, _) in results.items()}
    assert sorted(codes.values())[0] == 0 and sorted(codes.values())[1] != 0, codes
    winner = next(name for name, code in codes.items() if code == 0)
    loser_error = next(err for name, (_, _, err) in results.items() if name != winner)
    assert "FolderInUseError" in loser_error and f"is being written by process {results[winner][0].pid}" in loser_error
    assert {path.read_text() for path in folder.glob("checkpoint-*")} == {winner}
    assert not lock_path(folder).exists()  # given back at exit


def test_a_crashed_runs_lock_is_stale_and_the_next_run_takes_the_folder(tmp_path):
    folder = tmp_path / "out"
    (process, _, err), = start_writers(tmp_path, folder, ["crashing"], "--crash").values()
    assert process.returncode == -signal.SIGKILL, err
    assert lock_path(folder).exists()  # left behind, but nobody holds it
    guard_output_dir(folder, overwrite=False, resuming=True)
    assert holds_folder(folder)
    release_folder(folder)


def test_a_refused_folder_is_given_back_and_a_claim_creates_nothing_in_the_folder(earlier_run, tmp_path):
    before = snapshot(earlier_run)
    with pytest.raises(FileExistsError):
        guard_output_dir(earlier_run, overwrite=False)
    assert not holds_folder(earlier_run) and not lock_path(earlier_run).exists() and snapshot(earlier_run) == before
    claim_folder(tmp_path / "new" / "run")
    assert lock_path(tmp_path / "new" / "run").exists() and not (tmp_path / "new" / "run").exists()
    release_folder(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # the parent the claim created, empty again


class WorkerSignals(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.tensor([signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, signal.getsignal(signal.SIGINT) == signal.SIG_IGN])


def test_data_loader_workers_of_a_prepared_loader_ignore_termination_signals():
    """accelerate wraps the Trainer's loader; the workers are started by the wrapped one."""
    from accelerate import Accelerator

    from mfm_hub.trainer import protect_workers

    loader = Accelerator(cpu=True).prepare(torch.utils.data.DataLoader(WorkerSignals(), batch_size=4, num_workers=2))
    # torch's own worker handlers: a SIGTERM from outside kills the worker; SIGINT is inherited (ignored
    # already when the tests were started in the background, as `nohup pytest &` does)
    inherited = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert next(iter(loader)).tolist() == [[False, inherited]] * 4
    assert next(iter(protect_workers(loader))).all()


MODEL_ENTRY_POINTS = {
    "pretraining": lambda model, out: run_pretraining.main(["--model", model, "--output_dir", out, "--max_steps", "1"]),
    "classification": lambda model, out: run_classification.main(["--model", model, "--output_dir", out, "--max_steps", "1"]),
    "segmentation": lambda model, out: run_segmentation.main(["--model", model, "--output_dir", out, "--max_steps", "1"]),
    "few_shot": lambda model, out: run_few_shot.main(["--model", model, "--output_dir", out]),
    "robustness": lambda model, out: run_robustness.main(["--model", model, "--baseline", model, "--output_dir", out]),
    "timm_export": lambda model, out: export_to_timm(model, out),
    "demo": lambda model, out: load_reconstruction_model(model),
}


@pytest.mark.parametrize("entry_point", MODEL_ENTRY_POINTS)
def test_a_typo_in_a_local_model_path_is_not_found_naming_the_closest_folder_or_preset(entry_point, tmp_path, monkeypatch):
    """Never "check your internet connection" for a folder that is simply not there."""
    (tmp_path / "outputs" / "quickstart").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="'outputs/quickstrat' is neither a preset.*Did you mean outputs/quickstart"):
        MODEL_ENTRY_POINTS[entry_point]("outputs/quickstrat", str(tmp_path / "out1"))
    with pytest.raises(FileNotFoundError, match="'vit-tiny-patch4-23' is neither a preset.*Did you mean vit-tiny-patch4-32"):
        MODEL_ENTRY_POINTS[entry_point]("vit-tiny-patch4-23", str(tmp_path / "out2"))


def test_what_may_be_a_hub_id_is_left_to_the_hub():
    for name in ("owner/name", "vit-tiny-patch4-32"):
        check_model_source(name)
    with pytest.raises(FileNotFoundError, match="nothing is at that path"):
        check_model_source("/no/such/checkpoint")


def test_classification_evaluates_on_the_data_it_trains_on_or_says_what_is_missing(tmp_path):
    """Never another dataset (the embedded Fashion-MNIST) for a --train_dir without --validation_dir."""
    from PIL import Image

    for split, name in (("train", "a"), ("train", "b"), ("val", "a"), ("val", "b")):
        (tmp_path / "split" / split / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "split" / split / name / "0.png")
        (tmp_path / "flat" / name).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / name / "0.png")
    split_folder = ["--train_dir", str(tmp_path / "split")]
    with pytest.raises(
        ValueError, match=r"has the splits \['train', 'validation'\], not --eval_split 'test': pass --eval_split validation"
    ):
        run_classification.main([*split_folder, "--output_dir", str(tmp_path / "o1"), "--max_steps", "1"])
    with pytest.raises(ValueError, match="holds class folders but no evaluation images: pass --validation_dir"):
        run_classification.main(["--train_dir", str(tmp_path / "flat"), "--output_dir", str(tmp_path / "o2"), "--max_steps", "1"])
    (data_args,) = HfArgumentParser(run_classification.DataArguments).parse_args_into_dataclasses(
        [*split_folder, "--eval_split", "validation"]
    )
    assert run_classification.evaluation_source(data_args) == ("validation", str(tmp_path / "split"))


def test_max_samples_is_a_seeded_class_balanced_sample_not_the_first_classes(caplog):
    """An image folder lists its files class by class: the first 1,000 of CIFAR-10's test set
    are all airplanes. Every --max_*_samples goes through `sample_examples`."""
    import datasets

    from mfm_hub.data import sample_examples

    labels = [label for label in range(10) for _ in range(100)]  # sorted by class, as an image folder
    data = datasets.Dataset.from_dict({"index": list(range(1000)), "label": labels},
                                      features=datasets.Features({"index": datasets.Value("int64"),
                                                                  "label": datasets.ClassLabel(num_classes=10)}))
    with caplog.at_level("INFO"):
        sample = sample_examples(data, 100, seed=0)
    assert sorted(sample["label"]) == [label for label in range(10) for _ in range(10)]
    assert "Sampled 100 of 1000 examples (seed 0): 10 of 10 classes, 10 to 10 per class" in caplog.text
    assert sample["index"] == sample_examples(data, 100, seed=0)["index"]  # the same on every process and on resume
    assert sample["index"] != sample_examples(data, 100, seed=1)["index"]
    assert len(set(sample_examples(data, 25, seed=0)["label"])) == 10  # 25 of 10 classes: 2 or 3 each
    unlabelled = data.remove_columns("label")
    assert max(sample_examples(unlabelled, 50, seed=0)["index"]) > 500  # uniform, not the first 50
    assert sample_examples(data, 5000, seed=0) is data and sample_examples(data, None, seed=0) is data
    stream = [row["index"] for row in sample_examples(data.to_iterable_dataset(), 20, seed=0)]
    assert len(stream) == 20 and stream != list(range(20))


def test_a_waiting_claim_says_who_holds_the_folder_and_takes_it_when_freed(tmp_path, capsys):
    """How zoo fetches into one cache take turns (`folder_claimed(..., wait=True)`)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mfm_hub.folder_lock import claim_folder\n"
                               f"claim_folder({str(tmp_path / 'cache')!r}); print('held', flush=True); time.sleep(1.5)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    claim_folder(tmp_path / "cache", wait=True)
    assert holder.wait(timeout=60) == 0
    assert f"is being written by process {holder.pid}" in capsys.readouterr().out
    release_folder(tmp_path / "cache")
