"""The official MFM model zoo: every checkpoint the authors released, in one registry, one
call away as a Hugging Face model.

    import mfm_hub
    model = mfm_hub.zoo.load("mfm-vit-b16-pt300")            # downloads, converts, caches, loads
    print(mfm_hub.zoo.table())                                   # the registry with reported top-1

    python -m mfm_hub.zoo list
    python -m mfm_hub.zoo fetch mfm-resnet50-pt300-ft300
    python -m mfm_hub.zoo publish --org my-org                   # every entry as its own Hub repo

A file is fetched once with `gdown` (Google Drive's large-file confirmation, progress bar,
resumable partial files; a body shorter than announced is an error), read without running
pickled code, converted by `convert_official` (every weight used with its shape) into
``<HF_HOME>/mfm_hub/zoo/<name>`` and then loaded from there, offline. The download location
is a URL template (``MFM_HUB_ZOO_URL``, e.g. ``http://mirror/{file_id}``) for mirrors and tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Optional

from huggingface_hub import EvalResult, ModelCard, constants

from .convert_official import convert
from .folder_lock import folder_claimed
from .hub import upload_folder
from .official import (
    BACKBONES,
    METHOD_NAMES,
    OFFICIAL_CHECKPOINTS,
    OFFICIAL_LICENSE,
    SOURCE_URL,
    ZOO_URL_ENV,
    OfficialCheckpoint,
    get,
)

_COMPLETE = ".complete"


def _reported(entry: OfficialCheckpoint) -> str:
    return ", ".join(f"{top1} ({epochs}-ep fine-tune)" for epochs, top1 in entry.reported_top1)


def table() -> str:
    """The registry as a markdown table (name, method, backbone, stage, epochs, reported top-1)."""
    lines = ["| name | method | backbone | weights | epochs (pre-train / fine-tune) | reported IN-1k top-1 |", "|---|---|---|---|---|---|"]
    for entry in OFFICIAL_CHECKPOINTS.values():
        epochs = f"{entry.pretrain_epochs} / {entry.finetune_epochs or '-'}"
        lines.append(
            f"| `{entry.name}` | {METHOD_NAMES[entry.method]} | {BACKBONES[entry.backbone][1]} | {entry.stage} | {epochs} "
            f"| {_reported(entry)} |"
        )
    return "\n".join(lines)


def cache_dir() -> Path:
    return Path(constants.HF_HOME) / "mfm_hub" / "zoo"


def fetch(name: str, url_template: Optional[str] = None, cache: Optional[Path] = None, quiet: bool = False) -> Path:
    """The converted checkpoint folder of zoo entry ``name``, downloading and converting it on
    the first call. A later call returns the cached folder without touching the network.

    The download goes to ``<cache>/downloads/<name>.pth``; an interrupted one leaves gdown's
    partial file there and the next call resumes it. A file that is short, corrupt or does not
    match the registered architecture raises `ValueError` naming it and is deleted; nothing
    is cached for it. Concurrent fetches into one cache take turns (`mfm_hub.folder_lock`).
    ``HF_HUB_OFFLINE=1`` is respected: an entry not cached yet is an error, with no network attempt."""
    entry = get(name)
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / name
    if (target / _COMPLETE).exists():
        return target
    if constants.HF_HUB_OFFLINE:
        raise OSError(f"The zoo entry {name} is not in the cache ({target}) and HF_HUB_OFFLINE=1 forbids downloading it: "
                      "unset HF_HUB_OFFLINE, or fetch it once on a connected machine and copy the cache folder.")
    with folder_claimed(cache / "downloads", wait=True):  # another process fetching into this cache: wait, then look again
        return target if (target / _COMPLETE).exists() else _download_and_convert(entry, url_template, cache, quiet)


def _download_and_convert(entry: OfficialCheckpoint, url_template: Optional[str], cache: Path, quiet: bool) -> Path:
    import gdown

    name, target, downloads = entry.name, cache / entry.name, cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    checkpoint = downloads / f"{name}.pth"
    url = entry.url(url_template)
    try:
        gdown.download(url, output=str(checkpoint), quiet=quiet, resume=True)
    except Exception as error:  # any transport failure: the partial file stays for the next call to resume
        raise OSError(f"Downloading {name} from {url} failed ({type(error).__name__}: {error}); "
                      f"call again to resume the partial download in {downloads}.") from error
    staging = cache / f".{name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model = convert(checkpoint, entry.arch, staging, overwrite=True)
    except (ValueError, KeyError) as error:
        checkpoint.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(f"The download of {name} ({url}) is not a usable official checkpoint and was deleted: {error}") from error
    write_zoo_card(staging, entry, model)
    (staging / _COMPLETE).write_text(entry.file_id + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    checkpoint.unlink()
    return target


def load(name: str, model_class=None, url_template: Optional[str] = None, **kwargs):
    """``fetch`` + ``from_pretrained``: the converted model (``MFM*ForPreTraining`` for a
    pre-trained file, ``MFM*ForImageClassification`` for a fine-tuned one), or ``model_class``
    (e.g. `AutoModel` for the bare encoder, `AutoBackbone`). A cached copy damaged since it was
    cached (a truncated or altered file) is removed and downloaded afresh, once."""
    from .families import saved_model_class

    folder = fetch(name, url_template=url_template)
    try:
        return (model_class or saved_model_class(folder)).from_pretrained(folder, **kwargs)
    except (ValueError, OSError):
        damage = cache_damage(folder)
        if damage is None:  # the entry is whole: the call itself is wrong (say, a model class of another family)
            raise
        print(f"The cached {name} is damaged ({damage}); removing it and downloading it again.")
        shutil.rmtree(folder)
        folder = fetch(name, url_template=url_template)
        return (model_class or saved_model_class(folder)).from_pretrained(folder, **kwargs)


def cache_damage(folder: Path) -> Optional[str]:
    """What is wrong with a converted cache entry (a config that does not parse, weights that do
    not read in full), or None."""
    from safetensors.torch import load_file

    for name, read in (("config.json", lambda path: json.loads(path.read_text())), ("model.safetensors", load_file)):
        try:
            read(folder / name)
        except Exception as error:  # any failure to read a file the entry needs means the entry is damaged
            return f"{name}: {type(error).__name__}: {str(error)[:200]}"
    return None


def write_zoo_card(folder: Path, entry: OfficialCheckpoint, model, repo_name: Optional[str] = None) -> Path:
    """The converted-checkpoint card plus the authors' ImageNet-1k results: in the text, and for
    a fine-tuned file in ``model-index`` too (each metric labelled as reported by the authors,
    with the official repository as source); a pre-trained file's numbers are its fine-tunings'."""
    from .model_card import OFFICIAL_WEIGHTS_LICENSE, write_model_card

    path = write_model_card(folder, "converted_official.md", model, {
        "source_checkpoint": f"{entry.name} (Google Drive file {entry.file_id})",
        "license_note": OFFICIAL_LICENSE,
        "arch": f"{METHOD_NAMES[entry.method]}, {BACKBONES[entry.backbone][1]}, {entry.stage}",
    }, license=OFFICIAL_WEIGHTS_LICENSE)
    card = ModelCard.load(path)
    started = "the fine-tunings that started from these weights" if not entry.finetune_epochs else "this model"
    card.text += (f"\n## Results reported by the authors\n\nImageNet-1k top-1 of {started} (official README, not re-measured "
                  f"here): {_reported(entry)}. Zoo entry `{entry.name}`: `mfm_hub.zoo.load(\"{entry.name}\")`.\n")
    card.data.model_name = repo_name or entry.name
    card.data.datasets = ["ILSVRC/imagenet-1k"]
    if not entry.finetune_epochs:  # a pre-trained file has no result of its own: the numbers are its fine-tunings'
        card.save(path)
        return path
    card.data.eval_results = [
        EvalResult(task_type="image-classification", dataset_type="ILSVRC/imagenet-1k", dataset_name="ImageNet-1k",
                   dataset_split="validation", metric_type="accuracy", metric_value=top1,
                   metric_name=f"Top-1 accuracy after {epochs}-epoch fine-tuning (reported by the authors)",
                   source_name="MFM official README (reported, not re-measured)", source_url=SOURCE_URL)
        for epochs, top1 in entry.reported_top1
    ]
    card.save(path)
    return path


def publish(organization: str, names: Optional[list[str]] = None, url_template: Optional[str] = None) -> list[str]:
    """Push every (or each named) zoo entry to ``<organization>/<name>``; re-running uploads
    only what changed (the Hub skips identical files)."""
    pushed = []
    for name in names or list(OFFICIAL_CHECKPOINTS):
        folder = fetch(name, url_template=url_template)
        repo_id = f"{organization}/{name}"
        upload_folder(folder, repo_id, f"Official MFM checkpoint {name}, converted by mfm_hub", ignore_patterns=[_COMPLETE])
        pushed.append(repo_id)
    return pushed


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print the registry")
    fetch_parser = commands.add_parser("fetch", help="download + convert + cache entries, print their folders")
    fetch_parser.add_argument("names", nargs="+")
    publish_parser = commands.add_parser("publish", help="push entries to a Hub organisation, one repository each")
    publish_parser.add_argument("--org", required=True)
    publish_parser.add_argument("--names", nargs="*", default=None, help="default: every entry")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(table())
    elif args.command == "fetch":
        for name in args.names:
            print(fetch(name))
    else:
        for repo_id in publish(args.org, args.names):
            print(f"pushed {repo_id}")


__all__ = ["OFFICIAL_CHECKPOINTS", "ZOO_URL_ENV", "OfficialCheckpoint", "cache_damage", "cache_dir", "fetch", "get", "load", "publish",
           "table", "write_zoo_card"]


if __name__ == "__main__":
    main()
