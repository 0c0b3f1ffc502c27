"""Pieces shared by every MFM family (ViT, ResNet, Swin): the output dataclass, input checks,
the corruption + frequency-loss objective, the linear decoder, and strict checkpoint loading."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Iterator, Optional

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutput
from transformers.utils import IMAGE_PROCESSOR_NAME, ModelOutput, can_return_tuple, logging

from .frequency import apply_frequency_mask, frequency_distance, masked_frequency_loss
from .image_processing import image_processor_for_config
from .pretext import Corruption, get_pretext_task

logger = logging.get_logger(__name__)

#: Tolerance on the [0, 1] range check of pre-training inputs (resampling overshoot).
UNIT_RANGE_TOLERANCE = 1e-3


@dataclass
class MFMPreTrainingOutput(ModelOutput):
    """Output of the ``*ForPreTraining`` models.

    loss (`torch.FloatTensor`, scalar): the frequency reconstruction loss.
    reconstruction (`torch.FloatTensor` of shape `(batch, channels, height, width)`): the
        decoder's prediction of the **normalised** original image.
    frequency_mask (`torch.FloatTensor` of shape `(batch, 1, height, width)`, *optional*):
        the mask applied to each image in shifted frequency coordinates (1 = kept); ``None``
        for the SR/deblur/denoise corruptions.
    corrupted_pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`):
        the corrupted input before normalisation (what the encoder saw, in [0, 1] except for
        the unclipped noise corruption).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*): the encoder's hidden states, as its
        base model returns them (``output_hidden_states=True``).
    attentions (`tuple(torch.FloatTensor)`, *optional*): the encoder's attention probabilities,
        one per block, as its base model returns them (``output_attentions=True``; ViT and Swin).
    """

    loss: Optional[torch.FloatTensor] = None
    reconstruction: Optional[torch.FloatTensor] = None
    frequency_mask: Optional[torch.FloatTensor] = None
    corrupted_pixel_values: Optional[torch.FloatTensor] = None
    hidden_states: Optional[tuple[torch.FloatTensor, ...]] = None
    attentions: Optional[tuple[torch.FloatTensor, ...]] = None


@dataclass
class Reconstruction:
    """What `MFMForPreTrainingMixin.reconstruct` computes: the frequency ``loss`` (scalar), the
    ``reconstruction`` ``(B, C, H, W)`` of the normalised original, the `Corruption` the
    encoder saw, and the encoder's own outputs (for heads that read them, as FOLK's)."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    corruption: Corruption
    encoder_outputs: ModelOutput


@cache
def _checkpointable_class(layer_class: type) -> type:
    # same name, so `_no_split_modules` and printed models still read as timm's layer
    return type(layer_class.__name__, (GradientCheckpointingLayer, layer_class), {"__module__": layer_class.__module__})


def make_checkpointable(layers) -> None:
    """Turn timm's repeated layers (transformer blocks, residual blocks) into transformers'
    `GradientCheckpointingLayer`s in place: same parameters and forward, and
    ``activation_checkpointing_enable(...)`` / ``_disable()`` switch their checkpointing as in
    any transformers model (reentrant or not, ``every_n_layers``)."""
    for layer in layers:
        layer.__class__ = _checkpointable_class(type(layer))


class AttentionRecorder:
    """For a timm attention module that picks its kernel with ``fused_attn`` and applies
    ``attn_drop`` to the attention probabilities on its math path: while ``recording``, it runs
    the math path (so the probabilities exist) whatever kernel it would pick otherwise
    (`uses_fused_kernel`), see `recorded_attentions`."""

    recording = False

    def uses_fused_kernel(self) -> bool:
        raise NotImplementedError

    @property
    def fused_attn(self) -> bool:
        return not self.recording and self.uses_fused_kernel()


@contextmanager
def recorded_attentions(encoder: nn.Module, enabled: bool) -> Iterator[Optional[list[torch.Tensor]]]:
    """While active, the attention probabilities (after dropout, as transformers returns them)
    of every `AttentionRecorder` in ``encoder``, appended in call order to the yielded list;
    None when not ``enabled``. Activation checkpointing is paused meanwhile, so that no
    backward recomputes a layer outside the recording."""
    if not enabled:
        yield None
        return
    recorders = [module for module in encoder.modules() if isinstance(module, AttentionRecorder)]
    checkpointed = [module for module in encoder.modules()
                    if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing]
    weights: list[torch.Tensor] = []
    hooks = [module.attn_drop.register_forward_hook(lambda _, __, probabilities: weights.append(probabilities)) for module in recorders]
    for module in recorders:
        module.recording = True
    for module in checkpointed:
        module.gradient_checkpointing = False
    try:
        yield weights
    finally:
        for hook in hooks:
            hook.remove()
        for module in recorders:
            module.recording = False
        for module in checkpointed:
            module.gradient_checkpointing = True


def prepare_pixel_values(pixel_values: torch.Tensor, num_channels: int, stride: int, what: str, dtype: torch.dtype) -> torch.Tensor:
    """Check a ``(B, C, H, W)`` batch with messages that say what to change (a NaN or inf pixel
    would otherwise come out as NaN features, logits and losses), and cast floats of another
    precision to the model's ``dtype``, as transformers' ViT and Dinov2 do."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"`pixel_values` must be a (batch, channels, height, width) tensor, got {shape}.")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"`pixel_values` must be a floating-point tensor, got {pixel_values.dtype}. Pass images through the "
            "image processor, or convert 0-255 integers with `pixel_values.float() / 255`."
        )
    batch, channels, height, width = pixel_values.shape
    if batch == 0:
        raise ValueError("`pixel_values` holds no images (batch size 0); pass at least one.")
    if channels != num_channels:
        hint = " Convert grayscale images to RGB (e.g. `image.convert('RGB')`)." if channels == 1 else ""
        raise ValueError(f"`pixel_values` has {channels} channels but the model expects {num_channels}.{hint}")
    if height % stride or width % stride:
        raise ValueError(
            f"Image size {height}x{width} is not divisible by the {what} {stride}; "
            f"resize or crop to a multiple of {stride}."
        )
    if not torch.compiler.is_compiling() and not torch.isfinite(pixel_values.detach()).all():
        raise ValueError("`pixel_values` contain NaN or infinite values; every pixel must be a finite number.")
    return pixel_values.to(dtype)


def non_finite_tensors(named_tensors) -> list[str]:
    """``"name (k of n values)"`` for each floating tensor of ``(name, tensor)`` pairs that holds
    NaN or inf."""
    found = []
    for name, tensor in named_tensors:
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor.detach())).sum())
            if bad:
                found.append(f"{name} ({bad} of {tensor.numel()} values)")
    return found


def refuse_non_finite_weights(named_tensors, source) -> None:
    """A `ValueError` naming the tensors of ``source`` (a checkpoint) that hold NaN or inf: a model
    with them computes NaN features, logits and losses, which no later step reports clearly."""
    bad = non_finite_tensors(named_tensors)
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{source} holds non-finite weights: {listed}. It is damaged or comes from a run that diverged; "
                         "use an earlier checkpoint.")


#: The class index a loss ignores (transformers' and PyTorch's convention).
IGNORED_LABEL = -100


def check_labels(labels, batch: int, config) -> None:
    """What an image classifier's ``labels`` must be for the loss transformers picks
    (``config.problem_type``, or inferred from the labels as transformers does): class indices
    ``(batch,)`` in ``[0, num_labels)`` or `IGNORED_LABEL` (int64 / int32) for single-label, float
    ``(batch, num_labels)`` for multi-label, float ``(batch,)`` or ``(batch, num_labels)`` for
    regression; all finite. Refused with a message naming them, where the loss would stop in an
    `IndexError` or a dtype error, or broadcast a wrong shape."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"`labels` must be a tensor of class indices (batch,), got {type(labels).__name__}.")
    num_labels, integer = config.num_labels, labels.dtype in (torch.long, torch.int)
    problem = config.problem_type or ("regression" if num_labels == 1 else
                                      "single_label_classification" if integer else "multi_label_classification")
    if problem == "single_label_classification":
        if not integer:
            raise ValueError(f"`labels` of a single-label classifier are class indices of dtype int64, got {labels.dtype}.")
        if labels.numel() != batch or (labels.ndim > 1 and labels.shape[-1] != 1):
            raise ValueError(f"`labels` must hold one class index per image, shape ({batch},), got {tuple(labels.shape)}.")
        if not torch.compiler.is_compiling():
            outside = labels[(labels != IGNORED_LABEL) & ((labels < 0) | (labels >= num_labels))]
            if outside.numel():
                raise ValueError(f"`labels` holds {outside[0].item()}, outside the {num_labels} classes 0..{num_labels - 1} "
                                 f"(use {IGNORED_LABEL} to ignore an image).")
        return
    shapes = [(batch, num_labels)] + ([(batch,)] if problem == "regression" and num_labels == 1 else [])
    if not labels.is_floating_point() or tuple(labels.shape) not in shapes:
        raise ValueError(f"`labels` of a {problem.replace('_', '-')} model are floats of shape {' or '.join(map(str, shapes))}, "
                         f"got {labels.dtype} {tuple(labels.shape)}.")
    if not torch.compiler.is_compiling() and not torch.isfinite(labels).all():
        raise ValueError("`labels` contain NaN or infinite values.")


def check_unit_range(pixel_values: torch.Tensor) -> None:
    """Pre-training inputs are un-normalised images in [0, 1] (MFM masks before normalising);
    run after `prepare_pixel_values`, which refuses non-finite values."""
    if torch.compiler.is_compiling():
        return
    low, high = torch.aminmax(pixel_values.detach())
    if low < -UNIT_RANGE_TOLERANCE or high > 1 + UNIT_RANGE_TOLERANCE:
        raise ValueError(
            f"Pre-training models take un-normalised pixel values in [0, 1], got values in "
            f"[{low.item():.3f}, {high.item():.3f}]. Pass images through the image processor with "
            "`do_normalize=False` (the model normalises after corrupting)."
        )


def _statistics(config, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The config's mean and std shaped ``(C, 1, 1)``, broadcasting over ``(..., C, H, W)``."""
    def as_tensor(values):
        return torch.tensor(values, device=like.device, dtype=like.dtype).view(-1, 1, 1)

    return as_tensor(config.image_mean), as_tensor(config.image_scale)


def normalize(pixel_values: torch.Tensor, config) -> torch.Tensor:
    """``(..., C, H, W)`` images in [0, 1] -> normalised with the config's mean / std."""
    mean, std = _statistics(config, pixel_values)
    return (pixel_values - mean) / std


def denormalize(pixel_values: torch.Tensor, config) -> torch.Tensor:
    mean, std = _statistics(config, pixel_values)
    return pixel_values * std + mean


def corrupt(
    pixel_values: torch.Tensor,
    config,
    generator: Optional[torch.Generator] = None,
    frequency_mask: Optional[torch.Tensor] = None,
) -> Corruption:
    """Apply the pretext task ``config.pretext_task`` (`mfm_hub.pretext`) to a batch in [0, 1].

    For frequency-mask tasks a given ``frequency_mask`` ``(B, 1, H, W)`` replaces the sampled
    one (for reproducing a run or comparing implementations).
    """
    task = get_pretext_task(config.pretext_task)
    batch, _, height, width = pixel_values.shape
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"`generator` must be a torch.Generator (e.g. `torch.Generator().manual_seed(0)`), got {type(generator).__name__}."
        )
    if not task.masks_frequencies:
        if frequency_mask is not None:
            raise ValueError(f"`frequency_mask` only applies to frequency-mask corruptions, not {task.name!r}.")
        return task.corrupt(pixel_values, config, generator)
    if frequency_mask is None:
        frequency_mask = task.sample_mask(pixel_values, config, generator)
    elif not isinstance(frequency_mask, torch.Tensor):
        raise ValueError(f"`frequency_mask` must be a tensor of shape {(batch, 1, height, width)}, got {type(frequency_mask).__name__}.")
    elif frequency_mask.shape != (batch, 1, height, width):
        raise ValueError(f"`frequency_mask` must have shape {(batch, 1, height, width)}, got {tuple(frequency_mask.shape)}.")
    elif not torch.compiler.is_compiling() and not ((frequency_mask >= 0) & (frequency_mask <= 1)).all():  # also false for NaN
        raise ValueError("`frequency_mask` values must lie in [0, 1] (1 = frequency kept).")
    return Corruption(apply_frequency_mask(pixel_values, frequency_mask), frequency_mask)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, frequency_mask, config) -> torch.Tensor:
    """The MFM frequency loss between the prediction and the normalised original, summed over
    ``rfft2``'s half of the spectrum (the same number as over the whole, for half the work)."""
    distance = frequency_distance(
        reconstruction, target,
        loss_gamma=config.loss_gamma,
        focal_weighting=config.focal_weighting,
        matrix_gamma=config.focal_matrix_gamma,
        log_matrix=config.focal_log_matrix,
        batch_matrix=config.focal_batch_matrix,
        layout="onesided",
    )
    width = target.shape[-1]
    if (config.loss_target or get_pretext_task(config.pretext_task).loss_target) != "masked":
        return masked_frequency_loss(distance, None, onesided_width=width)
    # the loss is a sum over frequencies: the (small) mask moves to the FFT's order, not the spectrum
    return masked_frequency_loss(distance, torch.fft.ifftshift(frequency_mask, dim=(-2, -1)), onesided_width=width)


def linear_decoder(in_channels: int, stride: int, out_channels: int) -> nn.Sequential:
    """MFM's "linear head": 1x1 conv to ``stride^2 * out_channels`` then PixelShuffle(stride),
    ``(B, in_channels, H/stride, W/stride) -> (B, out_channels, H, W)``. Indexed as a
    Sequential so its keys (``decoder.0.*``) match the official release."""
    return nn.Sequential(nn.Conv2d(in_channels, stride**2 * out_channels, kernel_size=1), nn.PixelShuffle(stride))


def default_conv_init(module: nn.Module) -> None:
    """PyTorch's own Conv/ConvTranspose initialisation, through transformers' guarded init
    functions so that loaded weights are never overwritten."""
    init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    if module.bias is not None:
        fan_in = module.weight.shape[1] * math.prod(module.weight.shape[2:])
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        init.uniform_(module.bias, -bound, bound)


class MFMPreTrainedModel(PreTrainedModel):
    """Base class: saves the image processor and the full ``auto_map`` with every checkpoint,
    and refuses checkpoints whose backbone weights do not match the config.

    Subclasses list in ``_new_weight_prefixes`` the modules that a checkpoint of another task
    may legitimately lack (a new classifier, decoder or neck); any other missing or
    mismatched weight is an error naming the keys.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _new_weight_prefixes: tuple[str, ...] = ()
    #: name of the classifier in the official fine-tuned files (`mfm_hub.convert_official`)
    official_classifier = "head"

    def official_encoder_keys(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An official release's encoder weights (``encoder.`` prefix removed) in this
        family's ``encoder`` layout; the same for families built on the official modules."""
        return state_dict

    @staticmethod
    def official_config_fields(state_dict: dict[str, torch.Tensor]) -> dict:
        """Config fields that a fine-tuned official file's keys imply."""
        return {}

    def folk_head_input(self, encoded) -> torch.Tensor:
        """``(N, D)``: what FOLK's projection heads read from this encoder's output (the
        pooled output; families that pool otherwise override it)."""
        return encoded.pooler_output

    @classmethod
    def from_pretrained(cls, *args, strict: bool = True, **kwargs):
        """transformers' ``from_pretrained``: weights a checkpoint of another task lacks (a new
        classifier, decoder or neck) are initialised and reported (``output_loading_info``,
        transformers' log), and weights of another shape need ``ignore_mismatched_sizes``. Any
        other missing weight, part of the encoder, is an error naming it; with ``strict=False``
        it is initialised as well, with a warning naming every one. A checkpoint of another
        family, or with NaN / inf weights, is always an error."""
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        if kwargs.get("config") is None:
            saved_type = cls.config_class.get_config_dict(source)[0].get("model_type")
            if saved_type != cls.config_class.model_type and saved_type and saved_type.startswith("mfm_"):
                raise ValueError(f"{source} holds an {saved_type} checkpoint; {cls.__name__} is an {cls.config_class.model_type} "
                                 f"model. Load it with the {saved_type} classes, or with AutoModel / AutoBackbone.")
        output_loading_info = kwargs.pop("output_loading_info", False)
        # load mismatched shapes leniently so that the error below can name them; a caller
        # who asked for `ignore_mismatched_sizes` gets them re-initialised as usual
        allow_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
        try:
            model, info = super().from_pretrained(*args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        except SafetensorError as error:
            raise ValueError(
                f"The safetensors weights of {source} are corrupt or truncated ({error}); "
                "re-download or re-save the checkpoint."
            ) from error
        prefix = cls.base_model_prefix + "."
        missing = [
            key for key in info["missing_keys"]
            if not key.removeprefix(prefix).startswith(cls._new_weight_prefixes)
        ]
        mismatched = [] if allow_mismatched else [
            entry[0] if isinstance(entry, (tuple, list)) else entry for entry in info["mismatched_keys"]
        ]
        refuse_non_finite_weights((*model.named_parameters(), *model.named_buffers()), f"The checkpoint {source}")
        if missing and not strict:
            logger.warning(f"{source} lacks these weights of {cls.__name__}, initialised instead (strict=False): "
                           f"{', '.join(sorted(missing))}.")
            missing = []
        if missing or mismatched:
            details = []
            if missing:
                details.append(f"missing from the checkpoint: {', '.join(sorted(missing))}")
            if mismatched:
                details.append(f"with a different shape: {', '.join(sorted(mismatched))} (ignore_mismatched_sizes=True initialises them)")
            advice = " or pass strict=False to initialise the missing ones" if missing else ""
            raise ValueError(f"The checkpoint does not match {cls.__name__} with this config; weights {'; '.join(details)}. "
                             f"Load it with the config it was saved with{advice}.")
        return (model, info) if output_loading_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``, plus the model's image processor
        (`image_processor_for_config`) where the folder holds none: an image processor already
        there (the user's own, or one on the Hub repo `push_to_hub` writes to) is kept, with a
        warning when it differs from this model's."""
        if self._auto_class is not None:
            # every Auto class of the family (set by `register_family`), so a checkpoint saved by one
            # class loads as the others with trust_remote_code
            self.config.auto_map = dict(getattr(type(self.config), "family_auto_map", None) or self.config.auto_map or {})
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and not getattr(self, "_hub_repo_has_processor", False):
            processor = image_processor_for_config(self.config)
            existing = Path(save_directory) / IMAGE_PROCESSOR_NAME
            if not existing.exists():
                processor.save_pretrained(save_directory)
            elif json.loads(existing.read_text()) != json.loads(processor.to_json_string()):
                logger.warning(f"Kept the image processor already in {save_directory}; it differs from this model's. To use the "
                               f"model's, save `mfm_hub.image_processor_for_config(model.config)` there.")
        return result

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        """transformers' ``push_to_hub``, without replacing an image processor the repository already has."""
        from huggingface_hub import file_exists

        self._hub_repo_has_processor = file_exists(repo_id, IMAGE_PROCESSOR_NAME, revision=kwargs.get("revision"),
                                                   token=kwargs.get("token"))
        try:
            return super().push_to_hub(repo_id, *args, **kwargs)
        finally:
            del self._hub_repo_has_processor


class MFMForPreTrainingMixin:
    """The pre-training forward shared by every encoder family: corrupt -> normalise ->
    encode to a stride-``s`` feature map -> linear decoder -> frequency loss.

    Subclasses provide ``encode_feature_map(normalized_pixels, output_hidden_states,
    output_attentions)`` returning ``(feature_map (B, D, H/s, W/s), encoder outputs)`` and a
    ``decoder``.
    """

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        frequency_mask: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        output_hidden_states: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        **kwargs,
    ) -> MFMPreTrainingOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`):
            **Un-normalised** images in [0, 1]; height and width divisible by the encoder stride.
        frequency_mask (`torch.FloatTensor` of shape `(batch, 1, height, width)`, *optional*):
            use this mask (shifted coordinates, 1 = kept) instead of sampling one.
        generator (`torch.Generator`, *optional*): seeds the sampled corruption.
        output_hidden_states, output_attentions (`bool`, *optional*): return the encoder's hidden
            states / attention probabilities (default: the config's).

        Returns `MFMPreTrainingOutput` (a tuple with ``return_dict=False``).
        """
        result = self.reconstruct(pixel_values, frequency_mask, generator, output_hidden_states, output_attentions=output_attentions)
        output = MFMPreTrainingOutput(
            loss=result.loss,
            reconstruction=result.reconstruction,
            frequency_mask=result.corruption.frequency_mask,
            corrupted_pixel_values=result.corruption.pixel_values,
            hidden_states=result.encoder_outputs.hidden_states,
            attentions=getattr(result.encoder_outputs, "attentions", None),
        )
        return output

    def reconstruct(self, pixel_values, frequency_mask=None, generator=None, output_hidden_states=None,
                    objective_config=None, output_attentions=None) -> Reconstruction:
        """Check, corrupt, encode and reconstruct ``(B, C, H, W)`` images in [0, 1]. An
        ``objective_config`` replaces the model's pretext task and loss settings (to put another
        task to a trained model, as the demo does); normalisation stays the model's."""
        pixel_values = prepare_pixel_values(
            pixel_values, self.config.num_channels, self.config.encoder_stride, "encoder stride", self.dtype
        )
        check_unit_range(pixel_values)
        objective = objective_config or self.config
        corruption = corrupt(pixel_values, objective, generator, frequency_mask)
        features, encoded = self.encode_feature_map(normalize(corruption.pixel_values, self.config), output_hidden_states,
                                                    output_attentions)
        reconstruction = self.decoder(features)
        loss = reconstruction_loss(reconstruction, normalize(pixel_values, self.config), corruption.frequency_mask, objective)
        return Reconstruction(loss, reconstruction, corruption, encoded)


