"""The float comparison every parity test uses: scaled to the magnitude of what is compared, and
strict enough to catch a wrong weight."""

import pytest
import torch
from parity import FLOAT32_NETWORK, FLOAT32_ONE_OP, Tolerance, assert_close, relative_error


@pytest.fixture(autouse=True)
def _unlogged(monkeypatch):
    """These checks are about the comparison itself, not measurements of the suite's code paths."""
    monkeypatch.delenv("MFM_TOLERANCE_LOG", raising=False)


def test_relative_error_is_the_smallest_tolerance_that_passes():
    expected = torch.tensor([8.0, -2.0, 0.0])
    actual = expected + torch.tensor([0.0, 0.0, 2**-10])  # an element near zero: its error counts against max|expected|
    assert relative_error(actual, expected) == 2**-10 / (0 + 8)  # powers of two: exact in float32
    assert_close(actual, expected, Tolerance("T", 2**-13, "test"))
    with pytest.raises(AssertionError, match="needs relative 0.000122, T allows 0.00012 of"):
        assert_close(actual, expected, Tolerance("T", 1.2e-4, "test"))
    assert relative_error(expected, expected) == 0.0
    for norm in ("max", "l2"):
        assert relative_error(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]), norm) == float("inf")
        assert relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, float("nan")]), norm) == float("inf")
    assert relative_error(torch.tensor([3.0, 4.0]), torch.zeros(2), "l2") == float("inf")
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 4.0]), "l2") == pytest.approx(3 / 4)


def test_float32_rounding_passes_and_a_wrong_weight_does_not():
    torch.manual_seed(0)
    weight, x = torch.randn(64, 64), torch.randn(8, 64)
    expected = (x.double() @ weight.double().T).float()
    assert_close(x @ weight.T, expected, FLOAT32_ONE_OP, "float32 matmul against float64")
    wrong = weight.clone()
    wrong[3, 5] *= 1.01  # one weight off by 1%
    with pytest.raises(AssertionError, match="FLOAT32_NETWORK allows"):
        assert_close(x @ wrong.T, expected, FLOAT32_NETWORK, "one weight 1% off")
