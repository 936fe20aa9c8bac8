"""The `--small` benchmark runs end to end in-process and reports every section for every projector."""

import math

from benchmarks.run_benchmarks import format_report, run_benchmarks
from configuration_vlm import PROJECTOR_TYPES


def _rates(report: dict) -> list[float]:
    return [
        *(row[key] for row in report["training"] for key in ("samples_per_s", "tflops_per_s", "peak_memory_mb")),
        *(row["images_per_s"] for row in report["vision"]["extraction"]),
        *(row["captions_per_s"] for row in report["generation"]),
        report["seed_experiment"]["wall_s"],
        *(row["samples_per_s"] for row in report["seed_experiment"]["runs"]),
        *(row["extrapolated_epoch_s"] for row in report["karpathy_epoch"]),
        *(row[key] for row in report["loss_lever"] for key in ("step_s", "peak_memory_mb")),
    ]


def test_small_benchmark_reports_every_section_and_projector():
    report = run_benchmarks(small=True, batch_sizes=[2])

    assert set(report) == {
        "settings", "training", "vision", "generation", "seed_experiment", "karpathy_epoch", "loss_lever", "environment"
    }  # fmt: skip
    for section in (report["training"], report["generation"], report["karpathy_epoch"], report["vision"]["epoch_share"]):
        assert [row["projector"] for row in section] == list(PROJECTOR_TYPES)
    assert report["seed_experiment"]["measured"]
    assert [run["projector"] for run in report["seed_experiment"]["runs"]] == ["mlp", "qformer", "perceiver"]
    assert [row["variant"] for row in report["loss_lever"]] == ["labelled positions only", "full-vocabulary logits"]

    rates = _rates(report)
    assert all(math.isfinite(rate) and rate > 0 for rate in rates), rates
    assert all(0 < row["first_epoch_share"] < 1 for row in report["vision"]["epoch_share"])
    assert all(row["flops_per_step"] > 0 for row in report["training"])
    # Both loss variants compute the same loss: the lever changes the cost only.
    labelled, full = (row["loss"] for row in report["loss_lever"])
    assert math.isclose(labelled, full, rel_tol=1e-4)
    assert "Seed 000 experiment" in format_report(report)
