"""The command line: `python -m mae_tutorial pretrain / linprobe / knn / finetune / reconstruct`.

Each subcommand checks its inputs and outputs before any work starts, and ends by printing its
results as one line of JSON (the last line of stdout; only rank 0 prints under torchrun).
Exit codes: 0 done; 1 the run failed (a non-finite loss, a failed download, a full disk, out of
memory); 2 bad input (a value out of range, a missing or unusable data folder, checkpoint or
output path: one line on stderr); 130 and 143, pretraining stopped by SIGINT or SIGTERM (128 + the
signal number, as a shell reports a killed job) after saving the exact step for --resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mae_tutorial import pretrain as runner
from mae_tutorial.checkpoint import LATEST_NAME, latest_checkpoint, load_checkpoint, load_model
from mae_tutorial.config import MAX_DEPTH, MAX_WIDTH, PRESETS, MAEConfig
from mae_tutorial.data import CIFAR10, load_cifar10, normalize
from mae_tutorial.distributed import env_rank
from mae_tutorial.download import DownloadError
from mae_tutorial.evaluate import PROBE_BASE_LR, finetune, knn_eval, linear_probe
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.pretrain import NonFiniteLossError, TrainingInterrupted, TrainSettings, pretrain
from mae_tutorial.runtime import AMP_MODES, autocast_dtype, generator, resolve_device, seeded
from mae_tutorial.validate import OneLineParser, check_number, report_error

PROG = "python -m mae_tutorial"
# Upper bounds of the numeric flags: far beyond any sensible run, low enough to fail at once.
MAX_EPOCHS, MAX_BATCH, MAX_IMAGES, MAX_LR, MAX_SEED = 100_000, 65_536, 10**8, 10.0, 2**63 - 1
MAX_COLUMNS, MAX_DPI = 32, 600
_PICTURES = (".png", ".pdf", ".svg", ".jpg")  # the file types --name may end in


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's line breaks; show defaults other than None and False."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        hidden = any(default is x for x in (None, False, argparse.SUPPRESS))
        return text if hidden or "default" in text else f"{text} (default: %(default)s)"


def _number(kind: type, low: float, high: float, opened: str = "[]") -> Callable[[str], Any]:
    """An argparse type: a `kind` between `low` and `high`; `opened`: "[]", "(]" or "()"."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = text  # not a number at all: check_number says what was expected
        try:
            check_number("it", value, low, high, integer=kind is int,
                         low_open=opened[0] == "(", high_open=opened[1] == ")")  # fmt: skip
        except ValueError as err:
            expected = str(err).removeprefix("it must be ").split(", got ")[0]
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        return value

    return parse


_epochs, _batch = _number(int, 1, MAX_EPOCHS), _number(int, 1, MAX_BATCH)
_images, _seed = _number(int, 1, MAX_IMAGES), _number(int, 0, MAX_SEED)
_lr, _decay = _number(float, 0, MAX_LR, "(]"), _number(float, 0, MAX_LR)
_warmup, _ratio = _number(float, 0, MAX_EPOCHS), _number(float, 0, 1, "()")


def _say(*parts: Any) -> None:
    """Print on rank 0 only (torchrun runs every rank); a dict as JSON: a command's results."""
    if env_rank() == 0:
        print(*(json.dumps(p) if isinstance(p, dict) else p for p in parts), flush=True)


def _device(args: argparse.Namespace) -> torch.device:
    """The device asked for, checked to exist, and its --amp mode checked to run on it."""
    autocast_dtype(getattr(args, "amp", "auto"), device := resolve_device(args.device))
    return device


def _writable_folder(path: Path) -> None:
    """Refuse an --out folder that is a file, lies under a file, or cannot be written."""
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: {existing} is not a writable folder")


def _load_data(args: argparse.Namespace) -> CIFAR10:
    data = load_cifar10(args.data_dir)
    subset, test_subset = args.subset, getattr(args, "test_subset", None)
    for value, what, n in ((subset, "--subset", len(data.train_images)),
                           (test_subset, "--test-subset", len(data.test_images))):  # fmt: skip
        if value is not None and value > n:
            raise ValueError(f"{what} {value} exceeds the {n} images available")
    return dataclasses.replace(
        data, train_images=data.train_images[:subset], train_labels=data.train_labels[:subset],
        test_images=data.test_images[:test_subset], test_labels=data.test_labels[:test_subset],
    )  # fmt: skip


