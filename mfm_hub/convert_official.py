"""Convert an official MFM release checkpoint (``.pth``) to a Hugging Face checkpoint.

    python -m mfm_hub.convert_official --checkpoint mfm_pretrain_vit_base.pth \
        --arch vit-base --output mfm-vit-base [--push-to-hub org/mfm-vit-base]

Pre-trained files (``encoder.*`` + ``decoder.0.*``) become an ``MFM*ForPreTraining``
checkpoint (loadable by `AutoModel`, `AutoBackbone`, ...); fine-tuned files (no prefix,
``fc_norm`` + ``head`` for ViT, ``fc`` for timm ResNets) become ``MFM*ForImageClassification``.

The file is read with ``torch.load(weights_only=True)``: no pickled code runs. The yacs
``CfgNode`` that official files embed is the one non-tensor class allowed, mapped to an
inert dict stand-in.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch

from .arguments import guard_output_dir
from .configuration_mfm import PRESETS, config_from_preset
from .families import family_of
from .folder_lock import folder_claimed
from .hub import upload_folder
from .image_processing import image_processor_for_config
from .model_card import OFFICIAL_WEIGHTS_LICENSE, write_model_card
from .modeling_common import refuse_non_finite_weights
from .official import OFFICIAL_LICENSE
from .safe_load import load_tensors

IMAGENET_CLASSES = 1000

#: Short names of the released architectures.
ARCH_ALIASES = {"vit-base": "vit-base-patch16-224", "vit-small": "vit-small-patch16-224", "resnet50": "resnet50",
                "swin-base": "swin-base-patch4-window7-224"}



class _InertConfigNode:
    """Stand-in for ``yacs.config.CfgNode`` (a dict subclass): unpickles as a plain
    `OrderedDict`, one of the containers the safe unpickler fills, and runs nothing."""

    def __new__(cls, *args):
        return OrderedDict()


def load_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of an official ``.pth`` file, read without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    content = load_tensors(path, [(_InertConfigNode, "yacs.config.CfgNode")])
    if isinstance(content, dict):
        for key in ("model", "state_dict"):
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise ValueError(f"{path} does not contain a state dict (a dict of tensors, or one under 'model').")
    refuse_non_finite_weights(content.items(), path)
    return content


def _target_for(state_dict: dict[str, torch.Tensor], arch: str, image_size: Optional[int]):
    """Pick the model class and build its config from the checkpoint's key layout."""
    preset = ARCH_ALIASES.get(arch, arch)
    if preset not in PRESETS:
        raise KeyError(f"Unknown --arch {arch!r}; choose one of {sorted({*ARCH_ALIASES, *PRESETS})}.")
    overrides = {"image_size": image_size} if image_size else {}
    family = family_of(config_from_preset(preset, **overrides))
    if any(key.startswith("encoder.") for key in state_dict):
        return family.for_pretraining(config_from_preset(preset, **overrides))
    head = f"{family.model.official_classifier}.weight"
    if head not in state_dict:
        raise ValueError(f"A fine-tuned checkpoint needs '{head}'; found neither it nor 'encoder.*' keys.")
    fields = {"num_labels": state_dict[head].shape[0], **family.model.official_config_fields(state_dict), **overrides}
    if fields["num_labels"] == IMAGENET_CLASSES:  # the official fine-tuned files are ImageNet-1k classifiers: name the classes
        names = imagenet_class_names()
        fields.update(id2label=dict(enumerate(names)), label2id={name: index for index, name in enumerate(names)})
    return family.for_image_classification(config_from_preset(preset, **fields))


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in index order, as timm ships them ("tench, Tinca tinca", ...)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(index) for index in range(IMAGENET_CLASSES)]


