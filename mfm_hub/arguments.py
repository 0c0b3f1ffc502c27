"""What every entry point checks before it runs: its configuration file (YAML / JSON), its
arguments, and its output folder (with the Trainer checkpoints in it).

`transformers.HfArgumentParser.parse_yaml_file` hands the file's values to the dataclasses
as they are: a file that is not a mapping fails deep inside with an ``AttributeError``, a
string where a number belongs fails later in a computation (``"abc" * 0.5``), ``3.5`` steps
become a progress bar with ``3.5`` steps, and YAML reads ``3e-4`` (no dot) as a string. Here
every value goes through the same conversion its command-line flag uses, and any problem is
one `ValueError` naming the file, the key and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser

from .allocator import keep_freed_memory
from .folder_lock import claim_folder, holds_folder, release_folder
from .trainer import check_resumable, newest_complete_checkpoint, resolve_resume_checkpoint
from .validation import require, require_at_least

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON run configuration."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No configuration file at {path}.")
    text = path.read_text()
    try:
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values (`key: value` lines), not a {type(content).__name__}.")
    return content


def _convert(action: argparse.Action, key: str, value: Any, path: Path, annotation: str) -> Any:
    """``value`` as the command line would have parsed it for ``action``: ``null`` only where the
    argument may be empty (its default is None), a mapping only where its type holds one
    (``lr_scheduler_kwargs``: ``annotation`` names ``dict``), where both pass through."""
    expected = getattr(action.type, "__name__", str(action.type))
    if value is None:
        if action.default is not None:
            raise ValueError(f"{path}: `{key}` cannot be empty (null); it must be {expected} (default {action.default!r}).")
        return value
    if isinstance(value, dict):
        if "dict" not in annotation:
            raise ValueError(f"{path}: `{key}` must be {expected}, not a mapping ({value!r}).")
        return value
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if isinstance(value, list) and not many:
        raise ValueError(f"{path}: `{key}` takes a single value, got the list {value!r}.")
    converted = [_convert_one(action, key, item, path) for item in (value if isinstance(value, list) else [value])]
    return converted if many else converted[0]


def _convert_one(action: argparse.Action, key: str, item: Any, path: Path) -> Any:
    try:
        result = action.type(str(item)) if action.type is not None else item
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        expected = getattr(action.type, "__name__", str(action.type))
        raise ValueError(f"{path}: `{key}` must be {expected}, got {item!r} ({error}).") from error
    if action.choices is not None and result not in action.choices:
        raise ValueError(f"{path}: `{key}` must be one of {list(action.choices)}, got {item!r}.")
    return result


def config_file_values(parser: HfArgumentParser, path: str | Path, renamed: dict[str, str] | None = None) -> dict[str, Any]:
    """The values of a YAML / JSON run configuration, each checked and converted like its
    command-line flag (keys of earlier releases upgraded, `upgrade_old_arguments`); an
    unknown key is an error that lists them. Give them to ``parser.set_defaults`` so that
    flags after the file still override it."""
    path = Path(path)
    content = read_config_file(path)
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    content, old_fields = upgrade_old_arguments(content, set(actions), renamed or {}, str(path))
    if old_fields:
        content["config_overrides"] = {**parse_config_overrides(content.get("config_overrides")), **old_fields}
    unknown = sorted(set(content) - set(actions))
    if unknown:
        raise ValueError(f"{path}: unknown arguments {unknown}; see `--help` for the accepted names.")
    # the classes' own annotations: HfArgumentParser rewrites a field's type (``dict | str`` becomes ``str``)
    annotations = {name: str(annotation) for kind in parser.dataclass_types for klass in reversed(kind.__mro__)
                   for name, annotation in vars(klass).get("__annotations__", {}).items()}
    return {key: _convert(actions[key], key, value, path, annotations.get(key, "")) for key, value in content.items()}


def parse_config_overrides(value: str | dict | None) -> dict[str, Any]:
    """``--config_overrides``: ``name=value,name=value`` as transformers' example scripts take it
    (each value read as JSON where it parses: numbers, ``true`` / ``false``, ``null``, ``[lists]``;
    else as a string), or a mapping (a YAML file's). The config checks names and values."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    overrides = {}
    for item in filter(None, (part.strip() for part in re.split(r",(?![^\[]*\])", value))):  # commas inside [...] belong to a list
        name, separator, text = item.partition("=")
        if not separator or not name.strip():
            raise ValueError(f"--config_overrides takes name=value pairs separated by commas, got {item!r} in {value!r}.")
        try:
            overrides[name.strip()] = json.loads(text)
        except json.JSONDecodeError:
            overrides[name.strip()] = text.strip()
    return overrides


def upgrade_old_arguments(values: dict[str, Any], known: set[str], renamed: dict[str, str], where: str,
                          prefix: str = "") -> tuple[dict[str, Any], dict]:
    """``values`` (argument name -> value) with the names of earlier releases upgraded, each with
    a deprecation warning: a renamed argument under its new name, and a config field that had
    a flag of its own (``folk_ema_momentum``) returned apart, for ``config_overrides``."""
    from .families import config_fields  # the families import every model; this module is also read without them

    upgraded, fields = {}, {}
    for name, value in values.items():
        if name in renamed:
            warnings.warn(f"{where}: `{prefix}{name}` is now `{prefix}{renamed[name]}`.", FutureWarning, stacklevel=3)
            upgraded[renamed[name]] = value
        elif name not in known and name in config_fields():
            warnings.warn(f"{where}: the config field `{name}` is now set with {prefix}config_overrides ({name}={value}).",
                          FutureWarning, stacklevel=3)
            fields[name] = value
        else:
            upgraded[name] = value
    return upgraded, fields


def upgrade_old_flags(argv: list[str], parser: HfArgumentParser, renamed: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    """`upgrade_old_arguments` for a command line: ``argv`` with renamed flags upgraded and the
    old config-field flags (``--name value`` or ``--name=value``) taken out, and those fields."""
    from .families import config_fields

    known = {action.dest for action in parser._actions}
    upgraded, fields, index = [], {}, 0
    while index < len(argv):
        token = argv[index]
        name, has_value, inline = token[2:].partition("=") if token.startswith("--") else ("", False, "")
        if name in renamed or (name not in known and name in config_fields()):
            takes_next = not has_value and index + 1 < len(argv) and not argv[index + 1].startswith("--")
            value = inline if has_value else argv[index + 1] if takes_next else "true"  # a bare boolean flag means true
            index += 2 if takes_next else 1
            new, old_fields = upgrade_old_arguments({name: value}, known, renamed, "command line", prefix="--")
            fields.update({field: parse_config_overrides(f"{field}={text}")[field] for field, text in old_fields.items()})
            upgraded += [part for new_name, new_value in new.items() for part in (f"--{new_name}", new_value)]
            continue
        upgraded.append(token)
        index += 1
    return upgraded, fields


def guard_output_dir(output_dir: str | Path, overwrite: bool, resuming: bool = False, flag: str = "--overwrite_output_dir") -> None:
    """The two rules of every entry point, checked before anything runs: an output folder is
    written by one run at a time (the main process takes it, `mfm_hub.folder_lock`, until it
    exits; another run gets `FolderInUseError`), and a folder that already holds files is
    refused unless the user asked to write over it (``flag``) or to resume the run in it.
    Writing over replaces the files the run writes; nothing else is deleted."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"The output path {path} is a file, not a folder.")
    main_process = int(os.environ.get("RANK", "0")) == 0  # other ranks write where rank 0 does, under its claim
    claimed_now = main_process and not holds_folder(path)
    if main_process:
        claim_folder(path)
    contents = sorted(child.name for child in path.iterdir()) if path.exists() else []
    if overwrite or resuming or not contents:
        return
    if claimed_now:
        release_folder(path)
    newest = newest_complete_checkpoint(path)
    resume = f", or --resume_from_checkpoint {newest} to continue its run" if newest else ""
    shown = ", ".join(contents[:5]) + (f" and {len(contents) - 5} more" if len(contents) > 5 else "")
    raise FileExistsError(
        f"The output folder {path} already holds {shown}; nothing was changed. Choose another output folder, "
        f"pass {flag} to write over it{resume}."
    )


def claim_training_output(args) -> None:
    """`guard_output_dir` for a Trainer run that may resume: ``args.resume_from_checkpoint``
    resolved first (``True``: the newest complete checkpoint in the output folder), so that a
    resume into a folder with files is allowed, then checked to continue exactly."""
    args.resume_from_checkpoint = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir, args.world_size)
    guard_output_dir(args.output_dir, args.overwrite_output_dir, resuming=bool(args.resume_from_checkpoint))
    if args.resume_from_checkpoint:
        check_resumable(args.resume_from_checkpoint, args.world_size)


def check_training_arguments(args) -> None:
    """What every script's `TrainingArguments` must hold to train at all: a batch, an
    accumulation count and some steps or epochs (transformers otherwise fails deep inside,
    divides by zero, or "trains" for 0 steps and exits 0), and a positive learning rate."""
    require_at_least(args, 1, "per_device_train_batch_size", "gradient_accumulation_steps")
    require(args.max_steps > 0 or args.num_train_epochs > 0, "--max_steps / --num_train_epochs", (args.max_steps, args.num_train_epochs),
            "a positive number of steps or epochs")
    require(args.learning_rate is None or args.learning_rate > 0, "--learning_rate", args.learning_rate, "> 0")



def setup_training_process(args) -> None:
    """What every Trainer script sets up once its arguments are read: the log format (INFO on
    the processes that should log, rank 0, else WARNING), and freed memory kept in the process
    so that no step faults its activations in afresh (`mfm_hub.allocator`), and, under torchrun,
    the process group torn down before the interpreter exits."""
    import atexit
    import logging

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if args.should_log else logging.WARNING
    )
    keep_freed_memory()
    atexit.unregister(_destroy_process_group)  # once, however often a test calls a script's main
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    """Left to interpreter teardown, gloo's threads can be destroyed while still joinable, and the
    rank aborts ("terminate called without an active exception", exit -6) after a finished run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def resolve_learning_rate(args) -> float:
    """``--learning_rate``, or ``--base_learning_rate`` scaled linearly with the total batch
    (per 512 images, the MFM / MAE rule); sets and returns ``args.learning_rate``."""
    if args.learning_rate is None:
        total_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        args.learning_rate = args.base_learning_rate * total_batch / 512
    return args.learning_rate


__all__ = ["CONFIG_SUFFIXES", "check_training_arguments", "config_file_values", "guard_output_dir", "parse_config_overrides",
           "read_config_file", "resolve_learning_rate", "setup_training_process", "upgrade_old_arguments",
           "upgrade_old_flags"]