def _probed_model(args: argparse.Namespace) -> MaskedAutoencoder:
    """The checkpoint's model, or with --random-init the same config freshly initialised."""
    model = load_model(args.checkpoint)
    with seeded(args.seed):
        return MaskedAutoencoder(model.config).eval() if args.random_init else model


def _fields(kind: type, args: argparse.Namespace) -> dict[str, Any]:
    """The flags named after a field of the dataclass `kind` that were given (not None)."""
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(kind)}
    return {name: value for name, value in values.items() if value is not None}


def _run_pretrain(args: argparse.Namespace) -> int:
    config = MAEConfig.from_preset(args.preset, **_fields(MAEConfig, args))  # preset + overrides
    settings = TrainSettings(**_fields(TrainSettings, args))
    out, _ = Path(args.out), _device(args)
    _writable_folder(out)
    previous = latest_checkpoint(out) if args.resume else None
    # --init-from: a second cycle of the schedule from a finished run's weights; the optimiser,
    # the schedule and the step count start afresh (a resumed run restores them instead).
    init = None if args.init_from is None or previous else load_checkpoint(args.init_from, config)
    data = load_cifar10(args.data_dir)
    with seeded(args.seed):
        model = MaskedAutoencoder(config)
    if init:
        model.load_state_dict(init["model"])
        _say(f"starting from the weights of {args.init_from} (epoch {init.get('epoch', '?')})")
    size, n = sum(p.numel() for p in model.parameters()), settings.subset or len(data.train_images)
    _say(f"pretraining preset {args.preset!r} ({size / 1e6:.2f}M parameters) on {n} images for "
         f"{settings.epochs} epochs, peak lr {settings.lr:.2e}")  # fmt: skip
    _say(f"resuming from {previous}" if previous else f"writing checkpoints and history to {out}/")
    start = time.perf_counter()
    try:
        history = pretrain(model, data, settings, out, resume=args.resume, overwrite=args.overwrite)
    except TrainingInterrupted as stop:
        name = signal.Signals(stop.signum).name
        _say(f"{name}: stopped after step {stop.step}; saved {stop.checkpoint}\n"
             "continue with the same command plus --resume")  # fmt: skip
        _say({"interrupted": name, "step": stop.step, "checkpoint": str(stop.checkpoint),
              "seconds": round(time.perf_counter() - start, 3)})  # fmt: skip
        return 128 + stop.signum
    last = history[-1] if history else {}
    _say(f"checkpoint: {out / LATEST_NAME}\nhistory: {out / runner.HISTORY_NAME}")
    _say({"final_loss": last.get("loss"), "epochs": len(history),
          "images_per_s": round(last.get("images_per_s", 0.0), 1),
          "checkpoint": str(out / LATEST_NAME),
          "seconds": round(time.perf_counter() - start, 3)})  # fmt: skip
    return 0


def _run_linprobe(args: argparse.Namespace) -> int:
    device, model = _device(args), _probed_model(args)
    if args.last_blocks > model.config.depth:
        raise ValueError(f"--last-blocks {args.last_blocks} exceeds depth {model.config.depth}")
    result = linear_probe(
        model, _load_data(args), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        device=str(device), seed=args.seed, last_blocks=args.last_blocks,
    )  # fmt: skip
    _say({**result, "checkpoint": args.checkpoint, "random_init": args.random_init})
    return 0


def _run_knn(args: argparse.Namespace) -> int:
    device, model = _device(args), _probed_model(args)
    result = knn_eval(model, _load_data(args), k=args.k, temperature=args.temperature,
                      batch_size=args.batch_size, device=str(device))  # fmt: skip
    _say({**result, "checkpoint": args.checkpoint, "random_init": args.random_init})
    return 0


