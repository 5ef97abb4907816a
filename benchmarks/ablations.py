"""The paper's Table 1 questions at CIFAR scale: one small MAE, one fixed budget, one knob at a time.

Every variant differs from `base` in one field (of the model config or of the training settings),
and the contrasts the paper calls strongest are run with three seeds each:

    mask ratio        0.25, 0.5, (0.75 = base), 0.9                3 seeds
    target            normalised pixels (base) vs raw pixels        3 seeds
    mask sampling     random (base), block                         3 seeds; grid: 1 seed
    mask token        skipped by the encoder (base) vs fed to it    3 seeds
    decoder depth     1, (2 = base), 4                              1 seed
    floor             the untrained encoder                         3 seeds

A seed decides the initial weights, the data order, the augmentation and the masks. Each run
pretrains with `mae_tutorial.pretrain.pretrain` on the first `--train` training images, then
extracts the frozen encoder's features once and scores them by kNN and by a linear probe on the
test set. Runs go to a JSON file as each finishes (written atomically) with their inputs, times and
the command line; a run already recorded with identical inputs is skipped, and a run cut off
mid-way resumes from its last epoch (its checkpoints live in `<out>.work/` until it is recorded).
`--jobs 2` runs two single-thread runs side by side. Chapter 9 draws its plots from the file.

    python benchmarks/ablations.py --data-dir ../shared/data --jobs 2
    python benchmarks/ablations.py --data-dir ../shared/data --only base --seeds 1
    python benchmarks/ablations.py --quick --out /tmp/ablations.json      # seconds, for tests
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mae_tutorial import probe
from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10, load_cifar10, make_synthetic_cifar
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.pretrain import TrainSettings, pretrain
from mae_tutorial.runtime import seeded

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "mae_tutorial" / "results" / "ablations.json"
FORMAT = 2


@dataclass(frozen=True)
class Budget:
    """How much every run gets: pretraining images and epochs, and the evaluation sets.

    Args:
        train: pretrain on the first `train` training images.
        epochs: pretraining epochs.
        batch_size: pretraining batch.
        eval_train: kNN memory bank and linear-probe training set: the first `eval_train`
            training images.
        eval_test: both are scored on the first `eval_test` test images.
        probe_epochs: epochs of the linear probe on the cached features.
    """

    train: int
    epochs: int
    batch_size: int
    eval_train: int
    eval_test: int
    probe_epochs: int


# 10.4x the first grid's 8,000 images x 3 epochs. Measured on one thread of this project's CPU
# host: the base model pretrains at about 500 images/s (mask ratio 0.75), 270 at mask ratio 0.25
# and 210 with mask tokens in the encoder; feature extraction runs at about 870 images/s.
FULL_BUDGET = Budget(
    train=50_000, epochs=5, batch_size=64, eval_train=50_000, eval_test=10_000, probe_epochs=90
)
FULL_CONFIG = MAEConfig(
    embed_dim=96, depth=4, num_heads=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4
)
# Seconds: the tiny preset on a few hundred images, for the smoke test and the chapter's demo.
QUICK_BUDGET = Budget(
    train=512, epochs=2, batch_size=64, eval_train=256, eval_test=128, probe_epochs=5
)
QUICK_CONFIG = MAEConfig.from_preset("tiny")
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: a name, the question it answers, what it changes in `base`, and
    the seeds it runs with. `pretrained=False` scores the untrained encoder (the floor)."""

    name: str
    question: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrained: bool = True
    seeds: tuple[int, ...] = SEEDS


VARIANTS = (
    Variant("base", "base"),
    Variant("mask_ratio_0.25", "mask_ratio", config={"mask_ratio": 0.25}),
    Variant("mask_ratio_0.5", "mask_ratio", config={"mask_ratio": 0.5}),
    Variant("mask_ratio_0.9", "mask_ratio", config={"mask_ratio": 0.9}),
    Variant("raw_pixels", "target", config={"norm_pix_loss": False}),
    Variant("block_masking", "masking", settings={"masking": "block"}),
    Variant("mask_token_in_encoder", "mask_token", config={"mask_token_in_encoder": True}),
    Variant("grid_masking", "masking", settings={"masking": "grid"}, seeds=(0,)),
    Variant("decoder_depth_1", "decoder_depth", config={"decoder_depth": 1}, seeds=(0,)),
    Variant("decoder_depth_4", "decoder_depth", config={"decoder_depth": 4}, seeds=(0,)),
    Variant("random_init", "floor", pretrained=False),
)
NAMES = tuple(v.name for v in VARIANTS)
BY_NAME = {v.name: v for v in VARIANTS}


