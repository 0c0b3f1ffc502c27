"""Few-shot episodes on frozen features: N-way K-shot episodes drawn with a seed, classified by
class prototypes or a logistic regression fitted on the support set."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import decode_image
from .features import eval_transform, frozen_features, logistic_regression


@torch.no_grad()
def extract_features(model, dataset, image_column: str, batch_size: int, crop_pct: float) -> torch.Tensor:
    """Frozen features ``(N, D)`` of every image (`frozen_features`), with the
    evaluation transform."""
    transform = eval_transform(model.config, crop_pct)
    features = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="features"):
        batch = dataset[start:start + batch_size][image_column]
        pixels = transform.batch([decode_image(value) for value in batch]).to(model.device)
        features.append(frozen_features(model, pixels).float().cpu())
    return torch.cat(features)



def run_episodes(features: torch.Tensor, labels: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
                 classifier: str, seed: int) -> list[float]:
    classes, counts = np.unique(labels, return_counts=True)
    if ways > len(classes):
        raise ValueError(f"{ways}-way episodes need {ways} classes; the data has {len(classes)}.")
    if shots + queries > counts.min():
        raise ValueError(f"{shots} shots + {queries} queries per class exceed the smallest class "
                         f"(class {classes[counts.argmin()]} has {counts.min()} images).")
    features = F.normalize(features, dim=1)
    rng = np.random.default_rng(seed)
    accuracies = []
    for _ in tqdm(range(episodes), desc="episodes"):
        chosen = rng.choice(classes, size=ways, replace=False)
        support, query, query_labels = [], [], []
        for episode_label, cls in enumerate(chosen):
            members = rng.choice(np.flatnonzero(labels == cls), size=shots + queries, replace=False)
            support.append(features[members[:shots]])
            query.append(features[members[shots:]])
            query_labels += [episode_label] * queries
        support, query, query_labels = torch.stack(support), torch.cat(query), torch.tensor(query_labels)
        if classifier == "prototype":
            scores = query @ F.normalize(support.mean(dim=1), dim=1).T
        else:
            fitted = logistic_regression(support.flatten(0, 1), torch.arange(ways).repeat_interleave(shots), ways)
            with torch.no_grad():
                scores = fitted(query)
        accuracies.append(float((scores.argmax(1) == query_labels).float().mean()))
    return accuracies

