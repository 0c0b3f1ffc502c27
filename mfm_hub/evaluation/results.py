"""Results files and the model card's ``model-index``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data import DatasetReference


def write_results(output_dir: str | Path, results: dict) -> Path:
    path = Path(output_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    return path


def _protocol_key(result: EvalResult) -> tuple:
    """One result per protocol, data and metric: the Hub's own grouping (`unique_identifier`:
    task, dataset type and config, split, revision) and the metric."""
    return (*result.unique_identifier, result.metric_type, result.metric_name)


def add_to_model_index(card_dir: str | Path, model_name: str, task_type: str, task_name: str, dataset: DatasetReference,
                       metrics: dict[str, float], split: str = "test") -> Path:
    """Add ``metrics`` to the ``model-index`` of ``card_dir/README.md`` (created if absent).

    ``task_type`` is a Hub task id (``image-classification``, ``image-segmentation``),
    ``dataset`` a `DatasetReference` (Hub id or ``imagefolder`` + a plain description).
    ``task_name`` is the protocol with its settings (e.g. ``"Few-shot, 5-way 5-shot
    episodes"``) and names each metric (``"<task_name>: <metric>"``), because the Hub's
    model-index groups results by task type, dataset and split only, not by task name.
    Results accumulate: an earlier result is replaced only by one of the same protocol,
    dataset (type and config: two local folders are two datasets), split and metric."""
    path = Path(card_dir) / "README.md"
    card = ModelCard.load(path) if path.exists() else ModelCard(f"---\nlibrary_name: transformers\n---\n\n# {model_name}\n")
    if card.data is None:
        card.data = ModelCardData()
    new = [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=dataset.type,
            dataset_name=dataset.name,
            dataset_config=dataset.config,
            dataset_split=split,
            metric_type=metric,
            metric_name=f"{task_name}: {metric}",
            metric_value=round(float(value), 6),
        )
        for metric, value in metrics.items()
    ]
    replaced = {_protocol_key(result) for result in new}
    keep = [result for result in (card.data.eval_results or []) if _protocol_key(result) not in replaced]
    card.data.eval_results = keep + new
    card.data.model_name = card.data.model_name or model_name
    card.save(path)
    return path


@dataclass
class ModelIndexEntry:
    """One protocol's results for a card's ``model-index`` (see `add_to_model_index`)."""

    card_dir: str | Path
    model_name: str
    task_type: str
    task_name: str
    dataset: DatasetReference
    metrics: dict[str, float]
    split: str = "test"


def report_results(output_dir: str | Path, results: dict, entry: ModelIndexEntry, summary: str,
                   figure: Optional[Callable[[Path], None]] = None) -> None:
    """What every evaluation script does at its end: ``results.json`` in ``output_dir``, the
    figure (``figure(output_dir)`` writes its PNGs there), the card's ``model-index`` entry and
    a one-line summary naming where everything went."""
    output = Path(output_dir)
    write_results(output, results)
    if figure is not None:
        figure(output)
    add_to_model_index(entry.card_dir, entry.model_name, entry.task_type, entry.task_name, entry.dataset, entry.metrics, entry.split)
    print(f"{summary} -> {output.resolve()}")
