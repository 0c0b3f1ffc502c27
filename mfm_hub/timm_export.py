"""Export an MFM ViT / ResNet checkpoint in timm's own format, so that timm users load it with
``timm.create_model("hf-hub:<repo>", pretrained=True)`` or ``"local-dir:<folder>"``.

    python -m mfm_hub.timm_export --model outputs/quickstart --output outputs/quickstart-timm [--push-to-hub org/name]

The timm model is built by timm's own factory from explicit arguments (the official MFM
ViT is timm's `Beit` with absolute position embeddings, no relative position bias and no
LayerScale; an MFM ResNet is the timm ResNet of the same depth), every weight is loaded
strictly, and the folder gets timm's ``config.json`` (architecture, arguments and a
``pretrained_cfg`` with the evaluation preprocessing: input size, bicubic, crop 0.875,
ImageNet mean/std) plus ``model.safetensors``.

Why explicit arguments: timm's ``create_model`` drops ``None`` keyword arguments, so the
obvious ``init_values=None`` keeps the Beit default LayerScale; LayerScale is off here with
``init_values=0.0``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import torch
from huggingface_hub import ModelCard

from .arguments import guard_output_dir
from .configuration_mfm import check_model_source
from .families import saved_model_class
from .folder_lock import folder_claimed
from .hub import upload_folder
from .image_processing import EVAL_CROP_PCT
from .model_card import CardLicense, source_license
from .modeling_common import refuse_non_finite_weights


def to_timm(model):
    """The timm model equal to ``model``'s encoder (and classifier, if it has one)."""
    import timm

    encoder = model.base_model
    if not hasattr(encoder, "timm_architecture"):
        raise ValueError(f"{type(model).__name__} has no timm counterpart (its encoder defines no `timm_architecture`).")
    architecture, arguments, head = encoder.timm_architecture()
    classifier = getattr(model, "classifier", None)
    num_classes = classifier.out_features if isinstance(classifier, torch.nn.Linear) else 0
    timm_model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **arguments)
    state = dict(encoder.encoder.state_dict())
    if num_classes:
        state.update({f"{head}.weight": classifier.weight, f"{head}.bias": classifier.bias})
    timm_model.load_state_dict(state, strict=True)
    return timm_model.eval(), {**arguments, "num_classes": num_classes}


def export_to_timm(source, output: str | Path, push_to_hub: Optional[str] = None, overwrite: bool = False,
                   license: Optional[str] = None) -> Path:
    """Write ``source`` (a model, a checkpoint folder or a Hub id) as a timm checkpoint in
    ``output`` and optionally push it; an ``output`` holding files is refused unless ``overwrite``.
    The licence is ``license``, else the one the source checkpoint's card states (the official
    weights' S-Lab licence carries over), recorded in ``pretrained_cfg`` and the card."""
    from timm.models._hub import save_for_hf

    with folder_claimed(output):  # held while writing; a script's own claim stays until it exits
        guard_output_dir(output, overwrite, flag="--overwrite")
        if not isinstance(source, torch.nn.Module):
            check_model_source(source)
        model = source if isinstance(source, torch.nn.Module) else saved_model_class(source).from_pretrained(source).eval()
        refuse_non_finite_weights(model.state_dict().items(), f"The model to export ({type(model).__name__})")
        timm_model, arguments = to_timm(model)
        config = model.config
        data = dict(input_size=(config.num_channels, config.image_size, config.image_size), interpolation="bicubic",
                    crop_pct=EVAL_CROP_PCT, crop_mode="center", mean=tuple(config.image_mean), std=tuple(config.image_scale))
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        save_for_hf(timm_model, str(output), model_args=arguments, safe_serialization=True, data_config=data)
        path = output / "config.json"
        exported = json.loads(path.read_text())
        exported["pretrained_cfg"]["tag"] = "mfm_hub"  # not the ImageNet weights of the architecture we borrowed
        exported["pretrained_cfg"].pop("license", None)
        card_license = CardLicense(license) if license else (None if isinstance(source, torch.nn.Module) else source_license(source))
        if card_license:
            exported["pretrained_cfg"]["license"] = card_license.name or card_license.license
        if getattr(config, "id2label", None) and arguments["num_classes"]:
            exported["pretrained_cfg"]["label_names"] = [config.id2label[i] for i in range(arguments["num_classes"])]
        path.write_text(json.dumps(exported, indent=2))
        card = ModelCard(
            f"# {output.name} (timm format)\n\n"
            f"An MFM {type(model).__name__} ({config.summary}) exported by `python -m mfm_hub.timm_export`. timm builds it "
            f"through its `{exported['architecture']}` entry point with the explicit arguments in `config.json` (that entry "
            f"point's own shape is overridden), so timm loads it without mfm_hub installed.\n\n```python\nimport timm\n"
            f"model = timm.create_model(\"hf-hub:<this repo>\", pretrained=True)          # or \"local-dir:<folder>\"\n"
            f"features = timm.create_model(\"hf-hub:<this repo>\", pretrained=True, features_only=True)\n```\n"
            + (f"\nLicence: {card_license.description}.\n" if card_license else ""))
        card.data.library_name = "timm"
        card.data.tags = ["mfm", "timm"]
        card.data.pipeline_tag = "image-classification" if arguments["num_classes"] else "image-feature-extraction"
        if card_license:
            card_license.apply(card)
        card.save(output / "README.md")
        if push_to_hub:
            upload_folder(output, push_to_hub, "Export MFM checkpoint for timm")
        return output


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an MFM checkpoint folder or Hub id")
    parser.add_argument("--output", required=True, help="folder for the timm checkpoint")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO")
    parser.add_argument("--license", default=None, help="licence recorded in pretrained_cfg (e.g. other for the official weights)")
    parser.add_argument("--overwrite", action="store_true", help="write into an output folder that already holds files")
    args = parser.parse_args(argv)
    output = export_to_timm(args.model, args.output, args.push_to_hub, args.overwrite, args.license)
    print(f"timm checkpoint in {output}: timm.create_model('local-dir:{output}', pretrained=True)")


if __name__ == "__main__":
    main()
