"""Smoke tests of the benchmark scripts: each runs at tiny sizes and prints its summary lines.

Nothing here is timed against a threshold: the numbers only have to be there and be numbers.
Each script runs in a subprocess, as a user runs it, on one thread and on synthetic data.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, *args: str) -> dict[str, str]:
    """Run `benchmarks/<script> args` and return its `key=value` lines, checking it exits 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("MAE_TUTORIAL_DATA", None)  # synthetic data: the same small run on every machine
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, f"{script} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    lines = [line.split("=", 1) for line in out.stdout.splitlines() if "=" in line]
    return {key: value for key, value in lines if " " not in key}


def positive_float(text: str) -> float:
    value = float(text)
    assert math.isfinite(value) and value > 0, text
    return value


@pytest.mark.slow
@pytest.mark.hf
def test_train_step_smoke() -> None:
    pytest.importorskip("transformers")
    # Not imported here: its __init__ needs torchvision, which the benchmark stubs for itself.
    if importlib.util.find_spec("vit_pytorch") is None:
        pytest.skip(
            "the train_step benchmark needs vit-pytorch (pip install --no-deps vit-pytorch)"
        )
    summary = run_benchmark("train_step.py", "--smoke", "--no-memory", "--modes", "fp32")
    positive_float(summary["ratio_vs_hf_fp32"])
    positive_float(summary["ratio_vs_fastest_fp32"])


@pytest.mark.slow
def test_epoch_smoke() -> None:
    summary = run_benchmark("epoch.py", "--smoke")
    positive_float(summary["ratio_pipeline_vs_model"])


@pytest.mark.slow
def test_gpu_smoke_reports_mfu_given_a_peak() -> None:
    summary = run_benchmark("gpu.py", "--smoke", "--peak-tflops", "1")
    for key in ("images_per_s", "images_per_s_async", "epoch_s", "mfu"):
        positive_float(summary[key])


@pytest.mark.slow
def test_gpu_smoke_says_unknown_without_a_peak() -> None:
    summary = run_benchmark("gpu.py", "--smoke", "--device", "cpu")
    assert summary["mfu"] == "unknown"
    positive_float(summary["images_per_s"])


@pytest.mark.slow
def test_scaling_quick(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    summary = run_benchmark("scaling.py", "--quick", "--out", str(out))
    positive_float(summary["encoder_cost_mask25_vs_mask75"])
    positive_float(summary["step_cost_patch2_vs_patch4"])
    record = json.loads(out.read_text())
    assert record["threads"] == 1 and record["command"].startswith("python benchmarks/scaling.py")
    assert {row["point"] for row in record["rows"]} >= {"base", "image_size=64", "mask_ratio=0.9"}
    for row in record["rows"]:
        positive_float(str(row["step_ms"]))
        positive_float(str(row["step_gflop_per_image"]))
