"""An interactive page that shows what a pretext task removes from an image and what a
pre-trained model puts back: ``python -m mfm_hub.demo [--model NAME_OR_FOLDER] [--port N]``
(needs the ``demo`` extra: ``pip install "mfm_hub[demo]"``).

`mfm_hub.demo.panels` computes the pictures (no Gradio needed); `mfm_hub.demo.app` is the page.
"""

from .panels import DemoInputError, load_reconstruction_model, panel_images, run_task

__all__ = ["DemoInputError", "load_reconstruction_model", "panel_images", "run_task"]
