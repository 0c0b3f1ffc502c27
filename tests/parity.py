"""Float comparisons scaled to the magnitude of what is compared.

Two code paths that compute the same thing with different kernels (timm's and ours, channels-last
and contiguous, SDPA and written-out attention, a half and a full spectrum, compiled and eager, an
AVX2 and an AVX-512 build of one kernel) round differently. The rounding error of a float sum is
proportional to the magnitude of its terms, not of its result, so an element near zero carries an
error of the order of the largest elements. Every check is therefore

    |actual - expected| <= relative * (|expected| + max|expected|)

the condition of ``torch.testing.assert_close(rtol=relative, atol=relative * max|expected|)``.

The tolerances are measured, not guessed: ``MFM_TOLERANCE_LOG=<file>`` makes every check append the
smallest ``relative`` it would have passed with; ``python tests/tolerance_report.py <files>`` prints
the worst per tolerance over runs on several CPUs (see docs/TESTING.md). Each tolerance below is
``MARGIN`` times the worst measured, rounded up to one significant digit.

Paths that must be bit-identical (exact resume, DDP identity, save/load of one model) use
``torch.equal``, never these.
"""

import json
import os
from dataclasses import dataclass

import torch

#: how far every tolerance sits above the worst error measured (docs/TESTING.md lists the runs)
MARGIN = 10


@dataclass(frozen=True)
class Tolerance:
    name: str
    relative: float
    why: str
    #: "max": every element within ``relative`` (float32); "l2": the relative L2 norm of the error
    #: (bf16, whose errors are random per element, and a small batch norm can amplify a few of them)
    norm: str = "max"


#: one transform or reduction (an FFT filter, a loss, a patch embedding) in another summation order
FLOAT32_ONE_OP = Tolerance("FLOAT32_ONE_OP", 5e-6, "float32, one op, kernels that sum in another order")
#: a forward pass through a network where some kernels differ (layout, ISA, fused attention, timm)
FLOAT32_NETWORK = Tolerance("FLOAT32_NETWORK", 3e-5, "float32 forward through a network, kernels differ")
#: losses and gradients through a network where some kernels differ (backward sums in other orders too)
FLOAT32_GRADIENTS = Tolerance("FLOAT32_GRADIENTS", 7e-5, "float32 loss and gradients through a network, kernels differ")
#: logged losses of a few optimizer steps on the same data, where some kernels differ (steps compound it)
FLOAT32_TRAINING = Tolerance("FLOAT32_TRAINING", 5e-7, "float32 losses over optimizer steps, kernels differ")
#: bf16 autocast: every matmul input is rounded to 8 mantissa bits, each kernel rounds where it likes
BFLOAT16_GRADIENTS = Tolerance("BFLOAT16_GRADIENTS", 4e-2, "bf16 autocast loss and gradients, kernels differ", norm="l2")
#: a float32 computation (the FFT filter under autocast) whose result is rounded to bf16
BFLOAT16_OUTPUT = Tolerance("BFLOAT16_OUTPUT", 2e-2, "a float32 computation whose result is rounded to bf16")


def relative_error(actual: torch.Tensor, expected: torch.Tensor, norm: str = "max") -> float:
    """The smallest ``relative`` for which ``assert_close`` passes with a tolerance of this ``norm``."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    error = (actual - expected).abs()
    if not torch.isfinite(error).all():
        return float("inf")  # a NaN or inf on either side is never close
    if not torch.any(error > 0):
        return 0.0
    if norm == "l2":
        return (error.norm() / expected.norm()).item()
    return (error / (expected.abs() + expected.abs().max())).max().item()


def assert_close(actual, expected, tolerance: Tolerance, what: str = "") -> None:
    """``actual`` equals ``expected`` up to ``tolerance`` relative to the magnitude of ``expected``."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    observed = relative_error(actual, expected, tolerance.norm)
    log = os.environ.get("MFM_TOLERANCE_LOG")
    if log:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        with open(log, "a") as file:
            file.write(json.dumps({"tolerance": tolerance.name, "check": f"{test} {what}".strip(), "observed": observed}) + "\n")
    scale = "the L2 norm of expected" if tolerance.norm == "l2" else f"|expected| + max|expected| = {expected.abs().max().item():.3g}"
    assert observed <= tolerance.relative, (
        f"{what} ({tolerance.why}): needs relative {observed:.3g}, {tolerance.name} allows {tolerance.relative:g} of {scale}")
