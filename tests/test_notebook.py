"""Tests for mae_tutorial.notebook: the chapters' setup helper and the chapter executor."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

from mae_tutorial.data import make_synthetic_cifar
from mae_tutorial.notebook import (
    NotebookSetup,
    execute_notebook,
    is_quick,
    notebook_data_root,
    setup_notebook,
    synthetic_data_root,
)
from mae_tutorial.runtime import resolve_device


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MAE_TUTORIAL_DATA and an empty cache folder; returns the cache's parent."""
    monkeypatch.delenv("MAE_TUTORIAL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("value", "quick"), [("1", True), ("0", False), ("", False), (None, False)]
)
def test_quick_mode_is_exactly_the_value_1(
    value: str | None, quick: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("MAE_TUTORIAL_QUICK", raising=False)
    else:
        monkeypatch.setenv("MAE_TUTORIAL_QUICK", value)
    assert is_quick() is quick


def test_device_is_one_torch_can_use() -> None:
    device = resolve_device("auto")
    assert device.type in ("cuda", "mps", "cpu")
    assert torch.zeros(1, device=device).device.type == device.type


def test_named_data_folder_is_left_to_the_loader(
    no_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAE_TUTORIAL_DATA", str(no_data / "somewhere"))
    assert notebook_data_root(quick=True) is None
    assert not synthetic_data_root().exists()


def test_full_mode_without_data_downloads_rather_than_faking(no_data: Path) -> None:
    assert notebook_data_root(quick=False) is None
    assert not synthetic_data_root().exists()


def test_quick_mode_without_data_makes_synthetic_data_once_in_the_cache(no_data: Path) -> None:
    root = notebook_data_root(quick=True)
    assert root == synthetic_data_root()
    assert root is not None and root.is_relative_to(no_data)
    marker = root / "cifar-10-batches-py" / "test_batch"
    stamp = marker.stat().st_mtime_ns
    assert notebook_data_root(quick=True) == root
    assert marker.stat().st_mtime_ns == stamp  # reused, not rewritten
    setup = NotebookSetup(device=torch.device("cpu"), quick=True, data_root=root)
    assert setup.synthetic
    data = setup.load_cifar10()
    assert data.test_images.shape[1:] == (3, 32, 32)
    assert data.test_images.dtype == torch.uint8


def test_cached_real_data_wins_over_synthetic(no_data: Path) -> None:
    make_synthetic_cifar(
        no_data / "mae_tutorial", n_train=10, n_test=10
    )  # stands in for a download
    assert notebook_data_root(quick=True) is None


def test_setup_notebook_seeds_and_reports(no_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAE_TUTORIAL_QUICK", "1")
    first = setup_notebook(seed=3)
    draw = torch.rand(3)
    second = setup_notebook(seed=3)
    assert torch.equal(torch.rand(3), draw)
    assert first == second
    assert first.quick and first.synthetic
    assert first.device == resolve_device("auto")


def test_execute_notebook_runs_in_order_without_timing_metadata(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("from pathlib import Path\nx = 20"),
        nbformat.v4.new_code_cell("print(x + 22, Path.cwd().name)"),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    folder = tmp_path / "chapter_folder"
    folder.mkdir()
    path = folder / "demo.ipynb"
    nbformat.write(notebook, path)
    execute_notebook(path)
    executed = nbformat.read(path, as_version=4)
    assert [cell.execution_count for cell in executed.cells] == [1, 2]
    assert executed.cells[1].outputs[0].text == "42 chapter_folder\n"
    assert all("execution" not in cell.metadata for cell in executed.cells)


def test_execute_notebook_saves_no_widget_state(tmp_path: Path) -> None:
    # Saved widget state would make the book load the widget manager from a CDN.
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("import ipywidgets\nipywidgets.IntSlider(3)")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    path = tmp_path / "widget.ipynb"
    nbformat.write(notebook, path)
    execute_notebook(path)
    executed = nbformat.read(path, as_version=4)
    assert executed.cells[0].outputs, "the widget cell shows nothing"
    assert "widgets" not in executed.metadata
