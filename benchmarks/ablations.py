"""The paper's Table 1 questions at CIFAR scale: one small MAE, one fixed budget, one knob at a time.

Every variant differs from `base` in one field (of the model config or of the training settings):

    mask ratio        0.25, 0.5, (0.75 = base), 0.9
    decoder depth     1, (2 = base), 4
    target            normalised pixels (base) vs raw pixels
    mask sampling     random (base), block, grid
    mask token        skipped by the encoder (base) vs fed to it
    run-to-run noise  base again with seeds 1 and 2; and an untrained encoder as the floor

Each variant pretrains with `mae_tutorial.pretrain.pretrain` on the first `--train` training images,
then is scored by kNN (`knn_eval`) and a linear probe (`linear_probe`) on fixed train/test subsets
and by a short full fine-tune (`finetune`). The results go to a JSON file after every variant
(written atomically), together with the config, the settings, the budget and the command line;
a variant already recorded with identical inputs is skipped, so an interrupted run continues
where it stopped. Chapter 9 of the book draws its tables and plots from that file.

    OMP_NUM_THREADS=1 python benchmarks/ablations.py --data-dir ../shared/data
    python benchmarks/ablations.py --quick --out /tmp/ablations.json      # seconds, for tests
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10, load_cifar10, make_synthetic_cifar
from mae_tutorial.evaluate import finetune, knn_eval, linear_probe
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.pretrain import TrainSettings, pretrain
from mae_tutorial.runtime import seeded

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "mae_tutorial" / "results" / "ablations.json"
FORMAT = 1


@dataclass(frozen=True)
class Budget:
    """How much every variant gets: pretraining images and epochs, and the evaluation subsets.

    Args:
        train: pretrain on the first `train` training images.
        epochs: pretraining epochs.
        batch_size: pretraining batch.
        eval_train: kNN memory bank and linear-probe training set: the first `eval_train`
            training images.
        eval_test: both are scored on the first `eval_test` test images.
        probe_epochs: epochs of the linear probe on the cached features.
        finetune_train: fine-tune on the first `finetune_train` training images ...
        finetune_epochs: ... for this many epochs, scored on the same `eval_test` test images.
        finetune_batch: fine-tuning batch.
    """

    train: int
    epochs: int
    batch_size: int
    eval_train: int
    eval_test: int
    probe_epochs: int
    finetune_train: int
    finetune_epochs: int
    finetune_batch: int


# Sized by measurement on one CPU thread: the width-96, depth-4 encoder pretrains at about 380
# images/s (mask ratio 0.75) and extracts features at about 460 images/s with a core to itself.
# Sharing two cores with other work, the thirteen entries took about 25 minutes of wall time.
FULL_BUDGET = Budget(
    train=8_000, epochs=3, batch_size=64, eval_train=4_000, eval_test=1_000, probe_epochs=90,
    finetune_train=2_000, finetune_epochs=2, finetune_batch=64,
)  # fmt: skip
FULL_CONFIG = MAEConfig(
    embed_dim=96, depth=4, num_heads=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4
)
# Seconds: the tiny preset on a few hundred images, for the smoke test and the chapter's demo.
QUICK_BUDGET = Budget(
    train=512, epochs=1, batch_size=64, eval_train=256, eval_test=128, probe_epochs=5,
    finetune_train=256, finetune_epochs=1, finetune_batch=64,
)  # fmt: skip
QUICK_CONFIG = MAEConfig.from_preset("tiny")


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: a name, the question it answers, and what it changes in `base`.

    `pretrained=False` scores the untrained encoder (the floor every pretrained variant must beat).
    """

    name: str
    question: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrained: bool = True


VARIANTS = (
    Variant("base", "base"),
    Variant("mask_ratio_0.25", "mask_ratio", config={"mask_ratio": 0.25}),
    Variant("mask_ratio_0.5", "mask_ratio", config={"mask_ratio": 0.5}),
    Variant("mask_ratio_0.9", "mask_ratio", config={"mask_ratio": 0.9}),
    Variant("decoder_depth_1", "decoder_depth", config={"decoder_depth": 1}),
    Variant("decoder_depth_4", "decoder_depth", config={"decoder_depth": 4}),
    Variant("raw_pixels", "target", config={"norm_pix_loss": False}),
    Variant("block_masking", "masking", settings={"masking": "block"}),
    Variant("grid_masking", "masking", settings={"masking": "grid"}),
    Variant("mask_token_in_encoder", "mask_token", config={"mask_token_in_encoder": True}),
    Variant("base_seed_1", "seed", settings={"seed": 1}),
    Variant("base_seed_2", "seed", settings={"seed": 2}),
    Variant("random_init", "reference", pretrained=False),
)
NAMES = tuple(v.name for v in VARIANTS)