def rename_official_keys(state_dict: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Official key -> our key: the encoder moves under ``<base>.encoder.`` (in the family's
    encoder layout, `official_encoder_keys`), the decoder keeps ``decoder.0.``, the classifier
    becomes ``classifier``."""
    base = model.base_model_prefix
    classifier = f"{model.base_model.official_classifier}."
    renamed, encoder = {}, {}
    for key, value in state_dict.items():
        if key.startswith("decoder."):
            renamed[key] = value
        elif key.startswith(classifier):
            renamed["classifier." + key.split(".", 1)[1]] = value
        else:
            encoder[key.removeprefix("encoder.")] = value
    renamed.update({f"{base}.encoder.{key}": value for key, value in model.base_model.official_encoder_keys(encoder).items()})
    return renamed


def _differences(state_dict: dict[str, torch.Tensor], model) -> Optional[str]:
    """What keeps ``state_dict`` (official layout) from loading into ``model`` exactly, or None."""
    renamed = {key: value.shape for key, value in rename_official_keys(state_dict, model).items()}
    expected = {key: value.shape for key, value in model.state_dict().items()}
    missing, unexpected = sorted(expected.keys() - renamed.keys()), sorted(renamed.keys() - expected.keys())
    reshaped = sorted(f"{key} {tuple(renamed[key])} vs {tuple(expected[key])}" for key in expected.keys() & renamed.keys()
                      if renamed[key] != expected[key])
    if not (missing or unexpected or reshaped):
        return None
    return f"missing {missing}; unexpected {unexpected}" + (f"; different shapes (file vs --arch) {reshaped}" if reshaped else "")


def _official_image_size(state_dict: dict[str, torch.Tensor]) -> Optional[int]:
    """A ViT file's image side, from its position embedding (cls + (side / patch)^2 tokens)."""
    pos_embed, patch = state_dict.get("encoder.pos_embed", state_dict.get("pos_embed")), None
    for key in ("encoder.patch_embed.proj.weight", "patch_embed.proj.weight"):
        if key in state_dict:
            patch = state_dict[key].shape[-1]
    if pos_embed is None or patch is None:
        return None
    side = math.isqrt(pos_embed.shape[1] - 1)
    return side * patch if side * side == pos_embed.shape[1] - 1 else None


def matching_architectures(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The presets whose model takes every weight of ``state_dict`` with its shape (built on
    the meta device, so trying them all allocates nothing)."""
    image_size = _official_image_size(state_dict)
    matches = []
    for preset in PRESETS:
        with torch.device("meta"):
            try:
                model = _target_for(state_dict, preset, image_size)
            except ValueError:
                continue
        if _differences(state_dict, model) is None:
            matches.append(preset + (f" (--image-size {image_size})" if image_size and image_size != model.config.image_size else ""))
    return matches


def convert(checkpoint: str | Path, arch: str, output: str | Path, image_size: Optional[int] = None, push_to_hub: Optional[str] = None,
            overwrite: bool = False):
    """Convert, verify that every weight is used with its shape, save (safetensors + image
    processor + model card) and optionally push. Returns the converted model. An ``output``
    folder that already holds files is refused unless ``overwrite``."""
    with folder_claimed(output):  # held while writing; a script's own claim stays until it exits
        guard_output_dir(output, overwrite, flag="--overwrite")
        state_dict = load_official_checkpoint(checkpoint)
        model = _target_for(state_dict, arch, image_size)
        differences = _differences(state_dict, model)
        if differences:
            candidates = matching_architectures(state_dict)
            hint = (f" The file matches --arch {' or '.join(candidates)}." if candidates
                    else " No preset matches the file; it is not an MFM ViT / ResNet release in a known size.")
            raise ValueError(f"{checkpoint} does not match --arch {arch} ({type(model).__name__}): {differences}.{hint}")
        model.load_state_dict(rename_official_keys(state_dict, model))
        model.eval()
        output = Path(output)
        model.save_pretrained(output)
        image_processor_for_config(model.config).save_pretrained(output)  # the converter's own folder: its processor
        write_model_card(
            output,
            template="converted_official.md",
            model=model,
            fields={"source_checkpoint": Path(checkpoint).name, "license_note": OFFICIAL_LICENSE, "arch": arch},
            license=OFFICIAL_WEIGHTS_LICENSE,
        )
        if push_to_hub:
            upload_folder(output, push_to_hub, f"Convert official MFM {arch}")
        return model


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="official .pth file")
    parser.add_argument("--arch", required=True, help=f"one of {sorted(ARCH_ALIASES)} or a preset name")
    parser.add_argument("--output", required=True, help="directory for the converted checkpoint")
    parser.add_argument("--image-size", type=int, default=None, help="image size of the config (default: the preset's)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload to this Hub repository")
    parser.add_argument("--overwrite", action="store_true", help="write into an output folder that already holds files")
    args = parser.parse_args(argv)
    model = convert(args.checkpoint, args.arch, args.output, args.image_size, args.push_to_hub, overwrite=args.overwrite)
    print(f"Converted {args.checkpoint} -> {args.output} ({type(model).__name__})")


if __name__ == "__main__":
    main()
