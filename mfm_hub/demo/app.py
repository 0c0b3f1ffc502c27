"""The Gradio page and its command line (``python -m mfm_hub.demo``): an image (uploaded or an
example), a pretext task from the registry with its parameters, and what the model makes of it
(`mfm_hub.demo.panels` computes every picture).

The controls are generated from `mfm_hub.pretext.PRETEXT_TASKS`, so a newly registered task
appears with its parameters. Nothing is fetched from the network: Gradio's analytics are off
and its page uses only its bundled assets (checked in a real browser, `tests/test_demo.py`).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from ..data import FASHION_MNIST_DIR, IMAGE_EXTENSIONS, fashion_mnist_samples  # noqa: E402
from ..pretext import PRETEXT_TASKS, TaskParameter, get_pretext_task  # noqa: E402
from ..visualization import plot_band_errors  # noqa: E402
from .panels import image_to_pixels, load_reconstruction_model, panel_images, read_image, run_task  # noqa: E402

#: The official MFM ViT-B/16: what a Space would show (downloaded once into the zoo's cache).
DEFAULT_MODEL = "mfm-vit-b16-pt300"
NUM_FASHION_MNIST_EXAMPLES = 6
#: Largest upload the server accepts (Gradio refuses bigger files with its own message).
MAX_FILE_SIZE = "25mb"
PANEL_TITLES = ("input", "input spectrum", "kept frequencies", "corrupted input", "reconstruction", "reconstruction spectrum")
INTRODUCTION = """# What masked frequency modeling does
Pick an image, a pretext task and its parameters: the page shows the image and its spectrum
(log magnitude, low frequencies in the centre), the frequencies the task keeps, what the
encoder sees, the model's reconstruction and its spectrum, and per frequency band how far the
corrupted input and the reconstruction are from the original (error energy over the band's
energy: 1 = the band is gone, 0 = exact)."""


def _task_parameters() -> dict[str, TaskParameter]:
    """Every registered task's parameters by config field (a field shared by tasks gets one control)."""
    return {parameter.field: parameter for task in PRETEXT_TASKS.values() for parameter in task.parameters}


def _control(parameter: TaskParameter, config, visible: bool):
    current = getattr(config, parameter.field)
    if parameter.sequence:
        current = current[0]
    elem_id = f"parameter-{parameter.field}"
    if parameter.choices:
        labels = list(parameter.choices)
        value = next((label for label, choice in parameter.choices.items() if choice == current), labels[0])
        return gr.Radio(labels, value=value, label=parameter.label, visible=visible, elem_id=elem_id)
    value = min(max(current, parameter.minimum), parameter.maximum)
    return gr.Slider(parameter.minimum, parameter.maximum, value=value, step=parameter.step, label=parameter.label,
                     visible=visible, elem_id=elem_id)


def _summary(model_name: str, result, seconds: float) -> str:
    task = get_pretext_task(result.task)
    target = "on the removed frequencies" if result.frequency_mask is not None else "on all frequencies"
    parts = [f"**{task.title}** on `{model_name}`", f"loss **{result.loss:.4f}** (frequency loss {target})"]
    if result.removed_fraction is not None:
        parts.append(f"the mask removes {100 * result.removed_fraction:.1f}% of the spectrum")
    parts.append(f"computed in {seconds:.2f} s")
    return " · ".join(parts)


