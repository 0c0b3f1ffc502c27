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
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser

from .allocator import keep_freed_memory
from .folder_lock import claim_folder, holds_folder, release_folder
from .trainer import newest_complete_checkpoint

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


def config_file_values(parser: HfArgumentParser, path: str | Path) -> dict[str, Any]:
    """The values of a YAML / JSON run configuration, each checked and converted like its
    command-line flag; an unknown key is an error that lists them. Give them to
    ``parser.set_defaults`` so that flags after the file still override it."""
    path = Path(path)
    content = read_config_file(path)
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    unknown = sorted(set(content) - set(actions))
    if unknown:
        raise ValueError(f"{path}: unknown arguments {unknown}; see `--help` for the accepted names.")
    # the classes' own annotations: HfArgumentParser rewrites a field's type (``dict | str`` becomes ``str``)
    annotations = {name: str(annotation) for kind in parser.dataclass_types for klass in reversed(kind.__mro__)
                   for name, annotation in vars(klass).get("__annotations__", {}).items()}
    return {key: _convert(actions[key], key, value, path, annotations.get(key, "")) for key, value in content.items()}


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


def require(condition: bool, argument: str, value: Any, allowed: str) -> None:
    """Refuse a script argument that cannot give a meaningful result, naming it and what is allowed."""
    if not condition:
        raise ValueError(f"{argument} must be {allowed}, got {value!r}.")


def require_at_least(arguments: object, minimum: int, *names: str) -> None:
    """Each of ``names`` (attributes of ``arguments``) is None or an int >= ``minimum``."""
    for name in names:
        value = getattr(arguments, name)
        require(value is None or (isinstance(value, int) and value >= minimum), f"--{name}", value, f"an integer >= {minimum}")


def check_training_arguments(args) -> None:
    """What every script's `TrainingArguments` must hold to train at all: a batch, an
    accumulation count and some steps or epochs (transformers otherwise fails deep inside,
    divides by zero, or "trains" for 0 steps and exits 0), and a positive learning rate."""
    require_at_least(args, 1, "per_device_train_batch_size", "gradient_accumulation_steps")
    require(args.max_steps > 0 or args.num_train_epochs > 0, "--max_steps / --num_train_epochs", (args.max_steps, args.num_train_epochs),
            "a positive number of steps or epochs")
    require(args.learning_rate is None or args.learning_rate > 0, "--learning_rate", args.learning_rate, "> 0")


__all__ = ["CONFIG_SUFFIXES", "check_training_arguments", "config_file_values", "guard_output_dir", "read_config_file", "require",
           "require_at_least"]


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