def run_key(name: str, seed: int) -> str:
    """The results file's key for one run: `name@seed`."""
    return f"{name}@{seed}"


def relative_cost(variant: Variant, base_config: MAEConfig) -> float:
    """A rough per-image cost (token-width^2 products) used only to order the queue."""
    config = dataclasses.replace(base_config, **variant.config)
    if not variant.pretrained:
        return 0.0
    visible = config.num_patches if config.mask_token_in_encoder else config.num_visible
    return (
        visible * config.depth * config.embed_dim**2
        + config.num_patches * config.decoder_depth * config.decoder_embed_dim**2
    )


def schedule(
    chosen: list[Variant], seeds: tuple[int, ...] | None, base_config: MAEConfig
) -> list[tuple[Variant, int]]:
    """The runs in the order they start: the cheap floor first, then seed by seed (so that a grid
    cut short holds whole seeds), the costliest first within a seed, single-seed variants last."""
    runs = [(v, s) for v in chosen for s in v.seeds if seeds is None or s in seeds]
    return sorted(
        runs,
        key=lambda vs: (
            vs[0].pretrained, len(vs[0].seeds) == 1, vs[1], -relative_cost(vs[0], base_config)
        ),
    )  # fmt: skip


def subsets(data: CIFAR10, budget: Budget) -> dict[str, CIFAR10]:
    """The fixed image subsets: pretraining, and kNN / linear probe."""
    for need, have, what in (
        (max(budget.train, budget.eval_train), len(data.train_images), "training"),
        (budget.eval_test, len(data.test_images), "test"),
    ):
        if need > have:
            raise ValueError(f"the budget needs {need} {what} images, the data has {have}")

    def first(n_train: int) -> CIFAR10:
        return CIFAR10(
            data.train_images[:n_train], data.train_labels[:n_train],
            data.test_images[: budget.eval_test], data.test_labels[: budget.eval_test],
            data.classes,
        )  # fmt: skip

    return {"pretrain": first(budget.train), "eval": first(budget.eval_train)}


def score(model: MaskedAutoencoder, data: CIFAR10, budget: Budget, seed: int) -> dict[str, float]:
    """kNN (k=20, temperature 0.07) and linear-probe top-1/top-5 (%) on features extracted once."""
    start = time.perf_counter()
    bank = probe.extract_features(model, data.train_images, device="cpu")  # (N, D)
    queries = probe.extract_features(model, data.test_images, device="cpu")  # (M, D)
    extracted = time.perf_counter()
    votes = probe.knn_scores(bank, data.train_labels, queries, len(data.classes))  # (M, classes)
    knn = probe.topk_accuracy(votes, data.test_labels)
    voted = time.perf_counter()
    head = probe.fit_linear_probe(
        bank, data.train_labels, len(data.classes), epochs=budget.probe_epochs, seed=seed
    )
    with torch.no_grad():
        linear = probe.topk_accuracy(head(queries), data.test_labels)
    return {
        "knn_top1": knn[1], "knn_top5": knn[5], "linprobe_top1": linear[1],
        "linprobe_top5": linear[5], "feature_seconds": extracted - start,
        "knn_seconds": voted - extracted, "linprobe_seconds": time.perf_counter() - voted,
    }  # fmt: skip


