"""Getting CIFAR-10 onto the disk and out of its pickles, safely.

The data lives in the canonical ``cifar-10-batches-py`` folder (five ``data_batch_*`` files, a
``test_batch`` and ``batches.meta``, each a pickled dict). It is found in this order: the ``root``
argument, the ``MAE_TUTORIAL_DATA`` environment variable, then the cache folder
(``$XDG_CACHE_HOME/mae_tutorial``, else ``~/.cache/mae_tutorial``), where it is downloaded, checked
against the official MD5 and extracted safely when missing: no archive member may land outside the
target, and a bad archive is removed, never half-used. The batches are unpickled with an unpickler
that can build numpy arrays and nothing else, so a tampered file cannot run code.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

import numpy as np

from mae_tutorial.progress import tqdm

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
ALL_FILES = (*TRAIN_FILES, "test_batch", "batches.meta")
HOW_TO_POINT = (
    f"Point the loader at a folder holding {CIFAR10_FOLDER} (or at that folder itself): "
    "load_cifar10(root=...), the environment variable "
    f"MAE_TUTORIAL_DATA=/path/holding/{CIFAR10_FOLDER}, or --data-dir on the command line."
)


# ---------------------------------------------------------------------------- finding the folder


def default_cache_dir() -> Path:
    """The cache folder: ``$XDG_CACHE_HOME/mae_tutorial``, else ``~/.cache/mae_tutorial``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mae_tutorial"


def _locate(folder: Path) -> Path | None:
    """``folder`` itself if it is a complete batches folder, else its complete child, else None."""
    for candidate in (folder, folder / CIFAR10_FOLDER):
        if all((candidate / name).is_file() for name in ALL_FILES):
            return candidate
    return None


def resolve_cifar10_folder(
    root: str | Path | None = None,
    download: bool = True,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
) -> Path:
    """Find the ``cifar-10-batches-py`` folder, downloading it into the cache when allowed.

    Args:
        root: A folder holding ``cifar-10-batches-py``, or that folder itself. Defaults to
            ``$MAE_TUTORIAL_DATA`` (same rule), then to :func:`default_cache_dir`. A folder named
            explicitly (argument or variable) must hold the data: it is never downloaded into.
        download: Download into the cache folder when the data is not there.
        url: Where to download the ``.tar.gz`` archive from.
        md5: The archive's expected MD5 hex digest.

    Returns:
        The path of the ``cifar-10-batches-py`` folder.

    Raises:
        FileNotFoundError: The data is not where it was said to be, or not cached and
            ``download`` is False.
        RuntimeError: The download or its checks failed.
    """
    named = root if root is not None else os.environ.get("MAE_TUTORIAL_DATA") or None
    if named is not None:
        where = "root" if root is not None else "MAE_TUTORIAL_DATA"
        found = _locate(Path(named).expanduser())
        if found is None:
            raise FileNotFoundError(
                f"{where}={str(named)!r} is neither a complete {CIFAR10_FOLDER} folder nor a "
                f"folder holding one (expected the files {', '.join(ALL_FILES)}). {HOW_TO_POINT}"
            )
        return found
    cache = default_cache_dir()
    found = _locate(cache)
    if found is not None:
        return found
    if not download:
        raise FileNotFoundError(f"CIFAR-10 is not in {cache} and download=False. {HOW_TO_POINT}")
    try:
        return download_cifar10(cache, url=url, md5=md5)
    except (OSError, ValueError, RuntimeError) as err:
        raise RuntimeError(f"CIFAR-10 could not be downloaded: {err}\n{HOW_TO_POINT}") from err


# ------------------------------------------------------------------- download, verify, extract


def download_cifar10(
    cache_dir: str | Path | None = None,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: bool = True,
) -> Path:
    """Download the CIFAR-10 archive, verify its MD5 and extract it safely into ``cache_dir``.

    The archive goes to a temporary file in ``cache_dir`` and is deleted afterwards, whether the
    download succeeds or fails; nothing partial is left behind.

    Args:
        cache_dir: Where ``cifar-10-batches-py`` will appear; defaults to :func:`default_cache_dir`.
        url: The archive's address (``https://`` or, in tests, ``file://``).
        md5: The archive's expected MD5 hex digest.
        progress: Show a tqdm progress bar.

    Returns:
        The path of the extracted ``cifar-10-batches-py`` folder.

    Raises:
        RuntimeError: The network or the URL failed.
        ValueError: Bad checksum, corrupt or truncated archive, unsafe member, or no complete
            ``cifar-10-batches-py`` folder inside.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=cache, prefix=".cifar-10-", suffix=".tar.gz.part")
    archive = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out, progress)
        verify_md5(archive, md5)
        extracted = extract_archive_safely(archive, cache)
    except FileExistsError:
        if _locate(cache / CIFAR10_FOLDER) is None:
            raise
        extracted = []  # another process (e.g. a DDP rank) finished the same download first
    finally:
        archive.unlink(missing_ok=True)
    folder = _locate(cache / CIFAR10_FOLDER)
    if folder is None:
        for path in extracted:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise ValueError(f"the archive from {url} holds no complete {CIFAR10_FOLDER} folder")
    return folder


def _fetch(url: str, out: BinaryIO, progress: bool) -> None:
    """Stream ``url`` into the open binary file ``out`` with a progress bar."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc="CIFAR-10", disable=not progress
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise RuntimeError(f"downloading {url} failed: {err}") from err


