"""Tests of the command line: help, one-line errors with exit code 2 for every bounded flag and
every output known to be wrong before work starts, the JSON summaries, the PNG of `reconstruct`,
and signals sent to a real pretraining process. Nothing here uses a test-only flag: faults are
injected by wrapping `pretrain` (its callback, a forward hook) or by monkeypatching."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mae_tutorial.__main__ as cli
from mae_tutorial.__main__ import build_parser, main
from mae_tutorial.checkpoint import load_checkpoint

SUBCOMMANDS = {
    "pretrain": ["--preset", "--data-dir", "--subset", "--epochs", "--batch-size", "--base-lr",
                 "--warmup-epochs", "--mask-ratio", "--norm-pix", "--no-norm-pix", "--decoder-depth",
                 "--decoder-dim", "--out",
                 "--resume", "--init-from", "--device", "--seed", "--amp", "--compile",
                 "--checkpoint-every"],
    "linprobe": ["--checkpoint", "--data-dir", "--subset", "--device", "--epochs", "--batch-size"],
    "knn": ["--checkpoint", "--data-dir", "--subset", "--device", "--k", "--temperature"],
    "finetune": ["--checkpoint", "--data-dir", "--subset", "--device", "--epochs", "--blocks",
                 "--from-scratch", "--batch-size"],
    "reconstruct": ["--checkpoint", "--out", "--n", "--split", "--seed", "--data-dir"],
}  # fmt: skip
TINY = ["--preset", "tiny", "--batch-size", "50", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mae_tutorial.data import make_synthetic_cifar

    return make_synthetic_cifar(tmp_path_factory.mktemp("cifar"), n_train=300, n_test=50)


def _json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mae_tutorial", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=ENV)


# The shipped command line, in a fresh process, with `pretrain` wrapped so that its callback sends
# a real SIGTERM to the process after step N: the real signal handler does the rest.
_SIGTERM_AFTER = """
import os, signal, sys
import mae_tutorial.__main__ as cli
real, after = cli.pretrain, int(sys.argv[1])

def stop(info):
    if info.step == after:
        os.kill(os.getpid(), signal.SIGTERM)

