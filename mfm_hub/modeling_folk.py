"""FOLK pre-training: informed (Com/RCom) frequency masking + self-distillation from an EMA teacher.

For every image two augmented views ``u, v`` are made. The **student** (encoder + MFM decoder +
projection head) sees the filtered views ``u~, v~``: it reconstructs their removed
frequencies (the MFM loss) and its head output for ``u~`` is trained to match the
**teacher**'s output for the *original* ``v`` (and ``v~`` to ``u``). The teacher (encoder +
head, no decoder) is an exponential moving average of the student and never receives
gradients. Head, temperatures, centring and the EMA schedule follow DINO, with unit-norm
prototypes, mean-patch head input (ViT) and a sharper teacher (0.02) chosen by measurement; no
text reachable here gives FOLK's own values, so each is a config field (see ``docs/FOLK.md``
for what is known, what was measured and what was chosen).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_mfm import MFMResNetConfig, MFMSwinConfig, MFMViTConfig
from .modeling_common import MFMPreTrainedModel, normalize
from .modeling_mfm_resnet import MFMResNetForPreTraining
from .modeling_mfm_swin import MFMSwinForPreTraining
from .modeling_mfm_vit import MFMViTForPreTraining


@dataclass
class FOLKPreTrainingOutput(ModelOutput):
    """Output of the ``FOLK*ForPreTraining`` models; the view axis is flattened view-major:
    rows ``0..B-1`` are the ``u`` views, rows ``B..2B-1`` the ``v`` views.

    loss (`torch.FloatTensor`): ``w_rec * reconstruction_loss + w_dist * distillation_loss``.
    reconstruction_loss, distillation_loss (`torch.FloatTensor`): the two terms.
    teacher_entropy (`torch.FloatTensor`): mean entropy (nats) of the teacher's targets;
        ``log K`` means uniform targets, which teach nothing.
    teacher_marginal_kl (`torch.FloatTensor`): KL (nats) between the batch-mean target and
        the uniform distribution; ``log K`` means every image got the same prototype.
    reconstruction (`(2B, C, H, W)`): the student's prediction of the normalised views.
    frequency_mask (`(2B, 1, H, W)`): the Com/RCom masks (shifted coordinates, 1 = kept).
    corrupted_pixel_values (`(2B, C, H, W)`): the filtered views in [0, 1].
    """

    loss: Optional[torch.FloatTensor] = None
    reconstruction_loss: Optional[torch.FloatTensor] = None
    distillation_loss: Optional[torch.FloatTensor] = None
    teacher_entropy: Optional[torch.FloatTensor] = None
    teacher_marginal_kl: Optional[torch.FloatTensor] = None
    reconstruction: Optional[torch.FloatTensor] = None
    frequency_mask: Optional[torch.FloatTensor] = None
    corrupted_pixel_values: Optional[torch.FloatTensor] = None


class Prototypes(nn.Linear):
    """The head's last layer, ``(N, bottleneck) -> (N, K)`` logits, without bias. With
    ``normalize`` every prototype is used at unit norm (DINO's weight-normalised last layer
    with its norm fixed to 1): the logits are cosines in [-1, 1] whatever weight decay and
    the optimiser do to the raw weights, so the temperatures alone set how sharp the
    distributions can be. The stored weight stays a plain parameter, so the teacher's EMA
    is still a plain average of parameters."""

    def __init__(self, in_features: int, out_features: int, normalize: bool = True):
        super().__init__(in_features, out_features, bias=False)
        self.normalize = normalize

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, bottleneck)`` -> prototype logits ``(N, K)``."""
        return F.linear(features, F.normalize(self.weight, dim=-1) if self.normalize else self.weight)


class ProjectionHead(nn.Module):
    """DINO-style head: 3-layer MLP (GELU) -> L2-normalised bottleneck -> `Prototypes`.
    ``(N, in_dim) -> (N, output_dim)`` logits."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, output_dim: int, normalize_prototypes: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.prototypes = Prototypes(bottleneck_dim, output_dim, normalize_prototypes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features ``(N, num_features)`` -> prototype logits ``(N, K)``."""
        return self.prototypes(F.normalize(self.mlp(features), dim=-1))