class MFMStageBackboneMixin:
    """Backbone forward for families whose base model returns one map per stage as
    ``hidden_states`` (matching ``config.stage_names``): the maps of ``out_features``."""

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: Optional[bool] = None,
        **kwargs,
    ) -> BackboneOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`): normalised images.

        Returns `BackboneOutput`: ``feature_maps``, one ``(batch, channels_i, height_i, width_i)`` map per
        ``out_features`` stage; ``hidden_states`` (every stage's map) and ``attentions`` (Swin) on request.
        """
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        outputs = self.base_model(pixel_values, output_hidden_states=True, return_dict=True, **kwargs)
        feature_maps = tuple(hidden for stage, hidden in zip(self.stage_names, outputs.hidden_states) if stage in self.out_features)
        output = BackboneOutput(feature_maps=feature_maps, hidden_states=outputs.hidden_states if output_hidden_states else None,
                                attentions=getattr(outputs, "attentions", None))
        return output


class MFMForImageClassificationMixin:
    """A linear classifier on the encoder's pooled output, as transformers' image
    classifiers (``labels`` ``(B,)`` -> cross-entropy, or the loss ``config.problem_type``
    asks for). The family class builds the encoder as its base model, then calls
    `_add_classifier`."""

    _new_weight_prefixes = ("classifier.",)

    def _add_classifier(self) -> None:
        self.num_labels = self.config.num_labels
        self.classifier = nn.Linear(self.config.num_features, self.num_labels) if self.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`): normalised images.
        labels (`torch.LongTensor` of shape `(batch,)`, *optional*): class indices (or what
            ``config.problem_type`` asks for); gives ``loss``.

        Returns `ImageClassifierOutput`: ``logits`` ``(batch, num_labels)``, ``loss`` with labels,
        ``hidden_states`` / ``attentions`` of the encoder on request.
        """
        outputs = self.base_model(pixel_values, output_hidden_states=output_hidden_states, return_dict=True, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        if labels is not None:
            check_labels(labels, logits.shape[0], self.config)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                       attentions=getattr(outputs, "attentions", None))
        return output


def backbone_from_pretrained(pretrained_model_name_or_path, **kwargs):
    """`AutoBackbone.from_pretrained` that also takes a local folder: transformers 5.23's
    `AutoBackbone` asks the Hub whether the name is a repository before anything else, so a
    local path fails (offline or not) and, online, an unknown name silently becomes a timm
    model. This resolves the config (local or Hub) and loads the registered backbone class."""
    from transformers import AutoBackbone, AutoConfig

    config = kwargs.get("config") or AutoConfig.from_pretrained(pretrained_model_name_or_path)
    return AutoBackbone._model_mapping[type(config)].from_pretrained(pretrained_model_name_or_path, **kwargs)
