"""Trainer machinery the scripts share: a stop on SIGTERM that saves a resumable checkpoint,
and data-loader workers that leave termination signals to the main process.

Schedulers and launchers signal more than the main process: torchrun and Kubernetes' process
managers signal a whole process group, SLURM every process of a job step, Ctrl-C the terminal's
foreground group. A data-loader worker that dies of such a signal takes the run with it
("DataLoader worker is killed by signal: Terminated") before the main process can save. Workers
therefore ignore SIGTERM and SIGINT; the main process decides, and shuts them down itself.
"""

from __future__ import annotations

import signal

from transformers import TrainerCallback


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


class SignalSafeWorkersMixin:
    """For a `transformers.Trainer` subclass: every data loader it builds gets workers that
    ignore termination signals (`protect_workers`)."""

    def get_train_dataloader(self):
        return protect_workers(super().get_train_dataloader())

    def get_eval_dataloader(self, eval_dataset=None):
        return protect_workers(super().get_eval_dataloader(eval_dataset))

    def get_test_dataloader(self, test_dataset):
        return protect_workers(super().get_test_dataloader(test_dataset))


class SaveOnSigterm(TrainerCallback):
    """On SIGTERM, finish the current step, save a checkpoint and stop (resumable); the script
    then exits with 143, as a process killed by SIGTERM would."""

    def __init__(self):
        self.received = False

    def on_train_begin(self, args, state, control, **kwargs):
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = True
            control.should_training_stop = True


__all__ = ["SaveOnSigterm", "SignalSafeWorkersMixin", "ignore_termination_signals", "protect_workers"]
