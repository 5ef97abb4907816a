"""What each chapter's setup cell calls: the device, quick mode, the data, and PNG figures.

Every chapter starts with the same cell: in Google Colab it installs this package from the
repository, then everywhere it calls `setup_notebook()`, which

- picks the fastest device there is (cuda, then mps, then cpu; `runtime.resolve_device`);
- reads quick mode, `MAE_TUTORIAL_QUICK=1`, in which every heavy cell shrinks so the whole book
  runs in minutes on two CPU cores (CI runs the chapters this way);
- decides where CIFAR-10 comes from: `MAE_TUTORIAL_DATA` when set, else the cache (downloading on
  first use); in quick mode with neither, small synthetic data in the CIFAR format instead, so CI
  needs no network;
- seeds PyTorch, and makes figures inline PNGs (SVGs never compare equal under nbval, and PNGs
  render the same everywhere).

`make execute` runs the chapters for the book with `python -m mae_tutorial.notebook FILE...`:
each in a fresh kernel, top to bottom, saved in place, with no timing metadata to clutter diffs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mae_tutorial.data import (
    CIFAR10,
    default_cache_dir,
    load_cifar10,
    make_synthetic_cifar,
    resolve_cifar10_folder,
)
from mae_tutorial.runtime import resolve_device

QUICK_ENV = "MAE_TUTORIAL_QUICK"
DATA_ENV = "MAE_TUTORIAL_DATA"
# Synthetic stand-in for CIFAR-10 in quick mode when the real set is nowhere on disk.
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 2000, 500


@dataclass(frozen=True)
class NotebookSetup:
    """What a chapter needs to know about where it runs.

    Args:
        device: where tensors and models go.
        quick: quick mode (`MAE_TUTORIAL_QUICK=1`): shrink every heavy cell.
        data_root: the folder holding `cifar-10-batches-py` that `load_cifar10` reads, or None for
            the loader's own search (`MAE_TUTORIAL_DATA`, then the cache, downloading into it).
    """

    device: torch.device
    quick: bool
    data_root: Path | None

    @property
    def synthetic(self) -> bool:
        """True when the chapter runs on synthetic stand-in data rather than CIFAR-10."""
        return self.data_root is not None and self.data_root == synthetic_data_root()

    def load_cifar10(self) -> CIFAR10:
        """CIFAR-10 (or the synthetic stand-in) as uint8 tensors on the CPU."""
        return load_cifar10(self.data_root)


def is_quick() -> bool:
    """Quick mode: `MAE_TUTORIAL_QUICK=1` in the environment."""
    return os.environ.get(QUICK_ENV) == "1"


def synthetic_data_root() -> Path:
    """Where quick mode writes its synthetic stand-in for CIFAR-10 (never beside the real data)."""
    return default_cache_dir() / "synthetic"


def notebook_data_root(quick: bool) -> Path | None:
    """The folder the chapters read CIFAR-10 from; see `NotebookSetup.data_root`.

    Real data wins whenever it is on disk. Only in quick mode, with `MAE_TUTORIAL_DATA` unset and
    nothing cached, is synthetic data made (once, in the cache folder) and used instead.
    """
    if os.environ.get(DATA_ENV):
        return None  # the loader reads it, and says clearly if it is wrong
    try:
        resolve_cifar10_folder(download=False)
        return None  # already in the cache
    except FileNotFoundError:
        pass
    if not quick:
        return None  # the loader downloads it on first use
    root = synthetic_data_root()
    try:
        resolve_cifar10_folder(root, download=False)
    except FileNotFoundError:
        make_synthetic_cifar(root, n_train=SYNTHETIC_TRAIN, n_test=SYNTHETIC_TEST)
    return root


def use_png_figures() -> None:
    """Inline PNG figures in a Jupyter kernel, whatever `MPLBACKEND` says; no-op elsewhere."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    shell.run_line_magic("matplotlib", "inline")
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats("png")
    import matplotlib

    matplotlib.rcParams["figure.dpi"] = 100


def setup_notebook(seed: int = 0) -> NotebookSetup:
    """Set a chapter up: device, quick mode, data, seeded RNG, PNG figures.

    Args:
        seed: seed for `torch.manual_seed`, so a chapter's random draws repeat run after run.
    """
    quick = is_quick()
    torch.manual_seed(seed)
    use_png_figures()
    return NotebookSetup(
        device=resolve_device("auto"), quick=quick, data_root=notebook_data_root(quick)
    )


def execute_notebook(path: str | Path, kernel_name: str = "python3") -> None:
    """Run a notebook top to bottom in a fresh kernel and save it in place with its outputs.

    The kernel starts in the notebook's folder. Widgets' state is not saved: a widget needs a live
    kernel, so the book shows a static figure in its place. Stops at the first cell that raises
    (`nbclient.exceptions.CellExecutionError`), leaving the file untouched.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=None,
        kernel_name=kernel_name,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    client.execute()
    # A widget's saved state would make the book load the widget manager and require.js from a
    # CDN on that chapter's page; the book shows static figures instead.
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae_tutorial.notebook",
        description="Execute chapters top to bottom in fresh kernels, saving their outputs in place.",
    )
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.notebooks:
        start = time.perf_counter()
        print(f"executing {path} ({'quick' if is_quick() else 'full'} mode)", flush=True)
        execute_notebook(path)
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
