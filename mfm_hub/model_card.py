"""Model cards rendered from the templates in ``model_cards/`` (installed as
``mfm_hub.model_cards``), filled with facts read off the model and the caller's fields."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from string import Template

CITATIONS = """```bibtex
@inproceedings{xie2023masked,
  title     = {Masked Frequency Modeling for Self-Supervised Visual Pre-Training},
  author    = {Xie, Jiahao and Li, Wei and Zhan, Xiaohang and Liu, Ziwei and Ong, Yew Soon and Loy, Chen Change},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2023}
}

@inproceedings{monsefi2025folk,
  title     = {Frequency-Guided Masking for Enhanced Vision Self-Supervised Learning},
  author    = {Monsefi, Amin Karimi and Zhou, Mengxi and Monsefi, Nastaran Karimi and Lim, Ser-Nam and Chao, Wei-Lun and Ramnath, Rajiv},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025}
}
```"""


def architecture_summary(model) -> str:
    shape = model.config.summary
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return f"{shape}; {params:.1f} M parameters ({type(model).__name__})"


def render_model_card(template: str, model, fields: dict[str, str]) -> str:
    """Fill ``model_cards/<template>``; every ``$placeholder`` must be provided (a missing
    one raises `KeyError` rather than publishing a card with holes)."""
    text = files("mfm_hub.model_cards").joinpath(template).read_text()
    common = {
        "model_class": type(model).__name__,
        "model_type": model.config.model_type,
        "architecture": architecture_summary(model),
        "citations": CITATIONS,
    }
    return Template(text).substitute({**common, **fields})


def write_model_card(output_dir: str | Path, template: str, model, fields: dict[str, str]) -> Path:
    path = Path(output_dir) / "README.md"
    path.write_text(render_model_card(template, model, fields))
    return path


__all__ = ["CITATIONS", "render_model_card", "write_model_card"]