def run_variant(
    variant: Variant,
    seed: int,
    base_config: MAEConfig,
    base_settings: TrainSettings,
    budget: Budget,
    parts: dict[str, CIFAR10],
    work: Path,
) -> dict[str, Any]:
    """Pretrain (unless `variant.pretrained` is False) and score one run; returns its record.

    Checkpoints go to `work` every epoch, and a checkpoint found there is resumed."""
    config = dataclasses.replace(base_config, **variant.config)
    settings = dataclasses.replace(base_settings, **variant.settings, seed=seed)
    start = time.perf_counter()
    with seeded(seed):  # the initial weights; pretraining seeds its own randomness
        model = MaskedAutoencoder(config)
    record: dict[str, Any] = {
        "variant": variant.name, "question": variant.question, "seed": seed,
        "pretrained": variant.pretrained,
    }  # fmt: skip
    if variant.pretrained:
        history = pretrain(model, parts["pretrain"].train_images, settings, work, resume=True)
        record.update(
            pretrain_loss=history[-1]["loss"], pretrain_losses=[h["loss"] for h in history],
            pretrain_seconds=sum(h["time"] for h in history),
            pretrain_images_per_s=history[-1]["images_per_s"],
        )  # fmt: skip
    record.update(score(model, parts["eval"], budget, seed))
    record["seconds"] = time.perf_counter() - start
    return record


def inputs(
    variant: Variant,
    seed: int,
    base_config: MAEConfig,
    base_settings: TrainSettings,
    budget: Budget,
    data: str,
) -> dict[str, Any]:
    """Everything that decides a run's numbers; a stored run with equal inputs is reused."""
    settings = dataclasses.replace(base_settings, **variant.settings, seed=seed)
    return {
        "config": dataclasses.replace(base_config, **variant.config).to_dict(),
        "settings": settings.to_dict(),
        "pretrained": variant.pretrained,
        "budget": dataclasses.asdict(budget),
        "data": data,
    }


def load_results(path: Path) -> dict[str, Any]:
    """The results file, or an empty one when it does not exist yet."""
    if not path.exists():
        return {"format": FORMAT, "runs": {}}
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable results file ({err})") from None
    if not isinstance(results, dict) or not isinstance(results.get("runs"), dict):
        raise ValueError(f"{path} is not a results file of benchmarks/ablations.py")
    if results.get("format") != FORMAT:  # an older grid: refuse rather than overwrite it
        raise ValueError(
            f"{path} holds results of format {results.get('format')!r}, not {FORMAT}; "
            "move it aside or pass another --out"
        )
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


def data_folder(data_dir: str | None, quick: bool, scratch: Path) -> tuple[str, str]:
    """The folder holding cifar-10-batches-py, and what it holds: real CIFAR-10 from `data_dir` /
    `$MAE_TUTORIAL_DATA` (never a download), else, in quick mode only, synthetic images."""
    root = data_dir or os.environ.get("MAE_TUTORIAL_DATA") or None
    if root is not None:
        return root, "CIFAR-10"
    if not quick:
        raise ValueError(
            "the full ablation needs CIFAR-10: pass --data-dir (a folder holding "
            "cifar-10-batches-py) or set MAE_TUTORIAL_DATA; --quick runs on synthetic images"
        )
    budget = QUICK_BUDGET
    n_train = max(budget.train, budget.eval_train)
    folder = make_synthetic_cifar(scratch, n_train=n_train, n_test=budget.eval_test, seed=0)
    return str(folder), "synthetic"


# One worker process's state, set by `_start_worker`: the data is loaded once per process.
_WORKER: dict[str, Any] = {}


def _start_worker(threads: int, folder: str, budget: Budget, quiet: bool) -> None:
    torch.set_num_threads(threads)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    _WORKER["parts"] = subsets(load_cifar10(folder, download=False), budget)


