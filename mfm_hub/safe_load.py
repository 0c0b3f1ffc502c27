"""Reading PyTorch pickle files (``.pth`` / ``.pt``) without executing anything they hold, with
errors that say what the file is.

``torch.load(weights_only=True)`` refuses every object but tensors and plain containers, which
is what we want; its errors, though, suggest retrying with ``weights_only=False`` (running
whatever code the file holds, never advice for a user) or surface the unpickler's internals
(``KeyError: 101`` for a text file).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Iterable

import torch


class UnsafeCheckpointError(ValueError):
    """A file that holds pickled objects of other types than tensors and plain containers."""


def _kind(path: Path) -> str:
    """What the start of a file that is not a readable checkpoint looks like."""
    head = path.read_bytes()[:64] if path.stat().st_size else b""
    if not head:
        return "it is empty"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive, but not a PyTorch one, or a truncated one"
    if head.startswith(b"\x80"):
        return "it is a pickle that is truncated or damaged"
    if head.startswith(b"\x93NUMPY"):
        return "it is a NumPy array file"
    if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        return f"it is text ({head[:32].decode(errors='replace')!r}...)"
    return "its format is unknown"


def load_tensors(path: str | Path, allowed_globals: Iterable = (), mmap: bool = False) -> object:
    """``torch.load`` on the CPU that never runs pickled code; `UnsafeCheckpointError` naming the
    refused object, or `ValueError` saying what the file is, instead of torch's messages. With
    ``mmap`` the tensors stay on disk until used (the file's structure is read and checked whole)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise UnsafeCheckpointError(
                f"{path} holds a pickled `{refused.group(1)}`, which a safe load refuses to create (nothing in the file was "
                "run). A checkpoint holds only tensors and plain containers: this file is not one, or it was written "
                "with objects of another program."
            ) from None
        raise ValueError(f"{path} is not a PyTorch checkpoint: {_kind(path)}.") from None
    except Exception:  # the unpickler's and the zip reader's internal errors say nothing useful to a user
        raise ValueError(f"{path} is not a PyTorch checkpoint: {_kind(path)}.") from None


__all__ = ["UnsafeCheckpointError", "load_tensors"]
