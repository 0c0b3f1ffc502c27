"""Downstream scripts: metrics, data checks, classification / linear probe, few-shot,
segmentation (UperNet) and robustness, on tiny real data."""

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import script_env, stop_once_training, tiny_vit_config
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from mfm_hub import MFMViTModel
from mfm_hub.data import FASHION_MNIST_DIR
from mfm_hub.evaluation import MeanIoU, TopKAccuracy, check_head_matches, fraction_indices, k_shot_indices, load_labelled_split
from mfm_hub.evaluation.segmentation import read_pair
from mfm_hub.model_card import OFFICIAL_WEIGHTS_LICENSE
from mfm_hub.timm_export import export_to_timm
from training import run_classification, run_few_shot, run_robustness, run_segmentation

ROOT = Path(__file__).resolve().parents[1]

CAMVID_TAR = ROOT.parent / "shared" / "data" / "camvid-240x180.tar"
needs_fashion = pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="needs `apt-get install dataset-fashion-mnist`")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("encoder")
    MFMViTModel(tiny_vit_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def balanced_folder(tmp_path_factory):
    """4 classes x 6 real Fashion-MNIST test images."""
    if not FASHION_MNIST_DIR.exists():
        pytest.skip("needs `apt-get install dataset-fashion-mnist`")
    from mfm_hub.data import load_fashion_mnist

    folder = tmp_path_factory.mktemp("balanced")
    dataset = load_fashion_mnist("test")
    counts = {}
    for index in range(200):
        example = dataset[index]
        label = example["label"]
        if label < 4 and counts.get(label, 0) < 6:
            (folder / f"class{label}").mkdir(exist_ok=True)
            example["image"].save(folder / f"class{label}" / f"{index}.png")
            counts[label] = counts.get(label, 0) + 1
    assert sorted(counts.values()) == [6, 6, 6, 6]
    return folder


def test_top_k_accuracy():
    scores = [[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]]
    result = TopKAccuracy().compute(predictions=scores, references=[1, 0, 1, 1], k=2)
    assert result == {"top1": 0.5, "top2": 1.0}


def test_mean_iou_by_hand():
    prediction = np.array([[0, 0, 1], [1, 2, 2]])
    reference = np.array([[0, 1, 1], [1, 2, 9]])  # 9 = ignored
    result = MeanIoU().compute(predictions=[prediction], references=[reference], num_labels=3, ignore_index=9)
    # class 0: inter 1, union 2; class 1: inter 2, union 3; class 2: inter 1, union 1
    assert result["per_category_iou"] == pytest.approx([0.5, 2 / 3, 1.0])
    assert result["mean_iou"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert result["overall_accuracy"] == pytest.approx(4 / 5)


def test_metrics_refuse_what_would_be_nan():
    with pytest.raises(ValueError, match="non-empty"):
        TopKAccuracy().compute(predictions=[[0.1, float("nan")]], references=[0])
    with pytest.raises(ValueError, match="at least one labelled pixel"):
        MeanIoU().compute(predictions=[np.zeros((2, 2), dtype=int)], references=[np.full((2, 2), 9)], num_labels=3, ignore_index=9)


def test_k_shot_and_fraction_subsets():
    labels = [0] * 10 + [1] * 5 + [2] * 3
    chosen = k_shot_indices(labels, 3, seed=1)
    assert sorted(np.bincount(np.asarray(labels)[chosen]).tolist()) == [3, 3, 3]
    assert chosen == k_shot_indices(labels, 3, seed=1) and chosen != k_shot_indices(labels, 3, seed=2)
    with pytest.raises(ValueError, match="class 2 has only 3"):
        k_shot_indices(labels, 4, seed=0)
    assert len(fraction_indices(labels, 0.5, seed=0)) == 5 + 2 + 2  # round(2.5) -> 2, round(1.5) -> 2
    with pytest.raises(ValueError, match="fraction"):
        fraction_indices(labels, 0.0, seed=0)


def test_model_card_results_accumulate_and_a_protocol_updates_its_own_entry(tmp_path):
    from huggingface_hub import ModelCard

    from mfm_hub.data import dataset_reference
    from mfm_hub.evaluation import add_to_model_index

    fashion = dataset_reference(None, None)
    (tmp_path / "README.md").write_text("---\nlibrary_name: transformers\n---\n\n# enc\n\nEarlier text.\n")
    add_to_model_index(tmp_path, "enc", "image-classification", "Few-shot, 5-way 5-shot episodes", fashion, {"accuracy": 0.5})
    add_to_model_index(tmp_path, "enc", "image-classification", "Few-shot, 5-way 1-shot episodes", fashion, {"accuracy": 0.3})
    add_to_model_index(tmp_path, "enc", "image-classification", "Fine-tuning", fashion, {"top1": 0.8})
    add_to_model_index(tmp_path, "enc", "image-classification", "Few-shot, 5-way 5-shot episodes", fashion, {"accuracy": 0.6})
    card = ModelCard.load(tmp_path / "README.md")
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == {"Few-shot, 5-way 5-shot episodes: accuracy": 0.6, "Few-shot, 5-way 1-shot episodes: accuracy": 0.3,
                       "Fine-tuning: top1": 0.8}
    assert "Earlier text." in card.text
    assert {r.dataset_type for r in card.data.eval_results} == {"zalando-datasets/fashion_mnist"}


def test_results_on_two_folders_are_two_results_and_a_rerun_replaces_only_its_own(tmp_path):
    """Few-shot on folder A, then on folder B (same folder name elsewhere), then A again: both
    datasets keep their result under their own name, and A's re-run replaces only A's."""
    from huggingface_hub import ModelCard

    from mfm_hub.data import dataset_reference
    from mfm_hub.evaluation import add_to_model_index

    first, second = tmp_path / "a" / "val", tmp_path / "b" / "val"
    protocol = "Few-shot, 5-way 5-shot episodes"
    add_to_model_index(tmp_path, "enc", "image-classification", protocol, dataset_reference(None, str(first)), {"accuracy": 0.5})
    add_to_model_index(tmp_path, "enc", "image-classification", protocol, dataset_reference(None, str(second)), {"accuracy": 0.7})
    add_to_model_index(tmp_path, "enc", "image-classification", protocol, dataset_reference(None, str(first)), {"accuracy": 0.55})
    card = ModelCard.load(tmp_path / "README.md")
    by_config = {r.dataset_config: r.metric_value for r in card.data.eval_results}
    assert by_config == {dataset_reference(None, str(first)).config: 0.55, dataset_reference(None, str(second)).config: 0.7}
    assert all(str(tmp_path) not in str(r.dataset_config) + r.dataset_name for r in card.data.eval_results)  # no local paths
    model_index = card.data.to_dict()["model-index"][0]["results"]
    assert len(model_index) == 2  # the Hub's model-index keeps them apart too


def test_class_count_mismatch():
    with pytest.raises(ValueError, match="3 classes but the classifier head has 10 outputs"):
        check_head_matches(10, ["a", "b", "c"])


@needs_fashion
def test_label_column_checks(fashion_folder, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="No label column 'category'"):
        load_labelled_split("train", str(fashion_folder), label_column="category")
    folder = tmp_path / "scored"
    folder.mkdir()
    rows = []
    for index, png in enumerate(sorted(fashion_folder.rglob("*.png"))[:4]):
        Image.open(png).save(folder / png.name)
        rows.append(json.dumps({"file_name": png.name, "score": 0.5 * index}))
    (folder / "metadata.jsonl").write_text("\n".join(rows))
    with pytest.raises(ValueError, match="must hold class labels or integers"):
        load_labelled_split("train", str(folder), label_column="score")


@needs_fashion
@pytest.mark.slow
def test_fine_tuning_and_linear_probe(fashion_folder, encoder, tmp_path):  # noqa: F811
    common = ["--model", str(encoder), "--train_dir", str(fashion_folder), "--validation_dir", str(fashion_folder),
              "--per_device_train_batch_size", "8", "--max_steps", "4", "--eval_strategy", "no", "--learning_rate", "1e-3"]
    results = run_classification.main([*common, "--output_dir", str(tmp_path / "ft")])
    assert 0 <= results["top1"] <= results["top5"] <= 1 and results["protocol"] == "fine_tune"
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["top1"] == results["top1"]
    assert (tmp_path / "ft" / "confusion_matrix.png").exists()
    assert "model-index" in (tmp_path / "ft" / "README.md").read_text()

    run_classification.main([*common, "--output_dir", str(tmp_path / "probe"), "--linear_probe"])
    probe = load_file(tmp_path / "probe" / "model.safetensors")
    original = load_file(encoder / "model.safetensors")
    # the backbone stayed frozen (the pre-training `norm` is replaced by fc_norm + mean pooling)
    shared = [key for key in original if not key.startswith("encoder.norm.")]
    assert all(torch.equal(probe["mfm_vit." + key], original[key]) for key in shared) and len(shared) == len(original) - 2
    assert "classifier.weight" in probe

    few = run_classification.main([*common, "--output_dir", str(tmp_path / "fewshot"), "--shots_per_class", "1"])
    assert few["train_examples"] == len({p.parent.name for p in fashion_folder.rglob("*.png")})
    with pytest.raises(ValueError, match="per class, but class"):
        run_classification.main([*common, "--output_dir", str(tmp_path / "x"), "--shots_per_class", "50"])


@needs_fashion
@pytest.mark.slow
def test_fine_tuning_resumes_exactly_with_its_augmentation_and_mixup(fashion_folder, encoder, tmp_path):  # noqa: F811
    """The default recipe (RandAugment, random erasing, Mixup / CutMix, drop path, an evaluation
    each epoch): 9 steps straight, and 9 steps resumed from step 4, in the middle of the second
    epoch (24 images, batch 8), end with the same weights and the same results."""
    common = ["--model", str(encoder), "--train_dir", str(fashion_folder), "--validation_dir", str(fashion_folder),
              "--per_device_train_batch_size", "8", "--max_steps", "9", "--save_strategy", "steps", "--save_steps", "4",
              "--learning_rate", "1e-3", "--seed", "5"]
    straight = run_classification.main([*common, "--output_dir", str(tmp_path / "straight")])
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "straight" / "checkpoint-4", interrupted / "checkpoint-4")
    resumed = run_classification.main([*common, "--output_dir", str(interrupted), "--resume_from_checkpoint", "True"])
    ends = [load_file(folder / "model.safetensors") for folder in (tmp_path / "straight", interrupted)]
    assert ends[0].keys() == ends[1].keys() and all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    assert not torch.equal(load_file(interrupted / "checkpoint-4" / "model.safetensors")["classifier.weight"], ends[1]["classifier.weight"])
    assert resumed["validation_curve"] == straight["validation_curve"] and len(straight["validation_curve"]) == 3
    assert resumed["top1"] == straight["top1"]


@needs_fashion
@pytest.mark.slow
def test_sigterm_stops_fine_tuning_with_a_checkpoint_it_resumes_from(fashion_folder, encoder, tmp_path):  # noqa: F811
    output = tmp_path / "ft"
    common = ["--model", str(encoder), "--train_dir", str(fashion_folder), "--validation_dir", str(fashion_folder),
              "--per_device_train_batch_size", "8", "--logging_steps", "1", "--output_dir", str(output)]
    process = subprocess.Popen([sys.executable, str(ROOT / "training" / "run_classification.py"), *common, "--max_steps", "100000"],
                               env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, rest = stop_once_training(process)
    assert process.returncode == 143, log + rest
    (checkpoint,) = output.glob("checkpoint-*")
    assert f"Resume with --resume_from_checkpoint {checkpoint}" in rest and not (output / "results.json").exists()
    step = int(checkpoint.name.removeprefix("checkpoint-"))
    with pytest.raises(FileExistsError, match="--resume_from_checkpoint"):  # a re-run without it is refused, the checkpoint kept
        run_classification.main([*common, "--max_steps", str(step + 2)])
    results = run_classification.main([*common, "--max_steps", str(step + 2), "--resume_from_checkpoint", "True"])
    assert json.loads((output / "results.json").read_text())["top1"] == results["top1"] and checkpoint.is_dir()


@needs_fashion
@pytest.mark.slow
def test_the_official_licence_carries_through_fine_tuning_and_the_timm_export(fashion_folder, encoder, tmp_path):  # noqa: F811
    licensed = tmp_path / "official"
    shutil.copytree(encoder, licensed)
    card = ModelCard("# official\n")
    OFFICIAL_WEIGHTS_LICENSE.apply(card)
    card.save(licensed / "README.md")
    run_classification.main(["--model", str(licensed), "--train_dir", str(fashion_folder), "--validation_dir", str(fashion_folder),
                             "--per_device_train_batch_size", "8", "--max_steps", "1", "--eval_strategy", "no",
                             "--output_dir", str(tmp_path / "ft")])
    fine_tuned = ModelCard.load(tmp_path / "ft" / "README.md")
    assert (fine_tuned.data.license, fine_tuned.data.license_name) == ("other", "s-lab-license-1.0")
    assert fine_tuned.data.pipeline_tag == "image-classification" and fine_tuned.data.eval_results
    assert "![confusion matrix](confusion_matrix.png)" in fine_tuned.text
    export_to_timm(tmp_path / "ft", tmp_path / "timm")
    assert json.loads((tmp_path / "timm" / "config.json").read_text())["pretrained_cfg"]["license"] == "s-lab-license-1.0"
    exported = ModelCard.load(tmp_path / "timm" / "README.md").data
    assert (exported.license_name, exported.library_name, exported.pipeline_tag) == ("s-lab-license-1.0", "timm", "image-classification")


def test_a_checkpoint_with_non_finite_weights_stops_fine_tuning_and_few_shot_before_they_run(balanced_folder, tmp_path):
    """Fine-tuning used to log loss 0 and save a NaN model; few-shot wrote exactly chance into the card."""
    model = MFMViTModel(tiny_vit_config())
    with torch.no_grad():
        model.base_model.encoder.cls_token.fill_(float("nan"))
    model.save_pretrained(tmp_path / "diverged")
    card = (tmp_path / "diverged" / "README.md").read_text() if (tmp_path / "diverged" / "README.md").exists() else None
    data = ["--train_dir", str(balanced_folder), "--validation_dir", str(balanced_folder)]
    with pytest.raises(ValueError, match=r"diverged holds non-finite weights: .*cls_token"):
        run_classification.main(["--model", str(tmp_path / "diverged"), *data, "--output_dir", str(tmp_path / "ft"), "--max_steps", "1"])
    with pytest.raises(ValueError, match=r"diverged holds non-finite weights: .*cls_token"):
        run_few_shot.main(["--model", str(tmp_path / "diverged"), "--data_dir", str(balanced_folder), "--split", "train",
                           "--ways", "3", "--shots", "2", "--queries", "3", "--episodes", "5", "--output_dir", str(tmp_path / "fs")])
    assert not list((tmp_path / "ft").glob("checkpoint-*")) and not (tmp_path / "fs" / "results.json").exists()
    card_now = (tmp_path / "diverged" / "README.md").read_text() if (tmp_path / "diverged" / "README.md").exists() else None
    assert card_now == card  # no result filed


def test_fine_tuning_on_fewer_than_five_classes_reports_its_top_k(balanced_folder, encoder, tmp_path):
    """Top-5 needs five classes; with four, top-k is top-4 and the run still ends with its card
    and results (it used to fail after training, on the card's top-5, with no results written)."""
    results = run_classification.main(["--model", str(encoder), "--train_dir", str(balanced_folder), "--validation_dir",
                                       str(balanced_folder), "--per_device_train_batch_size", "8", "--max_steps", "1",
                                       "--eval_strategy", "no", "--output_dir", str(tmp_path / "ft")])
    assert results["top4"] == 1.0 and "top5" not in results
    assert f"top-1 {results['top1']:.4f}, top-4 1.0000" in (tmp_path / "ft" / "README.md").read_text()
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["top1"] == results["top1"]


@needs_fashion
@pytest.mark.slow
def test_few_shot_episodes_are_seeded(balanced_folder, encoder, tmp_path):
    args = ["--model", str(encoder), "--data_dir", str(balanced_folder), "--split", "train", "--ways", "3", "--shots", "2",
            "--queries", "3", "--episodes", "20"]
    first = run_few_shot.main([*args, "--output_dir", str(tmp_path / "a")])
    again = run_few_shot.main([*args, "--output_dir", str(tmp_path / "b")])
    assert first["accuracy"] == again["accuracy"] and 0 <= first["accuracy"] <= 1 and first["ci95"] >= 0
    assert (tmp_path / "a" / "few_shot_episodes.png").exists()
    assert "3-way 2-shot episodes" in (encoder / "README.md").read_text()  # the checkpoint's own card
    logistic = run_few_shot.main([*args, "--output_dir", str(tmp_path / "c"), "--classifier", "logistic"])
    assert 0 <= logistic["accuracy"] <= 1
    with pytest.raises(ValueError, match="exceed the smallest class"):
        run_few_shot.main([*args, "--shots", "4", "--output_dir", str(tmp_path / "d")])


@needs_fashion
@pytest.mark.slow
def test_robustness_against_itself_is_mce_one(fashion_folder, balanced_folder, encoder, tmp_path):  # noqa: F811
    classifier = tmp_path / "cls"
    run_classification.main(
        [
            "--model",
            str(encoder),
            "--train_dir",
            str(fashion_folder),
            "--validation_dir",
            str(fashion_folder),
            "--per_device_train_batch_size",
            "8",
            "--max_steps",
            "2",
            "--eval_strategy",
            "no",
            "--output_dir",
            str(classifier),
        ]
    )
    results = run_robustness.main(
        [
            "--model",
            str(classifier),
            "--baseline",
            str(classifier),
            "--data_dir",
            str(fashion_folder),
            "--split",
            "train",
            "--corruptions",
            "gaussian_noise",
            "pixelate",
            "--output_dir",
            str(tmp_path / "rob"),
        ]
    )
    assert results["mCE"] == pytest.approx(1.0) or all(
        sum(results["errors"]["baseline"][c].values()) == 0 for c in ("gaussian_noise", "pixelate"))
    assert set(results["errors"]["model"]["pixelate"]) == {"1", "2", "3", "4", "5"}
    assert (tmp_path / "rob" / "corruption_errors.png").exists()
    assert "mCE" in (classifier / "README.md").read_text()
    with pytest.raises(ValueError, match="4 classes but the model's classifier has 10 outputs"):
        run_robustness.main(["--model", str(classifier), "--baseline", str(classifier), "--data_dir", str(balanced_folder),
                             "--split", "train", "--corruptions", "pixelate"])
    with pytest.raises(ValueError, match="Unknown corruptions"):
        run_robustness.main(["--model", str(classifier), "--baseline", str(classifier), "--data_dir", str(fashion_folder),
                             "--corruptions", "rain"])


@pytest.fixture(scope="module")
def camvid_subset(tmp_path_factory):
    """6 train and 2 val CamVid scenes (reduced to 240x180) from shared/data."""
    if not CAMVID_TAR.exists():
        pytest.skip("needs shared/data/camvid-240x180.tar")
    root = tmp_path_factory.mktemp("camvid")
    with tarfile.open(CAMVID_TAR) as archive:
        members = archive.getmembers()
        wanted = []
        for split, count in (("train", 6), ("val", 2)):
            images = sorted(m.name for m in members if m.name.startswith(f"CamVid/{split}/") and m.isfile())[:count]
            stems = {Path(n).stem for n in images}
            wanted += images + [m.name for m in members if m.name.startswith(f"CamVid/{split}annot/") and Path(m.name).stem in stems]
        archive.extractall(root, members=[m for m in members if m.name in wanted], filter="data")
    return root / "CamVid"


def test_segmentation_label_checks(camvid_subset, tmp_path):
    image = next((camvid_subset / "train").iterdir())
    example = {
        "image": {"path": str(image), "bytes": None},
        "mask": {"path": str(camvid_subset / "trainannot" / f"{image.stem}.png"), "bytes": None},
    }
    with pytest.raises(ValueError, match=r"labels \[11\] outside 0\.\.10; set --ignore_index"):
        read_pair(example, num_labels=11, ignore_index=None)
    image_np, mask = read_pair(example, num_labels=11, ignore_index=11)
    assert image_np.shape[:2] == mask.shape
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(small)
    with pytest.raises(ValueError, match="small.png is 10x10 but its image is 240x180"):
        read_pair({**example, "mask": {"path": str(small), "bytes": None}}, num_labels=11, ignore_index=11)
    with pytest.raises(ValueError, match="--class_names must give 11 distinct names .* got 2"):
        run_segmentation.ModelArguments(num_labels=11, class_names="road,car")
    assert run_segmentation.ModelArguments(num_labels=3, class_names="road, car,sky").classes == ["road", "car", "sky"]
    assert run_segmentation.ModelArguments(num_labels=2).classes == ["LABEL_0", "LABEL_1"]


@pytest.mark.slow
def test_segmentation_end_to_end(camvid_subset, encoder, tmp_path):
    results = run_segmentation.main(
        [
            "--model",
            str(encoder),
            "--data_dir",
            str(camvid_subset),
            "--num_labels",
            "11",
            "--class_names",
            "camvid",
            "--ignore_index",
            "11",
            "--output_dir",
            str(tmp_path / "seg"),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--crop_size",
            "64",
            "--decoder_channels",
            "32",
            "--num_figure_images",
            "2",
        ]
    )
    assert 0 <= results["mean_iou"] <= 1 and len(results["per_category_iou"]) == 11 and results["eval_images"] == 2
    assert results["class_names"][3] == "road"
    assert json.loads((tmp_path / "seg" / "config.json").read_text())["id2label"]["8"] == "car"
    assert (tmp_path / "seg" / "segmentation_overlays.png").exists()
    card = ModelCard.load(tmp_path / "seg" / "README.md")
    assert "mean_iou" in str(card) and card.data.pipeline_tag == "image-segmentation" and card.data.license == "apache-2.0"
    assert "![image, ground truth and prediction](segmentation_overlays.png)" in card.text and "xie2023masked" in card.text

    # the checkpoint works in transformers' pipeline: one full-size mask per class present
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(tmp_path / "seg"))
    image = Image.open(next((camvid_subset / "val").iterdir())).convert("RGB")
    segments = segmenter(image, subtask="semantic")
    assert segments and all(segment["mask"].size == image.size for segment in segments)
    coverage = sum(np.asarray(segment["mask"]) > 0 for segment in segments)
    assert (coverage == 1).all()  # every pixel in exactly one class's mask


@needs_fashion
def test_classification_refuses_bad_data_before_training(fashion_folder, tmp_path):  # noqa: F811
    import shutil

    validation = tmp_path / "val"
    shutil.copytree(fashion_folder, validation)
    broken = sorted(validation.rglob("*.png"))[3]
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match=rf"1 of \d+ evaluation images cannot be used, so nothing was trained: #\d+: .*{broken.name}"):
        run_classification.main(["--model", "vit-tiny-patch4-32", "--train_dir", str(fashion_folder), "--validation_dir", str(validation),
                                 "--max_steps", "1", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def segnet_folder(root: Path, counts: dict[str, int], height: int = 30, width: int = 40) -> Path:
    """A SegNet-layout folder of random images with random label maps of 3 classes."""
    rng = np.random.default_rng(0)
    for split, count in counts.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for index in range(count):
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / split / f"{index}.png")
            Image.fromarray(rng.integers(0, 3, (height, width), dtype=np.uint8)).save(root / f"{split}annot" / f"{index}.png")
    return root


def test_segmentation_refuses_bad_label_maps_before_training(tmp_path):
    segnet_folder(tmp_path, {"train": 3, "val": 2})
    labels = np.asarray(Image.open(tmp_path / "valannot" / "1.png")).copy()
    labels[0, 0] = 7  # outside 0..2 with no ignore index
    Image.fromarray(labels).save(tmp_path / "valannot" / "1.png")
    with pytest.raises(
        ValueError, match=r"1 of 2 evaluation images cannot be used, so nothing was trained: #1: .*labels \[7\] outside 0\.\.2"
    ):
        run_segmentation.main(["--model", "vit-tiny-patch4-32", "--data_dir", str(tmp_path), "--num_labels", "3", "--max_steps", "1",
                               "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_segmentation_resumes_exactly(tmp_path):
    """7 steps straight and 7 steps resumed from step 4, in the middle of the second epoch
    (6 images, batch 2): the same weights and the same mIoU."""
    data = segnet_folder(tmp_path / "data", {"train": 6, "val": 2}, height=40, width=48)
    common = ["--model", "vit-tiny-patch4-32", "--data_dir", str(data), "--num_labels", "3", "--crop_size", "32",
              "--decoder_channels", "16", "--per_device_train_batch_size", "2", "--max_steps", "7", "--save_strategy", "steps",
              "--save_steps", "4", "--num_figure_images", "1", "--seed", "5"]
    straight = run_segmentation.main([*common, "--output_dir", str(tmp_path / "straight")])
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "straight" / "checkpoint-4", interrupted / "checkpoint-4")
    checkpoint = interrupted / "checkpoint-4"
    resumed = run_segmentation.main([*common, "--output_dir", str(interrupted), "--resume_from_checkpoint", str(checkpoint)])
    ends = [load_file(folder / "model.safetensors") for folder in (tmp_path / "straight", interrupted)]
    assert ends[0].keys() == ends[1].keys() and all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    assert resumed["mean_iou"] == straight["mean_iou"]
