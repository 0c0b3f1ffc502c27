"""Model cards: the text rendered from the templates in ``model_cards/`` (installed as
``mfm_hub.model_cards``) with facts read off the model and the caller's fields; the metadata
(licence, Hub task, base model, datasets) set through huggingface_hub's `ModelCardData`, so a
derived checkpoint (fine-tuned, segmentation, timm export) keeps its source's licence."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Optional

from huggingface_hub import ModelCard
from huggingface_hub.errors import EntryNotFoundError

from .configuration_mfm import means_local_path
from .official import SOURCE_URL


@dataclass(frozen=True)
class CardLicense:
    """A licence as the Hub's card metadata states it: an id (``apache-2.0``, or ``other`` with
    a ``name`` and a ``link``)."""

    license: str
    name: Optional[str] = None
    link: Optional[str] = None

    def apply(self, card: ModelCard) -> None:
        card.data.license = self.license
        card.data.license_name = self.name
        card.data.license_link = self.link

    @property
    def description(self) -> str:
        return self.name or self.license


#: The licence of the weights the MFM authors released, and so of everything derived from them.
OFFICIAL_WEIGHTS_LICENSE = CardLicense("other", "s-lab-license-1.0", f"{SOURCE_URL}/blob/master/LICENSE")
#: This project's own licence: the default for weights trained from scratch with it.
PROJECT_LICENSE = CardLicense("apache-2.0")


def source_license(source) -> Optional[CardLicense]:
    """The licence a checkpoint's card states: a local folder's ``README.md``, a Hub
    repository's card (from the cache, else the Hub), or the official licence for a zoo entry;
    None when the source says nothing or its card cannot be read (a preset, a bare folder, a Hub
    card while offline)."""
    from .official import OFFICIAL_CHECKPOINTS

    if str(source) in OFFICIAL_CHECKPOINTS:
        return OFFICIAL_WEIGHTS_LICENSE
    repository = hub_base_model(source)
    if repository is None:
        readme = Path(str(source)) / "README.md"
        if not readme.is_file():
            return None
        data = ModelCard.load(readme).data
    else:
        try:
            data = ModelCard.load(repository).data
        except (OSError, ValueError, EntryNotFoundError):  # offline and not cached, no card in the repository, the Hub unreachable
            return None
    if not data or not data.license:
        return None
    return CardLicense(data.license, getattr(data, "license_name", None), getattr(data, "license_link", None))


def hub_base_model(source) -> Optional[str]:
    """``source`` when it names a Hub repository (``owner/name`` and nothing local), for the
    card's ``base_model``; None for presets, zoo names and local folders."""
    return None if means_local_path(str(source)) else str(source)


def pipeline_tag(model) -> str:
    """The Hub task of ``model``: what the pipeline for it is called."""
    from transformers import UperNetForSemanticSegmentation

    from .families import FAMILIES

    if isinstance(model, UperNetForSemanticSegmentation):
        return "image-segmentation"
    if isinstance(model, tuple(family.for_image_classification for family in FAMILIES.values())):
        return "image-classification"
    return "image-feature-extraction"

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
    backbone = getattr(model.config, "backbone_config", None)  # UperNet on an MFM backbone
    shape = f"UperNet on {backbone.summary}" if backbone is not None else model.config.summary
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


def write_model_card(output_dir: str | Path, template: str, model, fields: dict[str, str], license: Optional[CardLicense] = None,
                     source=None) -> Path:
    """``output_dir/README.md``: the rendered template, with the licence, the Hub task of
    ``model`` (`pipeline_tag`) and, for a model trained from ``source``, that source as the
    card's ``base_model`` where it is a Hub repository. The licence is ``license``, else the one
    ``source`` states, else the project's, except for a Hub ``source`` whose card could not be
    read: its licence binds the weights, so none is claimed and the text points at it.
    ``$license_note`` defaults to the licence's name."""
    base_model = hub_base_model(source) if source is not None else None
    license = license or (source_license(source) if source is not None else None) or (None if base_model else PROJECT_LICENSE)
    note = license.description if license else f"that of the base model {base_model} (its card could not be read here)"
    card = ModelCard(render_model_card(template, model, {"license_note": note, **fields}))
    if license:
        license.apply(card)
    card.data.library_name = "transformers"
    card.data.pipeline_tag = pipeline_tag(model)
    if base_model:
        card.data.base_model = base_model
    path = Path(output_dir) / "README.md"
    card.save(path)
    return path


__all__ = ["CITATIONS", "OFFICIAL_WEIGHTS_LICENSE", "PROJECT_LICENSE", "CardLicense", "hub_base_model", "pipeline_tag",
           "render_model_card", "source_license", "write_model_card"]
