"""Figures people look at: the loss curve and the reconstruction grid (PNG)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .frequency import spectrum_image  # noqa: E402
from .modeling_common import denormalize  # noqa: E402


def logged_series(log_history: list[dict], term: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every log entry that has ``term``."""
    return [(entry["step"], entry[term]) for entry in log_history if term in entry and "step" in entry]


def logged_losses(log_history: list[dict]) -> list[tuple[int, float]]:
    """``(step, loss)`` of every logged training loss; a run shorter than ``logging_steps``
    has only the Trainer's final average (``train_loss``), used then as one point."""
    return logged_series(log_history, "loss") or logged_series(log_history, "train_loss")


def plot_loss_curve(log_history: list[dict], path: str | Path, title: str = "Pre-training loss",
                    num_prototypes: Optional[int] = None) -> Path:
    """Training loss (and learning rate, on a second axis) against the optimizer step. For
    FOLK, the two loss terms too, and a second panel with the teacher's target statistics
    (mean entropy and KL of the mean target to uniform) against ``log K``, the value of a
    uniform (entropy) or single-prototype (KL) collapse."""
    points = logged_losses(log_history)
    if not points:
        raise ValueError("The log history holds no training loss.")
    rates = [(entry["step"], entry["learning_rate"]) for entry in log_history if "learning_rate" in entry]
    statistics = {term: logged_series(log_history, term) for term in ("teacher_entropy", "teacher_marginal_kl")}
    with_statistics = any(statistics.values())
    fig, axes = plt.subplots(1, 2 if with_statistics else 1, figsize=(11 if with_statistics else 6, 3.6), dpi=120, squeeze=False)
    ax = axes[0, 0]
    ax.plot(*zip(*points), color="tab:blue", marker="." if len(points) < 50 else None, label="loss")
    for term, color in (("reconstruction_loss", "tab:green"), ("distillation_loss", "tab:red")):
        series = logged_series(log_history, term)
        if series:
            ax.plot(*zip(*series), color=color, linestyle="--", label=term.replace("_", " "))
    if any("distillation_loss" in entry for entry in log_history):
        ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("frequency loss", color="tab:blue")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if rates:
        twin = ax.twinx()
        twin.plot(*zip(*rates), color="tab:orange", alpha=0.6, label="learning rate")
        twin.set_ylabel("learning rate", color="tab:orange")
    if with_statistics:
        ax = axes[0, 1]
        for (term, series), color in zip(statistics.items(), ("tab:purple", "tab:brown")):
            if series:
                ax.plot(*zip(*series), color=color, label=term.replace("_", " "))
        if num_prototypes:
            ax.axhline(math.log(num_prototypes), color="black", linestyle=":", label=f"log K (K = {num_prototypes})")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("nats")
        ax.set_title("teacher targets: entropy (uniform = log K), KL of their mean to uniform", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_validation_curve(log_history: list[dict], path: str | Path, title: str) -> Path:
    """Fine-tuning: training loss and validation top-1 against the optimizer step, to show
    whether a run has converged."""
    accuracy = logged_series(log_history, "eval_top1")
    if not accuracy:
        raise ValueError("The log history holds no validation accuracy (eval_top1).")
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(*zip(*accuracy), color="tab:green", marker=".", label="validation top-1")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation top-1", color="tab:green")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    losses = logged_losses(log_history)
    if losses:
        twin = ax.twinx()
        twin.plot(*zip(*losses), color="tab:blue", alpha=0.6, label="training loss")
        twin.set_ylabel("training loss", color="tab:blue")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


@torch.no_grad()
def reconstruction_grid(model, pixel_values: torch.Tensor, path: str | Path, generator: Optional[torch.Generator] = None,
                        title: Optional[str] = None) -> Path:
    """One row per image: input, corrupted input, reconstruction, and the spectra (log
    magnitude) of the three, plus the frequency mask when there is one.

    ``pixel_values`` are ``(N, C, H, W)`` images in [0, 1], or ``(N, 2, C, H, W)`` view pairs
    for FOLK, shown as rows ``u_0, v_0, u_1, v_1, ...``.
    """
    was_training = model.training
    model.eval()
    output = model(pixel_values.to(model.device), generator=generator)
    model.train(was_training)
    config = model.config
    inputs = pixel_values.cpu()
    order = torch.arange(inputs.shape[0])
    if inputs.ndim == 5:  # outputs are view-major: all u, then all v; interleave the pairs
        count = inputs.shape[0]
        inputs = inputs.transpose(0, 1).reshape(-1, *inputs.shape[2:])
        order = torch.stack([torch.arange(count), torch.arange(count) + count], dim=1).flatten()
    images = [inputs[order], output.corrupted_pixel_values.float().cpu().clamp(0, 1)[order],
              denormalize(output.reconstruction.float().cpu(), config).clamp(0, 1)[order]]
    titles = ["input", "corrupted input", "reconstruction", "input spectrum", "corrupted spectrum", "reconstruction spectrum"]
    spectra = [spectrum_image(image) for image in images]
    columns = images + spectra
    if output.frequency_mask is not None:
        columns.append(output.frequency_mask[:, 0].float().cpu()[order])
        titles.append("kept frequencies")
    rows = order.numel()
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows + 0.4), dpi=120, squeeze=False)
    for r in range(rows):
        for c, column in enumerate(columns):
            item = column[r]
            ax = axes[r, c]
            if item.ndim == 3:
                ax.imshow(item.permute(1, 2, 0).numpy(), interpolation="nearest")
            else:
                ax.imshow(item.numpy(), cmap="magma" if c >= 3 else "gray", interpolation="nearest", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=7)
    fig.suptitle(f"{title or config.corruption + ' pre-training'}: loss {output.loss.item():.3f} on these images", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["logged_losses", "logged_series", "plot_loss_curve", "reconstruction_grid"]
