"""Getting CIFAR-10 onto the disk and out of its pickles, safely.

The data lives in the canonical ``cifar-10-batches-py`` folder (five ``data_batch_*`` files, a
``test_batch`` and ``batches.meta``, each a pickled dict). It is found in this order: the ``root``
argument, the ``MAE_TUTORIAL_DATA`` environment variable, then the cache folder
(``$XDG_CACHE_HOME/mae_tutorial``, else ``~/.cache/mae_tutorial``), where it is downloaded, checked
against the official MD5 and extracted safely when missing: no archive member may land outside the
target, and a bad archive is removed, never half-used. The batches are unpickled with an unpickler
that can build numpy arrays and nothing else, so a tampered file cannot run code.

Every size a file declares is checked before memory or disk is spent on it: a download stops at
`MAX_ARCHIVE_BYTES`, an archive may unpack to at most `MAX_EXTRACTED_BYTES`, a batch file may be
at most `MAX_BATCH_BYTES` long, and no length or array shape inside it may ask for more.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
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
# Limits on what a file may declare (the official archive: 163 MiB; unpacked 178 MiB; a batch 30).
MAX_ARCHIVE_BYTES = 512 << 20
MAX_EXTRACTED_BYTES = 1 << 30
MAX_BATCH_BYTES = 256 << 20
HOW_TO_POINT = (
    f"Point the loader at a folder holding {CIFAR10_FOLDER} (or at that folder itself): "
    "load_cifar10(root=...), the environment variable "
    f"MAE_TUTORIAL_DATA=/path/holding/{CIFAR10_FOLDER}, or --data-dir on the command line."
)


class DownloadError(RuntimeError):
    """CIFAR-10 was not found and could not be downloaded (network, checksum or archive)."""


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
        DownloadError: The download or its checks failed.
    """
    named = root if root is not None else os.environ.get("MAE_TUTORIAL_DATA") or None
    if named is not None:
        where = "root" if root is not None else "MAE_TUTORIAL_DATA"
        folder = Path(named).expanduser()
        found = _locate(folder)
        for candidate in (folder, folder / CIFAR10_FOLDER) if found is None else ():
            missing = [name for name in ALL_FILES if not (candidate / name).is_file()]
            if len(missing) < len(ALL_FILES):  # a partial copy: name what it lacks
                raise FileNotFoundError(
                    f"{where}={str(named)!r}: {candidate} lacks {', '.join(missing)} (a complete "
                    f"{CIFAR10_FOLDER} holds {', '.join(ALL_FILES)})"
                )
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
        raise DownloadError(f"CIFAR-10 could not be downloaded: {err}\n{HOW_TO_POINT}") from err


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
        DownloadError: The network or the URL failed, or it sent more than `MAX_ARCHIVE_BYTES`.
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
    """Stream ``url`` into the open binary file ``out`` with a progress bar, at most
    `MAX_ARCHIVE_BYTES` of it."""
    too_big = f"{url} sends more than {MAX_ARCHIVE_BYTES} bytes; the CIFAR-10 archive is smaller"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total is not None and total > MAX_ARCHIVE_BYTES:
                raise DownloadError(too_big)
            with tqdm(
                total=total, unit="B", unit_scale=True, desc="CIFAR-10", disable=not progress
            ) as bar:
                written = 0
                while chunk := response.read(1 << 20):
                    written += len(chunk)
                    if written > MAX_ARCHIVE_BYTES:
                        raise DownloadError(too_big)
                    out.write(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise DownloadError(f"downloading {url} failed: {err}") from err


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
    devices, absolute paths and ``..`` are refused before anything is written, and the archive
    may unpack to at most `MAX_EXTRACTED_BYTES`. The gzip stream is
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
            unpacked = 0
            while chunk := stream.read(1 << 20):
                unpacked += len(chunk)
                if unpacked > MAX_EXTRACTED_BYTES + (1 << 20):  # the members plus tar headers
                    raise ValueError(
                        f"{archive} unpacks to more than {MAX_EXTRACTED_BYTES} bytes; refusing it"
                    )
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
    declared = sum(member.size for member in members)
    if declared > MAX_EXTRACTED_BYTES:
        raise ValueError(
            f"the archive's members declare {declared} bytes; at most {MAX_EXTRACTED_BYTES} allowed"
        )
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


class _NdarrayToken:
    """Stands for numpy.ndarray in a batch: numpy's pickles only pass it to `_reconstruct`, and
    nothing may call it (calling numpy.ndarray allocates whatever shape it is given)."""


def _bounded_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's `_reconstruct` (which allocates `shape` at once), after bounding what it asks for.

    numpy's own pickles always pass an empty shape here; the data arrives later, sized by the file.
    """
    if subtype is not _NdarrayToken:
        raise pickle.UnpicklingError(f"refusing to build {subtype!r}: expected numpy.ndarray")
    dims = shape if isinstance(shape, tuple) else (shape,)
    if not all(isinstance(n, int) and n >= 0 for n in dims):
        raise pickle.UnpicklingError(f"refusing an array of shape {shape!r}")
    size = np.dtype(dtype).itemsize * int(np.prod(dims, dtype=object))
    if size > MAX_BATCH_BYTES:
        raise pickle.UnpicklingError(
            f"refusing an array of shape {shape!r} ({size} bytes): at most {MAX_BATCH_BYTES}"
        )
    return _numpy_reconstruct()(np.ndarray, shape, dtype)


class _ExactBytes(io.BytesIO):
    """A file's bytes whose reads fail, rather than come back short, past the end: a length the
    file declares but does not hold is refused before anything of that size is built."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and 0 <= size != len(data):
            raise pickle.UnpicklingError(
                f"the data ends early: {size} more bytes declared, {len(data)} left"
            )
        return data


def _refuse_buffers(unpickler: pickle._Unpickler) -> None:
    raise pickle.UnpicklingError("refusing a protocol-5 buffer (it allocates its declared size)")


class _BatchUnpickler(pickle._Unpickler):
    """An unpickler that builds numpy arrays and plain containers and refuses every other class.

    It is Python's own pure-Python unpickler (about 2x slower than the C one on a batch) reading
    `_ExactBytes`: no length or memo index a file declares is allocated before the bytes behind it
    have been read (the C unpickler allocates both first), and the one opcode that would allocate
    first, protocol 5's bytearray, is refused.
    """

    buffers = (pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER)
    dispatch = {**pickle._Unpickler.dispatch, **{op[0]: _refuse_buffers for op in buffers}}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("numpy", "ndarray"):
            return _NdarrayToken
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _bounded_reconstruct
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR-10 batch holds only bytes, lists, ints and "
            "numpy arrays (allowed: numpy.ndarray, numpy.dtype, numpy's multiarray._reconstruct)"
        )


def read_batch(path: str | Path) -> dict[Any, Any]:
    """Unpickle one CIFAR-10 batch file safely (keys stay ``bytes``, as in the official format).

    Raises:
        ValueError: The file is corrupt, truncated, not a dict, longer than `MAX_BATCH_BYTES`,
            declares a length or array larger than it holds or than that limit, or references a
            class other than the numpy ones an array needs (the message names the file and why).
    """
    size = Path(path).stat().st_size
    if size > MAX_BATCH_BYTES:
        raise ValueError(f"{path} is {size} bytes; a CIFAR-10 batch is at most {MAX_BATCH_BYTES}")
    try:
        batch = _BatchUnpickler(_ExactBytes(Path(path).read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError, MemoryError) as err:  # fmt: skip
        raise ValueError(f"{path} is not a readable CIFAR-10 batch: {err}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} holds a {type(batch).__name__}, expected a dict")
    return batch
