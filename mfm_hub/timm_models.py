"""The official checkpoints under timm's names: after ``import mfm_hub``,
``timm.list_models("mfm*", pretrained=True)`` lists them and
``timm.create_model("mfm_vit_base_patch16_224.mfm_pt300_ft100_in1k", pretrained=True)`` loads
one through the zoo (downloaded and converted once, `mfm_hub.zoo`) as timm's own model (the
same `mfm_hub.timm_export.to_timm` conversion, exact weights).

Names follow timm's ``architecture.tag`` convention: the architecture is the backbone
(``mfm_vit_base_patch16_224``, ``mfm_resnet50``), the tag says how the weights were made
(``<method>_pt300_in1k`` pre-trained on ImageNet-1k for 300 epochs,
``<method>_pt300_ft100_in1k`` then fine-tuned for 100). Licence of every file: S-Lab 1.0,
non-commercial (``pretrained_cfg["license"]``).
"""

from __future__ import annotations

from typing import Any, Optional

from timm.models import generate_default_cfgs, register_model

from .configuration_mfm import IMAGENET_MEAN, IMAGENET_STD, config_from_preset
from .image_processing import EVAL_CROP_PCT
from .official import BACKBONES, DRIVE_URL, OFFICIAL_CHECKPOINTS, OFFICIAL_LICENSE, SOURCE_URL, OfficialCheckpoint

#: timm architecture name of each zoo backbone.
ARCHITECTURES = {"vit-b16": "mfm_vit_base_patch16_224", "resnet50": "mfm_resnet50"}


def timm_tag(entry: OfficialCheckpoint) -> str:
    """``mfm_pt300_in1k`` for ``mfm-vit-b16-pt300``, ``mfm_pt300_ft100_in1k`` for ``...-ft100``."""
    finetune = f"_ft{entry.finetune_epochs}" if entry.finetune_epochs else ""
    return f"{entry.method}_pt{entry.pretrain_epochs}{finetune}_in1k"


def timm_name(entry: OfficialCheckpoint) -> str:
    """The timm name (``architecture.tag``) of a zoo entry."""
    return f"{ARCHITECTURES[entry.backbone]}.{timm_tag(entry)}"


#: timm name -> zoo entry; an architecture's first tag is its default: MFM's own pre-trained weights
ZOO_ENTRIES = {timm_name(entry): entry for entry in sorted(OFFICIAL_CHECKPOINTS.values(),
                                                            key=lambda e: (e.method != "mfm", e.finetune_epochs or 0, e.name))}

# timm's registry reads the pretrained configs from this module's ``default_cfgs``
default_cfgs = generate_default_cfgs({
    name: dict(url=entry.url(DRIVE_URL), num_classes=1000 if entry.finetune_epochs else 0, input_size=(3, 224, 224), crop_pct=EVAL_CROP_PCT,
               interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, license=OFFICIAL_LICENSE,
               origin_url=SOURCE_URL, paper_ids="arXiv:2206.07706")
    for name, entry in ZOO_ENTRIES.items()
})


def _create(architecture: str, pretrained: bool, pretrained_cfg: Any = None, num_classes: Optional[int] = None, **kwargs):
    """A zoo backbone as timm's model: the zoo entry's weights when ``pretrained``, else the
    same architecture freshly initialised. ``num_classes`` replaces the classifier (0: none)."""
    from . import zoo
    from .families import family_of
    from .timm_export import to_timm

    kwargs = {key: value for key, value in kwargs.items() if value is not None}  # timm passes cache_dir=None and the like
    if kwargs:
        raise ValueError(f"{architecture} takes pretrained and num_classes only, not {sorted(kwargs)}; export a checkpoint with "
                         "`python -m mfm_hub.timm_export` to build it with other timm arguments.")
    tag = getattr(pretrained_cfg, "tag", None) or (pretrained_cfg if isinstance(pretrained_cfg, str) else None)
    tags = [name.split(".", 1)[1] for name in ZOO_ENTRIES if name.startswith(f"{architecture}.")]
    tag = tag or tags[0]
    if f"{architecture}.{tag}" not in ZOO_ENTRIES:
        raise ValueError(f"{architecture} has no weights tagged {tag!r}; tags: {', '.join(tags)}.")
    entry = ZOO_ENTRIES[f"{architecture}.{tag}"]
    if pretrained:
        source = zoo.load(entry.name)
    else:
        preset = BACKBONES[entry.backbone][0]
        if entry.finetune_epochs:
            config = config_from_preset(preset, num_labels=default_cfgs[architecture].cfgs[tag].num_classes)
            source = family_of(config).for_image_classification(config)
        else:
            config = config_from_preset(preset)
            source = family_of(config).model(config)
    model, _ = to_timm(source)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    model.pretrained_cfg = model.default_cfg = {**default_cfgs[architecture].cfgs[tag].to_dict(), "architecture": architecture,
                                               "tag": tag, "num_classes": model.num_classes}
    return model


@register_model
def mfm_vit_base_patch16_224(pretrained: bool = False, **kwargs):
    """ViT-B/16 (BEiT layout, absolute position embeddings) pre-trained by MFM or a baseline (official weights)."""
    return _create("mfm_vit_base_patch16_224", pretrained, **kwargs)


@register_model
def mfm_resnet50(pretrained: bool = False, **kwargs):
    """ResNet-50 pre-trained by MFM or a baseline (official weights)."""
    return _create("mfm_resnet50", pretrained, **kwargs)


__all__ = ["ARCHITECTURES", "ZOO_ENTRIES", "mfm_resnet50", "mfm_vit_base_patch16_224", "timm_name", "timm_tag"]
