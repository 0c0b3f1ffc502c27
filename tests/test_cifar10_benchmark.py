"""The CIFAR-10 benchmark end to end in smoke mode: a few steps per method on a tiny image
folder (Fashion-MNIST images in CIFAR-10's layout), then a re-run that must skip everything."""

import json

import pytest
from conftest import tiny_cifar_layout

from benchmarks import cifar10_benchmark


@pytest.mark.slow
def test_benchmark_smoke_and_resume(tmp_path):
    data = tiny_cifar_layout(tmp_path / "data", {"train": 12, "test": 20})
    argv = ["--output_dir", str(tmp_path / "bench"), "--data_dir", str(data), "--methods", "scratch", "mfm", "folk",
            "--seeds", "0", "1", "--pretrain_steps", "2", "--batch_size", "16", "--fine_tune_batch_size", "16",
            "--fine_tune_epochs_1pct", "2", "--fine_tune_epochs_10pct", "1", "--episodes", "5", "--dataloader_num_workers", "0"]
    results = cifar10_benchmark.main(argv)
    for method in ("scratch", "mfm", "folk"):
        for seed in (0, 1):
            for protocol in cifar10_benchmark.PROTOCOLS:
                value = results["runs"][f"{method}/seed{seed}/{protocol}"]
                assert 0.0 <= value["top1"] <= 1.0
        assert set(results["summary"][method]) == set(cifar10_benchmark.PROTOCOLS)
    curve = results["runs"]["mfm/seed0/fine_tune_10pct"]["validation_curve"]
    assert curve and all(0 <= point["top1"] <= 1 for point in curve)
    bench = tmp_path / "bench"
    assert (bench / "benchmark.png").stat().st_size > 0 and "| mfm |" in (bench / "table.md").read_text()
    encoder = bench / "mfm-seed0" / "encoder"
    assert (encoder / "loss_curve.png").exists() and (encoder / "reconstructions.png").exists()
    card = (encoder / "README.md").read_text()
    assert "Weighted kNN" in card and "Linear probe on frozen features" in card and "5-way 5-shot" in card

    # a re-run finds everything done: nothing is trained again, results stay identical
    before = json.loads((bench / "results.json").read_text())["runs"]
    mtime = (encoder / "model.safetensors").stat().st_mtime_ns
    again = cifar10_benchmark.main(argv)
    assert again["runs"] == before
    assert (encoder / "model.safetensors").stat().st_mtime_ns == mtime

    # the report alone is rebuilt from results.json; pre-training wall time is kept per segment
    (bench / "table.md").unlink()
    assert cifar10_benchmark.main([*argv, "--report_only"])["runs"] == before and (bench / "table.md").exists()
    assert len(json.loads((bench / "mfm-seed0" / "pretraining_segments.json").read_text())) == 1

    # other settings in the same folder are refused, naming both
    with pytest.raises(ValueError, match="other settings"):
        cifar10_benchmark.main([*argv[:-2], "--dataloader_num_workers", "1"])
