"""Soak tests of every data pipeline the scripts build: thousands of seeded draws through the
transforms alone (no model), with every augmentation the script offers at its strongest, on
small images of the sizes and modes the loaders accept (1 px to 64 px, grayscale, palette,
alpha, 16-bit, 1-bit, CMYK JPEG, float TIFF).

Real runs draw millions of augmentations, so a failure one time in a thousand kills every
real run while short training tests pass; each test here draws at least `DRAWS` samples.
"""

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from transformers import default_data_collator

from mfm_hub import data as mfm_data
from mfm_hub import timm_compat
from mfm_hub.configuration_mfm import resolve_config
from mfm_hub.evaluation import eval_transform
from mfm_hub.evaluation.classification import ImageBatch
from mfm_hub.evaluation.few_shot import run_episodes
from mfm_hub.evaluation.robustness import SEVERITIES, corrupted_image
from mfm_hub.evaluation.segmentation import EVAL_MULTIPLE, SegmentationBatch, SegmentationCrops
from mfm_hub.modeling_common import corrupt
from mfm_hub.pretraining import METHODS
from training import run_classification, run_pretraining

ROOT = Path(__file__).resolve().parents[1]

DRAWS = 3000
POOL_SIZE = 60
IMAGE_SIZE = 32
#: RandAugment at its strongest: the top of the magnitude range every time (posterize keeps
#: its fewest bits), three ops per image, plus the default spec with magnitude noise.
STRONGEST_RAND_AUGMENT = ("rand-m10-n3-inc1", "rand-m9-mstd0.5-inc1", "rand-m10-n3-mstd1.0")


def varied_image(rng: np.random.Generator, index: int) -> tuple[bytes, str]:
    """One encoded image; sizes include 1-px lines and single pixels, every mode we accept."""
    fixed_sizes = [(1, 1), (1, 40), (40, 1), (3, 5), (IMAGE_SIZE, IMAGE_SIZE)]
    width, height = fixed_sizes[index] if index < len(fixed_sizes) else tuple(int(v) for v in rng.integers(2, 65, 2))
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    variant = index % 9
    if variant == 0:
        return _encode(image, "PNG"), "png"
    if variant == 1:
        return _encode(image.convert("L"), "PNG"), "png"
    if variant == 2:
        return _encode(image.convert("P"), "PNG"), "png"
    if variant == 3:
        return _encode(image.convert("RGBA"), "PNG"), "png"
    if variant == 4:
        return _encode(image.convert("LA"), "PNG"), "png"
    if variant == 5:
        sixteen = (rng.integers(0, 65536, (height, width))).astype(np.uint16)
        return _encode(Image.fromarray(sixteen), "PNG"), "png"
    if variant == 6:
        return _encode(image.convert("1"), "PNG"), "png"
    if variant == 7:
        return _encode(image.convert("CMYK"), "JPEG"), "jpg"
    return _encode(Image.fromarray(rgb[..., 0].astype(np.float32) / 7.0), "TIFF"), "tif"


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_pool():
    rng = np.random.default_rng(0)
    return [varied_image(rng, index) for index in range(POOL_SIZE)]


@pytest.fixture(scope="module")
def image_folder(image_pool, tmp_path_factory):
    folder = tmp_path_factory.mktemp("varied_images")
    for index, (encoded, suffix) in enumerate(image_pool):
        target = folder / f"class{index % 3}"
        target.mkdir(exist_ok=True)
        (target / f"{index:03d}.{suffix}").write_bytes(encoded)
    return folder


def examples(image_pool, count: int, seed: int, num_classes: int = 3):
    rng = np.random.default_rng(seed)
    return [{"image": {"bytes": image_pool[i % len(image_pool)][0], "path": None}, "label": int(rng.integers(num_classes))}
            for i in range(count)]


def batches(items: list, size: int):
    return [items[start:start + size] for start in range(0, len(items), size)]


# --------------------------------------------------------------------------------------
# The compatibility layer itself
# --------------------------------------------------------------------------------------


