"""The ablation script (benchmarks/ablations.py), the results it stored, and chapter 9's verdicts.

The script runs in a subprocess on synthetic images at its --quick size. The stored results are
checked for completeness (every variant with its seeds, the budget, the command), and the verdict
table that chapter 9 writes by hand is re-derived here from the stored numbers with the rule the
chapter states, implemented again independently, so a verdict the numbers contradict fails.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "ablations.py"
CHAPTER = REPO / "notebooks" / "09_ablations.ipynb"
SEEDS = {
    "base": 3, "mask_ratio_0.25": 3, "mask_ratio_0.5": 3, "mask_ratio_0.9": 3, "raw_pixels": 3,
    "block_masking": 3, "mask_token_in_encoder": 3, "random_init": 3,
    "grid_masking": 1, "decoder_depth_1": 1, "decoder_depth_4": 1,
}  # fmt: skip
# The setting the paper reports as better by linear probing (Table 1 a, c, d, f; Figure 5).
PAPER_FAVOURS = {
    "mask_ratio_0.25": "base", "mask_ratio_0.5": "base", "mask_ratio_0.9": "base",
    "raw_pixels": "base", "block_masking": "base", "grid_masking": "base",
    "mask_token_in_encoder": "base", "decoder_depth_1": "base", "decoder_depth_4": "variant",
}  # fmt: skip
VERDICTS = ("reproduces", "does not reproduce", "cannot tell")


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("ablations_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("MAE_TUTORIAL_DATA", None)  # synthetic images: the same small run everywhere
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, f"exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def check_run(key: str, run: dict) -> None:
    name, seed = key.split("@")
    assert (run["variant"], run["seed"]) == (name, int(seed))
    assert run["inputs"]["settings"]["seed"] == run["seed"]
    for metric in ("knn_top1", "knn_top5", "linprobe_top1", "linprobe_top5"):
        assert 0 <= run[metric] <= 100, (key, metric, run[metric])
    assert run["seconds"] > 0 and run["command"].startswith("python benchmarks/ablations.py")
    assert run["feature_seconds"] > 0 and run["threads"] >= 1
    if run["pretrained"]:
        assert math.isfinite(run["pretrain_loss"]) and run["pretrain_seconds"] > 0
        assert len(run["pretrain_losses"]) == run["inputs"]["budget"]["epochs"]
    assert set(run["inputs"]) == {"config", "settings", "pretrained", "budget", "data"}


@pytest.mark.slow
def test_quick_run_records_every_run_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "ablations.json"
    only = ("--only", "base", "grid_masking", "random_init", "--seeds", "0", "1")
    run_script("--quick", "--out", str(out), "--jobs", "2", *only)
    results = json.loads(out.read_text())
    assert set(results["runs"]) == {
        "base@0", "base@1", "grid_masking@0", "random_init@0", "random_init@1"
    }  # fmt: skip
    assert results["data"] == "synthetic" and "--quick" in results["command"]
    for key, run in results["runs"].items():
        check_run(key, run)
    assert results["runs"]["grid_masking@0"]["inputs"]["settings"]["masking"] == "grid"
    assert results["runs"]["base@0"]["knn_top1"] != results["runs"]["base@1"]["knn_top1"] or (
        results["runs"]["base@0"]["pretrain_loss"] != results["runs"]["base@1"]["pretrain_loss"]
    )  # two seeds are two different runs
    assert "pretrain_loss" not in results["runs"]["random_init@0"]
    assert list(tmp_path.iterdir()) == [out]  # no temporary file, no checkpoint folder left

    # Recorded runs are skipped; new ones are added beside them.
    stdout = run_script("--quick", "--out", str(out), "--only", "base", "--seeds", "0", "2")
    assert "base@0: recorded already, skipped" in stdout
    again = json.loads(out.read_text())
    assert again["runs"]["base@0"] == results["runs"]["base@0"]
    assert set(again["runs"]) == set(results["runs"]) | {"base@2"}


@pytest.mark.slow
def test_a_run_cut_off_mid_way_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    import signal

    import torch

    from mae_tutorial.pretrain import TrainingInterrupted

    script = load_script()
    budget, config = script.QUICK_BUDGET, script.QUICK_CONFIG
    folder, _ = script.data_folder(None, True, tmp_path / "data")
    parts = script.subsets(script.load_cifar10(folder, download=False), budget)
    settings = script.TrainSettings(
        epochs=budget.epochs, batch_size=budget.batch_size, device="cpu", checkpoint_every=1
    )
    base = script.BY_NAME["base"]

    def run(work: Path) -> dict:
        return script.run_variant(base, 1, config, settings, budget, parts, work)

    torch.set_num_threads(1)
    straight = run(tmp_path / "straight")

    def stop_after_step_5(info: Any) -> None:
        if info.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # through the runner's own handler

    cut = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):
        real = script.pretrain
        script.pretrain = lambda *a, **k: real(*a, **{**k, "callback": stop_after_step_5})
        try:
            run(cut)
        finally:
            script.pretrain = real
    assert (cut / "checkpoint.pt").exists()
    resumed = run(cut)  # picks the checkpoint up
    for key in ("pretrain_losses", "knn_top1", "linprobe_top1"):
        assert resumed[key] == straight[key], key


def test_a_checkpoint_from_other_settings_ends_in_one_line(tmp_path: Path) -> None:
    import torch

    from mae_tutorial.model import MaskedAutoencoder
    from mae_tutorial.pretrain import pretrain

    script = load_script()
    out = tmp_path / "ablations.json"
    settings = script.TrainSettings(epochs=1, batch_size=64, device="cpu", checkpoint_every=1)
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    work = tmp_path / "ablations.json.work" / "base@0"
    pretrain(MaskedAutoencoder(script.QUICK_CONFIG), images, settings, work)  # 1 epoch, not 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("MAE_TUTORIAL_DATA", None)
    args = ["--quick", "--out", str(out), "--only", "base", "--seeds", "0"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: base@0: ")
    assert (work / "checkpoint.pt").exists()  # kept, not deleted


def test_schedule_puts_the_floor_first_and_whole_seeds_before_single_seed_variants() -> None:
    script = load_script()
    order = [
        (v.name, s) for v, s in script.schedule(list(script.VARIANTS), None, script.FULL_CONFIG)
    ]
    assert len(order) == sum(SEEDS.values())
    assert [n for n, _ in order[:3]] == ["random_init"] * 3
    seeds = [s for n, s in order if SEEDS[n] == 3 and n != "random_init"]
    assert seeds == sorted(seeds)  # all of seed 0, then seed 1, then seed 2
    assert {n for n, _ in order[-3:]} == {"grid_masking", "decoder_depth_1", "decoder_depth_4"}
    assert order[3][0] == "mask_token_in_encoder"  # the costliest run of seed 0 starts first


def test_help_lists_the_variants_and_bad_flags_end_in_one_line() -> None:
    stdout = run_script("--help")
    assert all(name in stdout for name in SEEDS)
    for bad in (["--jobs", "0"], ["--seeds", "7"], ["--only", "nope"], ["--threads", "x"]):
        done = subprocess.run([sys.executable, str(SCRIPT), *bad], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr, (bad, done.stderr)
        assert "error:" in done.stderr.strip().splitlines()[-1]


def test_a_corrupt_results_file_is_refused_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "ablations.json"
    out.write_text("{not json")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--only", "random_init"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "not a readable results file" in done.stderr
    assert out.read_text() == "{not json"  # left as it was for the user to inspect

    out.write_text('{"format": 1, "runs": {}}')  # the first grid's file: refused, not overwritten
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--only", "random_init"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "format 1" in done.stderr and out.read_text() == '{"format": 1, "runs": {}}'


def stored() -> dict[str, Any]:
    return json.loads((resources.files("mae_tutorial") / "results" / "ablations.json").read_text())


def test_stored_results_hold_the_whole_grid_at_ten_times_the_first_budget() -> None:
    results = stored()
    assert results["format"] == 2 and results["data"] == "CIFAR-10"
    budget = results["budget"]
    assert budget["train"] * budget["epochs"] >= 10 * 8_000 * 3  # the first grid's budget
    assert budget["eval_test"] == 10_000  # the full test set
    # Every contrast the paper calls strong has its three seeds; the one-seed variants (decoder
    # depth, grid masking) are optional extras, checked like the rest when present.
    required = {f"{name}@{seed}" for name, n in SEEDS.items() if n == 3 for seed in range(n)}
    extras = {f"{name}@0" for name, n in SEEDS.items() if n == 1}
    assert required <= set(results["runs"]) <= required | extras
    for key, run in results["runs"].items():
        check_run(key, run)
        assert run["inputs"]["budget"] == budget and run["inputs"]["data"] == "CIFAR-10"
    # The stored command reproduces any one run: it is the script's, on the real data, full size.
    args = shlex.split(results["command"])
    assert args[:2] == ["python", "benchmarks/ablations.py"] and "--data-dir" in args
    assert "--quick" not in args and "--out" not in args


def rule(base: list[float], variant: list[float], favours: str) -> str:
    """The chapter's rule, written again: separated seeds decide, in the paper's direction or not."""
    if len(base) < 3 or len(variant) < 3:
        return "cannot tell"
    if all(b > v for b in base for v in variant):
        winner = "base"
    elif all(v > b for b in base for v in variant):
        winner = "variant"
    else:
        return "cannot tell"
    return "reproduces" if winner == favours else "does not reproduce"


def chapter_verdicts() -> dict[str, tuple[str, str, str]]:
    """The hand-written verdict table of chapter 9: run -> (paper favours, linear probe, kNN)."""
    cells = json.loads(CHAPTER.read_text())["cells"]
    text = next(
        "".join(c["source"]) for c in cells
        if c["cell_type"] == "markdown" and "## The verdicts" in "".join(c["source"])
    )  # fmt: skip
    rows = {}
    for line in text.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        found = re.fullmatch(r"`([\w.]+)`", cols[2]) if len(cols) == 6 else None
        if found:
            rows[found.group(1)] = (cols[3], cols[4].strip("*"), cols[5].strip("*"))
    return rows


def test_every_verdict_in_chapter_9_follows_the_stated_rule() -> None:
    runs = stored()["runs"]

    def seeds(name: str, metric: str) -> list[float]:
        return [run[metric] for run in runs.values() if run["variant"] == name]

    table = chapter_verdicts()
    assert set(table) == set(PAPER_FAVOURS), "one row per contrast"
    for name, (favours_text, linear, knn) in table.items():
        favours = PAPER_FAVOURS[name]
        paper_setting = "the base" if favours == "base" else "the variant"
        assert favours_text.startswith(paper_setting), (name, favours_text)
        for metric, written in (("linprobe_top1", linear), ("knn_top1", knn)):
            derived = rule(seeds("base", metric), seeds(name, metric), favours)
            assert written in VERDICTS and written == derived, (name, metric, written, derived)


def test_the_rule_itself() -> None:
    assert rule([3, 4, 5], [0, 1, 2], "base") == "reproduces"
    assert rule([3, 4, 5], [0, 1, 2], "variant") == "does not reproduce"
    assert rule([3, 4, 5], [0, 1, 3.5], "base") == "cannot tell"
    assert rule([3, 4, 5], [0], "base") == "cannot tell"
