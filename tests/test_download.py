"""Tests for mae_tutorial.download: the cache folder, safe extraction, checksums, safe unpickling.

Downloads use ``file://`` URLs of archives built here from synthetic data: no network.
"""

import hashlib
from pathlib import Path

import pytest
import torch

from mae_tutorial.data import CIFAR10, load_cifar10
from mae_tutorial.download import (
    CIFAR10_FOLDER,
    DownloadError,
    download_cifar10,
    extract_archive_safely,
)


@pytest.fixture(scope="module")
def data(synthetic_root: Path) -> CIFAR10:
    return load_cifar10(synthetic_root, download=False)


def _contents(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------- download and extraction
# (malicious pickles, unsafe archive members and crafted sizes: tests/test_hostile_inputs.py)


def test_truncated_archive_is_refused_leaving_nothing(archive, tmp_path) -> None:
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive[0].read_bytes()[: archive[0].stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        extract_archive_safely(truncated, tmp_path / "dest")
    assert _contents(tmp_path / "dest") == []
    md5 = hashlib.md5(truncated.read_bytes()).hexdigest()  # passes the checksum, fails extraction
    with pytest.raises(ValueError, match="corrupt or truncated"):
        download_cifar10(tmp_path / "cache", url=truncated.as_uri(), md5=md5, progress=False)
    assert _contents(tmp_path / "cache") == []


def test_checksum_mismatch_is_refused_leaving_nothing(archive, tmp_path) -> None:
    with pytest.raises(ValueError, match="MD5"):
        download_cifar10(tmp_path, url=archive[0].as_uri(), md5="0" * 32, progress=False)
    assert _contents(tmp_path) == []


def test_download_end_to_end_into_the_cache(archive, data, cache) -> None:
    loaded = load_cifar10(url=archive[0].as_uri(), md5=archive[1])
    assert torch.equal(loaded.train_images, data.train_images)
    assert [p.name for p in cache.iterdir()] == [CIFAR10_FOLDER]  # no archive or scratch left
    assert torch.equal(load_cifar10(download=False).test_labels, data.test_labels)


def test_failed_download_explains_how_to_point_at_data(tmp_path, cache) -> None:
    with pytest.raises(DownloadError, match="MAE_TUTORIAL_DATA"):  # a RuntimeError, typed
        load_cifar10(url=(tmp_path / "missing.tar.gz").as_uri())
    assert _contents(cache) == []
