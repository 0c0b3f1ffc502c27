"""Trainer machinery the scripts share: the pre-training Trainer, a stop on SIGTERM that saves
a resumable checkpoint, data-loader workers that leave termination signals to the main
process, and the checks that a checkpoint can continue a run exactly.

Schedulers and launchers signal more than the main process: torchrun and Kubernetes' process
managers signal a whole process group, SLURM every process of a job step, Ctrl-C the terminal's
foreground group. A data-loader worker that dies of such a signal takes the run with it
("DataLoader worker is killed by signal: Terminated") before the main process can save. Workers
therefore ignore SIGTERM and SIGINT; the main process decides, and shuts them down itself.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Optional

import safetensors.torch
import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_pt_utils import safe_globals
from transformers.utils import SAFE_WEIGHTS_NAME

from .batched_augmentation import batched_views
from .data import epoch_of
from .safe_load import load_tensors

logger = logging.getLogger(__name__)


def ignore_termination_signals() -> None:
    """SIGTERM and SIGINT do nothing in this process (a worker's parent stops it through its queue)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _WorkerInit:
    """A data loader's ``worker_init_fn`` that first ignores termination signals, then runs the
    loader's own (the Trainer's seeding). A class, not a closure, so that spawned workers can
    unpickle it."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, worker_id: int) -> None:
        ignore_termination_signals()
        if self.previous is not None:
            self.previous(worker_id)


def protect_workers(loader):
    """``loader`` with workers that ignore termination signals (unchanged without workers). For
    accelerate's wrappers the loader that starts the workers is the wrapped ``base_dataloader``."""
    starts_workers = getattr(loader, "base_dataloader", loader)
    if starts_workers.num_workers > 0 and not isinstance(starts_workers.worker_init_fn, _WorkerInit):
        starts_workers.worker_init_fn = _WorkerInit(starts_workers.worker_init_fn)
    return loader


class SignalSafeTrainingMixin:
    """For a `transformers.Trainer` subclass: every data loader it builds gets workers that
    ignore termination signals (`protect_workers`), and `SaveOnSigterm` gives SIGTERM back
    however training ends (one that raises never reaches ``on_train_end``)."""

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, SaveOnSigterm):
                    callback.restore_handler()

    def get_train_dataloader(self):
        return protect_workers(super().get_train_dataloader())

    def get_eval_dataloader(self, eval_dataset=None):
        return protect_workers(super().get_eval_dataloader(eval_dataset))

    def get_test_dataloader(self, test_dataset):
        return protect_workers(super().get_test_dataloader(test_dataset))


