"""Tests for mae_tutorial.pretrained: packing a checkpoint and loading shipped reference models."""

import json
from pathlib import Path

import pytest
import torch

from mae_tutorial import pretrained as shipped
from mae_tutorial.checkpoint import load_checkpoint, save_checkpoint
from mae_tutorial.config import MAEConfig
from mae_tutorial.model import MaskedAutoencoder


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, MaskedAutoencoder]:
    model = MaskedAutoencoder(MAEConfig.from_preset("tiny"))
    state = {
        "model": model.state_dict(),
        "config": model.config.to_dict(),
        "optimizer": {"state": {}, "param_groups": []},
        "history": [{"epoch": 1, "loss": 0.9}],
        "step": 10,
    }
    return save_checkpoint(tmp_path / "checkpoint.pt", state), model


def test_pack_keeps_what_a_reader_needs_in_fp16(checkpoint, tmp_path: Path) -> None:
    path, model = checkpoint
    out = shipped.pack(path, tmp_path / "ref.pt", command="python -m x", results={"knn": {"a": 1}})
    state = load_checkpoint(out)
    assert "optimizer" not in state and state["history"] == [{"epoch": 1, "loss": 0.9}]
    assert state["command"] == "python -m x" and state["results"] == {"knn": {"a": 1}}
    assert state["model"]["encoder.blocks.0.attn.qkv.weight"].dtype == torch.float16
    assert state["model"]["encoder.pos_embed"].dtype == torch.float32  # exact sin-cos table
    assert torch.equal(state["model"]["encoder.pos_embed"], model.encoder.pos_embed)


def test_packed_model_loads_and_matches_within_fp16(checkpoint, tmp_path, monkeypatch) -> None:
    path, model = checkpoint
    monkeypatch.setattr(shipped, "PRETRAINED_DIR", tmp_path / "shipped")
    shipped.pack(path, tmp_path / "shipped" / "toy.pt")
    assert shipped.available() == ["toy"]
    loaded = shipped.pretrained("toy")
    assert not loaded.training and loaded.config == model.config
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    expected, got = model.eval()(images, noise=noise), loaded(images, noise=noise)
    assert torch.allclose(got.pred, expected.pred, atol=1e-2)
    assert not torch.equal(got.pred, expected.pred)  # it really was rounded to fp16
    assert "model" not in shipped.pretrained_info("toy")


def test_unknown_name_names_the_known_ones(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shipped, "PRETRAINED_DIR", tmp_path)
    (tmp_path / "ref.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"'nope'.*\['ref'\]"):
        shipped.pretrained("nope")


def test_command_line_collects_the_json_summaries(checkpoint, tmp_path, monkeypatch) -> None:
    path, _ = checkpoint
    monkeypatch.setattr(shipped, "PRETRAINED_DIR", tmp_path / "shipped")
    probe, knn = tmp_path / "probe.txt", tmp_path / "knn.txt"
    probe.write_text(
        "features ...\n"
        + json.dumps({"linprobe_top1": 61.0, "train_top1": 70.0, "random_init": False})
    )
    knn.write_text(json.dumps({"knn_top1": 40.0, "random_init": True}) + "\n")
    last4 = tmp_path / "last4.txt"
    last4.write_text(json.dumps({"linprobe_top1": 64.0, "last_blocks": 4, "random_init": False}))
    files = [str(probe), str(knn), str(last4)]
    assert shipped.main([str(path), "toy", "--command", "cmd", "--results", *files]) == 0
    results = shipped.pretrained_info("toy")["results"]
    assert results["linprobe"]["linprobe_top1"] == 61.0  # not overwritten by the 4-block probe
    assert results["linprobe_last4"]["linprobe_top1"] == 64.0
    assert results["random_init_knn"]["knn_top1"] == 40.0


@pytest.mark.skipif(not shipped.available(), reason="no reference model shipped yet")
def test_every_shipped_model_loads_with_its_record() -> None:
    for name in shipped.available():
        model = shipped.pretrained(name)
        info = shipped.pretrained_info(name)
        assert "python -m mae_tutorial pretrain" in info["command"]
        assert MAEConfig.from_dict(info["config"]) == model.config
        assert info["history"] and info["results"]


def test_snapshots_store_each_checkpoints_reconstructions(
    checkpoint, synthetic_root, tmp_path, monkeypatch
) -> None:
    path, model = checkpoint
    later = MaskedAutoencoder(model.config)  # a different "later epoch" of the same config
    state = load_checkpoint(path)
    state.update(model=later.state_dict(), epoch=5)
    final = save_checkpoint(tmp_path / "final.pt", state)
    monkeypatch.setattr(shipped, "PRETRAINED_DIR", tmp_path / "shipped")
    argv = [str(final), "toy", "--snapshots", str(path), "--data-dir", str(synthetic_root)]
    assert shipped.main(argv) == 0
    snaps = shipped.pretrained_info("toy")["snapshots"]
    assert snaps["epochs"] == [0, 5]
    assert snaps["pred"].shape == (2, shipped.SNAPSHOT_IMAGES, 16, 192)
    assert snaps["pred"].dtype == torch.float16
    assert not torch.equal(snaps["pred"][0], snaps["pred"][1])
    assert snaps["mask"].sum(1).tolist() == [12.0] * shipped.SNAPSHOT_IMAGES
    with torch.no_grad():
        expected = model.eval()(images_of(synthetic_root, snaps), noise=snaps["noise"]).pred
    torch.testing.assert_close(snaps["pred"][0].float(), expected, atol=1e-2, rtol=1e-2)


def images_of(root: Path, snaps: dict) -> torch.Tensor:
    from mae_tutorial.data import load_cifar10, normalize

    data = load_cifar10(root)
    labels = data.test_labels[snaps["test_indices"]].tolist()
    assert labels == list(range(shipped.SNAPSHOT_IMAGES))  # one image per class, in class order
    return normalize(data.test_images[snaps["test_indices"]])


def test_snapshots_refuse_checkpoints_of_different_runs(checkpoint, tmp_path: Path) -> None:
    path, _ = checkpoint
    other = MaskedAutoencoder(MAEConfig.from_preset("tiny", decoder_depth=2))
    state = {"model": other.state_dict(), "config": other.config.to_dict()}
    other_path = save_checkpoint(tmp_path / "other.pt", state)
    with pytest.raises(ValueError, match="another config"):
        shipped.snapshot_predictions(
            [path, other_path], torch.randn(1, 3, 32, 32), torch.rand(1, 16)
        )
