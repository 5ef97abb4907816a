"""The command line: `python -m mae_tutorial pretrain / linprobe / knn / finetune / reconstruct`.

Each subcommand ends by printing one line of JSON (its results) to stdout, so scripts can read the
last line. Exit codes:

    0    done
    1    the run failed (a non-finite loss, a failed download)
    2    bad input: an unknown preset, a bad number, a missing data folder or checkpoint, a
         checkpoint that does not match (one line on stderr, no traceback)
    130  pretraining stopped by SIGINT (Ctrl-C), 143 by SIGTERM: 128 + the signal number, as a
         shell reports a killed job, so schedulers see the run did not finish. A checkpoint of the
         exact step was written first; the same command with --resume continues it.

Under `torchrun --nproc_per_node=N -m mae_tutorial pretrain ...` only rank 0 prints.
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
from typing import Any, NoReturn

import torch

from mae_tutorial.checkpoint import latest_checkpoint, load_checkpoint, load_model
from mae_tutorial.config import PRESETS, MAEConfig
from mae_tutorial.data import CIFAR10, load_cifar10
from mae_tutorial.distributed import env_rank
from mae_tutorial.evaluate import PROBE_BASE_LR, finetune, knn_eval, linear_probe
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.pretrain import (
    AMP_MODES,
    HISTORY_NAME,
    MASKING_KINDS,
    NonFiniteLossError,
    StepInfo,
    TrainingInterrupted,
    TrainSettings,
    pretrain,
    resolve_device,
)

PROG = "python -m mae_tutorial"
_DEFAULTS = TrainSettings()


class _UsageError(Exception):
    """Bad command-line input: reported on one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and do not exit the process."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message} (see --help)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's and epilog's line breaks; show each option's default unless its
    help already explains it (or there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))
        ):
            return text
        return f"{text} (default: %(default)s)".lstrip()


# ------------------------------------------------------------------------------ argument types