def subsets(data: CIFAR10, budget: Budget) -> dict[str, CIFAR10]:
    """The fixed image subsets: pretraining, kNN / linear probe, and fine-tuning."""
    for need, have, what in (
        (max(budget.train, budget.eval_train, budget.finetune_train), len(data.train_images),
         "training"),
        (budget.eval_test, len(data.test_images), "test"),
    ):  # fmt: skip
        if need > have:
            raise ValueError(f"the budget needs {need} {what} images, the data has {have}")

    def first(n_train: int) -> CIFAR10:
        return CIFAR10(
            data.train_images[:n_train], data.train_labels[:n_train],
            data.test_images[: budget.eval_test], data.test_labels[: budget.eval_test],
            data.classes,
        )  # fmt: skip

    return {
        "pretrain": first(budget.train),
        "eval": first(budget.eval_train),
        "finetune": first(budget.finetune_train),
    }


def run_variant(
    variant: Variant,
    base_config: MAEConfig,
    base_settings: TrainSettings,
    budget: Budget,
    parts: dict[str, CIFAR10],
) -> dict[str, Any]:
    """Pretrain (unless `variant.pretrained` is False) and score one variant; returns its record."""
    config = dataclasses.replace(base_config, **variant.config)
    settings = dataclasses.replace(base_settings, **variant.settings)
    start = time.perf_counter()
    with seeded(settings.seed):  # the initial weights; pretraining and evaluation seed their own
        model = MaskedAutoencoder(config)
    record: dict[str, Any] = {"question": variant.question, "pretrained": variant.pretrained}
    if variant.pretrained:
        with tempfile.TemporaryDirectory(prefix="ablation_") as folder:
            history = pretrain(model, parts["pretrain"].train_images, settings, folder)
        record["pretrain_loss"] = history[-1]["loss"]
        record["pretrain_losses"] = [h["loss"] for h in history]
        record["pretrain_seconds"] = sum(h["time"] for h in history)
        record["pretrain_images_per_s"] = history[-1]["images_per_s"]
    device = settings.device if settings.device != "auto" else None
    knn = knn_eval(model, parts["eval"], device=device)
    probe = linear_probe(
        model, parts["eval"], epochs=budget.probe_epochs, device=device, seed=settings.seed
    )
    tuned = finetune(
        model, config, parts["finetune"], epochs=budget.finetune_epochs,
        batch_size=budget.finetune_batch, warmup_epochs=budget.finetune_epochs / 4,
        device=device, seed=settings.seed,
    )  # fmt: skip
    record.update(
        knn_top1=knn["knn_top1"],
        linprobe_top1=probe["linprobe_top1"],
        finetune_top1=tuned["finetune_top1"],
        knn_seconds=knn["seconds"],
        linprobe_seconds=probe["seconds"],
        finetune_seconds=tuned["seconds"],
        seconds=time.perf_counter() - start,
    )
    return record


def inputs(
    variant: Variant,
    base_config: MAEConfig,
    base_settings: TrainSettings,
    budget: Budget,
    data: str,
) -> dict[str, Any]:
    """Everything that decides a variant's numbers; a stored run with equal inputs is reused."""
    return {
        "config": dataclasses.replace(base_config, **variant.config).to_dict(),
        "settings": dataclasses.replace(base_settings, **variant.settings).to_dict(),
        "pretrained": variant.pretrained,
        "budget": dataclasses.asdict(budget),
        "data": data,
    }


