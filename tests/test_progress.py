"""Tests for mae_tutorial.progress: TQDM_DISABLE switches bars off, notebook bars included."""

from __future__ import annotations

import pytest

from mae_tutorial import progress


@pytest.mark.parametrize(
    ("value", "off"), [("1", True), ("true", True), ("0", False), ("", False), ("no", False)]
)
def test_tqdm_disable_is_read_at_every_call(monkeypatch, value: str, off: bool) -> None:
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert progress.disabled_by_env() is off
    bar = progress.tqdm(range(3), disable=False)
    assert bar.disable is off
    assert list(bar) == [0, 1, 2]


def test_notebook_bars_obey_it_too(monkeypatch) -> None:
    pytest.importorskip("ipywidgets")
    from tqdm import notebook

    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr(progress, "_tqdm", notebook.tqdm)  # what tqdm.auto picks in Jupyter
    assert notebook.tqdm(range(2)).disable is False  # the bug this module works around
    assert progress.tqdm(range(2)).disable is True