def _run_finetune(args: argparse.Namespace) -> int:
    if args.checkpoint is None and (args.preset is None or not args.from_scratch):
        raise ValueError("give --checkpoint, or --from-scratch --preset")
    warmup = min(5.0, 0.1 * args.epochs) if args.warmup_epochs is None else args.warmup_epochs
    if warmup > args.epochs:
        raise ValueError(f"--warmup-epochs {warmup} exceeds --epochs {args.epochs}")
    device, mae = _device(args), None if args.checkpoint is None else load_model(args.checkpoint)
    config = MAEConfig.from_preset(args.preset) if mae is None else mae.config
    if args.blocks is not None and args.blocks > config.depth:
        raise ValueError(f"--blocks {args.blocks} exceeds the encoder's {config.depth} blocks")
    result = finetune(
        None if args.from_scratch else mae, config, _load_data(args), epochs=args.epochs,
        batch_size=args.batch_size, base_lr=args.base_lr, layer_decay=args.layer_decay,
        weight_decay=args.weight_decay, drop_path=args.drop_path, warmup_epochs=warmup,
        trainable_blocks=args.blocks, device=str(device), seed=args.seed, amp=args.amp,
    )  # fmt: skip
    history = result.pop("history", [])  # per-epoch records: only the test top-1 is kept
    _say({**result, "checkpoint": args.checkpoint, "from_scratch": args.from_scratch,
          "blocks": args.blocks, "epochs": args.epochs, "subset": args.subset,
          "test_top1_per_epoch": [round(row["test_top1"], 2) for row in history]})  # fmt: skip
    return 0


def _run_reconstruct(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out is not None else Path(args.checkpoint).parent
    path = out / args.name
    plain = Path(args.name).name == args.name and path.suffix.lower() in _PICTURES
    if not plain or path.is_dir():  # a plain file name, and no folder of that name
        raise ValueError(f"--name {args.name!r}: expected a file (not a folder) named *{_PICTURES}")
    _writable_folder(out)
    device, model = _device(args), load_model(args.checkpoint)
    images = getattr(load_cifar10(args.data_dir), f"{args.split}_images")  # (N, C, H, W) uint8
    if args.n > len(images):
        raise ValueError(f"--n {args.n} exceeds the {len(images)} {args.split} images")
    from mae_tutorial.viz import reconstruction_grid  # matplotlib: imported only when drawing

    draw = generator(torch.device("cpu"), args.seed)
    index = torch.randperm(len(images), generator=draw)[: args.n]
    noise = torch.rand(args.n, model.config.num_patches, generator=draw)  # (n, L)
    fig = reconstruction_grid(model.to(device), normalize(images[index]), noise, stats="visible")
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=args.dpi)
    _say({"reconstruction": str(path), "images": args.n, "split": args.split, "stats": "visible"})
    return 0


def _subparser(subs: Any, run: Callable, summary: str, about: str, *examples: str) -> OneLineParser:
    """A subcommand with its examples, and the --data-dir and --device every one takes."""
    name = run.__name__.removeprefix("_run_")
    epilog = "examples:\n" + "\n".join(f"  {PROG} {name} {example}" for example in examples)
    p = subs.add_parser(name, help=summary, description=about, epilog=epilog,
                        formatter_class=_Formatter)  # fmt: skip
    p.add_argument("--data-dir", metavar="DIR", help="holds cifar-10-batches-py; default: "
                   "$MAE_TUTORIAL_DATA, else a download to ~/.cache/mae_tutorial")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps")
    p.set_defaults(run=run)
    return p


