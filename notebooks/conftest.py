"""pytest set-up for running the chapters under nbval (`make notebooks`, part of `make test`).

The canary: the chapters run here only in quick mode. Without `MAE_TUTORIAL_QUICK=1` a chapter
would train and measure at full size, which takes far longer than CI allows, so collection stops
with a clear message instead of a timeout an hour later.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    chapters = sorted({item.path.name for item in items if item.path.suffix == ".ipynb"})
    if chapters and os.environ.get("MAE_TUTORIAL_QUICK") != "1":
        raise pytest.UsageError(
            f"refusing to run {', '.join(chapters)} without quick mode: set MAE_TUTORIAL_QUICK=1 "
            f"(got {os.environ.get('MAE_TUTORIAL_QUICK')!r}), as `make notebooks` does"
        )