class SaveOnSigterm(TrainerCallback):
    """On SIGTERM, finish the current step, save a checkpoint and stop (resumable); the script
    then exits with 143, as a process killed by SIGTERM would. The handler lives only while the
    Trainer trains: a process that trains several times (a benchmark) is stopped by a SIGTERM
    between two trainings as it would be without us, not left to a finished run's handler."""

    def __init__(self):
        self.received = False
        self._previous_handler = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous_handler = signal.signal(signal.SIGTERM, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        self.restore_handler()

    def restore_handler(self) -> None:
        """Give SIGTERM back to the handler it had before training (once; later calls do nothing)."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _handle(self, signum, frame):
        self.received = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = True
            control.should_training_stop = True

    def stopped(self, trainer: Trainer) -> bool:
        """Whether the run stopped on SIGTERM; if so, says where its checkpoint is and how to resume."""
        if self.received:
            step, output_dir = trainer.state.global_step, trainer.args.output_dir
            print(f"Stopped by SIGTERM at step {step}; checkpoint saved in {output_dir}. "
                  f"Resume with --resume_from_checkpoint {output_dir}/checkpoint-{step}")
        return self.received


# --------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------

#: What a Trainer checkpoint needs to continue exactly, besides one RNG file per process.
RESUME_FILES = ("trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt")


def trainer_checkpoints(folder: str | Path) -> list[Path]:
    """The Trainer's ``checkpoint-<step>`` folders in ``folder``, oldest step first."""
    steps = {int(path.name.removeprefix("checkpoint-")): path for path in Path(folder).glob("checkpoint-*")
             if path.name.removeprefix("checkpoint-").isdigit()}
    return [steps[step] for step in sorted(steps)]


def _rng_files(checkpoint: Path, world_size: Optional[int]) -> list[str]:
    if world_size is None:  # as many processes as the checkpoint has RNG files for
        return sorted(path.name for path in checkpoint.glob("rng_state*.pth")) or ["rng_state.pth"]
    return ["rng_state.pth"] if world_size == 1 else [f"rng_state_{rank}.pth" for rank in range(world_size)]


def checkpoint_problem(checkpoint: Path, world_size: Optional[int] = None) -> Optional[str]:
    """Why ``checkpoint`` cannot be resumed exactly by ``world_size`` processes (any number when
    ``None``): a file missing or unreadable (say, half-written when the run was killed); or None.
    transformers would resume from it anyway: without ``scheduler.pt`` it silently starts a new
    optimizer and schedule, without an RNG file it draws different masks. Each file's structure
    and length are checked, not its tensors, so finding the newest good checkpoint of a large
    model reads kilobytes, not gigabytes."""
    if not checkpoint.is_dir():
        return f"{checkpoint} is not a folder"
    for name in (*RESUME_FILES, *_rng_files(checkpoint, world_size)):
        path = checkpoint / name
        if not path.is_file():
            return f"{path} is missing"
        try:
            if name.endswith(".json"):
                json.loads(path.read_text())["global_step"]
            elif name.endswith(".safetensors"):
                with safetensors.safe_open(path, "pt"):  # its header and its length: the weights are not read
                    pass
            else:
                with safe_globals():  # the numpy RNG types transformers itself allows in these files
                    load_tensors(path, mmap=True)  # a file cut short fails here; its tensors are not read
        except Exception as error:  # any failure to read it means it cannot be resumed from
            return f"{path} is unreadable ({str(error)[:300]})"
    return None


def newest_complete_checkpoint(folder: str | Path, world_size: Optional[int] = None, before: Optional[Path] = None) -> Optional[Path]:
    """The newest ``checkpoint-*`` in ``folder`` (older than ``before``, if given) that can be
    resumed exactly, or None."""
    checkpoints = trainer_checkpoints(folder)
    if before is not None and before in checkpoints:
        checkpoints = checkpoints[:checkpoints.index(before)]
    return next((path for path in reversed(checkpoints) if checkpoint_problem(path, world_size) is None), None)


def check_resumable(checkpoint: str | Path, world_size: int) -> None:
    """Stop before training when ``checkpoint`` cannot continue exactly, naming the file and
    the newest earlier checkpoint beside it that can."""
    path = Path(checkpoint)
    problem = checkpoint_problem(path, world_size)
    if problem is None:
        return
    good = newest_complete_checkpoint(path.parent, world_size, before=path)
    advice = (
        f"resume from the previous good checkpoint with --resume_from_checkpoint {good}"
        if good
        else "no earlier checkpoint beside it is complete"
    )
    raise ValueError(f"Cannot resume exactly from {path}: {problem}. Nothing was changed; {advice}.")


def resolve_resume_checkpoint(value: Optional[str], output_dir: str | Path, world_size: int) -> Optional[str]:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``True`` (transformers' convention)
    for the newest checkpoint in ``output_dir`` that can continue exactly; ``False`` for none."""
    if value is None or str(value).lower() == "false":
        return None
    if str(value).lower() != "true":
        return str(value)
    newest = newest_complete_checkpoint(output_dir, world_size)
    if newest is None:
        found = trainer_checkpoints(output_dir)
        detail = (f"its checkpoints ({', '.join(path.name for path in found)}) are all incomplete" if found
                  else "it holds no checkpoint-* folder")
        raise ValueError(f"--resume_from_checkpoint True resumes from the newest complete checkpoint in {output_dir}, but {detail}.")
    return str(newest)



# --------------------------------------------------------------------------------------
# Pre-training
# --------------------------------------------------------------------------------------


class NonFiniteLossError(FloatingPointError):
    pass


class MFMPretrainingTrainer(SignalSafeTrainingMixin, Trainer):
    """Trainer with the MFM weight-decay split, data-loader workers that leave SIGTERM to this
    process, a stop on a non-finite loss (before the optimizer step, so no checkpoint ever
    holds the damage), and, for FOLK, the two loss terms and the teacher's target statistics
    logged beside the total (this process's mean since the last log)."""

    LOSS_TERMS = ("reconstruction_loss", "distillation_loss", "teacher_entropy", "teacher_marginal_kl")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._term_sums = {name: 0.0 for name in self.LOSS_TERMS}
        self._term_count = 0
        self.unreadable_images: dict[str, int] = {}  # message (names the file) -> times replaced

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "crops" in inputs:  # --batched_augmentation: the views of the whole batch, made on the training device
            inputs["pixel_values"] = batched_views(inputs.pop("images"), inputs.pop("crops"), self.model.config.image_size,
                                                   inputs.pop("colours", None))
        skipped = inputs.pop("skipped_images", None)
        if skipped and model.training:
            self._count_skipped(skipped)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if getattr(outputs, "distillation_loss", None) is not None and model.training:
            for name in self.LOSS_TERMS:  # summed on the device; read (one sync) only when logging
                self._term_sums[name] = self._term_sums[name] + getattr(outputs, name)
            self._term_count += 1
        return (loss, outputs) if return_outputs else loss

    def _count_skipped(self, messages: list[str]) -> None:
        """Unreadable images replaced in the data pipeline (possibly in worker processes): one
        warning naming the first, and per distinct file how often it was replaced (every epoch
        draws it again), for the end of the run."""
        if not self.unreadable_images:
            logger.warning("%s; replaced by the next readable image, as will be any further unreadable one "
                           "(use --strict_data to stop instead).", messages[0])
        for message in messages:
            self.unreadable_images[message] = self.unreadable_images.get(message, 0) + 1

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._term_count:
            logs.update({name: float(total) / self._term_count for name, total in self._term_sums.items()})
            self._term_sums = {name: 0.0 for name in self.LOSS_TERMS}
            self._term_count = 0
        super().log(logs, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """transformers' resume reads the weights file into the model with a non-strict
        `load_state_dict`; a model whose `save_pretrained` writes other names than its modules
        (a conversion mapping, as ViTMAE's decoder has) would then continue with those weights
        silently re-initialised (huggingface/transformers#43701). Such a checkpoint is read
        through the model's own `from_pretrained`, which renames them back, strictly."""
        model = self.model if model is None else model
        weights = Path(resume_from_checkpoint) / SAFE_WEIGHTS_NAME
        if self.is_fsdp_enabled or not isinstance(model, PreTrainedModel) or not weights.is_file():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        with safetensors.safe_open(weights, "pt") as saved:
            names = set(saved.keys())
        if names == set(model.state_dict()):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("%s names its weights differently from the model; loading it through from_pretrained.", weights)
        model.load_state_dict(type(model).from_pretrained(resume_from_checkpoint, config=model.config).state_dict(), strict=True)

    def get_decay_parameter_names(self, model) -> list[str]:
        return [
            name for name, param in model.named_parameters()
            if param.ndim > 1 and not name.endswith(("pos_embed", "cls_token"))
        ]

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            last = newest_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLossError(
                f"The loss became {loss.item()} at step {self.state.global_step + 1}; stopped before updating the "
                f"weights. Last good checkpoint: {last or 'none saved yet'}. Lower the learning rate, "
                "use bf16 instead of fp16, or check the data for NaN pixels."
            )
        return loss


class EpochCallback(TrainerCallback):
    """Tells the dataset which epoch it is, so every epoch draws new crops."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(epoch_of(state.epoch))


def check_ranks_agree(model) -> None:
    """Under DDP, confirm every process ends with the same weights (a cheap checksum)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    with torch.no_grad():
        checksum = sum(p.double().sum().item() + p.double().pow(2).sum().item() for p in model.parameters())
    checksums = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(checksums, checksum)
    if len(set(checksums)) != 1:
        raise RuntimeError(f"Processes ended with different weights: checksums {checksums}.")
    logger.info("Weights identical across %d processes (checksum %.6e).", len(checksums), checksum)
    print(f"weights identical across {len(checksums)} processes")


__all__ = ["RESUME_FILES", "EpochCallback", "MFMPretrainingTrainer", "NonFiniteLossError", "SaveOnSigterm", "SignalSafeTrainingMixin",
           "check_ranks_agree", "check_resumable", "checkpoint_problem", "ignore_termination_signals", "newest_complete_checkpoint",
           "protect_workers", "resolve_resume_checkpoint", "trainer_checkpoints"]