def _eval_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The options linprobe, knn and finetune share; --random-init for the first two."""
    add = p.add_argument
    add("--checkpoint", required=required, metavar="PATH", help="a pretraining checkpoint (.pt)")
    add("--subset", type=_images, metavar="N", help="use only the first N training images")
    add("--test-subset", type=_images, metavar="N", help="score on the first N test images")
    add("--seed", type=_seed, default=0, help="seed of the head and batch order")
    if required:
        add("--random-init", action="store_true", help="score the checkpoint's architecture "
            "freshly initialised (by --seed): the baseline pretraining must beat")  # fmt: skip


def _pretrain_parser(subs: Any) -> None:
    p = _subparser(
        subs, _run_pretrain, "pretrain an MAE on CIFAR-10",
        "Pretrain a masked autoencoder on the CIFAR-10 training images (AdamW, warmup then cosine\n"
        "decay, random-resized-crop + flip); write checkpoint.pt and history.json to --out.\n"
        "SIGINT/SIGTERM saves the exact step and exits with 130/143; --resume continues it to the\n"
        "weights an uninterrupted run reaches. Under torchrun --batch-size is the total.",
        "--preset tiny --epochs 1 --subset 2000 --out runs/demo",
        "--preset vit_tiny --epochs 200 --out runs/vit_tiny --resume",
    )  # fmt: skip
    add, d = p.add_argument, TrainSettings()
    add("--preset", default="cpu", choices=sorted(PRESETS), help="model size")
    add("--subset", type=_images, metavar="N", help="train on the first N training images only")
    add("--epochs", type=_epochs, default=d.epochs, help="epochs")
    add("--batch-size", type=_batch, default=d.batch_size, help="images per step, all processes")
    add("--base-lr", type=_lr, default=d.base_lr, help="peak lr = base_lr * batch_size / 256")
    add("--weight-decay", type=_decay, default=d.weight_decay, help="AdamW's, on weight matrices")
    add("--warmup-epochs", type=_warmup, help="linear warmup in epochs; default: 10%% of --epochs")
    add("--min-lr", type=_decay, default=d.min_lr, help="final lr")
    preset = "default: the preset's"
    add("--mask-ratio", type=_ratio, help=f"fraction of patches removed; {preset}")
    add("--norm-pix", dest="norm_pix_loss", action=argparse.BooleanOptionalAction,
        help=f"regress per-patch normalised pixels; {preset} (on)")  # fmt: skip
    add("--decoder-depth", type=_number(int, 1, MAX_DEPTH), metavar="N",
        help=f"decoder blocks; {preset}")  # fmt: skip
    add("--decoder-dim", dest="decoder_embed_dim", type=_number(int, 4, MAX_WIDTH),
        metavar="E", help=f"decoder width, a multiple of 4 and of its heads; {preset}")  # fmt: skip
    add("--masking", default=d.masking, choices=runner.MASKING_KINDS,
        help="how patches are removed; grid keeps 1 in 2x2 (mask ratio 0.75)")  # fmt: skip
    add("--out", default="runs/pretrain", metavar="DIR", help="output folder")
    add("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    add("--overwrite", action="store_true", help="start afresh, deleting the run in --out")
    add("--init-from", metavar="CKPT", help="start from this checkpoint's weights (same config) "
        "with a fresh optimiser and schedule, unless --resume finds a checkpoint")  # fmt: skip
    add("--seed", type=_seed, default=0, help="seed of init, data and masks")
    add("--amp", default="auto", choices=AMP_MODES, help="autocast; auto: bf16 or fp16 on CUDA")
    add("--compile", action="store_true", help="use torch.compile")
    add("--checkpoint-every", type=_epochs, default=1, metavar="E", help="save every E epochs")
    add("--keep-snapshots", action="store_true", help="also keep epoch_XXXX.pt at each checkpoint")


def _linprobe_parser(subs: Any) -> None:
    p = _subparser(
        subs, _run_linprobe, "linear probe of a pretrained encoder",
        "Train a linear classifier on the frozen encoder's features (extracted once) and report\n"
        "its top-1/top-5 accuracy (%) on the test images.",
        "--checkpoint runs/demo/checkpoint.pt --subset 10000 --epochs 30",
        "--checkpoint runs/demo/checkpoint.pt --last-blocks 4",
    )  # fmt: skip
    _eval_options(p)
    p.add_argument("--epochs", type=_epochs, default=90, help="epochs of the head")
    p.add_argument("--batch-size", type=_batch, default=1024, help="features per step")
    p.add_argument("--lr", type=_lr, help=f"peak lr; default: {PROBE_BASE_LR} * batch_size / 256")
    p.add_argument("--last-blocks", type=_number(int, 1, 1024), default=1, metavar="K",
                   help="probe the pooled features of the last K blocks, concatenated (DINO uses "
                   "4); default 1: the encoder's output, as the paper")  # fmt: skip


def _knn_parser(subs: Any) -> None:
    p = _subparser(
        subs, _run_knn, "k-nearest-neighbour accuracy of the frozen features",
        "Classify each test image by a weighted vote of its k most cosine-similar training\n"
        "images in the frozen encoder's feature space; report top-1/top-5 accuracy (%).",
        "--checkpoint runs/demo/checkpoint.pt --k 200 --temperature 0.1",
    )  # fmt: skip
    _eval_options(p)
    p.add_argument("--k", type=_images, default=20, help="neighbours that vote")
    p.add_argument("--temperature", type=_number(float, 0, 100, "(]"), default=0.07, help="T")
    p.add_argument("--batch-size", type=_batch, default=512, help="images per forward pass")


def _finetune_parser(subs: Any) -> None:
    p = _subparser(
        subs, _run_finetune, "fine-tune the encoder (all or the last k blocks) on the labels",
        "Fine-tune the pretrained encoder plus a linear head: all blocks with layer-wise lr\n"
        "decay, or only the last --blocks K (the paper's Figure 9). --from-scratch trains the\n"
        "same architecture from random weights: the baseline at an equal budget.",
        "--checkpoint runs/demo/checkpoint.pt --blocks 1",
        "--from-scratch --preset vit_tiny --epochs 50",
    )  # fmt: skip
    _eval_options(p, required=False)
    add = p.add_argument
    add("--from-scratch", action="store_true", help="random weights, architecture of --preset")
    add("--preset", choices=sorted(PRESETS), help="architecture for --from-scratch")
    add("--blocks", type=_number(int, 0, 1024), metavar="K", help="train the last K blocks only")
    add("--epochs", type=_epochs, default=50, help="epochs")
    add("--batch-size", type=_batch, default=256, help="images per step")
    add("--base-lr", type=_lr, default=1e-3, help="lr = base_lr * batch_size / 256")
    add("--layer-decay", type=_number(float, 0, 1, "(]"), default=0.75, help="lr scale per block")
    add("--weight-decay", type=_decay, default=0.05, help="AdamW weight decay")
    add("--drop-path", type=_number(float, 0, 0.99), default=0.1, help="stochastic depth rate")
    add("--warmup-epochs", type=_warmup, help="default: 5, or 10%% of --epochs when shorter")
    add("--amp", default="auto", choices=AMP_MODES, help="mixed precision; auto: bf16 on CUDA")


def _reconstruct_parser(subs: Any) -> None:
    p = _subparser(
        subs, _run_reconstruct, "draw masked images and their reconstructions (PNG)",
        "Save a grid of random images, their masked inputs and reconstructions (also with the\n"
        "visible patches pasted back), un-normalised with the visible patches' statistics only.",
        "--checkpoint runs/demo/checkpoint.pt --n 12 --split train --out runs/demo",
    )  # fmt: skip
    add = p.add_argument
    add("--checkpoint", required=True, metavar="PATH", help="a pretraining checkpoint")
    add("--out", metavar="DIR", help="output folder; default: the checkpoint's")
    add("--name", default="reconstruction.png", help="file name of the picture (.png, .pdf, .svg)")
    add("--n", type=_number(int, 1, MAX_COLUMNS), default=8, help="images (columns)")
    add("--split", choices=("test", "train"), default="test", help="which images")
    add("--seed", type=_seed, default=0, help="seed of the images and the masks")
    add("--dpi", type=_number(int, 10, MAX_DPI), default=150, help="resolution of the picture")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m mae_tutorial` argument parser with its five subcommands."""
    parser = OneLineParser(
        prog=PROG, formatter_class=_Formatter,
        description="Masked Autoencoders (He et al. 2021) on CIFAR-10: pretrain, evaluate, look.",
        epilog=f"example:\n  {PROG} pretrain --preset tiny --epochs 1 --subset 2000 --out runs/x\n"
        f"run '{PROG} COMMAND --help' for a command's options and examples",
    )  # fmt: skip
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_pretrain_parser, _linprobe_parser, _knn_parser, _finetune_parser,
                _reconstruct_parser):  # fmt: skip
        add(subs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: `sys.argv[1:]`); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return args.run(args)
    except SystemExit as err:  # --help
        return err.code if isinstance(err.code, int) else 0
    except KeyboardInterrupt as err:  # before training started, or a second signal during it
        print(f"{PROG}: {err or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            IsADirectoryError, PermissionError) as err:  # fmt: skip
        return report_error(PROG, err, 2)  # bad input: the user can fix it
    except (NonFiniteLossError, DownloadError, OSError, MemoryError, torch.OutOfMemoryError) as err:
        return report_error(
            PROG, err, 1
        )  # the run failed: a diverged loss, the network, the disk, memory


if __name__ == "__main__":
    sys.exit(main())
