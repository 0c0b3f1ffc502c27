"""``--batched_augmentation``: the same crops as the PIL path (same seeds, same torchvision
draws), torch's bicubic computed for a whole batch, and what it refuses."""

import io
import json
import shutil

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from mfm_hub.batched_augmentation import BatchedPretrainingImages, DecodedImages, batched_resized_crop
from mfm_hub.data import (
    FASHION_MNIST_DIR,
    collate_pretraining,
    decode_image,
    load_fashion_mnist,
    pretraining_transform,
    sample_seed,
)

needs_data = pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="needs `apt-get install dataset-fashion-mnist`")
#: Measured on 200 Fashion-MNIST crops: Pillow's bicubic (a = -0.5, renormalised edges) against torch's (a = -0.75,
#: clamped edges) differ by 1.3 grey levels on average and 28 at most (high-contrast edges); these bounds sit above.
PIL_MEAN_LEVELS, PIL_MAX_LEVELS = 2.0, 40


def encoded(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def image_dataset(images: list[bytes]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": [{"bytes": data, "path": None} for data in images]},
                                      features=datasets.Features({"image": datasets.Image(decode=False)}))


@pytest.fixture(scope="module")
def fashion():
    dataset = load_fashion_mnist("test").select(range(200)).cast_column("image", datasets.Image(decode=False))
    decoded = DecodedImages(dataset, "image")
    return dataset, decoded


class _Decoded:
    """A `DecodedImages` of ``count`` blank images of one size (the crops depend on the size only)."""

    def __init__(self, height: int, width: int, count: int = 4):
        self.pixels, self.bad = torch.zeros(count, 3, height, width, dtype=torch.uint8), {}

    def __len__(self) -> int:
        return len(self.pixels)


def kolmogorov_smirnov(first: np.ndarray, second: np.ndarray) -> float:
    values = np.unique(np.concatenate([first, second]))
    cdf = [np.searchsorted(np.sort(sample), values, side="right") / len(sample) for sample in (first, second)]
    return float(np.abs(cdf[0] - cdf[1]).max())


@pytest.mark.parametrize("height, width", [(28, 28), (32, 32), (17, 29), (5, 32)])
def test_the_crops_follow_the_pil_paths_distribution(height, width):
    """20,000 vectorised draws against 20,000 of torchvision's own RandomResizedCrop + flip (the
    PIL path's draws): each of top, left, height, width and area within a two-sample
    Kolmogorov-Smirnov distance of 0.02 (the 0.1 % critical value is 0.0195), flips fair."""
    batched = BatchedPretrainingImages(_Decoded(height, width), pretraining_transform(32), seed=0)
    seeds = [sample_seed(0, 0, index) for index in range(20_000)]
    ours = batched.crop_parameters(seeds).numpy()
    theirs = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            box = batched.crop.make_params([torch.empty(1, height, width)])
            theirs.append([box["top"], box["left"], box["height"], box["width"], float(torch.rand(1) < batched.flip.p)])
    theirs = np.array(theirs)
    for column, name in enumerate(("top", "left", "height", "width")):
        assert kolmogorov_smirnov(ours[:, column], theirs[:, column]) < 0.02, name
    assert kolmogorov_smirnov(ours[:, 2] * ours[:, 3], theirs[:, 2] * theirs[:, 3]) < 0.02
    assert abs(ours[:, 4].mean() - 0.5) < 0.02 and (ours[:, 2] <= height).all() and (ours[:, 3] <= width).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all() and (ours[:, :4] >= 0).all()


@needs_data
def test_the_pixels_are_torchvisions_bicubic_and_close_to_the_pil_paths(fashion):
    """On the same crops: torchvision's tensor `resized_crop` up to float summation order, and
    Pillow's bicubic (the PIL path) within a few grey levels."""
    dataset, decoded = fashion
    batched = BatchedPretrainingImages(decoded, pretraining_transform(32), seed=3)
    crops = batched.crop_parameters([sample_seed(3, 0, index) for index in range(len(dataset))])
    ours = batched_resized_crop(decoded.pixels, crops, 32)
    differences, on_tensor_levels = [], []
    for index in range(len(dataset)):
        top, left, height, width, flip = (int(value) for value in crops[index])
        image = decode_image(dataset[index]["image"])
        pil = TF.resized_crop(image, top, left, height, width, [32, 32], interpolation=T.InterpolationMode.BICUBIC, antialias=True)
        pil = TF.to_dtype(TF.pil_to_tensor(TF.horizontal_flip(pil) if flip else pil), torch.float32, scale=True)
        on_tensor = TF.resized_crop(decoded.pixels[index].float(), top, left, height, width, [32, 32],
                                    interpolation=T.InterpolationMode.BICUBIC, antialias=False)
        on_tensor = (TF.horizontal_flip(on_tensor) if flip else on_tensor).clamp(0, 255).round() / 255
        on_tensor_levels.append((ours[index] - on_tensor).abs().flatten() * 255)
        differences.append((ours[index] - pil).abs().flatten() * 255)
    # the same numbers up to the order of a float sum, which can move a value at .5 by one grey level
    rounding = torch.cat(on_tensor_levels).round()
    assert rounding.max() <= 1 and (rounding == 0).float().mean() > 0.999, float((rounding > 0).float().mean())
    levels = torch.cat(differences)
    assert levels.mean() < PIL_MEAN_LEVELS and levels.max() <= PIL_MAX_LEVELS, (float(levels.mean()), float(levels.max()))


@needs_data
def test_a_batch_is_one_call_and_equals_the_samples_one_by_one(fashion):
    _, decoded = fashion
    batched = BatchedPretrainingImages(decoded, pretraining_transform(32, min_crop_scale=0.05), seed=1)
    batched.set_epoch(2)
    batch = collate_pretraining([batched[index] for index in range(64)])
    assert batch["images"].dtype == torch.uint8 and batch["crops"].shape == (64, 5)
    whole = batched_resized_crop(batch["images"], batch["crops"], 32)
    one_by_one = torch.cat([batched_resized_crop(batch["images"][i:i + 1], batch["crops"][i:i + 1], 32) for i in range(64)])
    assert torch.equal(whole, one_by_one) and whole.shape == (64, 3, 32, 32)
    batched.set_epoch(3)
    assert not torch.equal(collate_pretraining([batched[index] for index in range(64)])["crops"], batch["crops"])  # new crops per epoch


def test_what_the_batched_path_refuses(tmp_path):
    rng = np.random.default_rng(0)
    small = image_dataset([encoded(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "RGB") for _ in range(3)])
    with pytest.raises(ValueError, match="FOLK's colour-jittered views need the default"):
        BatchedPretrainingImages(DecodedImages(small, "image"), pretraining_transform(32, color_jitter=True))
    with pytest.raises(ValueError, match="these 24x20 images are larger than the 16-px training crop"):
        BatchedPretrainingImages(DecodedImages(small, "image"), pretraining_transform(16))
    mixed = image_dataset([encoded(rng.integers(0, 256, size, dtype=np.uint8), "RGB") for size in ((20, 24, 3), (21, 24, 3))])
    with pytest.raises(ValueError, match="needs images of one size; image 1 is 24x21"):
        DecodedImages(mixed, "image")
    with pytest.raises(ValueError, match="more than"):
        DecodedImages(small, "image", max_bytes=1000)


def test_unreadable_images_are_replaced_as_the_pil_path_replaces_them_or_stop_the_run():
    rng = np.random.default_rng(1)
    good = [encoded(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), mode) for mode in ("RGB", "L", "RGBA")]
    dataset = image_dataset([good[0], b"not an image", good[1], good[2]])
    batched = BatchedPretrainingImages(DecodedImages(dataset, "image"), pretraining_transform(16), seed=0)
    sample = batched[1]
    assert len(sample["skipped"]) == 1 and torch.equal(sample["images"], batched.decoded.pixels[2])  # the next readable one
    assert torch.equal(sample["crops"], batched.crop_parameters([sample_seed(0, 0, 1)])[0])  # with the seed of its own position
    strict = BatchedPretrainingImages(DecodedImages(dataset, "image"), pretraining_transform(16), strict=True)
    with pytest.raises(ValueError, match="stopping because --strict_data is set"):
        strict[1]
    with pytest.raises(ValueError, match="No image of the 1 in the dataset can be read"):
        DecodedImages(image_dataset([b"junk"]), "image")


