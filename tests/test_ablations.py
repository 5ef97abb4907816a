"""The ablation script (benchmarks/ablations.py) and the results it stored in the package.

The script runs in a subprocess on synthetic images at its --quick size; the stored results are
checked for completeness, since chapter 9 draws every table and plot from them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ablations.py"
NAMES = {
    "base", "mask_ratio_0.25", "mask_ratio_0.5", "mask_ratio_0.9", "decoder_depth_1",
    "decoder_depth_4", "raw_pixels", "block_masking", "grid_masking", "mask_token_in_encoder",
    "base_seed_1", "base_seed_2", "random_init",
}  # fmt: skip
SCORES = ("knn_top1", "linprobe_top1", "finetune_top1")


def run_script(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("MAE_TUTORIAL_DATA", None)  # synthetic images: the same small run everywhere
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, f"exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def check_run(name: str, run: dict) -> None:
    for key in SCORES:
        assert 0 <= run[key] <= 100, (name, key, run[key])
    assert run["seconds"] > 0 and run["command"].startswith("python benchmarks/ablations.py")
    if run["pretrained"]:
        assert math.isfinite(run["pretrain_loss"]) and run["pretrain_seconds"] > 0
    assert set(run["inputs"]) == {"config", "settings", "pretrained", "budget", "data"}


@pytest.mark.slow
def test_quick_run_records_every_variant_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "ablations.json"
    run_script("--quick", "--out", str(out), "--only", "base", "grid_masking", "random_init")
    results = json.loads(out.read_text())
    assert set(results["runs"]) == {"base", "grid_masking", "random_init"}
    assert results["data"] == "synthetic" and "--quick" in results["command"]
    for name, run in results["runs"].items():
        check_run(name, run)
    assert results["runs"]["grid_masking"]["inputs"]["settings"]["masking"] == "grid"
    assert "pretrain_loss" not in results["runs"]["random_init"]
    assert list(tmp_path.iterdir()) == [out]  # the temporary file was renamed, not left behind

    # Recorded variants are skipped; new ones are added beside them.
    stdout = run_script("--quick", "--out", str(out), "--only", "base", "raw_pixels")
    assert "base: recorded already, skipped" in stdout
    again = json.loads(out.read_text())
    assert again["runs"]["base"] == results["runs"]["base"]
    assert set(again["runs"]) == {"base", "grid_masking", "random_init", "raw_pixels"}


def test_help_lists_the_variants() -> None:
    stdout = run_script("--help")
    assert all(name in stdout for name in NAMES)


def test_stored_results_cover_every_variant() -> None:
    path = resources.files("mae_tutorial") / "results" / "ablations.json"
    results = json.loads(path.read_text())
    assert results["data"] == "CIFAR-10" and "--quick" not in results["command"]
    assert set(results["runs"]) == NAMES
    for name, run in results["runs"].items():
        check_run(name, run)
        assert run["inputs"]["budget"] == results["budget"]