cli.pretrain = lambda *args, **kwargs: real(*args, callback=stop, **kwargs)
sys.exit(cli.main(sys.argv[2:]))
"""


def _cli_sigterm_after(step: int, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", _SIGTERM_AFTER, str(step), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=ENV)


def _one_line_error(capsys: pytest.CaptureFixture, *expected: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(text in err for text in expected), err
    assert "weights_only" not in err and "safe_globals" not in err  # never advise disabling them
    return err


# ---------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_help_of_every_subcommand(command: str, capsys: pytest.CaptureFixture) -> None:
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    for flag in SUBCOMMANDS[command]:
        assert flag in text, flag
    assert "examples:" in text and "default" in text
    assert "debug" not in text  # no test hooks in the shipped command line


@pytest.mark.parametrize("flag", ["--debug-stop-after-steps", "--debug-nan-at-step"])
def test_test_only_flags_are_gone(flag: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["pretrain", flag, "3"]) == 2
    _one_line_error(capsys, f"unrecognized arguments: {flag}")


def test_top_level_help_lists_the_subcommands(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(command in text for command in SUBCOMMANDS)
    assert main([]) == 2  # no command: the help goes to stderr, and it is an error


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pretrain", "--preset", "huge"], "invalid choice: 'huge'"),
        (["pretrain", "--epochs", "-1"], "--epochs"),
        (["pretrain", "--epochs", "two"], "expected an integer in [1, 100000], got 'two'"),
        (["pretrain", "--base-lr", "nan"], "--base-lr"),
        (["pretrain", "--mask-ratio", "1.5"], "number in (0, 1)"),
        (["pretrain", "--mask-ratio", "1"], "number in (0, 1)"),
        (["pretrain", "--decoder-depth", "100000"], "--decoder-depth"),
        (["pretrain", "--decoder-dim", "100000"], "--decoder-dim"),
        (["pretrain", "--epochs", "1e9"], "--epochs"),
        (["pretrain", "--amp", "fp16", "--device", "cpu"], "fp16"),
        (["reconstruct", "--checkpoint", "x.pt", "--dpi", "100000"], "--dpi"),
        (["reconstruct", "--checkpoint", "x.pt", "--n", "100000"], "--n"),
        (["reconstruct", "--checkpoint", "x.pt", "--name", "grid.exe"], "--name 'grid.exe'"),
        (["reconstruct", "--checkpoint", "x.pt", "--name", "../grid.png"], "--name '../grid.png'"),
        (["finetune", "--from-scratch", "--preset", "tiny", "--amp", "fp16"], "fp16"),
        (
            [
                "finetune",
                "--from-scratch",
                "--preset",
                "tiny",
                "--epochs",
                "2",
                "--warmup-epochs",
                "3",
            ],
            "--warmup-epochs 3",
        ),
        (["pretrain", "--decoder-depth", "0"], "--decoder-depth"),
        (["pretrain", "--decoder-dim", "70"], "decoder_embed_dim=70"),
        (["pretrain", "--data-dir", "{tmp}/nowhere"], "nowhere"),
        (["pretrain", "--data-dir", "{data}", "--subset", "1000000"], "subset=1000000 exceeds"),
        (["pretrain", "--data-dir", "{data}", "--warmup-epochs", "300"], "warmup_epochs"),
        (["pretrain", "--device", "gpu"], "device"),
        (["pretrain", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["reconstruct", "--checkpoint", "{tmp}/missing.pt"], "missing.pt"),
        (["linprobe", "--checkpoint", "{tmp}/garbage.pt"], "not a readable checkpoint"),
        (["knn"], "--checkpoint"),
        (["finetune", "--data-dir", "{data}"], "give --checkpoint, or --from-scratch --preset"),
        (["finetune", "--from-scratch", "--preset", "tiny", "--blocks", "9"], "--blocks 9"),
        (["finetune", "--preset", "tiny"], "give --checkpoint, or --from-scratch --preset"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(
    args: list[str], expected: str, tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    argv = [a.format(tmp=tmp_path, data=data_root) for a in args]
    assert main(argv) == 2
    _one_line_error(capsys, expected)


def _typed_options() -> list[tuple[str, str]]:
    """(subcommand, flag) of every option that takes a number."""
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [
        (name, action.option_strings[-1])
        for name, sub in subs.choices.items()
        for action in sub._actions
        if action.type is not None
    ]


@pytest.mark.parametrize(("command", "flag"), _typed_options())
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1" + "0" * 30, "0x10"])
def test_every_numeric_flag_is_bounded(
    command: str, flag: str, value: str, capsys: pytest.CaptureFixture
) -> None:
    """Issue 15 (c): no numeric flag takes a non-finite, negative or absurdly large value."""
    assert main([command, flag, value, "--checkpoint", "x.pt"]) == 2
    _one_line_error(capsys, flag)


def test_work_does_not_start_when_an_output_is_known_to_be_wrong(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 6: --out naming a file (or lying under one) fails at once, not after work."""

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the outputs were checked")

    for name in ("load_cifar10", "load_model", "pretrain", "MaskedAutoencoder"):
        monkeypatch.setattr(cli, name, no_work)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    (tmp_path / "pics" / "grid.png").mkdir(parents=True)
    data = ["--data-dir", str(data_root)]
    for argv in (
        ["pretrain", *TINY, *data, "--out", str(afile)],
        ["pretrain", *TINY, *data, "--out", str(afile / "run")],
        ["reconstruct", "--checkpoint", "c.pt", *data, "--out", str(afile)],
        ["reconstruct", "--checkpoint", "c.pt", *data, "--out", str(tmp_path / "pics"),
         "--name", "grid.png"],
    ):  # fmt: skip
        assert main(argv) == 2, argv
        _one_line_error(capsys, str(afile) if "pics" not in argv[-3] else "grid.png")
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_checks_its_device_before_work(
    command: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the device was checked")

    for name in ("load_cifar10", "load_model", "pretrain", "MaskedAutoencoder"):
        monkeypatch.setattr(cli, name, no_work)
    inputs = {"pretrain": [], "finetune": ["--from-scratch", "--preset", "tiny"]}
    argv = [command, "--device", "gpu", *inputs.get(command, ["--checkpoint", "c.pt"])]
    assert main(argv) == 2
    _one_line_error(capsys, "'gpu'")


def test_run_failures_give_one_line_and_exit_code_1(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 7: a full disk (or a failed download) is one line, no chained tracebacks."""
    from mae_tutorial.download import DownloadError

    argv = ["pretrain", *TINY, "--data-dir", str(data_root), "--out", str(tmp_path / "run")]
    for error in (
        OSError(28, "No space left on device", str(tmp_path / "run" / "checkpoint.pt")),
        DownloadError("CIFAR-10 could not be downloaded: no network"),
        MemoryError(),
    ):

        def fail(*args: object, error: BaseException = error, **kwargs: object) -> None:
            try:
                raise RuntimeError("the cause")
            except RuntimeError as cause:
                raise error from cause

        monkeypatch.setattr(cli, "pretrain", fail)
        assert main(argv) == 1
        err = _one_line_error(capsys)
        assert "the cause" not in err and (
            "No space" in err or "download" in err or "Memory" in err
        )


# ------------------------------------------------------------------------- commands end to end


def test_pretrain_then_every_other_command(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = ["pretrain", *TINY, "--data-dir", str(data_root), "--epochs", "2", "--out", str(out)]
    decoder = ["--decoder-depth", "3", "--decoder-dim", "16"]
    assert main([*args, "--mask-ratio", "0.5", "--no-norm-pix", *decoder]) == 0
    summary = _json_line(capsys.readouterr().out)
    assert set(summary) >= {"final_loss", "epochs", "checkpoint", "seconds"}
    assert summary["epochs"] == 2 and summary["checkpoint"] == str(out / "checkpoint.pt")
    config = load_checkpoint(out / "checkpoint.pt")["config"]
    assert config["mask_ratio"] == 0.5 and config["norm_pix_loss"] is False
    assert config["decoder_depth"] == 3 and config["decoder_embed_dim"] == 16
    assert main(args) == 2  # the folder holds a run: neither --resume nor --overwrite
    assert "already holds a checkpoint" in capsys.readouterr().err

    checkpoint = ["--checkpoint", str(out / "checkpoint.pt"), "--data-dir", str(data_root)]
    assert main(["reconstruct", *checkpoint, "--n", "4", "--out", str(tmp_path / "pics")]) == 0
    png = Path(_json_line(capsys.readouterr().out)["reconstruction"])
    assert png == tmp_path / "pics" / "reconstruction.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    commands = {
        "knn": ["--k", "5"],
        "linprobe": ["--epochs", "2"],
        "finetune": ["--epochs", "1", "--blocks", "1", "--batch-size", "50"],
    }
    for command, extra in commands.items():
        assert main([command, *checkpoint, "--device", "cpu", *extra]) == 0
        result = _json_line(capsys.readouterr().out)
        key = {"knn": "knn_top1", "linprobe": "linprobe_top1", "finetune": "finetune_top1"}
        assert 0 <= result[key[command]] <= 100, result

    assert main(["knn", *checkpoint, "--device", "cpu", "--k", "5", "--random-init"]) == 0
    assert _json_line(capsys.readouterr().out)["random_init"] is True


def test_random_init_scores_fresh_weights_of_the_checkpoints_config(tmp_path: Path) -> None:
    from mae_tutorial.__main__ import _probed_model, build_parser
    from mae_tutorial.checkpoint import save_checkpoint
    from mae_tutorial.config import MAEConfig
    from mae_tutorial.model import MaskedAutoencoder

    config = MAEConfig.from_preset("tiny", depth=1)
    trained = MaskedAutoencoder(config)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": trained.state_dict(), "config": config.to_dict()})
    args = build_parser().parse_args(["knn", "--checkpoint", str(path), "--seed", "3"])
    assert torch.equal(_probed_model(args).encoder.blocks[0].mlp.fc1.weight,
                       trained.encoder.blocks[0].mlp.fc1.weight)  # fmt: skip
    args.random_init = True
    fresh = _probed_model(args)
    torch.manual_seed(3)
    expected = MaskedAutoencoder(config)
    assert fresh.config == config
    for (name, value), reference in zip(fresh.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(value, reference), name
    assert not torch.equal(fresh.encoder.blocks[0].mlp.fc1.weight,
                           trained.encoder.blocks[0].mlp.fc1.weight)  # fmt: skip


def test_init_from_starts_a_second_cycle_from_a_runs_weights(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["pretrain", *TINY, "--data-dir", str(data_root), "--epochs", "1"]
    assert main([*base, "--out", str(tmp_path / "first")]) == 0
    first = load_checkpoint(tmp_path / "first" / "checkpoint.pt")
    # An lr of 1e-12 barely moves the weights: the second cycle must end where the first did.
    again = [*base, "--base-lr", "1e-12", "--weight-decay", "0", "--seed", "1"]
    init = ["--init-from", str(tmp_path / "first" / "checkpoint.pt")]
    assert main([*again, "--out", str(tmp_path / "second"), *init]) == 0
    assert "starting from the weights of" in capsys.readouterr().out
    second = load_checkpoint(tmp_path / "second" / "checkpoint.pt")
    assert second["step"] == first["step"] and len(second["history"]) == 1  # a fresh schedule
    for name, value in first["model"].items():
        torch.testing.assert_close(second["model"][name], value, atol=1e-8, rtol=0)
    assert main([*again, "--out", str(tmp_path / "fresh")]) == 0  # the same, without --init-from
    fresh = load_checkpoint(tmp_path / "fresh" / "checkpoint.pt")["model"]
    assert not torch.allclose(fresh["encoder.blocks.0.attn.qkv.weight"],
                              first["model"]["encoder.blocks.0.attn.qkv.weight"])  # fmt: skip

    capsys.readouterr()
    assert main([*again, "--mask-ratio", "0.5", "--out", str(tmp_path / "x"), *init]) == 2
    err = capsys.readouterr().err
    assert "mask_ratio: checkpoint 0.75, expected 0.5" in err and "Traceback" not in err


def test_a_full_disk_during_pretraining_is_one_line_and_keeps_the_checkpoint(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 7, end to end: the second checkpoint write fails with ENOSPC."""
    import errno

    from mae_tutorial import checkpoint

    real, writes = checkpoint.torch.save, [0]

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        writes[0] += 1
        if writes[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    monkeypatch.setenv("TQDM_DISABLE", "1")  # progress bars also write to stderr
    argv = ["pretrain", *TINY, "--data-dir", str(data_root), "--epochs", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    messages = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(messages) == 1 and "No space left on device" in messages[0], messages
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 6  # the first epoch's, intact
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_nan_loss_exits_1_with_the_step_and_keeps_the_checkpoint(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = cli.pretrain

    def poisoned(model: torch.nn.Module, *args: object, **kwargs: object) -> object:
        calls = {"n": 0}

        def poison(module: torch.nn.Module, inputs: object, output: object) -> object:
            calls["n"] += module.training  # one per training step; not the runner's checks
            nan = float("nan") if module.training and calls["n"] == 8 else 1.0
            return dataclasses.replace(output, loss=output.loss * nan)

        model.register_forward_hook(poison)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(cli, "pretrain", poisoned)
    argv = ["pretrain", *TINY, "--data-dir", str(data_root), "--epochs", "2", "--out"]
    assert main([*argv, str(tmp_path)]) == 1
    err = capsys.readouterr().err
    messages = [line for line in err.splitlines() if line and not line.startswith("pretrain:")]
    assert len(messages) == 1 and "Traceback" not in err, err  # progress bar lines aside
    assert "non-finite loss nan at step 8" in err
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 6


# ---------------------------------------------------------------------- signals, in subprocesses


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(data_root: Path, tmp_path: Path) -> None:
    args = ["pretrain", *TINY, "--data-dir", str(data_root), "--epochs", "3", "--seed", "5"]
    stopped = _cli_sigterm_after(8, *args, "--out", str(tmp_path / "a"))
    assert stopped.returncode == 143, stopped.stderr  # 128 + SIGTERM
    assert _json_line(stopped.stdout) | {"seconds": 0} == {
        "interrupted": "SIGTERM", "step": 8, "checkpoint": str(tmp_path / "a" / "checkpoint.pt"),
        "seconds": 0,
    }  # fmt: skip
    assert "--resume" in stopped.stdout
    resumed = _cli(*args, "--out", str(tmp_path / "a"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    straight = _cli(*args, "--out", str(tmp_path / "b"))
    assert straight.returncode == 0, straight.stderr
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["step"] == b["step"] == 18
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert _json_line(resumed.stdout)["final_loss"] == _json_line(straight.stdout)["final_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_real_signal_saves_the_exact_step_and_exits(
    data_root: Path, tmp_path: Path, signum: int
) -> None:
    """Send the signal from outside at an arbitrary moment, after the first checkpoint."""
    command = [
        sys.executable, "-m", "mae_tutorial", "pretrain", *TINY, "--data-dir", str(data_root),
        "--epochs", "1000", "--out", str(tmp_path),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "checkpoint.pt").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    summary = _json_line(stdout)
    assert summary["interrupted"] == signal.Signals(signum).name
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == summary["step"] >= 6  # at least the first epoch's 6 steps
    assert [p for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_reconstruct_draws_with_the_visible_patches_statistics(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A normalised-pixel model's output is un-normalised with the visible patches' mean and
    variance: the hidden patch's own would put part of the answer into the picture."""
    from mae_tutorial import viz
    from mae_tutorial.checkpoint import save_checkpoint
    from mae_tutorial.config import MAEConfig
    from mae_tutorial.model import MaskedAutoencoder

    model = MaskedAutoencoder(MAEConfig.from_preset("tiny"))
    assert model.config.norm_pix_loss
    path = save_checkpoint(
        tmp_path / "c.pt", {"model": model.state_dict(), "config": model.config.to_dict()}
    )
    drawn, real = [], viz.reconstruction_grid
    monkeypatch.setattr(viz, "reconstruction_grid",
                        lambda *a, **k: drawn.append(k.get("stats")) or real(*a, **k))  # fmt: skip
    argv = ["reconstruct", "--checkpoint", str(path), "--data-dir", str(data_root), "--n", "2"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert drawn == ["visible"]
    summary = _json_line(capsys.readouterr().out)
    assert summary["stats"] == "visible" and Path(summary["reconstruction"]).is_file()
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["reconstruct"]
                         .format_help().split())  # fmt: skip
    assert "visible patches' statistics" in help_text and "official demo" not in help_text
