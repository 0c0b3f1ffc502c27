"""The side-by-side speed benchmark: it runs every contender and counts the work of each."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForPreTraining

ROOT = Path(__file__).resolve().parents[1]
from benchmarks import pretrain_throughput


def test_flop_count_includes_the_cpu_attention_kernel():
    """The two attention kernels do the same matmuls; PyTorch's counter alone misses the CPU SDPA kernel."""
    config = pretrain_throughput.config_from_preset("vit-tiny-patch4-32")
    pixels = torch.rand(2, 3, 32, 32)
    state = AutoModelForPreTraining.from_config(config).state_dict()
    flops = {name: pretrain_throughput.step_flops(pretrain_throughput.CONTENDERS[name](config, pixels, "fp32", state))
             for name in ("ours-sdpa", "ours-math", "reference")}
    assert flops["ours-sdpa"] == pytest.approx(flops["ours-math"], rel=0.03)
    assert flops["ours-math"] == pytest.approx(flops["reference"], rel=0.01)


def test_side_by_side_rows():
    rows = pretrain_throughput.side_by_side("vit-tiny-patch4-32", "fp32", 2, torch.device("cpu"), 2,
                                            ["reference", "reference-encoder", "ours"], peak=1e11)
    assert [row["contender"] for row in rows] == ["reference", "reference-encoder", "ours"]
    assert rows[0]["speedup_vs_first"] == 1.0
    for row in rows:
        assert row["p25_ms"] <= row["median_ms"] <= row["p75_ms"]
        assert 0 < row["share_of_matmul_peak"]
