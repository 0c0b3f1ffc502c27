"""Every figure the package writes (PNG): loss and validation curves, reconstruction grids,
confusion matrices, few-shot episode histograms, corruption errors and segmentation overlays.
The one place that sets up matplotlib (headless ``Agg``); benchmarks import ``plt`` from here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
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
    fig.suptitle(f"{title or config.pretext_task + ' pre-training'}: loss {output.loss.item():.3f} on these images", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def figure_pixels(fig) -> np.ndarray:
    """A figure drawn to an ``(H, W, 3)`` uint8 array (for an app rather than a file); closes it."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


def colormapped(values: torch.Tensor, colormap: str) -> np.ndarray:
    """``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 through a matplotlib colormap."""
    return (matplotlib.colormaps[colormap](values.clamp(0, 1).numpy())[..., :3] * 255).round().astype(np.uint8)


def plot_band_errors(bands, title: str, radius: Optional[float] = None) -> np.ndarray:
    """The demo's per-band error (`mfm_hub.demo.panels.BandErrors`): relative error energy of
    the corrupted input and of the reconstruction against the band's frequency, the bands the
    mask removed shaded, and the task's ``radius`` if it has one."""
    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=100)
    centres = bands.radius.numpy()
    if bands.removed is not None:
        width = float(centres[1] - centres[0]) if len(centres) > 1 else 1.0
        ax.bar(centres, bands.removed.numpy(), width=width, color="tab:gray", alpha=0.25, label="fraction removed by the mask")
    ax.plot(centres, bands.corrupted.numpy(), color="tab:red", marker=".", label="corrupted input")
    ax.plot(centres, bands.reconstruction.numpy(), color="tab:blue", marker=".", label="reconstruction")
    if radius is not None:
        ax.axvline(radius, color="black", linestyle=":", label=f"radius {radius:g}")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel("frequency (distance from DC, spectrum pixels of a 224-px image)", fontsize=8)
    ax.set_ylabel("error energy / band energy", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_pixels(fig)


__all__ = ["colormapped", "figure_pixels", "logged_losses", "logged_series", "plot_band_errors", "plot_loss_curve", "reconstruction_grid"]


def plot_confusion_matrix(
    labels: Sequence[int], predictions: Sequence[int], class_names: Sequence[str], path: str | Path, title: str
) -> Path:
    matrix = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=120)
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            if matrix[i, j]:
                ax.text(j, i, matrix[i, j], ha="center", va="center", fontsize=6, color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_episodes(accuracies: list[float], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.hist(accuracies, bins=min(30, max(5, len(accuracies) // 10)), color="tab:blue", alpha=0.8)
    ax.axvline(float(np.mean(accuracies)), color="black", linestyle="--", label=f"mean {np.mean(accuracies):.3f}")
    ax.set_xlabel("episode accuracy")
    ax.set_ylabel("episodes")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_errors(results: dict, corruptions: list[str], path: Path, model_name: str, baseline_name: str) -> None:
    model_err = [np.mean(list(results["errors"]["model"][c].values())) for c in corruptions]  # mean over severities
    base_err = [np.mean(list(results["errors"]["baseline"][c].values())) for c in corruptions]
    x = np.arange(len(corruptions))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(corruptions) + 2), 3.6), dpi=120)
    ax.bar(x - 0.2, model_err, width=0.4, label=f"{model_name} (mCE {results['mCE']:.3f})")
    ax.bar(x + 0.2, base_err, width=0.4, label=f"{baseline_name} (baseline)")
    ax.set_xticks(x, corruptions, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("top-1 error, mean over severities")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(f"clean error: {results['clean_error']['model']:.3f} vs {results['clean_error']['baseline']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


PALETTE = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
                    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192], [0, 0, 0]], dtype=np.uint8)


def colorize(labels: np.ndarray, ignore_index: Optional[int]) -> np.ndarray:
    palette = (
        PALETTE if labels.max() < len(PALETTE) else np.random.default_rng(0).integers(0, 255, (int(labels.max()) + 1, 3), dtype=np.uint8)
    )
    out = palette[np.clip(labels, 0, len(palette) - 1)]
    if ignore_index is not None:
        out[labels == ignore_index] = 0
    return out


def plot_overlays(images, references, predictions, ignore_index, path: Path, title: str) -> None:
    rows = len(images)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 2.4 * rows), dpi=110, squeeze=False)
    for r, (image, reference, prediction) in enumerate(zip(images, references, predictions)):
        for c, (panel, name) in enumerate(((image, "image"), (colorize(reference, ignore_index), "ground truth"),
                                           ((0.5 * image + 0.5 * colorize(prediction, None)).astype(np.uint8), "prediction"))):
            axes[r, c].imshow(panel)
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
