"""Reference models shipped inside the package, so readers without a GPU see real results.

A shipped model is a checkpoint stripped to what a reader needs: the weights (parameters in fp16,
which halves the file; the fixed position tables stay fp32), the model config, the training
history, the command that produced it and the evaluation results measured on it.

    model = mae_tutorial.pretrained.pretrained("cifar10-cpu")     # a MaskedAutoencoder, eval mode
    info = mae_tutorial.pretrained.pretrained_info("cifar10-cpu")  # history, results, command

`pack` makes such a file from a pretraining checkpoint:

    python -m mae_tutorial.pretrained runs/cpu_ref/checkpoint.pt cifar10-cpu \
        --command "python -m mae_tutorial pretrain ..." --results runs/eval/*.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

from mae_tutorial.checkpoint import load_checkpoint, load_model, model_from_state, save_checkpoint
from mae_tutorial.data import load_cifar10, normalize
from mae_tutorial.download import DownloadError
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.runtime import generator
from mae_tutorial.validate import OneLineParser, check_number, report_error

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
SNAPSHOT_IMAGES = 8  # test images whose reconstructions are stored per snapshot: one per class
_KEPT = ("config", "settings", "history", "step", "epoch")  # what a reader needs of a checkpoint
PROG = "python -m mae_tutorial.pretrained"
# Bounds of the command line's inputs: far beyond the shipped model's, low enough to fail at once.
MAX_NAME, MAX_COMMAND, MAX_SUMMARY_BYTES, MAX_SNAPSHOTS = 64, 4096, 1 << 20, 100
_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_NAME}}}")  # a plain file name: no '/', '..' or spaces


def available() -> list[str]:
    """Names of the models shipped with the package."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def pretrained_path(name: str) -> Path:
    """The file of a shipped model; `ValueError` naming the known ones for an unknown `name`."""
    path = PRETRAINED_DIR / f"{name}.pt"
    if not path.is_file():
        raise ValueError(f"no shipped model named {name!r}; expected one of {available()}")
    return path


def pretrained(
    name: str = "cifar10-cpu", map_location: str | torch.device = "cpu"
) -> MaskedAutoencoder:
    """Load a shipped reference model (fp32, eval mode) by name."""
    return load_model(pretrained_path(name), map_location=map_location)


def pretrained_info(name: str = "cifar10-cpu") -> dict[str, Any]:
    """Everything stored with a shipped model except its weights: config, settings, history,
    `command` (how it was trained) and `results` (what was measured on it)."""
    state = load_checkpoint(pretrained_path(name))
    return {key: value for key, value in state.items() if key != "model"}


def pack(
    checkpoint: str | Path,
    out: str | Path,
    *,
    command: str | None = None,
    results: dict[str, Any] | None = None,
    snapshots: dict[str, Any] | None = None,
) -> Path:
    """Write a shipped-model file from a pretraining checkpoint.

    Args:
        checkpoint: a `.pt` file written by the pretraining loop (or `save_checkpoint`).
        out: the file to write.
        command: the command line that produced the checkpoint, stored for readers.
        results: evaluation results measured on it, e.g. {"linprobe": {...}, "knn": {...}}
            (plain numbers and strings).
        snapshots: predictions of earlier checkpoints of the same run on a few test images
            (`snapshot_predictions`), so a reader can watch training progress without the
            checkpoints themselves.

    Returns:
        `out`.
    """
    state = load_checkpoint(checkpoint)
    model = {
        key: value.half() if value.is_floating_point() and not key.endswith("pos_embed") else value
        for key, value in state["model"].items()
    }  # fp16 parameters; the sin-cos tables keep full precision
    packed = {key: state[key] for key in _KEPT if key in state}
    packed.update(model=model, command=command or "", results=results or {})
    if snapshots is not None:
        packed["snapshots"] = snapshots
    return save_checkpoint(out, packed)


def snapshot_predictions(
    checkpoints: list[str | Path], images: torch.Tensor, noise: torch.Tensor
) -> dict[str, Any]:
    """What each checkpoint of a run predicts for the same images under the same mask.

    Args:
        checkpoints: pretraining checkpoints of one run (they must share a config).
        images: normalised images (`mae_tutorial.data.normalize`).
        noise: masking noise, fixed across checkpoints so only the model changes.

    Returns:
        {"epochs": [int, ...], "pred": fp16 tensor (S, B, L, P*P*C), "mask": (B, L) with
        1 = removed (masked), 0 = visible, "noise": (B, L)}.

    Shapes:
        images: (B, C, H, W), noise: (B, L).
    """
    epochs, preds, mask, config = [], [], None, None
    for path in checkpoints:
        state = load_checkpoint(path)
        model = model_from_state(state, path)  # one read per checkpoint
        if config is not None and model.config != config:
            raise ValueError(f"{path} has another config than {checkpoints[0]}; expected one run")
        config = model.config
        with torch.no_grad():
            out = model(images, noise=noise)
        epochs.append(int(state.get("epoch", 0)))
        preds.append(out.pred.half())  # (B, L, P*P*C)
        mask = out.mask
    if not preds:
        raise ValueError("expected at least one checkpoint")
    return {"epochs": epochs, "pred": torch.stack(preds), "mask": mask, "noise": noise}