def build_demo(model, model_name: str, examples: Sequence[str | Path] = ()) -> gr.Blocks:
    """The page for ``model`` (an ``MFM*ForPreTraining`` in eval mode), named ``model_name``
    on the page, with ``examples`` (image files) to click."""
    parameters = _task_parameters()
    fields = list(parameters)
    default_task = get_pretext_task(model.config.pretext_task)

    def visible_controls(task_name: str):
        shown = {parameter.field for parameter in get_pretext_task(task_name).parameters}
        return [gr.update(visible=field in shown) for field in fields]

    def show(path: Optional[str], task_name: str, seed, *values):
        if path is None:
            return ["Upload an image or pick an example.", *([None] * (len(PANEL_TITLES) + 1))]
        if seed is None or not math.isfinite(seed) or seed < 0 or seed != int(seed):
            raise gr.Error(f"The seed must be a whole number >= 0, got {seed!r}.")
        chosen = dict(zip(fields, values))
        picked = {}
        for parameter in get_pretext_task(task_name).parameters:
            value = chosen[parameter.field]
            picked[parameter.field] = parameter.choices[value] if parameter.choices else value
        try:
            start = time.perf_counter()
            pixels = image_to_pixels(read_image(path), model.config)
            result = run_task(model, pixels, task_name, picked, seed=int(seed))
            panels = panel_images(result)
            radius = picked.get("mask_radius") if result.frequency_mask is not None else None
            bands = plot_band_errors(result.bands, "error per frequency band (lower is better)", radius)
            seconds = time.perf_counter() - start
        except ValueError as error:  # a refused image or parameter value: its message, not a traceback
            raise gr.Error(str(error)) from error
        images = [gr.Image(value=pixels, label=title) for title, pixels in panels.items()]
        return [_summary(model_name, result, seconds), *images, bands]

    with gr.Blocks(title="MFM demo") as demo:
        gr.Markdown(INTRODUCTION)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                upload = gr.File(label="image", file_types=["image"], type="filepath", elem_id="upload")
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[upload], label="examples")
                task = gr.Dropdown([(entry.title, entry.name) for entry in PRETEXT_TASKS.values()], value=default_task.name,
                                   label="pretext task", elem_id="task")
                shown = {parameter.field for parameter in default_task.parameters}
                controls = [_control(parameters[field], model.config, field in shown) for field in fields]
                seed = gr.Number(0, precision=0, minimum=0, label="seed (the task's random choices)", elem_id="seed")
            with gr.Column(scale=3):
                summary = gr.Markdown("Upload an image or pick an example.", elem_id="summary")
                panels = []
                for row in (PANEL_TITLES[:3], PANEL_TITLES[3:]):
                    with gr.Row():
                        panels += [gr.Image(label=title, type="numpy", interactive=False, elem_id=f"panel-{index}")
                                   for index, title in enumerate(row, start=len(panels))]
                bands = gr.Image(label="error per frequency band", type="numpy", interactive=False, elem_id="band-errors")
        inputs, outputs = [upload, task, seed, *controls], [summary, *panels, bands]
        events = dict(fn=show, inputs=inputs, outputs=outputs, concurrency_id="model", concurrency_limit=1, trigger_mode="always_last")
        upload.change(**events)
        task.change(visible_controls, inputs=task, outputs=controls).then(**events)
        seed.change(**events)
        for control in controls:
            control.change(**events)
    return demo


def launch(demo: gr.Blocks, host: Optional[str] = None, port: Optional[int] = None, examples_dir: Optional[Path] = None,
           block: bool = True):
    """Serve ``demo`` (Gradio reads ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` when host or
    port are not given, as a Space sets them); returns ``(app, local_url)`` when not ``block``."""
    app, local_url, _ = demo.launch(
        server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, show_error=True, ssr_mode=False,
        allowed_paths=[str(examples_dir)] if examples_dir else None, prevent_thread_lock=not block, quiet=not block,
    )
    return app, local_url


def example_images(folder: Optional[Path]) -> tuple[list[Path], Optional[Path]]:
    """The image files of ``folder``, or without one a few Fashion-MNIST test items from Debian's
    package written to a temporary folder (none when the package is absent); and that folder."""
    if folder is not None:
        if not folder.is_dir():
            raise SystemExit(f"--examples {folder} is not a folder.")
        files = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise SystemExit(f"--examples {folder} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        return files, folder.resolve()
    if not FASHION_MNIST_DIR.exists():
        return [], None
    folder = Path(tempfile.mkdtemp(prefix="mfm_demo_examples_"))
    files = []
    for index, (image, name) in enumerate(fashion_mnist_samples(NUM_FASHION_MNIST_EXAMPLES)):
        files.append(folder / f"{index}-{name.replace('/', '-').replace(' ', '-').lower()}.png")
        image.save(files[-1])
    return files, folder


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mfm_hub.demo", description="Serve the demo page for a pre-training model.")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a pre-trained zoo name (`python -m mfm_hub.zoo list`), a checkpoint folder (a training run's output "
                             f"folder uses its last checkpoint) or a Hub id; default {DEFAULT_MODEL}")
    parser.add_argument("--host", default=None, help="address to serve on (default 127.0.0.1, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860, or $GRADIO_SERVER_PORT)")
    parser.add_argument("--examples", type=Path, default=None,
                        help="a folder of images to offer as examples (default: Fashion-MNIST items, when installed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the model runs")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    try:
        model = load_reconstruction_model(args.model).to(args.device)
    except (OSError, ValueError) as error:
        raise SystemExit(f"Cannot load --model {args.model}: {error}\nOffline, pass a local pre-training checkpoint, e.g. "
                         "`--model outputs/quickstart` after the README's first command.") from error
    examples, folder = example_images(args.examples)
    launch(build_demo(model, args.model, examples), args.host, args.port, folder)


__all__ = ["DEFAULT_MODEL", "MAX_FILE_SIZE", "build_demo", "example_images", "launch", "main"]
