"""A Hugging Face Space (Gradio SDK) that serves the demo: copy this folder into the Space's
repository. The model is the official MFM ViT-B/16 unless the Space sets ``MFM_DEMO_MODEL``."""

import os
import sys

from mfm_hub.demo.app import main

main(sys.argv[1:] + (["--model", os.environ["MFM_DEMO_MODEL"]] if "MFM_DEMO_MODEL" in os.environ else []))
