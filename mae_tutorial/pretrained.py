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
import sys
from pathlib import Path
from typing import Any

import torch

from mae_tutorial.checkpoint import load_checkpoint, load_model, model_from_state, save_checkpoint
from mae_tutorial.data import load_cifar10, normalize
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.runtime import generator

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
SNAPSHOT_IMAGES = 8  # test images whose reconstructions are stored per snapshot: one per class
_KEPT = ("config", "settings", "history", "step", "epoch")  # what a reader needs of a checkpoint


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae_tutorial.pretrained",
        description="Pack a pretraining checkpoint into a shipped reference model "
        f"({PRETRAINED_DIR}/NAME.pt): fp16 weights, config, history, command and results.",
    )
    parser.add_argument("checkpoint", help="the pretraining checkpoint (.pt)")
    parser.add_argument("name", help="the shipped model's name, e.g. cifar10-cpu")
    parser.add_argument("--command", default="", help="the command that trained it")
    parser.add_argument(
        "--results", nargs="*", default=[], metavar="FILE",
        help="files whose last line is a JSON summary printed by linprobe/knn/finetune",
    )  # fmt: skip
    parser.add_argument(
        "--snapshots", nargs="*", default=[], metavar="CKPT",
        help="earlier checkpoints of the same run: their reconstructions of a few test images "
        "are stored (needs the CIFAR-10 test set, see --data-dir)",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR",
        help="folder holding cifar-10-batches-py (default: $MAE_TUTORIAL_DATA, else the cache)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    snapshots = None
    if args.snapshots:
        data = load_cifar10(args.data_dir)
        labels = data.test_labels.tolist()
        indices = [labels.index(c) for c in range(SNAPSHOT_IMAGES)]  # one image per class
        images = normalize(data.test_images[indices])  # (B, C, H, W)
        config = load_model(args.checkpoint).config
        draw = generator(torch.device("cpu"), 0)  # the same noise for every snapshot
        noise = torch.rand(len(indices), config.num_patches, generator=draw)  # (B, L)
        snapshots = snapshot_predictions([*args.snapshots, args.checkpoint], images, noise)
        snapshots["test_indices"] = indices
    results: dict[str, Any] = {}
    for file in args.results:
        lines = [line for line in Path(file).read_text().splitlines() if line.startswith("{")]
        if not lines:
            parser.error(f"{file} holds no JSON summary line")
        summary = json.loads(lines[-1])
        kinds = [kind for kind in ("linprobe", "knn", "finetune") if f"{kind}_top1" in summary]
        if len(kinds) != 1:
            parser.error(f"{file}: expected one of linprobe/knn/finetune's summaries")
        name = ("random_init_" if summary.get("random_init") else "") + kinds[0]
        if summary.get("blocks") is not None:
            name += f"_blocks{summary['blocks']}"
        if summary.get("last_blocks", 1) > 1:  # linprobe --last-blocks K: another protocol
            name += f"_last{summary['last_blocks']}"
        results[name + ("_from_scratch" if summary.get("from_scratch") else "")] = summary
    out = pack(args.checkpoint, PRETRAINED_DIR / f"{args.name}.pt", command=args.command,
               results=results, snapshots=snapshots)  # fmt: skip
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
