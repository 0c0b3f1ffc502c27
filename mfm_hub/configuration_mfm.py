"""Configurations of the MFM / FOLK ViT, ResNet and Swin models, and the named presets."""

from __future__ import annotations

import difflib
from pathlib import Path

from transformers import AutoConfig, PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from .attention import ATTENTION_BACKENDS
from .pretext import PRETEXT_TASKS, get_pretext_task
from .pretext import check as _check

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
RECONSTRUCTION_TARGETS = ("masked", "all")


class MFMConfigBase(PreTrainedConfig):
    r"""Fields shared by every MFM model: the input images and the pre-training objective.

    image_size (`int`): side of the square training images; other sizes work at inference
        (position embeddings are interpolated) as long as they are divisible by the stride.
    num_channels (`int`): input channels (3).
    image_mean, image_std (`tuple[float]`): normalisation applied *after* corruption
        (ImageNet statistics, as in the papers).
    corruption (`str`): the pretext task (`mfm_hub.pretext`) applied to the input:
        ``"mfm"`` (circle low/high-pass, the MFM paper), ``"informed"`` (FOLK's Com/RCom
        filters), ``"sr"``, ``"deblur"`` or ``"denoise"`` (the paper's baselines), or a
        registered task.
    mask_radius, mask_radius_outer (`float`): the MFM circle in spectrum pixels of a 224-px
        image (16 and 999 officially); scaled with the image side, see
        `mfm_hub.frequency.circle_mask`.
    low_pass_prob (`float`): probability that an image is low-passed (0.5 for ViT, 0.3 for
        ResNet-50 officially).
    informed_keep_ratios (`tuple[float]`): fractions of highest-magnitude frequencies that
        Com keeps (RCom removes); one is drawn per image.
    compress_prob (`float`): probability of Com (else RCom) per image.
    reconstruction_target (`str`): ``"masked"`` (loss on removed frequencies only, the
        official MFM setting) or ``"all"``; defaults to ``"masked"`` for frequency masks and
        ``"all"`` for the SR/deblur/denoise baselines.
    sr_factor (`int`), blur_sigma (`float`), blur_kernel_sizes (`tuple[int]`),
        noise_sigma (`float`): the baselines' corruption parameters (8; 5; 7..21; 75/255).
    loss_gamma, focal_weighting, focal_matrix_gamma, focal_log_matrix, focal_batch_matrix:
        options of the focal frequency loss; MFM uses gamma 1 and no weighting.
    initializer_range (`float`): std of the truncated-normal init of linear layers.
    folk_head_hidden_dim, folk_head_bottleneck_dim, folk_head_output_dim (`int`): FOLK's
        projection head (DINO-style MLP -> L2-normalised bottleneck -> prototypes).
    folk_student_temperature, folk_teacher_temperature (`float`): softmax temperatures (0.1, 0.02;
        DINO's teacher uses 0.04, which left the targets near uniform here, see docs/FOLK.md).
    folk_warmup_teacher_temperature (`float`), folk_teacher_temperature_warmup_ratio (`float`):
        the teacher temperature starts at the first and rises linearly to
        ``folk_teacher_temperature`` over this fraction of the run (DINO's warm-up).
    folk_normalize_prototypes (`bool`): use the prototypes at unit norm (DINO's
        weight-normalised last layer), so logits stay cosines whatever their raw scale.
    folk_freeze_prototypes_ratio (`float`): the student's prototypes are not updated during
        this first fraction of the run (DINO freezes its last layer for the first epoch).
    folk_center_momentum (`float`): EMA momentum of the teacher-output centre (0.9).
    folk_ema_momentum (`float`): teacher EMA momentum at the start, raised to 1.0 on a cosine
        schedule over the run (0.996).
    folk_distillation_weight, folk_reconstruction_weight (`float`): loss weights (1, 1).
    folk_export (`str`): which encoder a FOLK run exports, ``"teacher"`` or ``"student"``.
    The FOLK values are this project's documented defaults: the paper leaves them open
    (see docs/FOLK.md).
    """

    image_size: int = 224
    num_channels: int = 3
    image_mean: tuple[float, ...] | list[float] = IMAGENET_MEAN
    image_std: tuple[float, ...] | list[float] = IMAGENET_STD
    corruption: str = "mfm"
    mask_radius: float = 16.0
    mask_radius_outer: float = 999.0
    low_pass_prob: float = 0.5
    informed_keep_ratios: tuple[float, ...] | list[float] = (0.005, 0.01, 0.05)
    compress_prob: float = 0.5
    reconstruction_target: str | None = None
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
        self.check_field_types()
        _check(isinstance(self.image_size, int) and self.image_size > 0, f"`image_size` must be a positive int, got {self.image_size!r}.")
        _check(self.num_channels in (1, 3), f"`num_channels` must be 1 or 3, got {self.num_channels!r}.")
        _check(
            len(self.image_mean) == self.num_channels and len(self.image_std) == self.num_channels,
            f"`image_mean`/`image_std` need {self.num_channels} values, got {list(self.image_mean)} / {list(self.image_std)}.",
        )
        _check(all(s > 0 for s in self.image_std), f"`image_std` must be positive, got {list(self.image_std)}.")
        _check(self.corruption in PRETEXT_TASKS, f"`corruption` must be one of {tuple(PRETEXT_TASKS)}, got {self.corruption!r}.")
        for task in PRETEXT_TASKS.values():  # every task's parameters, so switching `corruption` later stays valid
            task.check(self)
        _check(
            self.reconstruction_target in (None, *RECONSTRUCTION_TARGETS),
            f"`reconstruction_target` must be one of {RECONSTRUCTION_TARGETS} (or None for the corruption's default), "
            f"got {self.reconstruction_target!r}.",
        )
        _check(
            self.reconstruction_target != "masked" or get_pretext_task(self.corruption).frequency_mask,
            f"`reconstruction_target='masked'` needs a frequency-mask corruption, not {self.corruption!r}.",
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

    @property
    def loss_target(self) -> str:
        """The reconstruction target in force: ``reconstruction_target``, or by default
        ``"masked"`` for frequency masks and ``"all"`` for the SR/deblur/denoise baselines
        (derived, not stored, so it follows a later change of ``corruption``)."""
        return self.reconstruction_target or get_pretext_task(self.corruption).default_loss_target


class MFMViTConfig(BackboneConfigMixin, MFMConfigBase):
    r"""Configuration of an MFM Vision Transformer (BEiT-style layout of the official MFM code:
    absolute position embedding + cls token, separate q/v biases, no relative position bias).

    patch_size (`int`), hidden_size (`int`), num_hidden_layers (`int`),
    num_attention_heads (`int`), mlp_ratio (`float`): the transformer's shape.
    qkv_bias (`bool`): learn q and v biases (k has none), as BEiT.
    layer_norm_eps (`float`): 1e-6 as in the official code.
    layer_scale_init_value (`float`, *optional*): LayerScale init; ``None`` (MFM) disables it.
    drop_path_rate, hidden_dropout_prob, attention_dropout_prob (`float`): regularisation.
    use_mean_pooling (`bool`): the official fine-tuning layout: ``pooler_output`` =
        ``fc_norm(mean(patch tokens))`` and no final norm. ``False`` keeps the pre-training
        final norm and pools as ``pooling`` says.
    pooling (`str`): ``pooler_output`` with the final norm kept: ``"mean"`` (the mean of the
        normed patch tokens, what MFM trains and our evaluation reads; the default) or
        ``"cls"`` (the cls token, which MFM pre-training never trains). Checkpoints saved
        before this field existed load with ``"cls"``, the pooling they were saved with.
    out_features / out_indices: stages returned by `MFMViTBackbone` (``stem`` is the patch
        embedding, ``stageN`` the output of block N); defaults to 4 evenly spaced blocks.
    add_fpn (`bool`): turn four stride-p maps into strides p/4, p/2, p, 2p (BEiT's
        segmentation neck) so UperNet gets a feature pyramid; defaults to ``True`` when the
        model has at least 4 blocks.
    folk_head_pooling (`str`): what FOLK's projection heads read: ``"mean"`` (the mean of
        the final patch tokens, the features the reconstruction shapes and the evaluation
        uses) or ``"cls"`` (the cls token, as DINO / iBOT).
    attention_backend (`str`): the attention kernel: ``"auto"`` (per call, the kernel measured
        fastest for the device and compute dtype, `mfm_hub.attention`), ``"sdpa"`` (PyTorch's
        fused kernel) or ``"math"`` (matmul + softmax, as BEiT writes it). Loading with
        transformers' ``attn_implementation="eager"`` means ``"math"``.
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
    r"""Configuration of an MFM ResNet (timm's ResNet layout: ``conv1``, ``bn1``, ``layer1..4``).

    block_type (`str`): ``"bottleneck"`` (ResNet-50 and deeper) or ``"basic"`` (ResNet-18/34).
    layers (`list[int]`): blocks per stage.
    drop_path_rate (`float`): stochastic depth.
    out_features / out_indices: stages returned by `MFMResNetBackbone` (``stem``,
        ``stage1``..``stage4``; strides 4, 4, 8, 16, 32); defaults to the four stages.
    low_pass_prob defaults to 0.3, the official ResNet-50 setting.
    """

    model_type = "mfm_resnet"

    block_type: str = "bottleneck"
    layers: tuple[int, ...] | list[int] = (3, 4, 6, 3)
    drop_path_rate: float = 0.0
    low_pass_prob: float = 0.3
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.check_field_types()
        _check(self.block_type in ("basic", "bottleneck"), f"`block_type` must be 'basic' or 'bottleneck', got {self.block_type!r}.")
        _check(len(self.layers) == 4 and all(n >= 1 for n in self.layers), f"`layers` must be 4 positive ints, got {list(self.layers)!r}.")
        _check(0.0 <= self.drop_path_rate < 1.0, f"`drop_path_rate` must be in [0, 1), got {self.drop_path_rate!r}.")
        self._set_four_stage_outputs(kwargs)
        super().__post_init__(**kwargs)

    @property
    def encoder_stride(self) -> int:
        return 32

    @property
    def summary(self) -> str:
        return f"ResNet ({self.block_type} blocks, layers {list(self.layers)})"

    def classifier_options(self, official_head: bool) -> dict:
        """A ResNet classifier always reads the global average of the last map."""
        return {}

    @property
    def stage_channels(self) -> list[int]:
        expansion = 4 if self.block_type == "bottleneck" else 1
        return [64] + [64 * 2**i * expansion for i in range(4)]

    @property
    def num_features(self) -> int:
        return self.stage_channels[-1]


class MFMSwinConfig(BackboneConfigMixin, MFMConfigBase):
    r"""Configuration of an MFM Swin Transformer (timm's `SwinTransformer`; the official MFM
    code's third encoder, SimMIM's Swin: patch 4, window 7, stride-32 feature map).

    patch_size (`int`), embed_dim (`int`), depths (`list[int]`), num_heads (`list[int]`),
    window_size (`int`), mlp_ratio (`float`), qkv_bias (`bool`): the shape. Every stage's
    grid (``image_size / patch_size / 2^i``) must be divisible by ``window_size``.
    drop_path_rate (`float`): stochastic depth.
    out_features / out_indices: stages returned by `MFMSwinBackbone` (``stage1..4``,
    strides 4, 8, 16, 32); defaults to all four, the pyramid UperNet expects.
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


def _means_local(name_or_path: str) -> bool:
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
    if name_or_path in PRESETS or Path(name_or_path).expanduser().exists() or not _means_local(name_or_path):
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


def resolve_config(name_or_path: str, **overrides) -> MFMViTConfig | MFMResNetConfig:
    """A preset by name, else the config of a checkpoint folder, ``config.json`` or Hub id.
    Overrides are applied by rebuilding the config, so they go through its validation
    (``from_pretrained(..., **kwargs)`` would set them after the checks)."""
    if name_or_path in PRESETS:
        return config_from_preset(name_or_path, **overrides)
    check_model_source(name_or_path)
    saved = AutoConfig.from_pretrained(name_or_path)
    return type(saved).from_dict({**saved.to_dict(), **overrides}) if overrides else saved


def config_from_preset(name: str, **overrides) -> MFMViTConfig | MFMResNetConfig:
    """Build the config of a named preset (see `PRESETS`), with any field overridden."""
    if name not in PRESETS:
        raise KeyError(f"Unknown preset {name!r}. Available presets: {', '.join(sorted(PRESETS))}.")
    config_class, fields = PRESETS[name]
    return config_class(**{**fields, **overrides})


__all__ = ["MFMConfigBase", "MFMResNetConfig", "MFMSwinConfig", "MFMViTConfig", "PRESETS", "check_model_source", "config_from_preset",
           "resolve_config"]
