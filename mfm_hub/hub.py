"""Uploading a finished local folder to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def upload_folder(folder: Path, repo_id: str, commit_message: str, ignore_patterns: Optional[list[str]] = None) -> None:
    """Create ``repo_id`` if needed and upload ``folder`` into it as one commit; the local folder
    is only read, so a failed upload leaves it whole."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), ignore_patterns=ignore_patterns, commit_message=commit_message)


__all__ = ["upload_folder"]