def _build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description=f"Pack a checkpoint into {PRETRAINED_DIR}/NAME.pt, a shipped reference model.",
    )
    add = parser.add_argument
    add("checkpoint", help="the pretraining checkpoint (.pt)")
    add("name", help="the shipped model's name: letters, digits, '-' and '_', e.g. cifar10-cpu")
    add("--command", default="", help=f"the command that trained it (at most {MAX_COMMAND} chars)")
    add("--results", nargs="*", default=[], metavar="FILE",
        help="files whose last line is a JSON summary printed by linprobe/knn/finetune "
        f"(at most {MAX_SUMMARY_BYTES} bytes each)")  # fmt: skip
    add("--snapshots", nargs="*", default=[], metavar="CKPT",
        help=f"earlier checkpoints of the same run (at most {MAX_SNAPSHOTS}): their "
        "reconstructions of a few test images are stored (needs CIFAR-10's test set)")  # fmt: skip
    add("--data-dir", metavar="DIR", help="holds cifar-10-batches-py (default: $MAE_TUTORIAL_DATA)")
    return parser


def _read_summary(file: str) -> tuple[str, dict[str, Any]]:
    """The last JSON summary line of a linprobe/knn/finetune output file, and its result name."""
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"--results {file}: no such file")
    if (size := path.stat().st_size) > MAX_SUMMARY_BYTES:
        raise ValueError(f"--results {file} is {size} bytes; at most {MAX_SUMMARY_BYTES} expected")
    try:
        lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
        summary = json.loads(lines[-1]) if lines else {}  # a line opening with "{": a dict
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--results {file}: its last JSON line does not parse ({err})") from None
    kinds = [kind for kind in ("linprobe", "knn", "finetune") if f"{kind}_top1" in summary]
    if len(kinds) != 1:
        raise ValueError(f"--results {file}: expected a linprobe, knn or finetune JSON summary")
    blocks, last = summary.get("blocks"), summary.get("last_blocks", 1)
    check_number(f"--results {file}: 'last_blocks'", last, 1, integer=True)
    if blocks is not None:
        check_number(f"--results {file}: 'blocks'", blocks, 0, integer=True)
    name = ("random_init_" if summary.get("random_init") else "") + kinds[0]
    name += "" if blocks is None else f"_blocks{blocks}"
    name += f"_last{last}" if last > 1 else ""  # linprobe --last-blocks K: another protocol
    return name + ("_from_scratch" if summary.get("from_scratch") else ""), summary


def _checked(args: argparse.Namespace) -> tuple[Path, MaskedAutoencoder, dict[str, Any]]:
    """Check every flag and input file before any work: the output path, the model, results."""
    if not _NAME.fullmatch(args.name):
        raise ValueError(f"name {args.name!r}: expected 1-{MAX_NAME} letters, digits, '-' or '_'")
    if len(args.command) > MAX_COMMAND:
        raise ValueError(f"--command is {len(args.command)} characters; at most {MAX_COMMAND}")
    if len(args.snapshots) > MAX_SNAPSHOTS:
        raise ValueError(f"--snapshots: {len(args.snapshots)} checkpoints; at most {MAX_SNAPSHOTS}")
    if args.data_dir is not None and not args.snapshots:
        raise ValueError("--data-dir is used only with --snapshots")
    out = PRETRAINED_DIR / f"{args.name}.pt"
    existing = next(p for p in (out.parent, *out.parent.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK) or out.is_dir():
        raise ValueError(f"cannot write {out}: {existing} is not a writable folder")
    model = load_model(args.checkpoint)  # the config, and weights that fit it
    results: dict[str, Any] = {}
    for file in args.results:
        name, summary = _read_summary(file)
        if name in results:
            raise ValueError(f"--results {file}: a second {name!r} summary; expected one each")
        results[name] = summary
    for path in args.snapshots:  # the same run: the same config, checked before the data loads
        load_checkpoint(path, expected_config=model.config)
    return out, model, results


def main(argv: list[str] | None = None) -> int:
    """Pack a checkpoint from the command line; returns the exit code (2: bad input, 1: failed)."""
    try:
        args = _build_parser().parse_args(argv)
        out, model, results = _checked(args)
        snapshots = None
        if args.snapshots:
            data = load_cifar10(args.data_dir)
            labels = data.test_labels.tolist()
            indices = [labels.index(c) for c in range(SNAPSHOT_IMAGES)]  # one image per class
            images = normalize(data.test_images[indices])  # (B, C, H, W)
            draw = generator(torch.device("cpu"), 0)  # the same noise for every snapshot
            noise = torch.rand(len(indices), model.config.num_patches, generator=draw)  # (B, L)
            snapshots = snapshot_predictions([*args.snapshots, args.checkpoint], images, noise)
            snapshots["test_indices"] = indices
        pack(args.checkpoint, out, command=args.command, results=results, snapshots=snapshots)
    except SystemExit as err:  # --help
        return err.code if isinstance(err.code, int) else 0
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        return report_error(PROG, err, 2)  # bad input: the user can fix it
    except (DownloadError, OSError, MemoryError) as err:
        return report_error(PROG, err, 1)  # the data download or the disk failed
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
