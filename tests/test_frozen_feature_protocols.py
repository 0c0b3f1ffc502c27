"""The frozen-feature protocols of the CIFAR-10 benchmark on cases worked out by hand."""

import math

import pytest
import torch

from mfm_hub.evaluation.features import linear_probe_predict, weighted_knn_predict

# One training feature points exactly along the query (class 0); two point 36.9 degrees off it
# (cosine 0.8, class 1); one points away (cosine -1, class 0).
TRAIN = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [-1.0, 0.0]])
LABELS = torch.tensor([0, 1, 1, 0])
QUERY = torch.tensor([[1.0, 0.0]])


def test_knn_weighs_votes_by_exp_similarity_over_temperature():
    # temperature 0.07: class 0 gets e^(1/0.07) = 1.6e6, class 1 gets 2 e^(0.8/0.07) = 1.8e5
    assert math.exp(1 / 0.07) > 2 * math.exp(0.8 / 0.07)
    assert weighted_knn_predict(TRAIN, LABELS, QUERY, num_classes=2, k=3, temperature=0.07).tolist() == [0]
    # temperature 1: e^1 = 2.7 < 2 e^0.8 = 4.5, so the two class-1 neighbours win
    assert math.exp(1) < 2 * math.exp(0.8)
    assert weighted_knn_predict(TRAIN, LABELS, QUERY, num_classes=2, k=3, temperature=1.0).tolist() == [1]


def test_knn_uses_only_the_k_nearest_and_cosine_similarity():
    # with k=4 the opposite class-0 feature votes too, with weight e^-1: still class 1 at temperature 1
    assert weighted_knn_predict(TRAIN, LABELS, QUERY, num_classes=2, k=4, temperature=1.0).tolist() == [1]
    # k=1: the single nearest decides; feature lengths do not matter (cosine)
    assert weighted_knn_predict(TRAIN * torch.tensor([[1.0], [50.0], [50.0], [9.0]]), LABELS, QUERY * 3, num_classes=2, k=1).tolist() == [0]
    queries = torch.randn(37, 2)
    whole = weighted_knn_predict(TRAIN, LABELS, queries, num_classes=2, k=3)
    assert torch.equal(weighted_knn_predict(TRAIN, LABELS, queries, num_classes=2, k=3, chunk_size=5), whole)
    with pytest.raises(ValueError, match="k must be between 1 and the 4 training features"):
        weighted_knn_predict(TRAIN, LABELS, QUERY, num_classes=2, k=5)


def test_linear_probe_separates_by_the_informative_feature_whatever_its_scale():
    # class = sign of feature 0 (scale 1e-3); feature 1 is large noise (scale 1e3, offset 1e4)
    generator = torch.Generator().manual_seed(0)
    def sample(n):
        informative = torch.randn(n, generator=generator)
        informative = informative + informative.sign() * 0.5  # a margin around 0
        noise = 1e4 + 1e3 * torch.randn(n, generator=generator)
        return torch.stack([1e-3 * informative, noise], dim=1), (informative > 0).long()
    train_features, train_labels = sample(200)
    test_features, test_labels = sample(500)
    predictions = linear_probe_predict(train_features, train_labels, test_features, num_classes=2)
    assert (predictions == test_labels).float().mean() == 1.0
    # the same data without the informative feature is at chance
    blind = linear_probe_predict(train_features[:, 1:], train_labels, test_features[:, 1:], num_classes=2)
    assert 0.35 < (blind == test_labels).float().mean() < 0.65
