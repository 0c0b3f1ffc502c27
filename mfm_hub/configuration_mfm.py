"""Configurations of the MFM / FOLK ViT, ResNet and Swin models, and the named presets."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from transformers import AutoConfig, PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin
from transformers.utils import logging

from .attention import ATTENTION_BACKENDS
from .pretext import PRETEXT_TASKS, get_pretext_task
from .validation import check as _check

logger = logging.get_logger(__name__)

#: How a field's annotation is checked, and how the error names it.
_SCALAR_TYPES = {
    "int": (lambda value: isinstance(value, int) and not isinstance(value, bool), "an integer"),
    "float": (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
    "bool": (lambda value: isinstance(value, bool), "true or false"),
    "str": (lambda value: isinstance(value, str), "a string"),
    "None": (lambda value: value is None, "null"),
}


def _sequence_element(option: str) -> str | None:
    """``int`` for ``tuple[int, ...]`` / ``list[int]``, None for a scalar annotation."""
    return option.split("[", 1)[1].split(",")[0].rstrip("]").strip() if option.startswith(("tuple[", "list[")) else None


def _known(option: str) -> bool:
    return (_sequence_element(option) or option) in _SCALAR_TYPES


def _matches(annotation: str, value) -> bool:
    """Whether ``value`` fits ``annotation`` (an annotation with a type not listed here fits anything)."""
    options = annotation.split(" | ")
    if not all(map(_known, options)):
        return True
    for option in options:
        element = _sequence_element(option)
        if element is not None and isinstance(value, (list, tuple)) and all(_SCALAR_TYPES[element][0](item) for item in value):
            return True
        if element is None and _SCALAR_TYPES[option][0](value):
            return True
    return False


def _describe(annotation: str) -> str:
    names = [
        f"a list of {_SCALAR_TYPES[element][1].split(' ', 1)[1]}s" if (element := _sequence_element(option)) else _SCALAR_TYPES[option][1]
        for option in annotation.split(" | ")
    ]
    return " or ".join(dict.fromkeys(names))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOSS_TARGETS = ("masked", "all")
#: Fields renamed since checkpoints were first saved (old name -> name now); old files still load.
RENAMED_FIELDS = {"corruption": "pretext_task", "reconstruction_target": "loss_target", "image_std": "image_scale"}


class MFMConfigBase(PreTrainedConfig):
    r"""Fields shared by every MFM model: the input images and the pre-training objective. The
    FOLK values are this project's documented defaults where the paper leaves them open
    (docs/FOLK.md).

    Args:
        image_size (`int`, *optional*, defaults to 224):
            Side of the square training images. Other sizes work at inference (position
            embeddings are interpolated) as long as they are divisible by the encoder stride.
        num_channels (`int`, *optional*, defaults to 3):
            Input channels, 1 or 3.
        image_mean (`tuple[float]`, *optional*, defaults to the ImageNet mean):
            Per-channel mean subtracted *after* the pretext task corrupts the image.
        image_scale (`tuple[float]`, *optional*, defaults to the ImageNet std):
            Per-channel divisor applied after subtracting `image_mean` (the standard deviation;
            not named `*_std`, which transformers' tests read as an initializer setting).
        pretext_task (`str`, *optional*, defaults to `"mfm"`):
            The pretext task (`mfm_hub.pretext`) applied to the input: `"mfm"` (circle
            low/high-pass, the MFM paper), `"informed"` (FOLK's Com/RCom filters), `"sr"`,
            `"deblur"` or `"denoise"` (the MFM paper's baselines), or a registered task.
        mask_radius (`float`, *optional*, defaults to 16.0):
            Inner radius of the MFM circle, in spectrum pixels of a 224-px image (scaled with
            the image side, `mfm_hub.frequency.circle_mask`).
        mask_radius_outer (`float`, *optional*, defaults to 999.0):
            Outer radius of the MFM circle (the official code's 999 keeps every frequency).
        low_pass_prob (`float`, *optional*, defaults to 0.5):
            Probability that an image is low-passed rather than high-passed (0.3 for ResNet).
        informed_keep_ratios (`tuple[float]`, *optional*, defaults to `(0.005, 0.01, 0.05)`):
            Fractions of highest-magnitude frequencies that Com keeps (RCom removes); one is
            drawn per image.
        compress_prob (`float`, *optional*, defaults to 0.5):
            Probability of Com (else RCom) per image.
        loss_target (`str`, *optional*, defaults to `None`):
            `"masked"` (the loss on removed frequencies only, the official MFM setting) or
            `"all"`. `None` takes the pretext task's (`PretextTask.loss_target`: `"masked"` for
            frequency masks, `"all"` for SR / deblur / denoise), so it follows a change of
            `pretext_task`.
        sr_factor (`int`, *optional*, defaults to 8):
            SR baseline: down-sampling factor.
        blur_sigma (`float`, *optional*, defaults to 5.0):
            Deblur baseline: Gaussian sigma.
        blur_kernel_sizes (`tuple[int]`, *optional*, defaults to `(7, 9, ..., 21)`):
            Deblur baseline: kernel sizes, one drawn per image.
        noise_sigma (`float`, *optional*, defaults to 75/255):
            Denoise baseline: noise sigma on [0, 1] images.
        loss_gamma (`float`, *optional*, defaults to 1.0):
            Exponent of the frequency distance (focal frequency loss; MFM uses 1).
        focal_weighting (`bool`, *optional*, defaults to `False`):
            Weight frequencies by their own error (the focal frequency loss; off in MFM).
        focal_matrix_gamma (`float`, *optional*, defaults to 1.0):
            Exponent of the focal weight matrix.
        focal_log_matrix (`bool`, *optional*, defaults to `False`):
            Take the log of the focal weight matrix.
        focal_batch_matrix (`bool`, *optional*, defaults to `False`):
            Normalise the focal weight matrix over the batch instead of per image.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the truncated-normal initialisation of linear layers.
        folk_head_hidden_dim (`int`, *optional*, defaults to 2048):
            FOLK: hidden width of the projection heads (DINO-style MLP).
        folk_head_bottleneck_dim (`int`, *optional*, defaults to 256):
            FOLK: the L2-normalised bottleneck before the prototypes.
        folk_head_output_dim (`int`, *optional*, defaults to 4096):
            FOLK: number of prototypes K.
        folk_student_temperature (`float`, *optional*, defaults to 0.1):
            FOLK: student softmax temperature.
        folk_teacher_temperature (`float`, *optional*, defaults to 0.02):
            FOLK: teacher softmax temperature (DINO's 0.04 left the targets near uniform here).
        folk_warmup_teacher_temperature (`float`, *optional*, defaults to 0.02):
            FOLK: teacher temperature at the start of its warm-up.
        folk_teacher_temperature_warmup_ratio (`float`, *optional*, defaults to 0.0):
            FOLK: fraction of the run over which the teacher temperature rises linearly to
            `folk_teacher_temperature` (DINO's warm-up; 0 disables it).
        folk_normalize_prototypes (`bool`, *optional*, defaults to `True`):
            FOLK: use the prototypes at unit norm (DINO's weight-normalised last layer), so
            logits stay cosines whatever their raw scale.
        folk_freeze_prototypes_ratio (`float`, *optional*, defaults to 0.0):
            FOLK: the student's prototypes are not updated during this first fraction of the run.
        folk_center_momentum (`float`, *optional*, defaults to 0.9):
            FOLK: EMA momentum of the teacher-output centre.
        folk_ema_momentum (`float`, *optional*, defaults to 0.996):
            FOLK: teacher EMA momentum at the start, raised to 1 on a cosine schedule.
        folk_distillation_weight (`float`, *optional*, defaults to 1.0):
            FOLK: weight of the distillation loss.
        folk_reconstruction_weight (`float`, *optional*, defaults to 1.0):
            FOLK: weight of the reconstruction loss.
        folk_export (`str`, *optional*, defaults to `"teacher"`):
            FOLK: the encoder a run exports, `"teacher"` or `"student"`.
    """

    image_size: int = 224
    num_channels: int = 3
    image_mean: tuple[float, ...] | list[float] = IMAGENET_MEAN
    image_scale: tuple[float, ...] | list[float] = IMAGENET_STD
    pretext_task: str = "mfm"
    mask_radius: float = 16.0
    mask_radius_outer: float = 999.0
    low_pass_prob: float = 0.5
    informed_keep_ratios: tuple[float, ...] | list[float] = (0.005, 0.01, 0.05)
    compress_prob: float = 0.5
    loss_target: str | None = None
    sr_factor: int = 8
    blur_sigma: float = 5.0
    blur_kernel_sizes: tuple[int, ...] | list[int] = (7, 9, 11, 13, 15, 17, 19, 21)
    noise_sigma: float = 75.0 / 255.0
    loss_gamma: float = 1.0
    focal_weighting: bool = False
    focal_matrix_gamma: float = 1.0
    focal_log_matrix: bool = False
    focal_batch_matrix: bool = False
    initializer_range: float = 0.02
    folk_head_hidden_dim: int = 2048
    folk_head_bottleneck_dim: int = 256
    folk_head_output_dim: int = 4096
    folk_student_temperature: float = 0.1
    folk_teacher_temperature: float = 0.02
    folk_warmup_teacher_temperature: float = 0.02
    folk_teacher_temperature_warmup_ratio: float = 0.0
    folk_normalize_prototypes: bool = True
    folk_freeze_prototypes_ratio: float = 0.0
    folk_center_momentum: float = 0.9
    folk_ema_momentum: float = 0.996
    folk_distillation_weight: float = 1.0
    folk_reconstruction_weight: float = 1.0
    folk_export: str = "teacher"

    def check_field_types(self) -> None:
        """Every declared field against its annotation, before any value is used: a
        ``config.json`` or keyword of the wrong type (``"16"`` for a radius, ``"yes"`` for a
        flag) is a `ValueError` naming the field, never a ``TypeError`` deep inside a check or a
        truthy string taken for true."""
        for klass in reversed(type(self).__mro__):
            if klass.__module__ != __name__:
                continue
            for name, annotation in vars(klass).get("__annotations__", {}).items():
                value = getattr(self, name, None)
                _check(
                    _matches(str(annotation), value),
                    f"`{name}` must be {_describe(str(annotation))}, got {value!r} ({type(value).__name__}).",
                )

    def __post_init__(self, **kwargs):
        for old, new in RENAMED_FIELDS.items():
            if old in kwargs:
                logger.warning_once(f"The config field `{old}` is now `{new}`; the old name is read as the new one.")
                setattr(self, new, kwargs.pop(old))
        self.check_field_types()
        _check(isinstance(self.image_size, int) and self.image_size > 0, f"`image_size` must be a positive int, got {self.image_size!r}.")
        _check(self.num_channels in (1, 3), f"`num_channels` must be 1 or 3, got {self.num_channels!r}.")
        _check(
            len(self.image_mean) == self.num_channels and len(self.image_scale) == self.num_channels,
            f"`image_mean`/`image_scale` need {self.num_channels} values, got {list(self.image_mean)} / {list(self.image_scale)}.",
        )
        _check(all(s > 0 for s in self.image_scale), f"`image_scale` must be positive, got {list(self.image_scale)}.")
        _check(self.pretext_task in PRETEXT_TASKS, f"`pretext_task` must be one of {tuple(PRETEXT_TASKS)}, got {self.pretext_task!r}.")
        for task in PRETEXT_TASKS.values():  # every task's parameters, so switching `pretext_task` later stays valid
            task.check(self)
        _check(
            self.loss_target in (None, *LOSS_TARGETS),
            f"`loss_target` must be one of {LOSS_TARGETS} (or None for the pretext task's default), "
            f"got {self.loss_target!r}.",
        )
        _check(
            self.loss_target != "masked" or get_pretext_task(self.pretext_task).masks_frequencies,
            f"`loss_target='masked'` needs a frequency-mask pretext task, not {self.pretext_task!r}.",
        )
        _check(self.loss_gamma > 0, f"`loss_gamma` must be > 0, got {self.loss_gamma!r}.")
        for name in ("folk_head_hidden_dim", "folk_head_bottleneck_dim", "folk_head_output_dim"):
            _check(getattr(self, name) >= 1, f"`{name}` must be a positive int, got {getattr(self, name)!r}.")
        for name in ("folk_student_temperature", "folk_teacher_temperature", "folk_warmup_teacher_temperature"):
            _check(getattr(self, name) > 0, f"`{name}` must be > 0, got {getattr(self, name)!r}.")
        for name in ("folk_center_momentum", "folk_ema_momentum", "folk_teacher_temperature_warmup_ratio", "folk_freeze_prototypes_ratio"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"`{name}` must be in [0, 1], got {getattr(self, name)!r}.")
        _check(
            self.folk_distillation_weight >= 0 and self.folk_reconstruction_weight >= 0,
            "FOLK loss weights must be >= 0.",
        )
        _check(self.folk_export in ("teacher", "student"), f"`folk_export` must be 'teacher' or 'student', got {self.folk_export!r}.")
        super().__post_init__(**kwargs)


    def _set_four_stage_outputs(self, kwargs: dict) -> None:
        """Stage names ``stem, stage1..4`` and the backbone outputs (``out_features`` /
        ``out_indices`` from ``kwargs``; default: the four stages, UperNet's pyramid)."""
        self.stage_names = ["stem", "stage1", "stage2", "stage3", "stage4"]
        out_indices, out_features = kwargs.pop("out_indices", None), kwargs.pop("out_features", None)
        if out_indices is None and out_features is None:
            out_features = ["stage1", "stage2", "stage3", "stage4"]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)



class MFMViTConfig(BackboneConfigMixin, MFMConfigBase):
    r"""Configuration of an MFM Vision Transformer (the official MFM code's BEiT-style layout:
    absolute position embedding + cls token, separate q/v biases, no relative position bias).
    The fields every family shares are documented in `MFMConfigBase`.

    Args:
        patch_size (`int`, *optional*, defaults to 16):
            Side of a patch; the encoder stride.
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the transformer.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of blocks.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per block; must divide `hidden_size`.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Width of the MLP relative to `hidden_size`. transformers' name for the width itself,
            `intermediate_size`, is accepted too (and read back as a property).
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Learn q and v biases (k has none), as BEiT.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            LayerNorm epsilon, as in the official code.
        layer_scale_init_value (`float`, *optional*, defaults to `None`):
            LayerScale initial value; `None` (MFM) disables LayerScale.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth (0 in MFM pre-training, 0.1 in its fine-tuning).
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout after the attention projection and the MLP.
        attention_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout of the attention weights.
        use_mean_pooling (`bool`, *optional*, defaults to `False`):
            The official fine-tuning layout: `pooler_output` is `fc_norm(mean(patch tokens))`
            and there is no final norm. `False` keeps the pre-training final norm and pools as
            `pooling` says.
        pooling (`str`, *optional*, defaults to `"mean"`):
            `pooler_output` with the final norm kept: `"mean"` (the mean of the normed patch
            tokens, what MFM trains and our evaluation reads) or `"cls"` (the cls token, which
            MFM pre-training never trains). Checkpoints saved before this field existed load
            with `"cls"`, the pooling they were saved with.
        add_fpn (`bool`, *optional*, defaults to `None`):
            Turn four stride-p maps into strides p/4, p/2, p, 2p (BEiT's segmentation neck) so
            UperNet gets a feature pyramid; `None` means `True` when there are 4 `out_indices`.
        folk_head_pooling (`str`, *optional*, defaults to `"mean"`):
            What FOLK's projection heads read: `"mean"` (the mean of the final patch tokens) or
            `"cls"` (the cls token, as DINO / iBOT).
        attention_backend (`str`, *optional*, defaults to `"auto"`):
            The attention kernel: `"auto"` (per call, the kernel measured fastest for the
            device and compute dtype, `mfm_hub.attention`), `"sdpa"` (PyTorch's fused kernel)
            or `"math"` (matmul + softmax, as BEiT writes it). Loading with transformers'
            `attn_implementation="eager"` means `"math"`.
        out_features (`list[str]`, *optional*):
            Stages `MFMViTBackbone` returns (`stem` is the patch embedding, `stageN` the output
            of block N); defaults to 4 evenly spaced blocks. Or `out_indices` (`list[int]`).

    Example:

    ```python
    >>> from mfm_hub import MFMViTConfig, MFMViTForPreTraining

    >>> config = MFMViTConfig(hidden_size=384, num_attention_heads=6, mask_radius=24)  # a ViT-S/16
    >>> model = MFMViTForPreTraining(config)
    >>> config.encoder_stride
    16

    ```
    """

    model_type = "mfm_vit"

    patch_size: int = 16
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    layer_scale_init_value: float | None = None
    drop_path_rate: float = 0.0
    hidden_dropout_prob: float = 0.0
    attention_dropout_prob: float = 0.0
    use_mean_pooling: bool = False
    pooling: str = "mean"
    add_fpn: bool | None = None
    folk_head_pooling: str = "mean"
    attention_backend: str = "auto"
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.check_field_types()
        if "intermediate_size" in kwargs:  # transformers' ViT name for the MLP width: read, never kept as a stray attribute
            width = kwargs.pop("intermediate_size")
            _check(isinstance(width, int) and width > 0, f"`intermediate_size` must be a positive int, got {width!r}.")
            _check(self.mlp_ratio == MFMViTConfig.mlp_ratio or abs(width - self.hidden_size * self.mlp_ratio) < 0.5,
                   f"`intermediate_size` ({width}) and `mlp_ratio` ({self.mlp_ratio}) disagree for `hidden_size` {self.hidden_size}.")
            self.mlp_ratio = width / self.hidden_size
        _check(isinstance(self.patch_size, int) and self.patch_size > 0, f"`patch_size` must be a positive int, got {self.patch_size!r}.")
        _check(
            self.image_size % self.patch_size == 0,
            f"`image_size` ({self.image_size}) must be divisible by `patch_size` ({self.patch_size}).",
        )
        _check(
            self.hidden_size % self.num_attention_heads == 0,
            f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` ({self.num_attention_heads}).",
        )
        _check(self.num_hidden_layers >= 1, f"`num_hidden_layers` must be >= 1, got {self.num_hidden_layers!r}.")
        _check(0.0 <= self.drop_path_rate < 1.0, f"`drop_path_rate` must be in [0, 1), got {self.drop_path_rate!r}.")
        _check(self.folk_head_pooling in ("mean", "cls"), f"`folk_head_pooling` must be 'mean' or 'cls', got {self.folk_head_pooling!r}.")
        _check(self.pooling in ("mean", "cls"), f"`pooling` must be 'mean' or 'cls', got {self.pooling!r}.")
        _check(self.attention_backend in ATTENTION_BACKENDS,
               f"`attention_backend` must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention_backend!r}.")
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        out_indices, out_features = kwargs.pop("out_indices", None), kwargs.pop("out_features", None)
        if out_indices is None and out_features is None:
            depth = self.num_hidden_layers
            out_indices = sorted({max(1, depth * q // 4) for q in (1, 2, 3, 4)})
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        if self.add_fpn is None:
            self.add_fpn = len(self._out_indices) == 4
        _check(
            not self.add_fpn or len(self._out_indices) == 4,
            f"`add_fpn=True` needs exactly 4 `out_indices`, got {self._out_indices}.",
        )
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        if "pooling" not in config_dict and "use_mean_pooling" in config_dict:
            config_dict = {**config_dict, "pooling": "cls"}  # saved before `pooling` existed: it pooled the cls token
        return super().from_dict(config_dict, **kwargs)

    @property
    def encoder_stride(self) -> int:
        return self.patch_size

    @property
    def intermediate_size(self) -> int:
        """Width of each block's MLP, ``hidden_size * mlp_ratio`` (transformers' ViT name)."""
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def summary(self) -> str:
        return (f"ViT, patch {self.patch_size}, width {self.hidden_size}, depth {self.num_hidden_layers}, "
                f"{self.num_attention_heads} heads, {self.image_size} px")

    def classifier_options(self, official_head: bool) -> dict:
        """Config fields of a classifier fine-tuned from this encoder: the official MFM head
        (``fc_norm`` of the mean patch token) or the ``pooling`` of the encoder."""
        return {"use_mean_pooling": official_head}

    @property
    def num_features(self) -> int:
        return self.hidden_size


class MFMResNetConfig(BackboneConfigMixin, MFMConfigBase):
    r"""Configuration of an MFM ResNet (timm's ResNet layout: `conv1`, `bn1`, `layer1..4`). The
    fields every family shares are documented in `MFMConfigBase`; `low_pass_prob` defaults to
    0.3 here, the official ResNet-50 setting.

    Args:
        block_type (`str`, *optional*, defaults to `"bottleneck"`):
            `"bottleneck"` (ResNet-50 and deeper) or `"basic"` (ResNet-18/34).
        layers (`tuple[int]`, *optional*, defaults to `(3, 4, 6, 3)`):
            Blocks per stage (four stages).
        channels (`tuple[int]`, *optional*, defaults to `(64, 128, 256, 512)`):
            Width of each stage's blocks (a bottleneck block outputs 4x as many channels);
            smaller values give a narrow ResNet, e.g. for tests.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth.
        low_pass_prob (`float`, *optional*, defaults to 0.3):
            Probability that an image is low-passed.
        out_features (`list[str]`, *optional*):
            Stages `MFMResNetBackbone` returns (`stem`, `stage1`..`stage4`; strides 4, 4, 8,
            16, 32); defaults to the four stages. Or `out_indices` (`list[int]`).

    Example:

    ```python
    >>> from mfm_hub import MFMResNetConfig, MFMResNetForPreTraining

    >>> config = MFMResNetConfig(block_type="basic", layers=(2, 2, 2, 2))  # a ResNet-18
    >>> model = MFMResNetForPreTraining(config)
    >>> config.encoder_stride
    32

    ```
    """

    model_type = "mfm_resnet"

    block_type: str = "bottleneck"
    layers: tuple[int, ...] | list[int] = (3, 4, 6, 3)
    channels: tuple[int, ...] | list[int] = (64, 128, 256, 512)
    drop_path_rate: float = 0.0
    low_pass_prob: float = 0.3
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.check_field_types()
        _check(self.block_type in ("basic", "bottleneck"), f"`block_type` must be 'basic' or 'bottleneck', got {self.block_type!r}.")
        _check(len(self.layers) == 4 and all(n >= 1 for n in self.layers), f"`layers` must be 4 positive ints, got {list(self.layers)!r}.")
        _check(len(self.channels) == 4 and all(n >= 1 for n in self.channels),
               f"`channels` must be 4 positive ints, got {list(self.channels)!r}.")
        _check(0.0 <= self.drop_path_rate < 1.0, f"`drop_path_rate` must be in [0, 1), got {self.drop_path_rate!r}.")
        self._set_four_stage_outputs(kwargs)
        super().__post_init__(**kwargs)

    @property
    def encoder_stride(self) -> int:
        return 32

    @property
    def summary(self) -> str:
        width = "" if tuple(self.channels) == (64, 128, 256, 512) else f", channels {list(self.channels)}"
        return f"ResNet ({self.block_type} blocks, layers {list(self.layers)}{width})"

    def classifier_options(self, official_head: bool) -> dict:
        """A ResNet classifier always reads the global average of the last map."""
        return {}

    @property
    def stage_channels(self) -> list[int]:
        expansion = 4 if self.block_type == "bottleneck" else 1
        return [64] + [width * expansion for width in self.channels]

    @property
    def num_features(self) -> int:
        return self.stage_channels[-1]


class MFMSwinConfig(BackboneConfigMixin, MFMConfigBase):
    r"""Configuration of an MFM Swin Transformer (timm's `SwinTransformer`; the official MFM
    code's third encoder, SimMIM's Swin: patch 4, window 7, stride-32 feature map). The fields
    every family shares are documented in `MFMConfigBase`.

    Args:
        patch_size (`int`, *optional*, defaults to 4):
            Side of a patch.
        embed_dim (`int`, *optional*, defaults to 96):
            Width of the first stage (doubled at every later stage).
        depths (`tuple[int]`, *optional*, defaults to `(2, 2, 6, 2)`):
            Blocks per stage (four stages).
        num_heads (`tuple[int]`, *optional*, defaults to `(3, 6, 12, 24)`):
            Attention heads per stage.
        window_size (`int`, *optional*, defaults to 7):
            Attention window; every stage's grid (`image_size / patch_size / 2^i`) must be
            divisible by it.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Width of the MLP relative to the stage width.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Learn q, k and v biases.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth.
        out_features (`list[str]`, *optional*):
            Stages `MFMSwinBackbone` returns (`stage1..4`, strides 4, 8, 16, 32); defaults to
            all four, the pyramid UperNet expects. Or `out_indices` (`list[int]`).

    Example:

    ```python
    >>> from mfm_hub import MFMSwinConfig, MFMSwinModel

    >>> config = MFMSwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))  # a Swin-B
    >>> model = MFMSwinModel(config)
    >>> config.encoder_stride
    32

    ```
    """

    model_type = "mfm_swin"

    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] | list[int] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] | list[int] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.check_field_types()
        _check(
            len(self.depths) == len(self.num_heads) == 4,
            f"`depths` and `num_heads` need 4 stages, got {list(self.depths)} / {list(self.num_heads)}.",
        )
        _check(all(d >= 1 for d in self.depths), f"`depths` must be positive, got {list(self.depths)!r}.")
        for stage in range(4):
            _check(self.embed_dim * 2**stage % self.num_heads[stage] == 0,
                   f"stage {stage + 1} width {self.embed_dim * 2**stage} is not divisible by its {self.num_heads[stage]} heads.")
            grid = self.image_size / self.patch_size / 2**stage
            _check(
                grid == int(grid) and int(grid) % self.window_size == 0,
                f"`image_size` {self.image_size} gives a {grid:g}-token grid at stage {stage + 1}, "
                f"not divisible by `window_size` {self.window_size}.",
            )
        _check(0.0 <= self.drop_path_rate < 1.0, f"`drop_path_rate` must be in [0, 1), got {self.drop_path_rate!r}.")
        self._set_four_stage_outputs(kwargs)
        super().__post_init__(**kwargs)

    @property
    def encoder_stride(self) -> int:
        return self.patch_size * 8

    @property
    def summary(self) -> str:
        return (f"Swin, patch {self.patch_size}, window {self.window_size}, width {self.embed_dim}, depths {list(self.depths)}, "
                f"{self.image_size} px")

    def classifier_options(self, official_head: bool) -> dict:
        """A Swin classifier reads the global average of the last (normed) map."""
        return {}

    @property
    def stage_channels(self) -> list[int]:
        return [self.embed_dim] + [self.embed_dim * 2**i for i in range(4)]

    @property
    def num_features(self) -> int:
        return self.embed_dim * 8


_VIT_SHAPES = {
    "tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
}

#: Named architectures, timm-style: ``vit-<size>-patch<p>-<image size>``, ``resnet<depth>``,
#: ``swin-<size>-patch4-window7-224``.
PRESETS: dict[str, tuple[type, dict]] = {
    **{f"vit-{size}-patch16-224": (MFMViTConfig, dict(shape, patch_size=16, image_size=224)) for size, shape in _VIT_SHAPES.items()},
    **{
        f"vit-{size}-patch4-32": (MFMViTConfig, dict(shape, patch_size=4, image_size=32))
        for size, shape in _VIT_SHAPES.items()
        if size != "large"
    },
    "resnet18": (MFMResNetConfig, dict(block_type="basic", layers=(2, 2, 2, 2))),
    "resnet50": (MFMResNetConfig, dict(block_type="bottleneck", layers=(3, 4, 6, 3))),
    "swin-tiny-patch4-window7-224": (MFMSwinConfig, dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)),
    "swin-base-patch4-window7-224": (MFMSwinConfig, dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7)),
}


def means_local_path(name_or_path: str) -> bool:
    """Whether a model name can only mean a local path: absolute or relative to ``.`` / ``~``, a
    ``.json`` file, more components than a Hub id's ``owner/name``, no ``/`` at all (nor a
    preset), or a first component that is a folder here (``outputs/quickstrat``)."""
    parts = Path(name_or_path).parts
    return (name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.endswith(".json") or len(parts) != 2
            or Path(parts[0]).is_dir())


def check_model_source(name_or_path: str, argument: str = "--model") -> None:
    """Refuse, before any download is attempted, a model name that means a local folder or file
    that does not exist (else transformers reports a Hub or connection error for a typo),
    naming the closest presets and folders."""
    if name_or_path in PRESETS or Path(name_or_path).expanduser().exists() or not means_local_path(name_or_path):
        return
    path = Path(name_or_path).expanduser()
    parent = next((ancestor for ancestor in path.parents if ancestor.is_dir()), Path("."))
    neighbours = [str(entry) if parent != Path(".") else entry.name for entry in parent.iterdir() if entry.is_dir()]
    close = difflib.get_close_matches(name_or_path, [*PRESETS, *neighbours], n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else f" Presets: {', '.join(sorted(PRESETS))}."
    raise FileNotFoundError(
        f"{argument} {name_or_path!r} is neither a preset, an existing checkpoint folder or config.json, nor a Hub id "
        f"(owner/name): nothing is at that path.{hint}"
    )


def config_field_names(config_class: type[PreTrainedConfig]) -> set[str]:
    """The names a config of ``config_class`` takes (its fields, transformers' own and the
    old names in `RENAMED_FIELDS`), without the ones transformers writes itself."""
    saved = set(config_class().to_dict()) - {"_name_or_path", "model_type", "transformers_version"}
    settable = {name for name in dir(config_class) if not name.startswith("_") and isinstance(getattr(config_class, name), property)
                and getattr(config_class, name).fset is not None}  # e.g. transformers' num_labels
    return saved | settable | {field.name for field in dataclasses.fields(config_class)} | set(RENAMED_FIELDS)


def check_override_names(config_class: type[PreTrainedConfig], overrides: dict) -> None:
    """Refuse a field ``config_class`` does not have (a config would keep it as a stray
    attribute that nothing reads), naming the closest fields."""
    known = config_field_names(config_class)
    for name in overrides:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise ValueError(f"{config_class.__name__} has no field `{name}`.{hint}")


def resolve_config(name_or_path: str, **overrides) -> MFMViTConfig | MFMResNetConfig:
    """A preset by name, else the config of a checkpoint folder, ``config.json`` or Hub id.
    Overrides are applied by rebuilding the config, so they go through its validation
    (``from_pretrained(..., **kwargs)`` would set them after the checks)."""
    if name_or_path in PRESETS:
        return config_from_preset(name_or_path, **overrides)
    check_model_source(name_or_path)
    saved = AutoConfig.from_pretrained(name_or_path)
    check_override_names(type(saved), overrides)
    return type(saved).from_dict({**saved.to_dict(), **overrides}) if overrides else saved


def config_from_preset(name: str, **overrides) -> MFMViTConfig | MFMResNetConfig:
    """Build the config of a named preset (see `PRESETS`), with any field overridden."""
    if name not in PRESETS:
        raise KeyError(f"Unknown preset {name!r}. Available presets: {', '.join(sorted(PRESETS))}.")
    config_class, fields = PRESETS[name]
    check_override_names(config_class, overrides)
    return config_class(**{**fields, **overrides})


__all__ = ["MFMConfigBase", "MFMResNetConfig", "MFMSwinConfig", "MFMViTConfig", "PRESETS", "RENAMED_FIELDS", "check_model_source",
           "check_override_names", "config_field_names", "config_from_preset", "means_local_path", "resolve_config"]
