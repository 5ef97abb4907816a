"""The benchmarks' harness, and smoke runs of the scripts: each runs at tiny sizes and prints its
summary lines.

Nothing here is timed against a threshold: the numbers only have to be there and be numbers.
Each script runs in a subprocess, as a user runs it, on one thread and on synthetic data. The
harness (`benchmarks/common.py`) is loaded from its file: benchmarks/ is not a package.
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
import torch
from torch.utils.flop_counter import FlopCounterMode

from mae_tutorial import MAEConfig
from mae_tutorial.pretrain import TrainSettings

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def common():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("benchmarks_common", BENCHMARKS / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_counted_step_is_three_forwards_with_attention_and_replays_the_same_matmuls(common) -> None:
    config = MAEConfig.from_preset("tiny")
    stepper = common.Stepper(config, TrainSettings(batch_size=4), torch.device("cpu"))
    x, noise = torch.randn(4, 3, 32, 32), torch.rand(4, config.num_patches)  # (B, C, H, W), (B, L)
    flops, replay = common.count_step(stepper, x, noise)
    # The recorded matmuls are all the step's counted work (the model has no convolutions).
    with common.sdpa_kernel(common.SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        stepper.loss_fn()(x, noise).backward()
    assert flops.step == counter.get_total_flops()
    assert 2.5 < flops.step / flops.forward <= 3.0  # backward = 2x forward, less the input grads
    assert flops.per_image == flops.step / 4
    # Attention's products are counted: the fused kernel is invisible to FlopCounterMode.
    assert any(op is torch.ops.aten.bmm.default for op, _, _ in common.record_step_matmuls(
        lambda: stepper.loss_fn()(x, noise)))  # fmt: skip
    replay()  # runs, on operands of the recorded shapes


def test_matmul_flops_counts_two_m_n_k_times_the_batch(common) -> None:
    mm, bmm, addmm = (
        torch.ops.aten.mm.default,
        torch.ops.aten.bmm.default,
        torch.ops.aten.addmm.default,
    )
    assert common.matmul_flops((mm, (torch.Size([3, 5]), torch.Size([5, 7])), torch.float32)) == 210
    shapes = (torch.Size([7]), torch.Size([3, 5]), torch.Size([5, 7]))
    assert common.matmul_flops((addmm, shapes, torch.float32)) == 210
    shapes = (torch.Size([2, 3, 5]), torch.Size([2, 5, 7]))
    assert common.matmul_flops((bmm, shapes, torch.float32)) == 420


def test_time_interleaved_rotates_the_order_and_ratios_pair_rounds(common) -> None:
    order: list[str] = []
    paths = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = common.time_interleaved(paths, torch.device("cpu"), warmup=0, repeats=3, n=1)
    assert order == list("abcbcacab")
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    mid, low, high = common.ratio_spread({"a": [1.0, 2.0, 4.0], "b": [2.0, 2.0, 2.0]}, "a", "b")
    assert (mid, low, high) == (1.0, 0.5, 2.0)


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
    positive_float(summary["work_ratio_vs_fastest_fp32"])


@pytest.mark.slow
def test_epoch_smoke() -> None:
    summary = run_benchmark("epoch.py", "--smoke")
    positive_float(summary["ratio_pipeline_vs_model"])
    positive_float(summary["flop_utilisation"])


@pytest.mark.slow
def test_gpu_smoke_reports_mfu_given_a_peak() -> None:
    summary = run_benchmark("gpu.py", "--smoke", "--peak-tflops", "1")
    for key in ("images_per_s", "images_per_s_async", "epoch_s", "mfu", "flop_utilisation"):
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
