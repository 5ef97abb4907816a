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


# ------------------------------------------------- the command line's bad input (issue 15, rule a-c)


def _refused(capsys, argv: list[str], *expected: str) -> str:
    """Run the command line; it must exit 2 with one line on stderr holding each of `expected`."""
    code = shipped.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"{shipped.PROG}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "usage:" not in err, err
    for text in expected:
        assert text in err, (text, err)
    return err


@pytest.fixture
def shelf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder of shipped models; nothing may be written there by a refused command."""
    folder = tmp_path / "shipped"
    monkeypatch.setattr(shipped, "PRETRAINED_DIR", folder)
    return folder


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "the following arguments are required"),
        (["--results"], "the following arguments are required"),
        (["ckpt.pt", "toy", "--bogus"], "--bogus"),
        (["ckpt.pt", "toy", "extra"], "extra"),
    ],
)
def test_command_line_argument_errors_are_one_line(capsys, shelf, argv, expected) -> None:
    _refused(capsys, argv, expected, "--help")
    assert not shelf.exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "", "a b", ".hidden", "x.pt", "n" * 65, "é"])
def test_command_line_refuses_a_name_that_is_not_plain(checkpoint, capsys, shelf, name) -> None:
    path, _ = checkpoint
    _refused(capsys, [str(path), name], repr(name), "letters, digits")
    assert not shelf.exists() and not (shelf.parent / "x.pt").exists()


def test_command_line_names_a_missing_results_file(checkpoint, capsys, shelf, tmp_path) -> None:
    path, _ = checkpoint
    missing = tmp_path / "no_such_summary.txt"
    _refused(capsys, [str(path), "toy", "--results", str(missing)], str(missing))
    assert not shelf.exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("no summary here\n", "JSON summar"),
        ('{"linprobe_top1": 1.0, "knn_top1": 2.0}', "JSON summar"),
        ('{"linprobe_top1": 1.0', "does not parse"),
        ('{"finetune_top1": 1.0, "blocks": "two"}', "'blocks' must be an integer"),
        ('{"linprobe_top1": 1.0, "last_blocks": 1e9}', "'last_blocks' must be an integer"),
    ],
)
def test_command_line_refuses_a_bad_results_file(
    checkpoint, capsys, shelf, tmp_path, text, expected
) -> None:
    path, _ = checkpoint
    file = tmp_path / "summary.txt"
    file.write_text(text)
    _refused(capsys, [str(path), "toy", "--results", str(file)], str(file), expected)
    assert not shelf.exists()


def test_command_line_refuses_an_oversized_or_duplicate_results_file(
    checkpoint, capsys, shelf, tmp_path
) -> None:
    path, _ = checkpoint
    big = tmp_path / "big.txt"
    big.write_bytes(b" " * (shipped.MAX_SUMMARY_BYTES + 1))
    _refused(capsys, [str(path), "toy", "--results", str(big)], str(big), "bytes")
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    for file in (first, second):  # two knn summaries: the second would silently replace the first
        file.write_text(json.dumps({"knn_top1": 40.0}))
    _refused(capsys, [str(path), "toy", "--results", str(first), str(second)], str(second), "knn")
    assert not shelf.exists()


def test_command_line_refuses_bad_checkpoints_and_flags_before_loading_data(
    checkpoint, capsys, shelf, tmp_path, monkeypatch
) -> None:
    path, _ = checkpoint
    monkeypatch.setattr(shipped, "load_cifar10", lambda *a, **k: pytest.fail("loaded the data"))
    missing = str(tmp_path / "missing.pt")
    _refused(capsys, [missing, "toy"], missing)
    _refused(capsys, [str(path), "toy", "--snapshots", missing], missing)
    other = MaskedAutoencoder(MAEConfig.from_preset("tiny", decoder_depth=2))
    state = {"model": other.state_dict(), "config": other.config.to_dict()}
    other_path = str(save_checkpoint(tmp_path / "other.pt", state))
    _refused(capsys, [str(path), "toy", "--snapshots", other_path], other_path, "decoder_depth")
    too_many = [str(path)] * (shipped.MAX_SNAPSHOTS + 1)
    _refused(capsys, [str(path), "toy", "--snapshots", *too_many], "--snapshots", "at most")
    _refused(capsys, [str(path), "toy", "--command", "x" * 5000], "--command", "at most")
    _refused(capsys, [str(path), "toy", "--data-dir", str(tmp_path)], "--data-dir", "--snapshots")
    assert not shelf.exists()


def test_command_line_refuses_an_unwritable_shelf(checkpoint, capsys, shelf) -> None:
    path, _ = checkpoint
    shelf.write_text("a file where the folder of shipped models should be")
    _refused(capsys, [str(path), "toy"], str(shelf), "writable folder")
    shelf.unlink()
    (shelf / "toy.pt").mkdir(parents=True)
    _refused(capsys, [str(path), "toy"], "toy.pt")
