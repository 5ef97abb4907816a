"""Progress bars that `TQDM_DISABLE=1` switches off everywhere, notebooks included.

tqdm reads `TQDM_DISABLE` for its console bars, but its notebook bars (what `tqdm.auto` picks in
Jupyter and Colab) ignore it, so a chapter executed for the book would save widget outputs that
render as nothing. Every long loop in the package takes its bar from here instead.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm as _tqdm

_OFF = ("", "0", "false", "no", "off")


def disabled_by_env() -> bool:
    """True when `TQDM_DISABLE` is set to anything but an empty or false-like value."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in _OFF


def tqdm(*args: Any, **kwargs: Any) -> _tqdm:
    """`tqdm.auto.tqdm`, forced off when `TQDM_DISABLE` says so (read at every call)."""
    if disabled_by_env():
        kwargs["disable"] = True
    return _tqdm(*args, **kwargs)