def ema_momentum(step: int, total_steps: int, base: float) -> float:
    """Teacher momentum after optimizer step ``step`` (1-based) of ``total_steps``: cosine from
    ``base`` at the start to 1 at the end, ``1 - (1 - base) * (cos(pi * step / total) + 1) / 2``."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def teacher_temperature(step: int, total_steps: int, config) -> float:
    """Teacher temperature at optimizer step ``step`` of ``total_steps``: linear from
    ``folk_warmup_teacher_temperature`` to ``folk_teacher_temperature`` over the first
    ``folk_teacher_temperature_warmup_ratio`` of the run (DINO's warm-up), then constant."""
    warmup = config.folk_teacher_temperature_warmup_ratio * total_steps
    if step >= warmup:
        return config.folk_teacher_temperature
    start, end = config.folk_warmup_teacher_temperature, config.folk_teacher_temperature
    return start + (end - start) * step / warmup


def prototypes_frozen(step: int, total_steps: int, config) -> bool:
    """Whether optimizer step ``step`` (0-based) leaves the student's prototypes alone (DINO
    freezes its last layer in the first epoch: the prototypes move only once the features
    under them have started to organise)."""
    return step < config.folk_freeze_prototypes_ratio * total_steps


class FOLKScheduleCallback(TrainerCallback):
    """FOLK's per-step schedules in a Trainer, all functions of its global step (so a resumed
    run continues exactly, and every DDP rank does the same): the teacher temperature is set
    before each optimizer step, the student's prototypes sit out the steps
    `prototypes_frozen` names, and after every optimizer step (once per accumulated batch)
    the teacher moves towards the student with the cosine momentum schedule. The teacher and
    centre live in the model's state dict, so checkpoints restore them."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.teacher_temperature = teacher_temperature(state.global_step, state.max_steps, model.config)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if prototypes_frozen(state.global_step, state.max_steps, model.config):
            model.drop_prototype_gradients()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        model.update_teacher(ema_momentum(state.global_step, state.max_steps, model.config.folk_ema_momentum))


def distribution_statistics(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean entropy of the rows, KL(mean row || uniform))`` of ``(N, K)`` probabilities,
    in nats. A uniform collapse has entropy ``log K`` and KL 0; a collapse onto one
    prototype has entropy 0 and KL ``log K``; healthy targets have both well inside."""
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()
    marginal = probs.mean(dim=0)
    kl_uniform = (marginal * (marginal.clamp_min(1e-12) * probs.shape[-1]).log()).sum()
    return entropy, kl_uniform


def cross_view_distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric cross-view cross-entropy. Both inputs are ``(2B, K)``, view-major
    (``u`` rows first): the student's ``u~`` rows are scored against the teacher's ``v`` rows
    and ``v~`` against ``u``; the two halves are averaged."""
    batch = student_logits.shape[0] // 2
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    swapped_teacher = torch.cat([teacher_probs[batch:], teacher_probs[:batch]])
    return -(swapped_teacher * log_p).sum(dim=-1).mean()


class FOLKForPreTraining(MFMPreTrainedModel):
    """FOLK, composed of four parts: ``student`` (the family's MFM pre-training model: encoder,
    linear decoder and reconstruction loss), ``teacher`` (the family's encoder, an EMA of the
    student's and never trained by gradients), and ``student_head`` / ``teacher_head`` (the
    projection heads), plus the teacher-output ``center``. One subclass per family names its
    config and student classes (``FOLKViTForPreTraining`` etc., `mfm_hub.families`).

    Input: ``pixel_values`` ``(B, 2, C, H, W)``, two un-normalised views in [0, 1] of every
    image. Output: `FOLKPreTrainingOutput`.
    """

    student_class: type  # the family's MFM*ForPreTraining
    base_model_prefix = "student"
    supports_gradient_checkpointing = True
    # weights a checkpoint of another kind may lack: an MFM pre-training checkpoint has no
    # teacher or heads (the teacher starts as the student), a backbone no decoder either
    _new_weight_prefixes = ("decoder.", "teacher.", "student_head.", "teacher_head.", "center")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # the attention implementations transformers may set on the shared config: the student's
        cls._supports_sdpa = getattr(getattr(cls, "student_class", None), "_supports_sdpa", False)

    def __init__(self, config):
        super().__init__(config)
        self.student = self.student_class(config)
        self.teacher = type(self.student.base_model)(config)
        head = dict(in_dim=config.num_features, hidden_dim=config.folk_head_hidden_dim,
                    bottleneck_dim=config.folk_head_bottleneck_dim, output_dim=config.folk_head_output_dim,
                    normalize_prototypes=config.folk_normalize_prototypes)
        self.student_head = ProjectionHead(**head)
        self.teacher_head = ProjectionHead(**head)
        self.register_buffer("center", torch.zeros(1, config.folk_head_output_dim))
        #: set per optimizer step by the training schedule (`teacher_temperature`); a model
        #: used outside training uses the final value
        self.teacher_temperature = config.folk_teacher_temperature
        # checkpoints written before FOLK was composed kept the student's modules at the top level
        self._register_load_state_dict_pre_hook(self._move_flat_student_keys)
        self.post_init()
        self.reset_teacher()

    @property
    def base_model(self) -> nn.Module:
        """The student's encoder (what ``base_model`` means for every other MFM model)."""
        return self.student.base_model

    def _init_weights(self, module: nn.Module) -> None:
        self.student._init_weights(module)  # the heads are initialised as the family initialises its layers
        if module is self:  # a checkpoint without the centre (an MFM one) would otherwise leave it uninitialised memory
            init.zeros_(self.center)

    @classmethod
    def _flat_student_pattern(cls) -> str:
        return rf"^({cls.student_class.base_model_prefix}|decoder)\."

    def _move_flat_student_keys(self, state_dict, prefix, *args) -> None:
        pattern = re.compile(self._flat_student_pattern())
        for key in [k for k in state_dict if k.startswith(prefix) and pattern.match(k[len(prefix):])]:
            state_dict[f"{prefix}student.{key[len(prefix):]}"] = state_dict.pop(key)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Loads FOLK checkpoints (also those written before FOLK was composed) and starts FOLK
        from an MFM pre-training or backbone checkpoint: a checkpoint without a teacher gets
        the loaded student as its teacher."""
        encoder_prefix = cls.student_class.base_model_prefix
        kwargs.setdefault("key_mapping", {cls._flat_student_pattern(): r"student.\1.", r"^encoder\.": f"student.{encoder_prefix}.encoder."})
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        if any(key.startswith(("teacher.", "teacher_head.")) for key in info["missing_keys"]):
            model.reset_teacher()
        return (model, info) if output_loading_info else model

    def _teacher_student_pairs(self):
        return [(self.teacher, self.student.base_model), (self.teacher_head, self.student_head)]

    @torch.no_grad()
    def reset_teacher(self) -> None:
        """Teacher := student, frozen (it is only ever changed by `update_teacher`)."""
        for teacher, student in self._teacher_student_pairs():
            teacher.load_state_dict(student.state_dict())
            teacher.requires_grad_(False)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter;
        buffers (BatchNorm statistics) are the teacher's own."""
        teacher_params, student_params = [], []
        for teacher, student in self._teacher_student_pairs():
            teacher_params += list(teacher.parameters())
            student_params += [p.detach() for p in student.parameters()]
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)  # one pass over the weights

    def head_features(self, encoded) -> torch.Tensor:
        """``(N, D)`` features the projection heads read from an encoder output (the family's
        `folk_head_input`)."""
        return self.student.base_model.folk_head_input(encoded)

    def drop_prototype_gradients(self) -> None:
        """Leave the student's prototypes out of the coming optimizer step (AdamW skips a
        parameter without a gradient: no update, no weight decay, no moment change)."""
        self.student_head.prototypes.weight.grad = None

    def exported_backbone(self):
        """The encoder a FOLK run publishes (``config.folk_export``)."""
        return self.teacher if self.config.folk_export == "teacher" else self.student.base_model

    @torch.no_grad()
    def _update_center(self, teacher_logits: torch.Tensor) -> None:
        batch_sum = teacher_logits.float().sum(dim=0, keepdim=True)
        count = torch.tensor([teacher_logits.shape[0]], device=teacher_logits.device, dtype=torch.float32)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(count)
        momentum = self.config.folk_center_momentum
        self.center.mul_(momentum).add_(batch_sum / count, alpha=1.0 - momentum)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        frequency_mask: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ) -> FOLKPreTrainingOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, 2, channels, height, width)`):
            two **un-normalised** augmented views (in [0, 1]) of every image.
        frequency_mask (`(2 * batch, 1, height, width)`, *optional*): masks to use instead of
            the sampled Com/RCom masks (view-major).
        generator (`torch.Generator`, *optional*): seeds the masks.

        Returns `FOLKPreTrainingOutput` (a tuple with ``return_dict=False``): the total ``loss``, its
        two terms, the student's ``reconstruction`` ``(2 * batch, channels, height, width)`` and the
        teacher's target statistics.
        """
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 5 or pixel_values.shape[1] != 2:
            got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"FOLK takes two views per image, `pixel_values` of shape (batch, 2, C, H, W); got {got}.")
        config = self.config
        views = pixel_values.transpose(0, 1).reshape(-1, *pixel_values.shape[2:])  # (2B, C, H, W): all u, then all v
        student = self.student.reconstruct(views, frequency_mask, generator)
        student_logits = self.student_head(self.head_features(student.encoder_outputs))
        with torch.no_grad():
            teacher_logits = self.teacher_head(self.head_features(self.teacher(normalize(views, config), return_dict=True))).float()
            teacher_probs = F.softmax((teacher_logits - self.center) / self.teacher_temperature, dim=-1)
            teacher_entropy, teacher_marginal_kl = distribution_statistics(teacher_probs)
            if self.training:
                self._update_center(teacher_logits)
        dist_loss = cross_view_distillation_loss(student_logits, teacher_probs, config.folk_student_temperature)
        loss = config.folk_reconstruction_weight * student.loss + config.folk_distillation_weight * dist_loss
        output = FOLKPreTrainingOutput(
            loss=loss,
            reconstruction_loss=student.loss.detach(),
            distillation_loss=dist_loss.detach(),
            teacher_entropy=teacher_entropy,
            teacher_marginal_kl=teacher_marginal_kl,
            reconstruction=student.reconstruction,
            frequency_mask=student.corruption.frequency_mask,
            corrupted_pixel_values=student.corruption.pixel_values,
        )
        return output


class FOLKViTForPreTraining(FOLKForPreTraining):
    """FOLK on the MFM ViT (the heads read the mean patch token, or the cls token with
    ``folk_head_pooling="cls"``)."""

    config_class = MFMViTConfig
    student_class = MFMViTForPreTraining


class FOLKResNetForPreTraining(FOLKForPreTraining):
    """FOLK on the MFM ResNet (the heads read the global-average-pooled stride-32 map)."""

    config_class = MFMResNetConfig
    student_class = MFMResNetForPreTraining


class FOLKSwinForPreTraining(FOLKForPreTraining):
    """FOLK on the MFM Swin (the heads read the global-average-pooled normed stride-32 map)."""

    config_class = MFMSwinConfig
    student_class = MFMSwinForPreTraining


__all__ = [
    "FOLKScheduleCallback",
    "FOLKForPreTraining",
    "FOLKPreTrainingOutput",
    "FOLKSwinForPreTraining",
    "FOLKResNetForPreTraining",
    "FOLKViTForPreTraining",
    "ProjectionHead",
    "Prototypes",
    "cross_view_distillation_loss",
    "distribution_statistics",
    "ema_momentum",
    "prototypes_frozen",
    "teacher_temperature",
]
