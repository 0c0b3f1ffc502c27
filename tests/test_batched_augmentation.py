"""``--batched_augmentation``: the PIL path's distributions of crops and colour draws, torch's
bicubic and torchvision's colour kernels computed for a whole batch, and what it refuses."""

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

from mfm_hub.batched_augmentation import BatchedPretrainingImages, DecodedImages, batched_colour_jitter, batched_resized_crop, batched_views
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
#: Measured on 400 views of colourful images: torchvision's tensor colour kernels against its PIL ones (ImageEnhance,
#: Pillow's 8-bit HSV), each rounded to 8 bits, differ by 1.25 grey levels on average, 7 at the 99th percentile and 21 at
#: most (hue shifts of dark, barely saturated pixels); these bounds sit above.
COLOUR_MEAN_LEVELS, COLOUR_MAX_LEVELS = 2.0, 32


def encoded(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def image_dataset(images: list[bytes]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": [{"bytes": data, "path": None} for data in images]},
                                      features=datasets.Features({"image": datasets.Image(decode=False)}))


def colourful(count: int, height: int = 32, width: int = 32, seed: int = 0) -> list[bytes]:
    """Smooth colour gradients with noise: every colour operation changes them (Fashion-MNIST is grey)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    images = []
    for _ in range(count):
        phases = rng.uniform(0, 6, 3)
        waves = np.stack([np.sin(6 * x + phases[0]), np.cos(5 * y + phases[1]), np.sin(4 * (x + y) + phases[2])], axis=-1)
        pixels = ((waves * 0.5 + 0.5) * 200 + rng.integers(0, 56, (height, width, 3))).clip(0, 255).astype(np.uint8)
        images.append(encoded(pixels, "RGB"))
    return images


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


def test_the_colour_draws_follow_the_pil_paths_distribution():
    """20,000 vectorised colour draws against 20,000 of torchvision's RandomApply(ColorJitter) and
    RandomGrayscale under the same seeds: each factor within a Kolmogorov-Smirnov distance of
    0.02, the jitter applied 80 % and grayscale 20 % of the time, all 24 orders about equally often."""
    batched = BatchedPretrainingImages(_Decoded(32, 32), pretraining_transform(32, color_jitter=True), seed=0, num_views=2)
    seeds = [sample_seed(0, 0, index, view) for index in range(10_000) for view in range(2)]
    ours = batched.colour_parameters(seeds).numpy()
    jitter = batched.jitter.transforms[0]
    theirs = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            applied = float(torch.rand(1) <= batched.jitter.p)
            params = jitter.make_params([])
            factors = [params["brightness_factor"], params["contrast_factor"], params["saturation_factor"], params["hue_factor"]]
            theirs.append([applied, *factors, *params["fn_idx"].tolist(), float(torch.rand(1) < batched.grayscale.p)])
    theirs = np.array(theirs)
    for column, name in zip(range(1, 5), ("brightness", "contrast", "saturation", "hue")):
        assert kolmogorov_smirnov(ours[:, column], theirs[:, column]) < 0.02, name
    assert abs(ours[:, 0].mean() - 0.8) < 0.01 and abs(ours[:, 9].mean() - 0.2) < 0.01
    orders = np.unique(ours[:, 5:9], axis=0, return_counts=True)[1]
    assert len(orders) == 24 and orders.min() > 0.8 * len(seeds) / 24 and orders.max() < 1.2 * len(seeds) / 24
    assert (np.sort(ours[:, 5:9], axis=1) == np.arange(4)).all()


def test_the_colour_jitter_is_torchvisions_close_to_the_pil_paths():
    """On the same crops and colour draws: every view within a few grey levels of the PIL path's
    operations (torchvision's PIL kernels in the drawn order); a view is one call's slice (the
    batch does not change it), and views of one image differ."""
    dataset = image_dataset(colourful(100))
    batched = BatchedPretrainingImages(DecodedImages(dataset, "image"), pretraining_transform(32, color_jitter=True), seed=3, num_views=2)
    batch = collate_pretraining(batched.__getitems__(list(range(100))))
    assert batch["crops"].shape == (100, 2, 5) and batch["colours"].shape == (100, 2, 10)
    views = batched_views(batch["images"], batch["crops"], 32, batch["colours"])
    assert views.shape == (100, 2, 3, 32, 32) and not torch.equal(views[:, 0], views[:, 1])
    assert torch.equal(views[7], batched_views(batch["images"][7:8], batch["crops"][7:8], 32, batch["colours"][7:8])[0])
    kernels = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    differences = []
    for index in range(100):
        for view in range(2):
            top, left, height, width, flip = (int(value) for value in batch["crops"][index, view])
            image = TF.resized_crop(decode_image(dataset[index]["image"]), top, left, height, width, [32, 32],
                                    interpolation=T.InterpolationMode.BICUBIC, antialias=True)
            image = TF.horizontal_flip(image) if flip else image
            colours = batch["colours"][index, view]
            ours = batched_colour_jitter(TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)[None], colours[None])[0]
            if colours[0] > 0:
                for operation in colours[5:9].long().tolist():
                    image = kernels[operation](image, float(colours[1 + operation]))
            if colours[9] > 0:
                image = TF.rgb_to_grayscale(image, num_output_channels=3)
            differences.append((ours - TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)).abs().flatten() * 255)
    levels = torch.cat(differences)
    assert levels.mean() < COLOUR_MEAN_LEVELS and levels.max() <= COLOUR_MAX_LEVELS, (float(levels.mean()), float(levels.max()))
    grey = batch["colours"][..., 9] > 0
    assert grey.any() and torch.equal(views[grey][:, 0], views[grey][:, 1]) and torch.equal(views[grey][:, 0], views[grey][:, 2])


def test_what_the_batched_path_refuses(tmp_path):
    rng = np.random.default_rng(0)
    small = image_dataset([encoded(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "RGB") for _ in range(3)])
    other = T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(), T.GaussianBlur(3), T.PILToTensor(), T.ToDtype(torch.float32)])
    with pytest.raises(ValueError, match="draws `pretraining_transform`'s steps only"):
        BatchedPretrainingImages(DecodedImages(small, "image"), other)
    with pytest.raises(ValueError, match="these 24x20 images are larger than the 16-px training crop"):
        BatchedPretrainingImages(DecodedImages(small, "image"), pretraining_transform(16))
    mixed = image_dataset([encoded(rng.integers(0, 256, size, dtype=np.uint8), "RGB") for size in ((20, 24, 3), (21, 24, 3))])
    with pytest.raises(ValueError, match="needs images of one size; image 1 is 24x21"):
        DecodedImages(mixed, "image")
    with pytest.raises(ValueError, match="more than"):
        DecodedImages(small, "image", max_bytes=1000)


def test_decoded_images_are_kept_beside_the_datasets_cache_and_memory_mapped_by_later_runs(tmp_path, monkeypatch):
    from mfm_hub import batched_augmentation
    from mfm_hub.data import load_image_dataset

    for index, data in enumerate([*colourful(4, 12, 12), b"not an image"]):
        (tmp_path / "images" / f"class{index % 2}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / f"class{index % 2}" / f"{index}.png").write_bytes(data)
    dataset, column = load_image_dataset(str(tmp_path / "images"))
    first = DecodedImages(dataset, column)
    assert first.cache.exists() and first.cache.with_suffix(".json").exists() and len(first.bad) == 1

    def decode_again(value):
        raise AssertionError("decoded again")

    with monkeypatch.context() as patched:
        patched.setattr(batched_augmentation, "decode_image", decode_again)
        again = DecodedImages(*load_image_dataset(str(tmp_path / "images")))  # a later run: the same fingerprint
        assert torch.equal(again.pixels, first.pixels) and again.bad == first.bad
        with pytest.raises(AssertionError, match="decoded again"):  # another selection of the images is another array
            DecodedImages(dataset.select([0, 1]), column)
    first.cache.with_suffix(".json").unlink()  # a cache cut off before its description was written is not used
    first.cache.write_bytes(b"half an array")
    rebuilt = DecodedImages(dataset, column)
    assert torch.equal(rebuilt.pixels, first.pixels) and first.cache.with_suffix(".json").exists()
    assert DecodedImages(image_dataset(colourful(2)), "image").cache is None  # held in memory: nothing to key a cache by


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


@pytest.mark.parametrize("folk_views", [False, True])
def test_batched_pipeline_soak_over_thousands_of_extreme_crops(folk_views):
    """3,000 views with crops down to 1 % of the area, on 1-px lines, single pixels, black,
    white and every image mode (FOLK's: colour-jittered pairs): always finite, in [0, 1], of
    the training size."""
    rng = np.random.default_rng(2)
    drawn = 0
    for height, width in ((1, 1), (1, 32), (32, 1), (3, 5), (17, 29), (32, 32)):
        images = [encoded(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode)
                  for mode in ("RGB", "L", "RGBA", "P", "I;16", "LA") for _ in range(5)]
        images += [encoded(np.full((height, width, 3), level, dtype=np.uint8), "RGB") for level in (0, 255)]
        transform = pretraining_transform(32, min_crop_scale=0.01, color_jitter=folk_views)
        batched = BatchedPretrainingImages(DecodedImages(image_dataset(images), "image"), transform, seed=height * 100 + width,
                                           num_views=2 if folk_views else 1)
        for epoch in range(16 if folk_views else 32):
            batched.set_epoch(epoch)
            batch = collate_pretraining(batched.__getitems__(list(range(len(batched)))))
            pixels = batched_views(batch["images"], batch["crops"], 32, batch.get("colours")).reshape(-1, 3, 32, 32)
            assert pixels.shape == (len(batched) * (2 if folk_views else 1), 3, 32, 32) and torch.isfinite(pixels).all()
            assert pixels.min() >= 0 and pixels.max() <= 1
            drawn += len(pixels)
    assert drawn >= 3000


@needs_data
@pytest.mark.slow
def test_the_input_pipeline_benchmark_reports_both_paths_against_the_bare_step(fashion_folder, tmp_path):
    from benchmarks import input_pipeline

    for split in ("train", "test"):
        shutil.copytree(fashion_folder, tmp_path / "data" / split)
    results = input_pipeline.main(["--data_dir", str(tmp_path / "data"), "--batch_size", "4", "--steps", "80", "--workers", "0",
                                   "--batched_workers", "0", "--output", str(tmp_path / "figures.json")])
    assert json.loads((tmp_path / "figures.json").read_text()) == results
    assert results["bare_step_images_per_second"] > 0 and results["pil_path_ratio"] > 0 and results["batched_path_ratio"] > 0
