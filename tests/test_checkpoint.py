"""Tests of checkpoint I/O: round trips, atomic writes, refusal of bad files and other configs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mae_tutorial import checkpoint as ckpt
from mae_tutorial.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_json,
)
from mae_tutorial.config import MAEConfig
from mae_tutorial.model import MaskedAutoencoder


def _state(config: MAEConfig, marker: float = 1.0) -> dict:
    model = MaskedAutoencoder(config)
    return {
        "model": model.state_dict(),
        "config": config.to_dict(),
        "step": 3,
        "history": [{"epoch": 1, "loss": marker}],
        "rng": {"torch": torch.get_rng_state(), "cuda": []},
        "settings": {"betas": [0.9, 0.95], "subset": None},
    }


def test_round_trip_is_weights_only_loadable(tmp_path: Path, tiny: MAEConfig) -> None:
    state = _state(tiny)
    path = save_checkpoint(tmp_path / "sub" / "checkpoint.pt", state)
    raw = torch.load(path, weights_only=True)  # no code runs: only tensors and plain containers
    loaded = load_checkpoint(path, expected_config=tiny)
    for got in (raw, loaded):
        assert got["config"] == tiny.to_dict() and got["history"] == state["history"]
        assert all(torch.equal(got["model"][k], v) for k, v in state["model"].items())
        assert torch.equal(got["rng"]["torch"], state["rng"]["torch"])
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_failed_write_keeps_the_previous_checkpoint(
    tmp_path: Path, tiny: MAEConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(tiny, marker=1.0))

    def half_then_die(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04" + b"\0" * 1000)  # the start of a zip file, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", half_then_die)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(tiny, marker=2.0))
    assert load_checkpoint(path)["history"][0]["loss"] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # the temporary was removed


@pytest.mark.slow
def test_process_killed_mid_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """A process that dies (os._exit, no clean-up at all) halfway through writing a large
    checkpoint leaves the previous one in place and loadable."""
    script = textwrap.dedent(
        """
        import io, os, sys, torch
        from mae_tutorial import checkpoint
        path = sys.argv[1]
        checkpoint.save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "config": {}, "v": 1})
        big = {"model": {"w": torch.randn(4_000_000)}, "config": {}, "v": 2}  # 16 MB
        buffer = io.BytesIO()
        torch.save(big, buffer)
        data = buffer.getvalue()

        def dying_save(obj, f):
            f.write(data[: len(data) // 2])
            f.flush()
            os._exit(9)  # as abrupt as SIGKILL: no finally blocks, no clean-up

        checkpoint.torch.save = dying_save
        checkpoint.save_checkpoint(path, big)
        """
    )
    path = tmp_path / "checkpoint.pt"
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 9, result.stderr
    assert load_checkpoint(path)["v"] == 1
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")  # the half-written temporary
    assert leftovers[0].stat().st_size > 1_000_000
    assert latest_checkpoint(tmp_path) == path


@pytest.mark.parametrize("kind", ["truncated", "garbage", "text", "list", "no_model", "code"])
def test_bad_files_raise_value_error_naming_the_file(
    tmp_path: Path, tiny: MAEConfig, kind: str
) -> None:
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        save_checkpoint(path, _state(tiny))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    elif kind == "no_model":
        torch.save({"config": tiny.to_dict()}, path)
    else:  # a pickled object of an arbitrary class: weights_only refuses to build it
        torch.save({"model": {}, "config": {}, "payload": MAEConfig()}, path)
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        load_checkpoint(path)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_bad_map_location_names_the_device_not_the_file(tmp_path: Path, tiny: MAEConfig) -> None:
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state(tiny))  # a good file
    with pytest.raises(ValueError, match="'bogus' is not a device") as err:
        load_checkpoint(path, map_location="bogus")
    assert "not a readable checkpoint" not in str(err.value)


def test_other_config_is_refused_naming_each_field(tmp_path: Path, tiny: MAEConfig) -> None:
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state(tiny))
    other = MAEConfig.from_preset("tiny", depth=3, mask_ratio=0.5)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, expected_config=other)
    message = str(info.value)
    assert "depth: checkpoint 2, expected 3" in message
    assert "mask_ratio: checkpoint 0.75, expected 0.5" in message
    assert "embed_dim" not in message  # only the differing fields are named
    load_checkpoint(path, expected_config=tiny.to_dict())  # a dict works as well as a config


def test_latest_checkpoint(tmp_path: Path, tiny: MAEConfig) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / ".checkpoint.pt.abc.tmp").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) is None
    for epoch in (2, 10, 9):
        save_checkpoint(tmp_path / f"epoch_{epoch:04d}.pt", _state(tiny))
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch_0010.pt"
    save_checkpoint(tmp_path / "checkpoint.pt", _state(tiny))
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint.pt"


def test_load_model_rebuilds_the_same_model(
    tmp_path: Path, tiny: MAEConfig, make_images, make_noise
) -> None:
    model = MaskedAutoencoder(tiny).eval()
    path = save_checkpoint(
        tmp_path / "c.pt", {"model": model.state_dict(), "config": tiny.to_dict()}
    )
    rebuilt = load_model(path)
    assert rebuilt.config == tiny and not rebuilt.training
    images, noise = make_images(tiny, 4), make_noise(tiny, 4)
    with torch.no_grad():
        assert torch.equal(rebuilt(images, noise).pred, model(images, noise).pred)


def test_load_model_refuses_weights_that_do_not_fit(tmp_path: Path, tiny: MAEConfig) -> None:
    weights = MaskedAutoencoder(tiny).state_dict()
    del weights["decoder.pred.bias"]
    path = save_checkpoint(tmp_path / "c.pt", {"model": weights, "config": tiny.to_dict()})
    with pytest.raises(ValueError, match="do not fit"):
        load_model(path)
    bad = save_checkpoint(tmp_path / "d.pt", {"model": {}, "config": {"depth": 0}})
    with pytest.raises(ValueError, match="invalid model config"):
        load_model(bad)


def test_save_json_is_atomic_json(tmp_path: Path) -> None:
    import json

    path = save_json(tmp_path / "history.json", [{"epoch": 1, "loss": 0.5}])
    assert json.loads(path.read_text()) == [{"epoch": 1, "loss": 0.5}]
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


@pytest.mark.parametrize("preset", ["tiny", "cpu", "vit_tiny"])
@pytest.mark.parametrize("variant", [{}, {"mask_token_in_encoder": True, "pool": "cls"}])
def test_size_bound_never_refuses_a_real_model(preset: str, variant: dict) -> None:
    """The lower bound on a config's weights that guards against crafted configs stays below the
    weights every real model stores."""
    config = MAEConfig.from_preset(preset, **variant)
    stored = sum(v.numel() for v in MaskedAutoencoder(config).state_dict().values())
    assert 0 < ckpt._least_weights(config) <= stored