def _work(job: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    """Run one job in this process; a run that cannot go on returns {"error": why} instead."""
    key, variant, seed, base_config, base_settings, budget, work = job
    try:
        record = run_variant(
            variant, seed, base_config, base_settings, budget, _WORKER["parts"], work
        )
    except (ValueError, OSError, RuntimeError) as err:  # bad checkpoint, full disk, NaN loss...
        return key, {"error": f"{err} (its checkpoints: {work})"}
    record.update(
        torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip
    return key, record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    rows = "\n".join(
        f"  {v.name:<22} {v.question:<14} seeds {','.join(map(str, v.seeds)):<6} "
        f"{v.config or v.settings or ''}"
        for v in VARIANTS
    )
    parser = argparse.ArgumentParser(
        prog="benchmarks/ablations.py",
        description=__doc__.split("\n\n")[0]
        + "\n\nVariants (each changes one thing in base):\n"
        + rows,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python benchmarks/ablations.py --data-dir ../shared/data --jobs 2\n"
        "  python benchmarks/ablations.py --data-dir ../shared/data --only base --seeds 1\n"
        "  python benchmarks/ablations.py --quick --out /tmp/ablations.json",
    )
    parser.add_argument(
        "--data-dir", metavar="DIR",
        help="folder holding cifar-10-batches-py (default: $MAE_TUTORIAL_DATA; --quick without "
        "either uses synthetic images)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="JSON",
        help="results file, updated after every run (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--only", nargs="+", choices=NAMES, metavar="NAME",
        help=f"run only these variants (default: all); of {', '.join(NAMES)}",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", nargs="+", type=int, choices=SEEDS, metavar="SEED",
        help="run only these seeds of each variant (default: the variant's own, see above)",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=1, choices=range(1, 9), metavar="N",
        help="runs at a time, each in its own process with --threads threads (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1, choices=range(1, 65), metavar="T",
        help="threads per run (default: 1; the stored grid used 1)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny preset, a few hundred images: seconds, for tests and demos",
    )  # fmt: skip
    parser.add_argument("--rerun", action="store_true", help="run again even when already recorded")
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda", "auto"),
        help="where to pretrain (default: cpu; features are always extracted on the CPU)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget, base_config = (QUICK_BUDGET, QUICK_CONFIG) if args.quick else (FULL_BUDGET, FULL_CONFIG)
    base_settings = TrainSettings(
        epochs=budget.epochs, batch_size=budget.batch_size, subset=None, device=args.device,
        checkpoint_every=1,
    )  # fmt: skip
    command = shlex.join(["python", "benchmarks/ablations.py", *sys.argv[1:]])
    try:
        results = load_results(args.out)
    except ValueError as err:
        sys.exit(f"error: {err}")
    chosen = [v for v in VARIANTS if args.only is None or v.name in args.only]
    work_root = args.out.parent / f"{args.out.name}.work"
    with tempfile.TemporaryDirectory(prefix="ablation_data_") as scratch:
        folder, source = data_folder(args.data_dir, args.quick, Path(scratch))
        results.update(
            description=(__doc__ or "").split("\n\n")[0], data=source,
            budget=dataclasses.asdict(budget), base_config=base_config.to_dict(),
            base_settings=base_settings.to_dict(),
            variants=[dataclasses.asdict(v) for v in VARIANTS],
        )  # fmt: skip
        jobs, wanted_by_key = [], {}
        for variant, seed in schedule(chosen, args.seeds and tuple(args.seeds), base_config):
            key = run_key(variant.name, seed)
            wanted = inputs(variant, seed, base_config, base_settings, budget, source)
            stored = results["runs"].get(key)
            if stored is not None and stored["inputs"] == wanted and not args.rerun:
                print(f"{key}: recorded already, skipped", flush=True)
                continue
            work = work_root / key
            if args.rerun:
                shutil.rmtree(work, ignore_errors=True)
            jobs.append((key, variant, seed, base_config, base_settings, budget, work))
            wanted_by_key[key] = wanted

        def record(key: str, run: dict[str, Any]) -> None:
            if "error" in run:  # the runs recorded so far are kept; this one can resume
                sys.exit(f"error: {key}: {run['error']}")
            run.update(inputs=wanted_by_key[key], command=command)
            results["runs"][key] = run
            results["command"] = command
            save_results(args.out, results)
            shutil.rmtree(work_root / key, ignore_errors=True)
            print(
                f"{key}: knn {run['knn_top1']:.2f}  linprobe {run['linprobe_top1']:.2f}  loss "
                f"{run.get('pretrain_loss', float('nan')):.4f}  {run['seconds']:.0f} s",
                flush=True,
            )

        worker_args = (args.threads, folder, budget, args.jobs > 1)
        if args.jobs == 1:
            _start_worker(*worker_args)
            for job in jobs:
                record(*_work(job))
        elif jobs:
            context = multiprocessing.get_context("spawn")
            with context.Pool(args.jobs, _start_worker, worker_args, maxtasksperchild=1) as pool:
                for key, run in pool.imap_unordered(_work, jobs, chunksize=1):
                    record(key, run)
    save_results(args.out, results)
    if work_root.exists() and not any(work_root.iterdir()):
        work_root.rmdir()
    print(f"results={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
