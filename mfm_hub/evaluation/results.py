"""Results files and the model card's ``model-index``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data import DatasetReference
from ..model_card import hub_base_model, source_license


def write_results(output_dir: str | Path, results: dict) -> Path:
    path = Path(output_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    return path


def _protocol_key(result: EvalResult) -> tuple:
    """One result per protocol, data and metric: the Hub's own grouping (`unique_identifier`:
    task, dataset type and config, split, revision) and the metric."""
    return (*result.unique_identifier, result.metric_type, result.metric_name)


def results_card_dir(model: str, output_dir: str | Path) -> Path:
    """Where an evaluation of the model ``model`` records its results: the checkpoint's own card
    when it is a local folder, else a results card in ``output_dir`` (a Hub or zoo model's card
    is not ours to change, and ``owner/name`` is no folder to write into)."""
    return Path(model) if Path(model).is_dir() else Path(output_dir)


def add_to_model_index(card_dir: str | Path, model_name: str, task_type: str, task_name: str, dataset: DatasetReference,
                       metrics: dict[str, float], split: str = "test", source: Optional[str] = None) -> Path:
    """Add ``metrics`` to the ``model-index`` of ``card_dir/README.md`` (created if absent).

    ``task_type`` is a Hub task id (``image-classification``, ``image-segmentation``),
    ``dataset`` a `DatasetReference` (Hub id or ``imagefolder`` + a plain description).
    ``task_name`` is the protocol with its settings (e.g. ``"Few-shot, 5-way 5-shot
    episodes"``) and names each metric (``"<task_name>: <metric>"``), because the Hub's
    model-index groups results by task type, dataset and split only, not by task name.
    Results accumulate: an earlier result is replaced only by one of the same protocol,
    dataset (type and config: two local folders are two datasets), split and metric. A card
    created here for the evaluated model ``source`` (a results card beside a Hub or zoo model)
    names it as ``base_model`` where it is a Hub repository and states its licence."""
    path = Path(card_dir) / "README.md"
    created = not path.exists()
    card = ModelCard(f"---\nlibrary_name: transformers\n---\n\n# {model_name}\n") if created else ModelCard.load(path)
    if card.data is None:
        card.data = ModelCardData()
    if created and source is not None:
        license = source_license(source)
        if license:
            license.apply(card)
        card.data.base_model = hub_base_model(source)
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
    source: Optional[str] = None


def report_results(output_dir: str | Path, results: dict, entry: ModelIndexEntry, summary: str,
                   figure: Optional[Callable[[Path], None]] = None) -> None:
    """What every evaluation script does at its end: ``results.json`` in ``output_dir``, the
    figure (``figure(output_dir)`` writes its PNGs there), the card's ``model-index`` entry and
    a one-line summary naming where everything went."""
    output = Path(output_dir)
    write_results(output, results)
    if figure is not None:
        figure(output)
    add_to_model_index(entry.card_dir, entry.model_name, entry.task_type, entry.task_name, entry.dataset, entry.metrics, entry.split,
                       entry.source)
    print(f"{summary} -> {output.resolve()}")
