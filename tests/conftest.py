import os
import signal
import time

# Tests never reach a Hub: everything loads from local paths or the loopback test hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# ATEN_CPU_CAPABILITY=avx2 runs ATen's AVX2 kernels on an AVX-512 CPU: how the suite is checked for
# AVX2-only machines (docs/TESTING.md). Inductor's on-disk cache does not tell kernels compiled
# under another capability apart (reusing AVX-512 ones gave NaN losses), so each gets its own cache.
if "ATEN_CPU_CAPABILITY" in os.environ:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", f"/tmp/torchinductor_{os.environ['ATEN_CPU_CAPABILITY']}")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import mfm_hub  # noqa: E402
from mfm_hub import FAMILIES, MFMResNetConfig, MFMSwinConfig, MFMViTConfig, ModelFamily, register_family  # noqa: E402
from mfm_hub.data import load_fashion_mnist  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "run_pretraining.py"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_vit_config(**overrides) -> MFMViTConfig:
    """A 4-block ViT on 32-px images (patch 4), fast enough for every test."""
    fields = dict(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=4, num_attention_heads=3)
    return MFMViTConfig(**{**fields, **overrides})


def tiny_swin_config(**overrides) -> MFMSwinConfig:
    """A 4-stage Swin on 64-px images (patch 4, window 2): grids 16, 8, 4, 2."""
    fields = dict(image_size=64, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=2)
    return MFMSwinConfig(**{**fields, **overrides})


def tiny_resnet_config(**overrides) -> MFMResNetConfig:
    fields = dict(block_type="basic", layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), image_size=64)
    return MFMResNetConfig(**{**fields, **overrides})


#: The tiny config of each built-in family, by config class (a registered family built on one gets it too).
TINY_CONFIGS = {MFMViTConfig: tiny_vit_config, MFMSwinConfig: tiny_swin_config, MFMResNetConfig: tiny_resnet_config}


def tiny_config_of(config_class: type, **overrides):
    """A tiny config of ``config_class``: the fields of the built-in family it derives from."""
    base = next(klass for klass in config_class.__mro__ if klass in TINY_CONFIGS)
    fields = {key: value for key, value in TINY_CONFIGS[base]().to_diff_dict().items()
              if key not in ("out_features", "out_indices", "stage_names")}  # derived from the shape unless overridden
    return config_class(**{**fields, **overrides})


# A family registered only by the tests (`toy_family`): it must get everything a built-in family gets.
class ToyConfig(MFMViTConfig):
    model_type = "mfm_toy"


class ToyModel(mfm_hub.MFMViTModel):
    config_class = ToyConfig


class ToyForPreTraining(mfm_hub.MFMViTForPreTraining):
    config_class = ToyConfig


class ToyForImageClassification(mfm_hub.MFMViTForImageClassification):
    config_class = ToyConfig


class ToyBackbone(mfm_hub.MFMViTBackbone):
    config_class = ToyConfig


class ToyFOLK(mfm_hub.FOLKForPreTraining):
    config_class = ToyConfig
    student_class = ToyForPreTraining


@pytest.fixture
def toy_family():
    family = register_family(ModelFamily(config=ToyConfig, model=ToyModel, for_pretraining=ToyForPreTraining,
                                         for_image_classification=ToyForImageClassification, backbone=ToyBackbone, folk=ToyFOLK))
    yield family
    del FAMILIES["mfm_toy"]


@pytest.fixture(params=["mfm_vit", "mfm_resnet", "mfm_swin", "mfm_toy"])
def registered_family(request):
    """Every registered family in turn, the tests' toy family included."""
    if request.param == "mfm_toy":
        yield request.getfixturevalue("toy_family")
    else:
        yield FAMILIES[request.param]


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory):
    """24 real Fashion-MNIST test images as PNG files in class folders."""
    folder = tmp_path_factory.mktemp("fashion")
    dataset = load_fashion_mnist("test")
    for index in range(24):
        example = dataset[index]
        target = folder / f"class{example['label']}"
        target.mkdir(exist_ok=True)
        example["image"].save(target / f"{index:03d}.png")
    return folder


def tiny_cifar_layout(root: Path, per_class: dict[str, int]) -> Path:
    """``root/{train,test}/<class>/<n>.png`` with ``per_class[split]`` images of each class."""
    for split, count in per_class.items():
        dataset = load_fashion_mnist(split)
        names = dataset.features["label"].names
        written = {name: 0 for name in names}
        for example in dataset:
            name = names[example["label"]]
            if written[name] < count:
                folder = root / split / name.replace("/", "-")
                folder.mkdir(parents=True, exist_ok=True)
                example["image"].save(folder / f"{written[name]}.png")
                written[name] += 1
            if all(n == count for n in written.values()):
                break
    return root


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """`tiny_vit_config` saved as a config.json, for the scripts' ``--model``."""
    path = tmp_path_factory.mktemp("config") / "config.json"
    tiny_vit_config().to_json_file(path)
    return path


def run_args(folder, config, output, *extra):
    """`run_pretraining.py` arguments of a short, seeded run on ``folder``."""
    return ["--model", str(config), "--train_dir", str(folder), "--output_dir", str(output),
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "1",
            "--logging_steps", "1", "--seed", "3", "--num_figure_images", "3", *extra]


def script_env(**extra):
    """The environment of a script run as a subprocess: unbuffered output, one OpenMP thread."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def stop_once_training(process, stop=lambda running: running.send_signal(signal.SIGTERM), timeout: float = 240) -> tuple[str, str]:
    """Wait until ``process`` (a training script, stdout piped as text) logs its first loss, then
    ``stop(process)`` (default: SIGTERM to it) -> (its output until then, its output after)."""
    deadline = time.time() + timeout
    log = []
    for line in process.stdout:
        log.append(line)
        if "'loss'" in line or time.time() > deadline:
            break
    stop(process)
    rest, _ = process.communicate(timeout=timeout)
    return "".join(log), rest