def test_batched_pipeline_soak_over_thousands_of_extreme_crops():
    """3,000 draws with crops down to 1 % of the area, on 1-px lines, single pixels and every
    image mode: always finite, in [0, 1], of the training size."""
    rng = np.random.default_rng(2)
    drawn = 0
    for height, width in ((1, 1), (1, 32), (32, 1), (3, 5), (17, 29), (32, 32)):
        images = [encoded(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode)
                  for mode in ("RGB", "L", "RGBA", "P", "I;16", "LA") for _ in range(5)]
        batched = BatchedPretrainingImages(DecodedImages(image_dataset(images), "image"), pretraining_transform(32, min_crop_scale=0.01),
                                           seed=height * 100 + width)
        for epoch in range(17):
            batched.set_epoch(epoch)
            batch = collate_pretraining([batched[index] for index in range(len(batched))])
            pixels = batched_resized_crop(batch["images"], batch["crops"], 32)
            assert pixels.shape == (len(batched), 3, 32, 32) and torch.isfinite(pixels).all()
            assert pixels.min() >= 0 and pixels.max() <= 1
            drawn += len(pixels)
    assert drawn >= 3000


@needs_data
@pytest.mark.slow
def test_the_input_pipeline_benchmark_reports_both_paths_against_the_bare_step(fashion_folder, tmp_path):
    from benchmarks import input_pipeline

    for split in ("train", "test"):
        shutil.copytree(fashion_folder, tmp_path / "data" / split)
    results = input_pipeline.main(["--data_dir", str(tmp_path / "data"), "--batch_size", "4", "--steps", "40", "--workers", "0",
                                   "--batched_workers", "0", "--output", str(tmp_path / "figures.json")])
    assert json.loads((tmp_path / "figures.json").read_text()) == results
    assert results["bare_step_images_per_second"] > 0 and results["pil_path_ratio"] > 0 and results["batched_path_ratio"] > 0