def _number(kind: type, low: float, *, strict: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < low or (strict and value == low):
            what = "an integer" if kind is int else "a number"
            bound = f"> {low}" if strict else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_positive_int = _number(int, 1)
_nonneg_int = _number(int, 0)
_positive_float = _number(float, 0, strict=True)
_nonneg_float = _number(float, 0)


def _ratio(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a ratio in (0, 1), got {text!r}")
    return value


# ------------------------------------------------------------------------------------- helpers


def _say(*parts: Any) -> None:
    """Print on rank 0 only (all ranks run the same command under torchrun)."""
    if env_rank() == 0:
        print(*parts, flush=True)


def _summary(values: dict[str, Any]) -> None:
    _say(json.dumps(values))


def _load_data(args: argparse.Namespace) -> CIFAR10:
    data = load_cifar10(args.data_dir)
    subset, test_subset = args.subset, getattr(args, "test_subset", None)
    for value, what, n in ((subset, "--subset", len(data.train_images)),
                           (test_subset, "--test-subset", len(data.test_images))):  # fmt: skip
        if value is not None and value > n:
            raise ValueError(f"{what} {value} exceeds the {n} images available")
    return dataclasses.replace(
        data,
        train_images=data.train_images[:subset],
        train_labels=data.train_labels[:subset],
        test_images=data.test_images[:test_subset],
        test_labels=data.test_labels[:test_subset],
    )


def _eval_device(name: str) -> str | None:
    return None if name == "auto" else str(resolve_device(name))


def _checkpoint_model(path: str) -> MaskedAutoencoder:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--checkpoint {path!r}: no such file")
    return load_model(path)


# ------------------------------------------------------------------------------------ commands


# pretrain's flags that override a field of the preset's MAEConfig (None: keep the preset's).
_CONFIG_FLAGS = {
    "mask_ratio": "mask_ratio",
    "norm_pix": "norm_pix_loss",
    "decoder_depth": "decoder_depth",
    "decoder_dim": "decoder_embed_dim",
}


def _run_pretrain(args: argparse.Namespace) -> int:
    overrides = {
        field: getattr(args, flag)
        for flag, field in _CONFIG_FLAGS.items()
        if getattr(args, flag) is not None
    }
    config = MAEConfig.from_preset(args.preset, **overrides)  # a bad size: ValueError, exit 2
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        base_lr=args.base_lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        min_lr=args.min_lr,
        amp=args.amp,
        compile=args.compile,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        keep_snapshots=args.keep_snapshots,
        subset=args.subset,
        device=args.device,
        masking=args.masking,
    )
    data = load_cifar10(args.data_dir)
    torch.manual_seed(args.seed)
    model = MaskedAutoencoder(config)
    callback = _debug_hooks(model, args)
    out = Path(args.out)
    previous = latest_checkpoint(out) if args.resume else None
    if args.init_from is not None and previous is None:
        # A second cycle of the schedule from a finished run's weights; the optimiser, the
        # schedule and the step count start afresh (a resumed run restores them instead).
        state = load_checkpoint(args.init_from, expected_config=config)
        model.load_state_dict(state["model"])
        _say(f"starting from the weights of {args.init_from} (epoch {state.get('epoch', '?')})")
    n_images = settings.subset or len(data.train_images)
    n_params = sum(p.numel() for p in model.parameters())
    _say(
        f"pretraining preset {args.preset!r} ({n_params / 1e6:.2f}M parameters) on {n_images} "
        f"images for {settings.epochs} epochs, peak lr {settings.lr:.2e}"
    )
    _say(f"resuming from {previous}" if previous else f"writing checkpoints and history to {out}/")
    start = time.perf_counter()
    try:
        history = pretrain(
            model, data, settings, out, resume=args.resume, callback=callback,
            overwrite=args.overwrite,
        )  # fmt: skip
    except TrainingInterrupted as stop:
        name = signal.Signals(stop.signum).name
        _say(f"{name}: stopped after step {stop.step}; saved {stop.checkpoint}")
        _say("continue with the same command plus --resume")
        _summary(
            {
                "interrupted": name,
                "step": stop.step,
                "checkpoint": str(stop.checkpoint),
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
        return 128 + stop.signum
    last = history[-1] if history else {}
    _say(f"checkpoint: {out / 'checkpoint.pt'}\nhistory: {out / HISTORY_NAME}")
    _summary(
        {
            "final_loss": last.get("loss"),
            "epochs": len(history),
            "images_per_s": round(last.get("images_per_s", 0.0), 1),
            "checkpoint": str(out / "checkpoint.pt"),
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    return 0


def _debug_hooks(
    model: MaskedAutoencoder, args: argparse.Namespace
) -> Callable[[StepInfo], None] | None:
    """Hidden options that make the tests deterministic: a SIGTERM or a NaN loss at a given step."""
    if args.debug_nan_at_step is not None:
        calls = {"n": 0}

        def poison(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == args.debug_nan_at_step:
                return dataclasses.replace(output, loss=output.loss * float("nan"))
            return output

        model.register_forward_hook(poison)
    if args.debug_stop_after_steps is None:
        return None

    def stop(info: StepInfo) -> None:
        if info.step == args.debug_stop_after_steps:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, through the real handler

    return stop


def _probed_model(args: argparse.Namespace) -> MaskedAutoencoder:
    """The checkpoint's model, or with --random-init the same config freshly initialised."""
    model = _checkpoint_model(args.checkpoint)
    if not args.random_init:
        return model
    torch.manual_seed(args.seed)
    return MaskedAutoencoder(model.config).eval()


def _run_linprobe(args: argparse.Namespace) -> int:
    model = _probed_model(args)
    data = _load_data(args)
    result = linear_probe(
        model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        device=_eval_device(args.device), seed=args.seed, last_blocks=args.last_blocks,
    )  # fmt: skip
    _summary({**result, "checkpoint": args.checkpoint, "random_init": args.random_init})
    return 0


def _run_knn(args: argparse.Namespace) -> int:
    model = _probed_model(args)
    data = _load_data(args)
    result = knn_eval(
        model, data, k=args.k, temperature=args.temperature, batch_size=args.batch_size,
        device=_eval_device(args.device),
    )  # fmt: skip
    _summary({**result, "checkpoint": args.checkpoint, "random_init": args.random_init})
    return 0


def _run_finetune(args: argparse.Namespace) -> int:

    if args.checkpoint is None and args.preset is None:
        raise _UsageError(f"{PROG} finetune: error: give --checkpoint, or --from-scratch --preset")
    if args.checkpoint is not None:
        mae = _checkpoint_model(args.checkpoint)
        config = mae.config
    else:
        if not args.from_scratch:
            raise _UsageError(f"{PROG} finetune: error: --preset needs --from-scratch")
        mae, config = None, MAEConfig.from_preset(args.preset)
    if args.blocks is not None and args.blocks > config.depth:
        raise ValueError(f"--blocks {args.blocks} exceeds the encoder's {config.depth} blocks")
    data = _load_data(args)
    result = finetune(
        None if args.from_scratch else mae, config, data, epochs=args.epochs,
        batch_size=args.batch_size, base_lr=args.base_lr, layer_decay=args.layer_decay,
        weight_decay=args.weight_decay, drop_path=args.drop_path,
        warmup_epochs=min(5.0, 0.1 * args.epochs) if args.warmup_epochs is None
        else args.warmup_epochs, trainable_blocks=args.blocks,
        device=_eval_device(args.device), seed=args.seed,
        amp=args.amp,
    )  # fmt: skip
    history = result.pop("history", [])  # per-epoch records: only the test top-1 is kept
    _summary({
        **result, "checkpoint": args.checkpoint, "from_scratch": args.from_scratch,
        "blocks": args.blocks, "epochs": args.epochs, "subset": args.subset,
        "test_top1_per_epoch": [round(row["test_top1"], 2) for row in history],
    })  # fmt: skip
    return 0


def _run_reconstruct(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from mae_tutorial.data import normalize
    from mae_tutorial.viz import reconstruction_grid

    model = _checkpoint_model(args.checkpoint)
    if args.device != "auto":
        model = model.to(resolve_device(args.device))
    data = load_cifar10(args.data_dir)
    images = data.test_images if args.split == "test" else data.train_images
    if args.n > len(images):
        raise ValueError(f"--n {args.n} exceeds the {len(images)} {args.split} images")
    generator = torch.Generator().manual_seed(args.seed)
    index = torch.randperm(len(images), generator=generator)[: args.n]
    noise = torch.rand(args.n, model.config.num_patches, generator=generator)  # (n, L)
    fig = reconstruction_grid(model, normalize(images[index]), noise)
    out = Path(args.out) if args.out is not None else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    path = out / args.name
    fig.savefig(path, dpi=args.dpi)
    _say(f"saved {path}")
    _summary({"reconstruction": str(path), "images": args.n, "split": args.split})
    return 0


# -------------------------------------------------------------------------------------- parser


def _add_data_options(p: argparse.ArgumentParser, subset_help: str) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder holding cifar-10-batches-py; default: $MAE_TUTORIAL_DATA, else download "
        "to ~/.cache/mae_tutorial",
    )
    p.add_argument("--subset", type=_positive_int, metavar="N", help=subset_help)


def _add_eval_options(p: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    p.add_argument(
        "--checkpoint",
        required=checkpoint_required,
        metavar="PATH",
        help="a pretraining checkpoint (.pt), e.g. runs/demo/checkpoint.pt",
    )
    _add_data_options(p, "use only the first N training images")
    p.add_argument(
        "--test-subset", type=_positive_int, metavar="N", help="score on the first N test images"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the head and batch order")


def _add_random_init(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--random-init",
        action="store_true",
        help="score the checkpoint's architecture freshly initialised (seeded by --seed) instead "
        "of its weights: the baseline that pretraining must beat",
    )


def _subparser(
    subs: Any, name: str, summary: str, description: str, examples: str
) -> argparse.ArgumentParser:
    return subs.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=_Formatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """The `python -m mae_tutorial` argument parser with its five subcommands."""
    parser = _Parser(
        prog=PROG,
        description="Masked Autoencoders (He et al. 2021) on CIFAR-10: pretrain, evaluate, look.",
        epilog=(
            "examples:\n"
            f"  {PROG} pretrain --preset tiny --epochs 1 --subset 2000 --out runs/demo\n"
            f"  {PROG} reconstruct --checkpoint runs/demo/checkpoint.pt\n"
            f"  {PROG} linprobe --checkpoint runs/demo/checkpoint.pt\n"
            f"run '{PROG} COMMAND --help' for a command's options"
        ),
        formatter_class=_Formatter,
    )
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _subparser(
        subs, "pretrain", "pretrain an MAE on CIFAR-10",
        "Pretrain a masked autoencoder on the CIFAR-10 training images: AdamW, linear warmup then\n"
        "cosine decay, random-resized-crop + flip. Writes checkpoint.pt and history.json to --out.\n"
        "SIGINT/SIGTERM saves a checkpoint of the exact step and exits with 130/143; --resume\n"
        "continues it to the same weights an uninterrupted run would reach.\n"
        "Works under torchrun (one process per GPU; --batch-size is the total).",
        f"  {PROG} pretrain --preset tiny --epochs 1 --subset 2000 --out runs/demo\n"
        f"  {PROG} pretrain --preset vit_tiny --epochs 200 --out runs/vit_tiny\n"
        f"  {PROG} pretrain --preset vit_tiny --epochs 200 --out runs/vit_tiny --resume\n"
        f"  torchrun --nproc_per_node=2 -m mae_tutorial pretrain --preset vit_tiny --out runs/ddp",
    )  # fmt: skip
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="model size")
    _add_data_options(p, "train on the first N training images only (default: all)")
    p.add_argument("--epochs", type=_positive_int, default=_DEFAULTS.epochs, help="epochs")
    p.add_argument(
        "--batch-size", type=_positive_int, default=_DEFAULTS.batch_size,
        help="images per step, total over all processes",
    )  # fmt: skip
    p.add_argument(
        "--base-lr", type=_positive_float, default=_DEFAULTS.base_lr,
        help="lr per 256 images: peak lr = base_lr * batch_size / 256",
    )  # fmt: skip
    p.add_argument(
        "--weight-decay", type=_nonneg_float, default=_DEFAULTS.weight_decay,
        help="AdamW weight decay of weight matrices (none on norms, biases, tokens)",
    )  # fmt: skip
    p.add_argument(
        "--warmup-epochs", type=_nonneg_float, default=None,
        help="linear warmup length in epochs (fractions allowed); default: 10%% of --epochs",
    )  # fmt: skip
    p.add_argument("--min-lr", type=_nonneg_float, default=_DEFAULTS.min_lr, help="final lr")
    p.add_argument(
        "--mask-ratio", type=_ratio, default=None,
        help="fraction of patches removed; default: the preset's (0.75)",
    )  # fmt: skip
    p.add_argument(
        "--norm-pix", action=argparse.BooleanOptionalAction, default=None,
        help="regress per-patch normalised pixels; default: the preset's (on)",
    )  # fmt: skip
    p.add_argument(
        "--decoder-depth", type=_positive_int, default=None,
        help="decoder blocks; default: the preset's (the paper's Table 1a varies it)",
    )  # fmt: skip
    p.add_argument(
        "--decoder-dim", type=_positive_int, default=None,
        help="decoder width, a multiple of the preset's decoder heads; default: the preset's",
    )  # fmt: skip
    p.add_argument(
        "--masking", default=_DEFAULTS.masking, choices=MASKING_KINDS,
        help="how removed patches are sampled; grid keeps 1 in 2x2 (needs --mask-ratio 0.75)",
    )  # fmt: skip
    p.add_argument("--out", default="runs/pretrain", metavar="DIR", help="output folder")
    p.add_argument(
        "--resume", action="store_true",
        help="continue from the newest checkpoint in --out (starts afresh if there is none)",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true",
        help="start afresh, deleting the checkpoints and history already in --out",
    )  # fmt: skip
    p.add_argument(
        "--init-from", metavar="CKPT",
        help="start from this checkpoint's weights (same model config) with a fresh optimiser and "
        "schedule: a second cycle of training; ignored when --resume finds a checkpoint",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of init, data and masks")
    p.add_argument(
        "--amp", default="auto", choices=AMP_MODES,
        help="mixed precision; auto: bf16 (or fp16 + loss scaling) on CUDA, fp32 elsewhere",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="use torch.compile")
    p.add_argument(
        "--checkpoint-every", type=_positive_int, default=1, metavar="EPOCHS",
        help="write checkpoint.pt every this many epochs (and after the last)",
    )  # fmt: skip
    p.add_argument(
        "--keep-snapshots", action="store_true", help="also keep epoch_XXXX.pt at each checkpoint"
    )
    p.add_argument("--debug-stop-after-steps", type=_positive_int, help=argparse.SUPPRESS)
    p.add_argument("--debug-nan-at-step", type=_positive_int, help=argparse.SUPPRESS)
    p.set_defaults(run=_run_pretrain)

    p = _subparser(
        subs, "linprobe", "linear probe of a pretrained encoder",
        "Train a linear classifier on the frozen encoder's features (extracted once) and report\n"
        "its top-1/top-5 accuracy (%) on the test images.",
        f"  {PROG} linprobe --checkpoint runs/demo/checkpoint.pt\n"
        f"  {PROG} linprobe --checkpoint runs/demo/checkpoint.pt --subset 10000 --epochs 30\n"
        f"  {PROG} linprobe --checkpoint runs/demo/checkpoint.pt --last-blocks 4",
    )  # fmt: skip
    _add_eval_options(p)
    p.add_argument("--epochs", type=_positive_int, default=90, help="epochs of the head")
    p.add_argument("--batch-size", type=_positive_int, default=1024, help="features per step")
    p.add_argument(
        "--lr", type=_positive_float, default=None,
        help=f"peak lr of the head; default: {PROBE_BASE_LR} * batch_size / 256",
    )  # fmt: skip
    p.add_argument(
        "--last-blocks", type=_positive_int, default=1, metavar="K",
        help="probe the pooled features of the last K blocks, concatenated (DINO uses 4); "
        "default 1: the encoder's output, as the paper",
    )  # fmt: skip
    _add_random_init(p)
    p.set_defaults(run=_run_linprobe)

    p = _subparser(
        subs, "knn", "k-nearest-neighbour accuracy of the frozen features",
        "Classify each test image by a weighted vote of its k most cosine-similar training\n"
        "images in the frozen encoder's feature space; report top-1/top-5 accuracy (%).",
        f"  {PROG} knn --checkpoint runs/demo/checkpoint.pt\n"
        f"  {PROG} knn --checkpoint runs/demo/checkpoint.pt --k 200 --temperature 0.1",
    )  # fmt: skip
    _add_eval_options(p)
    p.add_argument("--k", type=_positive_int, default=20, help="neighbours that vote")
    p.add_argument(
        "--temperature", type=_positive_float, default=0.07,
        help="vote weight exp(similarity / T)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=_positive_int, default=512, help="images per forward pass")
    _add_random_init(p)
    p.set_defaults(run=_run_knn)

    p = _subparser(
        subs, "finetune", "fine-tune the encoder (all or the last k blocks) on the labels",
        "Fine-tune a classifier made of the pretrained encoder plus a linear head: all blocks\n"
        "with layer-wise lr decay (default), or only the last --blocks K (partial fine-tuning,\n"
        "the paper's Figure 9). --from-scratch trains the same architecture from random weights,\n"
        "the baseline at an equal budget.",
        f"  {PROG} finetune --checkpoint runs/demo/checkpoint.pt --epochs 50\n"
        f"  {PROG} finetune --checkpoint runs/demo/checkpoint.pt --blocks 1\n"
        f"  {PROG} finetune --from-scratch --preset vit_tiny --epochs 50",
    )  # fmt: skip
    _add_eval_options(p, checkpoint_required=False)
    p.add_argument(
        "--from-scratch", action="store_true",
        help="random initial weights (architecture from --checkpoint or --preset)",
    )  # fmt: skip
    p.add_argument("--preset", choices=sorted(PRESETS), help="architecture for --from-scratch")
    p.add_argument(
        "--blocks", type=_nonneg_int, default=None, metavar="K",
        help="train only the last K blocks (+ final norm and head); default: all",
    )  # fmt: skip
    p.add_argument("--epochs", type=_positive_int, default=50, help="epochs")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per step")
    p.add_argument(
        "--base-lr", type=_positive_float, default=1e-3, help="lr = base_lr * batch_size / 256"
    )
    p.add_argument(
        "--layer-decay", type=_positive_float, default=0.75, help="lr scale per block (1 = none)"
    )
    p.add_argument("--weight-decay", type=_nonneg_float, default=0.05, help="AdamW weight decay")
    p.add_argument("--drop-path", type=_nonneg_float, default=0.1, help="stochastic depth rate")
    p.add_argument(
        "--warmup-epochs", type=_nonneg_float, default=None,
        help="linear warmup; default: 5, or 10%% of --epochs when that is shorter",
    )  # fmt: skip
    p.add_argument(
        "--amp", default="auto", choices=("auto", "bf16", "off"),
        help="bf16 autocast; auto: on for CUDA only",
    )  # fmt: skip
    p.set_defaults(run=_run_finetune)

    p = _subparser(
        subs, "reconstruct", "draw masked images and their reconstructions (PNG)",
        "Mask random images, reconstruct them and save a grid: the originals, the masked inputs,\n"
        "the reconstructions, and the reconstructions with the visible patches pasted back.\n"
        "Normalised-pixel predictions are shown un-normalised with each true patch's mean and\n"
        "variance, as in the official demo (flattering for the masked patches).",
        f"  {PROG} reconstruct --checkpoint runs/demo/checkpoint.pt --out runs/demo\n"
        f"  {PROG} reconstruct --checkpoint runs/demo/checkpoint.pt --n 12 --split train",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a pretraining checkpoint")
    p.add_argument(
        "--data-dir", metavar="DIR",
        help="folder holding cifar-10-batches-py; default: $MAE_TUTORIAL_DATA, else download",
    )  # fmt: skip
    p.add_argument(
        "--out", metavar="DIR", default=None, help="output folder; default: the checkpoint's"
    )
    p.add_argument("--name", default="reconstruction.png", help="file name of the PNG")
    p.add_argument("--n", type=_positive_int, default=8, help="images (columns)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="which images")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the images and the masks")
    p.add_argument("--dpi", type=_positive_int, default=150, help="resolution of the PNG")
    p.add_argument("--device", default="auto", help="auto (CPU), cpu, cuda")
    p.set_defaults(run=_run_reconstruct)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: `sys.argv[1:]`); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return args.run(args)
    except _UsageError as err:
        print(_one_line(err), file=sys.stderr)
        return 2
    except SystemExit as err:  # --help
        return err.code if isinstance(err.code, int) else 0
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except NonFiniteLossError as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        if "could not be downloaded" not in str(err):
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
