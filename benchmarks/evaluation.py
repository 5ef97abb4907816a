"""Chapter 8's results: every evaluation of the shipped reference model, each with its command.

    python benchmarks/evaluation.py --data-dir ../shared/data --jobs 2

Each entry of `RUNS` is one `python -m mae_tutorial linprobe|knn|finetune ...` command; its one-line
JSON summary is stored with the command, the wall time and the machine in
`mae_tutorial/results/evaluation.json` (written atomically after every run). An entry already
recorded with the same command is skipped, so an interrupted run resumes; `--only` re-runs
chosen entries. `--jobs 2` runs two commands at a time, one thread each (on a 2-core CPU, one
thread per job beats two jobs fighting over both cores).

The fine-tuning budget is deliberately small (10,000 training images, 5 epochs: minutes per run
on a CPU) and identical for every entry, so the pretrained and the from-scratch fine-tunes are
compared at an equal budget; the numbers say what such a budget reaches, not what the recipe
reaches with hundreds of epochs on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from mae_tutorial.checkpoint import save_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "mae_tutorial" / "results" / "evaluation.json"
DEFAULT_CHECKPOINT = "mae_tutorial/pretrained/cifar10-cpu.pt"
FINETUNE_BUDGET = ["--subset", "10000", "--epochs", "5"]
QUICK = ["--subset", "200", "--test-subset", "100"]


def runs(checkpoint: str) -> dict[str, list[str]]:
    """Name -> arguments of `python -m mae_tutorial`, for one reference checkpoint."""
    ckpt = ["--checkpoint", checkpoint]
    table = {
        "linprobe": ["linprobe", *ckpt],
        "knn": ["knn", *ckpt],
        "random_init_linprobe": ["linprobe", *ckpt, "--random-init"],
        "random_init_knn": ["knn", *ckpt, "--random-init"],
        # DINO's probe for small ViTs: the pooled features of the last 4 blocks, concatenated.
        "linprobe_last4": ["linprobe", *ckpt, "--last-blocks", "4"],
        "random_init_linprobe_last4": ["linprobe", *ckpt, "--last-blocks", "4", "--random-init"],
    }
    for blocks in (0, 1, 2, 4):
        table[f"finetune_blocks{blocks}"] = [
            "finetune",
            *ckpt,
            *FINETUNE_BUDGET,
            "--blocks",
            str(blocks),
        ]
    table["finetune_all"] = ["finetune", *ckpt, *FINETUNE_BUDGET]
    table["finetune_from_scratch"] = ["finetune", *ckpt, *FINETUNE_BUDGET, "--from-scratch"]
    return table


def _quick(args: list[str]) -> list[str]:
    """Shrink a command to seconds (for the smoke test): tiny subsets, one epoch."""
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in ("--subset", "--epochs") and i + 1 < len(args):
            skip = True
            continue
        out.append(arg)
    return out + QUICK + ([] if args[0] == "knn" else ["--epochs", "1", "--batch-size", "64"])


def pending(
    table: dict[str, list[str]], results: dict[str, Any], only: list[str] | None
) -> dict[str, list[str]]:
    """The entries to run: `only` if given, else those not yet recorded with the same command."""
    if only:
        return {name: cmd for name, cmd in table.items() if name in only}
    return {
        name: cmd
        for name, cmd in table.items()
        if name not in results
        or not results[name]["command"].split(" --data-dir")[0].endswith(shlex.join(cmd))
    }


def run_one(name: str, args: list[str], data_dir: str | None) -> dict[str, Any]:
    """Run one command with one thread; return its record (command, seconds, result)."""
    command = [sys.executable, "-m", "mae_tutorial", *args]
    if data_dir is not None:
        command += ["--data-dir", data_dir]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{name} printed no JSON summary:\n{done.stdout[-2000:]}")
    shown = ["python", "-m", "mae_tutorial", *command[3:]]
    return {
        "command": "OMP_NUM_THREADS=1 " + shlex.join(shown),
        "seconds": round(seconds, 1),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}",
        "result": json.loads(lines[-1]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="entries: " + ", ".join(runs(DEFAULT_CHECKPOINT)),
    )
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="the model to evaluate")
    parser.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the results file")
    parser.add_argument("--jobs", type=int, default=1, help="commands run at once (default: 1)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these entries only")
    parser.add_argument("--quick", action="store_true", help="tiny subsets, one epoch (smoke test)")
    args = parser.parse_args(argv)
    table = runs(args.checkpoint)
    unknown = sorted(set(args.only or []) - set(table))
    if unknown:
        parser.error(f"unknown entries {unknown}; expected some of {sorted(table)}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.quick:
        table = {name: _quick(cmd) for name, cmd in table.items()}
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    todo = pending(table, results, args.only)
    print(f"{len(todo)} to run: {', '.join(todo) or 'nothing'}", flush=True)

    lock = threading.Lock()

    def work(item: tuple[str, list[str]]) -> None:
        name, cmd = item
        record = run_one(name, cmd, args.data_dir)
        with lock:  # one writer at a time; the file always holds every finished entry
            results[name] = record
            # Re-read first: another run of this script may have recorded entries meanwhile.
            current = json.loads(args.out.read_text()) if args.out.is_file() else {}
            save_json(args.out, dict(sorted({**current, name: record}.items())))
        print(
            f"{name}: {json.dumps(record['result'])[:200]} ({record['seconds']:.0f} s)", flush=True
        )

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(work, todo.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