def test_posterize_at_its_strongest_works_with_the_fix_only_where_it_is_needed():
    """Pillow 13 refuses 0 bits and the fix is installed (by `import mfm_hub`, not by this test);
    Pillow 12 (what gradio, in the dev and demo extras, pins) accepts them and the fix stays off."""
    from timm.data.auto_augment import NAME_TO_OP, AugmentOp

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    strongest = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)  # timm maps this to 0 bits
    needed = timm_compat.timm_posterize_refuses_zero_bits()
    installed = [NAME_TO_OP[name] is timm_compat.posterize_at_least_one_bit for name in timm_compat.POSTERIZE_OPS]
    assert installed == [needed] * len(installed)
    fewest_bits = 1 if needed else 0
    assert np.array_equal(np.asarray(strongest(image)), np.asarray(ImageOps.posterize(image, fewest_bits)))
    weakest = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=0)  # 4 bits: unchanged by the fix
    assert np.array_equal(np.asarray(weakest(image)), np.asarray(ImageOps.posterize(image, 4)))
    assert np.array_equal(np.asarray(timm_compat.posterize_at_least_one_bit(image, 8)), np.asarray(image))
    assert timm_compat.install_posterize_fix() == needed  # idempotent
    assert (NAME_TO_OP["Posterize"] is timm_compat.posterize_at_least_one_bit) == needed


# --------------------------------------------------------------------------------------
# Pre-training: every method, FOLK's two jittered views included
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_pretraining_pipeline_soak(method, image_folder):
    model_args = run_pretraining.ModelArguments(
        model="vit-tiny-patch4-32", **(dict(objective="folk") if method == "folk" else dict(pretext_task=method))
    )
    config = resolve_config(model_args.model, pretext_task=model_args.pretext_task)
    data_args = run_pretraining.DataArguments(train_dir=str(image_folder), min_crop_scale=0.01)
    images, _, _ = run_pretraining.build_dataset(data_args, IMAGE_SIZE, seed=7, two_views=method == "folk")
    generator = torch.Generator().manual_seed(0)
    drawn = 0
    epoch = 0
    while drawn < DRAWS:
        images.set_epoch(epoch)
        for chunk in batches(list(range(len(images))), 64):
            batch = mfm_data.collate_pretraining([images[i] for i in chunk])
            assert "skipped_images" not in batch
            pixels = batch["pixel_values"]
            views = pixels.flatten(0, 1) if method == "folk" else pixels
            assert views.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE) and views.dtype == torch.float32
            assert views.min() >= 0 and views.max() <= 1
            corrupted = corrupt(views, config, generator).pixel_values
            assert torch.isfinite(corrupted).all()
            drawn += len(views)
        epoch += 1


# --------------------------------------------------------------------------------------
# Classification (fine-tuning, linear probe, evaluation), few-shot
# --------------------------------------------------------------------------------------


def training_draws(pool: list[dict], linear_probe: bool, data_args, batch_size: int):
    """The batches `run_classification` trains on: its seeded images, then its collator."""
    config = resolve_config("vit-tiny-patch4-32")
    images = run_classification.training_images(pool, config, data_args, linear_probe, image_column="image", seed=0)
    collate = run_classification.training_batches(data_args, linear_probe, num_classes=3)
    return (collate([images[i] for i in indices]) for indices in batches(list(range(len(images))), batch_size))


@pytest.mark.parametrize("spec", STRONGEST_RAND_AUGMENT)
def test_fine_tuning_augmentation_soak(spec, image_pool):
    data_args = run_classification.DataArguments(rand_augment=spec, reprob=1.0, mixup=1.0, cutmix=1.0, label_smoothing=0.1)
    for out in training_draws(examples(image_pool, DRAWS, seed=1), False, data_args, 64):
        assert out["pixel_values"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE) and out["labels"].shape[0] == len(out["pixel_values"])
        assert torch.isfinite(out["pixel_values"]).all() and torch.isfinite(out["labels"]).all()


