"""``python -m mfm_hub.demo``: see `mfm_hub.demo.app.main`."""

from .app import main

main()