def verify_md5(path: str | Path, md5: str) -> None:
    """Raise ``ValueError`` unless the file's MD5 hex digest equals ``md5``."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != md5.lower():
        raise ValueError(
            f"{path} has MD5 {digest.hexdigest()}, expected {md5.lower()} (corrupt or incomplete "
            "download)"
        )


def extract_archive_safely(archive: str | Path, dest: str | Path) -> list[Path]:
    """Extract a ``.tar.gz`` into ``dest``, refusing anything that could write outside it.

    Every member must be a regular file or a folder whose path stays inside ``dest``: links,
    devices, absolute paths and ``..`` are refused before anything is written. The gzip stream is
    checked end to end first (a truncated download fails here), the members are extracted into a
    temporary folder inside ``dest``, and each top-level entry is then renamed into place, so
    ``dest`` never sees a half-extracted tree.

    Args:
        archive: The gzip-compressed tar file.
        dest: The folder to extract into (created if missing).

    Returns:
        The extracted top-level paths inside ``dest``.

    Raises:
        ValueError: The archive is corrupt, truncated or holds an unsafe member.
        FileExistsError: A top-level entry of the archive already exists in ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with gzip.open(archive, "rb") as stream:
            while stream.read(1 << 20):
                pass
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            tops = _check_members(members, dest)
            clashes = [str(dest / top) for top in tops if (dest / top).exists()]
            if clashes:
                raise FileExistsError(f"refusing to overwrite {', '.join(clashes)}; remove first")
            scratch = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
            try:
                # Python >= 3.12 (and 3.11.4+) can re-check every member with the "data" filter.
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(scratch, members=members, **extra)
                for top in tops:
                    os.replace(scratch / top, dest / top)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(
            f"{archive} is not a readable .tar.gz (corrupt or truncated?): {err}"
        ) from err
    return [dest / top for top in tops]


def _check_members(members: list[tarfile.TarInfo], dest: Path) -> list[str]:
    """Refuse unsafe members; return the archive's top-level names in order."""
    root = dest.resolve()
    tops: list[str] = []
    for member in members:
        name = member.name
        if not (member.isfile() or member.isdir()):
            kind = "a link" if member.issym() or member.islnk() else "a special file"
            raise ValueError(f"refusing to extract {name!r}: {kind}, not a file or folder")
        posix, windows = PurePosixPath(name), PureWindowsPath(name)
        escapes = ".." in posix.parts or ".." in windows.parts
        if posix.is_absolute() or windows.is_absolute() or windows.drive or escapes:
            raise ValueError(f"refusing to extract {name!r}: its path leaves {dest}")
        if not (root / name).resolve().is_relative_to(root):
            raise ValueError(f"refusing to extract {name!r}: it resolves outside {dest}")
        top = next((part for part in posix.parts if part != "."), None)
        if top is not None and top not in tops:
            tops.append(top)
    return tops


# ------------------------------------------------------------------------- reading the batches


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers and refuses every other class."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR-10 batch holds only bytes, lists, ints and "
            "numpy arrays (allowed: numpy.ndarray, numpy.dtype, numpy's multiarray._reconstruct)"
        )


def read_batch(path: str | Path) -> dict[Any, Any]:
    """Unpickle one CIFAR-10 batch file safely (keys stay ``bytes``, as in the official format).

    Raises:
        ValueError: The file is corrupt, truncated, not a dict, or references a class other than
            the numpy ones an array needs (the message names the file and the reason).
    """
    with open(path, "rb") as f:
        try:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, OverflowError) as err:  # fmt: skip
            raise ValueError(f"{path} is not a readable CIFAR-10 batch: {err}") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{path} holds a {type(batch).__name__}, expected a dict")
    return batch