def test_a_fine_tuning_draw_depends_on_seed_epoch_and_index_only_and_leaves_the_generators_alone(image_pool):
    images = run_classification.training_images(examples(image_pool, 8, seed=4), resolve_config("vit-tiny-patch4-32"),
                                                run_classification.DataArguments(), False, image_column="image", seed=0)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    first = images[3]["pixel_values"]
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert torch.equal(images[3]["pixel_values"], first)  # whatever state the global generators are in
    images.set_epoch(1)
    assert not torch.equal(images[3]["pixel_values"], first)


def test_linear_probe_and_evaluation_transforms_soak(image_pool):
    pool = examples(image_pool, DRAWS, seed=2)
    for out in training_draws(pool, True, run_classification.DataArguments(), 100):
        assert out["pixel_values"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(out["pixel_values"]).all()
    evaluate = ImageBatch("image", "label", eval_transform(resolve_config("vit-tiny-patch4-32")))
    for batch in batches(pool, 100):
        pixels = evaluate(batch)["pixel_values"]
        assert pixels.shape == (len(batch), 3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(pixels).all()


def test_few_shot_episodes_soak():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 16, generator=generator)
    labels = np.repeat(np.arange(10), 30)
    accuracies = run_episodes(features, labels, ways=5, shots=5, queries=25, episodes=DRAWS, classifier="prototype", seed=0)
    assert len(accuracies) == DRAWS and all(0.0 <= a <= 1.0 for a in accuracies)


# --------------------------------------------------------------------------------------
# Segmentation joint transforms
# --------------------------------------------------------------------------------------


def segmentation_examples(count: int, seed: int, num_labels: int, ignore_index: int):
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(count):
        height, width = (int(v) for v in rng.integers(1, 80, 2))
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(("RGB", "L", "P")[index % 3])
        labels = rng.integers(0, num_labels + 1, (height, width)).astype(np.uint8)
        labels[labels == num_labels] = ignore_index
        pairs.append({"image": {"bytes": _encode(image, "PNG"), "path": None},
                      "mask": {"bytes": _encode(Image.fromarray(labels), "PNG"), "path": None}})
    return pairs


def test_segmentation_joint_transforms_soak():
    config = resolve_config("vit-tiny-patch4-32")
    num_labels, ignore_index = 11, 11
    pool = segmentation_examples(300, seed=3, num_labels=num_labels, ignore_index=ignore_index)
    crops = SegmentationCrops(pool, config, num_labels, ignore_index, crop_size=48, seed=0)
    evaluate = SegmentationBatch(config, num_labels, ignore_index)
    for epoch in range(DRAWS // len(pool)):
        crops.set_epoch(epoch)
        for indices in batches(list(range(len(pool))), 16):
            out = default_data_collator([crops[index] for index in indices])
            assert out["pixel_values"].shape == (len(indices), 3, 48, 48) and out["labels"].shape == (len(indices), 48, 48)
            assert torch.isfinite(out["pixel_values"]).all()
            assert ((out["labels"] >= 0) & (out["labels"] <= ignore_index)).all()
            if epoch == 0:
                padded = evaluate([pool[index] for index in indices])
                assert padded["pixel_values"].shape[-1] % EVAL_MULTIPLE == 0


# --------------------------------------------------------------------------------------
# Robustness: 15 corruptions x 5 severities
# --------------------------------------------------------------------------------------


def test_robustness_corruptions_soak():
    imagecorruptions = pytest.importorskip("imagecorruptions")
    corruptions = imagecorruptions.get_corruption_names("common")
    per_setting = -(-DRAWS // (len(corruptions) * len(SEVERITIES)))
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(per_setting)]
    drawn = 0
    for corruption in corruptions:
        for severity in SEVERITIES:
            for index, image in enumerate(images):
                out = corrupted_image(image, corruption, severity, seed=1000 * severity + index)
                assert out.shape == image.shape and out.dtype == np.uint8
                drawn += 1
    assert drawn >= DRAWS
