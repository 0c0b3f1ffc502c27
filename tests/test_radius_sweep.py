"""The mask-radius sweep: one compute-curve run of MFM alone per radius, and a report of them."""

from pathlib import Path

import pytest

from benchmarks import compute_curve, radius_sweep
from benchmarks.cifar10_benchmark import Results


def recorded_runs(monkeypatch) -> list:
    """Replace the compute curve by its argument parser and a results.json whose end point is the radius / 100."""
    runs = []

    def run(argv):
        args = compute_curve.parse_arguments(argv)
        runs.append(args)
        radius = float(args.pretraining_flags[-1])
        results = Results(Path(args.output_dir) / "results.json")
        Path(args.output_dir).mkdir(parents=True)
        seeds = len(args.end_point_seeds)
        end_point = {protocol: {"mean": radius / 100, "sd": 0.01, "seeds": seeds} for protocol in radius_sweep.PROTOCOLS}
        curve = {"425": {"knn": 0.2, "linear_probe": 0.25}, str(args.pretrain_steps): {"knn": 0.3, "linear_probe": radius / 100}}
        results.data["summary"] = {"mfm": {"steps": args.pretrain_steps, "end_point": end_point, "curve": curve}}
        results.save()

    monkeypatch.setattr(compute_curve, "main", run)
    return runs


def test_each_radius_is_a_compute_curve_run_of_mfm_alone_and_the_report_reads_them_all(monkeypatch, tmp_path):
    runs = recorded_runs(monkeypatch)
    rows = radius_sweep.main(["--output_dir", str(tmp_path), "--radii", "16", "24.5", "--seeds", "0", "1", "--data_dir", "elsewhere"])
    assert [args.methods for args in runs] == [["mfm"], ["mfm"]]
    assert [args.pretraining_flags for args in runs] == [["--mask_radius", "16"], ["--mask_radius", "24.5"]]
    assert [Path(args.output_dir) for args in runs] == [tmp_path / "r16", tmp_path / "r24.5"]
    first = runs[0]
    assert (first.seeds, first.end_point_seeds, first.pretrain_steps, first.budget_minutes) == ([0], [0, 1], 6800, 15.5)
    assert first.data_dir == "elsewhere"  # the compute curve's own options pass through
    assert [row["radius"] for row in rows] == [16, 24.5]
    table = (tmp_path / "sweep.md").read_text()
    assert "| 16 | 2.3 | 21 | 16.0 ± 1.0 | 16.0 ± 1.0 | 16.0 ± 1.0 | 16.0 ± 1.0 |" in table
    assert "| 24.5 | 3.5 |" in table and "24.5 ± 1.0" in table
    figure = tmp_path / "radius_sweep.png"
    assert figure.stat().st_size > 0

    figure.unlink()
    radius_sweep.main(["--output_dir", str(tmp_path), "--radii", "16", "24.5", "--seeds", "0", "1", "--report_only"])
    assert len(runs) == 2 and figure.exists()  # the report alone trains nothing


def test_the_low_pass_count_is_the_documented_one_and_bad_radii_are_refused():
    assert radius_sweep.low_pass_coefficients(16, size=224) == 793  # the official mask
    assert radius_sweep.low_pass_coefficients(16) == 21 and radius_sweep.low_pass_coefficients(32) == 69
    for radii in (["16", "16"], ["0"], ["-8"]):
        with pytest.raises(ValueError, match="--radii"):
            radius_sweep.main(["--radii", *radii, "--report_only"])