def load_results(path: Path) -> dict[str, Any]:
    """The results file, or an empty one when it does not exist yet."""
    if not path.exists():
        return {"format": FORMAT, "runs": {}}
    results = json.loads(path.read_text())
    if results.get("format") != FORMAT:
        raise ValueError(f"{path} has format {results.get('format')!r}, expected {FORMAT}")
    return results


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write atomically: a temporary file beside `path`, then `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(results, file, indent=1)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_data(data_dir: str | None, quick: bool, scratch: Path) -> tuple[CIFAR10, str]:
    """Real CIFAR-10 from `data_dir` / `$MAE_TUTORIAL_DATA` (never a download), else, in quick
    mode only, synthetic stand-in images."""
    root = data_dir or os.environ.get("MAE_TUTORIAL_DATA") or None
    if root is not None:
        return load_cifar10(root, download=False), "CIFAR-10"
    if not quick:
        raise ValueError(
            "the full ablation needs CIFAR-10: pass --data-dir (a folder holding "
            "cifar-10-batches-py) or set MAE_TUTORIAL_DATA; --quick runs on synthetic images"
        )
    budget = QUICK_BUDGET
    n_train = max(budget.train, budget.eval_train, budget.finetune_train)
    folder = make_synthetic_cifar(scratch, n_train=n_train, n_test=budget.eval_test, seed=0)
    return load_cifar10(folder, download=False), "synthetic"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/ablations.py",
        description=__doc__.split("\n\n")[0]
        + "\n\nVariants (each changes one thing in base):\n"
        + "\n".join(
            f"  {v.name:<22} {v.question:<14} {v.config or v.settings or ''}" for v in VARIANTS
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  OMP_NUM_THREADS=1 python benchmarks/ablations.py --data-dir ../shared/data\n"
        "  python benchmarks/ablations.py --data-dir ../shared/data --only base base_seed_1\n"
        "  python benchmarks/ablations.py --quick --out /tmp/ablations.json",
    )
    parser.add_argument(
        "--data-dir", metavar="DIR",
        help="folder holding cifar-10-batches-py (default: $MAE_TUTORIAL_DATA; --quick without "
        "either uses synthetic images)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="JSON",
        help="results file, updated after every variant (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--only", nargs="+", choices=NAMES, metavar="NAME",
        help=f"run only these variants (default: all); one of {', '.join(NAMES)}",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny preset, a few hundred images, one epoch: seconds, for tests and demos",
    )  # fmt: skip
    parser.add_argument(
        "--rerun", action="store_true", help="run variants again even when already recorded"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget, base_config = (QUICK_BUDGET, QUICK_CONFIG) if args.quick else (FULL_BUDGET, FULL_CONFIG)
    base_settings = TrainSettings(
        epochs=budget.epochs, batch_size=budget.batch_size, subset=None, device=args.device,
        checkpoint_every=budget.epochs,
    )  # fmt: skip
    command = shlex.join(["python", "benchmarks/ablations.py", *sys.argv[1:]])
    results = load_results(args.out)
    chosen = [v for v in VARIANTS if args.only is None or v.name in args.only]
    with tempfile.TemporaryDirectory(prefix="ablation_data_") as scratch:
        data, source = load_data(args.data_dir, args.quick, Path(scratch))
        parts = subsets(data, budget)
        results.update(
            description=(__doc__ or "").split("\n\n")[0],
            data=source,
            budget=dataclasses.asdict(budget),
            base_config=base_config.to_dict(),
            base_settings=base_settings.to_dict(),
            variants=[dataclasses.asdict(v) for v in VARIANTS],
        )
        for variant in chosen:
            wanted = inputs(variant, base_config, base_settings, budget, source)
            stored = results["runs"].get(variant.name)
            if stored is not None and stored["inputs"] == wanted and not args.rerun:
                print(f"{variant.name}: recorded already, skipped", flush=True)
                continue
            record = run_variant(variant, base_config, base_settings, budget, parts)
            record.update(
                inputs=wanted,
                command=command,
                torch=torch.__version__,
                threads=torch.get_num_threads(),
                machine=platform.machine(),
            )
            results["runs"][variant.name] = record
            results["command"] = command
            save_results(args.out, results)
            print(
                f"{variant.name}: knn {record['knn_top1']:.2f}  linprobe "
                f"{record['linprobe_top1']:.2f}  finetune {record['finetune_top1']:.2f}  "
                f"loss {record.get('pretrain_loss', float('nan')):.4f}  "
                f"{record['seconds']:.0f} s",
                flush=True,
            )
    save_results(args.out, results)
    print(f"results={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
