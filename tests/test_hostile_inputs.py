"""File-format attacks on every loader: batch files, checkpoints, archives and downloads.

Each case is a file a careless or hostile source could hand us. The loaders must refuse it with a
`ValueError` (or `FileNotFoundError`) naming the file and what was expected, before running any of
its code, before allocating any size it declares beyond what the file holds, and without advising
to switch a safety check off; the command line turns each into one line on stderr and exit code 2.
Add new attacks here, next to their kind.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import pickletools
import re
import shutil
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mae_tutorial import checkpoint as ckpt
from mae_tutorial import download
from mae_tutorial.__main__ import main
from mae_tutorial.checkpoint import load_checkpoint, load_model, save_checkpoint
from mae_tutorial.config import MAEConfig
from mae_tutorial.data import load_cifar10
from mae_tutorial.download import (
    CIFAR10_FOLDER,
    download_cifar10,
    extract_archive_safely,
    read_batch,
)
from mae_tutorial.model import MaskedAutoencoder

SAFETY_ADVICE = ("weights_only", "safe_globals", "trust")  # no message may suggest these


def _refused(error: pytest.ExceptionInfo, *expected: str) -> str:
    message = str(error.value)
    assert all(text in message for text in expected), message
    assert not any(advice in message for advice in SAFETY_ADVICE), message
    return message


class _Evil:
    """Runs `touch marker` when unpickled by an unpickler that allows it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------------ batch files


def _batches(synthetic_root: Path, tmp_path: Path) -> Path:
    shutil.copytree(synthetic_root / CIFAR10_FOLDER, tmp_path / CIFAR10_FOLDER)
    return tmp_path / CIFAR10_FOLDER


def _huge_array_pickle() -> bytes:
    """A batch of about 80 bytes whose array asks numpy for 9 TiB at once (issue 15 item 8)."""

    class Huge:
        def __reduce__(self):
            return (download._numpy_reconstruct(), (np.ndarray, (9 << 40,), np.dtype("u1")))

    return pickletools.optimize(pickle.dumps({b"data": Huge()}, protocol=3))


def _huge_bytes_pickle() -> bytes:
    """A BINBYTES8 opcode that declares 8 TiB of bytes and holds three."""
    return b"\x80\x04\x8e" + struct.pack("<Q", 8 << 40) + b"abc."


def _ndarray_called_pickle() -> bytes:
    """44 bytes that call numpy.ndarray((9 TiB,)) directly, which would allocate it."""

    class Call:
        def __reduce__(self):
            return (np.ndarray, ((9 << 40,), "u1"))

    return pickletools.optimize(pickle.dumps({b"data": Call()}, protocol=3))


def _huge_itemsize_pickle() -> bytes:
    """An array of one element whose dtype declares an 8 TiB item."""

    class Item:
        def __reduce__(self):
            return (download._numpy_reconstruct(), (np.ndarray, (1,), _HugeDtype()))

    class _HugeDtype:
        def __reduce__(self):
            return (np.dtype, ("V8", False, True), (3, "|", None, None, None, 8 << 40, 1, 0))

    return pickle.dumps({b"data": Item()}, protocol=3)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (pickle.dumps({b"data": _Evil(Path("/tmp/never"))}, protocol=3), r"(os|posix)\.system"),
        (_huge_array_pickle(), "at most"),
        (_huge_bytes_pickle(), "8796093022208 more bytes declared, 4 left"),
        (b"\x80\x05\x96" + struct.pack("<Q", 8 << 40) + b"abc.", "protocol-5 buffer"),
        (_ndarray_called_pickle(), "argument"),
        (_huge_itemsize_pickle(), "at most"),
        (pickle.dumps({b"data": np.zeros(3)}, protocol=2), "_codecs"),  # protocol 2 needs codecs
    ],
    ids=[
        "code",
        "huge-array",
        "huge-bytes",
        "huge-bytearray",
        "ndarray-call",
        "huge-itemsize",
        "other-global",
    ],  # fmt: skip
)
def test_crafted_batches_are_refused_before_running_or_allocating(
    synthetic_root: Path, tmp_path: Path, content: bytes, match: str
) -> None:
    batch = _batches(synthetic_root, tmp_path) / "data_batch_2"
    batch.write_bytes(content)
    with pytest.raises(ValueError, match=match) as error:
        read_batch(batch)
    _refused(error, "data_batch_2")
    with pytest.raises(ValueError, match="data_batch_2"):
        load_cifar10(tmp_path, download=False)


def test_a_huge_memo_index_allocates_nothing(tmp_path: Path) -> None:
    """A 12-byte pickle that stores into memo slot 2**32 - 16 (the C unpickler sizes its memo
    table by the index: 32 GiB)."""
    import tracemalloc

    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02}r" + struct.pack("<I", 0xFFFFFFF0) + b".")
    tracemalloc.start()
    try:
        assert read_batch(path) == {}
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_huge_array_batch_is_small(tmp_path: Path) -> None:
    assert len(_huge_array_pickle()) < 130  # the attack costs a few bytes on disk


def test_malicious_batch_runs_no_code(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=3))
    with pytest.raises(ValueError, match=r"data_batch_1.*refusing to load (os|posix)\.system"):
        read_batch(path)
    assert not marker.exists()


def test_oversized_batch_file_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\0" * 2000)
    monkeypatch.setattr(download, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(ValueError, match="2000 bytes; a CIFAR-10 batch is at most 1000") as error:
        read_batch(path)
    _refused(error, str(path))


def test_cli_reports_a_crafted_batch_on_one_line(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (_batches(synthetic_root, tmp_path) / "test_batch").write_bytes(_huge_array_pickle())
    argv = ["pretrain", "--preset", "tiny", "--device", "cpu", "--data-dir", str(tmp_path)]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "test_batch" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_missing_batch_file_is_named(synthetic_root: Path, tmp_path: Path) -> None:
    """Issue 15 item 10: the message names the missing file, not the seven expected ones."""
    (_batches(synthetic_root, tmp_path) / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3 ") as error:
        load_cifar10(tmp_path, download=False)
    assert "data_batch_1" not in str(error.value).split("(")[0]


# ------------------------------------------------------------------------------------ checkpoints


def _checkpoint(path: Path, config: MAEConfig | None = None, **extra: object) -> Path:
    config = config or MAEConfig.from_preset("tiny")
    model = MaskedAutoencoder(config)
    return save_checkpoint(path, {"model": model.state_dict(), "config": config.to_dict(), **extra})


def _rewrite_zip(src: Path, dst: Path, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", compression) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info.filename), compress_type=compression)
    return dst


def test_malicious_checkpoint_names_the_global_and_never_advises_weights_only_false(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 15 item 3."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": _Evil(marker)}, path)
    with pytest.raises(ValueError, match=r"(os|posix)\.system") as error:
        load_checkpoint(path)
    _refused(error, str(path), "not a checkpoint this package wrote")
    assert not marker.exists()
    assert main(["knn", "--checkpoint", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "system" in err
    assert not any(advice in err for advice in SAFETY_ADVICE) and not marker.exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(
    tmp_path: Path, capsys: pytest.CaptureFixture, value: float
) -> None:
    """Issue 15 item 4: a NaN checkpoint would otherwise score at chance and exit 0."""
    config = MAEConfig.from_preset("tiny")
    weights = MaskedAutoencoder(config).state_dict()
    weights["encoder.blocks.1.mlp.fc2.weight"][3, 4] = value
    path = save_checkpoint(tmp_path / "c.pt", {"model": weights, "config": config.to_dict()})
    for load in (load_checkpoint, load_model):
        with pytest.raises(ValueError, match="'encoder.blocks.1.mlp.fc2.weight'") as error:
            load(path)
        _refused(error, str(path), "finite")
    for command in ("knn", "linprobe"):
        assert main([command, "--checkpoint", str(path), "--device", "cpu"]) == 2
        assert "encoder.blocks.1.mlp.fc2.weight" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("depth", 0, "depth"),
        ("patch_size", 5, "patch_size"),
        ("no_such_field", 1, "no_such_field"),
    ],
)
def test_a_stored_config_goes_through_the_config_checks(
    tmp_path: Path, field: str, value: object, match: str
) -> None:
    """Issue 15 item 5 (checkpoint side): the error names the file and the field."""
    path = _checkpoint(tmp_path / "c.pt")
    state = torch.load(path, weights_only=True)
    state["config"][field] = value
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=match) as error:
        load_checkpoint(path)  # not only load_model: every reader of the file
    _refused(error, str(path), "invalid model config")


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        # The probe's case: MAEConfig's own size bounds (branch `model`) or ours refuse it.
        ({"embed_dim": 2**22, "num_heads": 4, "decoder_depth": 2**20}, "embed_dim"),
        # Within MAEConfig's bounds (75M parameters), but not what the file stores.
        ({"embed_dim": 512, "num_heads": 4, "depth": 24}, "refusing to build it"),
    ],
)
def test_a_config_far_larger_than_its_weights_is_refused_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture, sizes: dict, match: str
) -> None:
    """Issue 15 items 1 and 5: a checkpoint whose config asks for a huge model must not build it;
    besides the config's own limits, the bound is the weights stored with it."""
    path = _checkpoint(tmp_path / "c.pt")
    state = torch.load(path, weights_only=True)
    state["config"].update(sizes)
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=match) as error:
        load_model(path)
    _refused(error, str(path))
    assert main(["knn", "--checkpoint", str(path), "--device", "cpu"]) == 2
    assert match in capsys.readouterr().err


def test_legacy_format_checkpoint_is_refused_before_its_sizes_are_allocated(
    tmp_path: Path,
) -> None:
    """The pre-zip format allocates each storage at the size it declares before reading it."""
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(4)}, "config": {}}, buffer,
               _use_new_zipfile_serialization=False)  # fmt: skip
    raw = buffer.getvalue()
    numel = struct.pack("<i", 2**31 - 1)  # the storage's declared size: 4 -> 2**31 - 1 floats
    huge = re.sub(rb"(cpuq.)K\x04N", lambda m: m.group(1) + b"J" + numel + b"N", raw, flags=re.S)
    assert huge != raw
    path = tmp_path / "legacy.pt"
    path.write_bytes(huge)
    with pytest.raises(ValueError, match="not a zip archive") as error:
        load_checkpoint(path)
    _refused(error, str(path))


def test_tensor_larger_than_its_storage_is_refused(tmp_path: Path) -> None:
    """A tensor whose declared shape (2**40 values) overruns the 4 values stored for it."""
    good = save_checkpoint(tmp_path / "good.pt", {"model": {"w": torch.zeros(4)}, "config": {}})
    with zipfile.ZipFile(good) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        pkl = archive.read(name)
    huge = pkl.replace(
        b"K\x00K\x04\x85", b"K\x00\x8a\x06" + (2**40).to_bytes(6, "little") + b"\x85"
    )
    assert huge != pkl
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as old, zipfile.ZipFile(bad, "w") as new:
        for info in old.infolist():
            new.writestr(info, huge if info.filename == name else old.read(info.filename))
    with pytest.raises(ValueError, match="not a readable checkpoint") as error:
        load_checkpoint(bad)
    _refused(error, str(bad))


def test_compressed_checkpoint_member_is_refused(tmp_path: Path) -> None:
    """A deflated member could unpack to far more than the file holds (a zip bomb)."""
    good = _checkpoint(tmp_path / "good.pt")
    bad = _rewrite_zip(good, tmp_path / "bad.pt", zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError, match="compressed") as error:
        load_checkpoint(bad)
    _refused(error, str(bad), "not a checkpoint this package wrote")
    load_checkpoint(_rewrite_zip(good, tmp_path / "restored.pt"))  # stored members: fine


def test_oversized_checkpoint_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _checkpoint(tmp_path / "c.pt")
    monkeypatch.setattr(ckpt, "MAX_CHECKPOINT_BYTES", 1000)
    with pytest.raises(ValueError, match="at most 1000 bytes") as error:
        load_checkpoint(path)
    _refused(error, str(path))


def test_corrupt_checkpoint_beside_snapshots_points_at_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 15 item 10: say the snapshots exist and how to use one."""
    for epoch in (2, 4):
        _checkpoint(tmp_path / f"epoch_{epoch:04d}.pt")
    latest = tmp_path / "checkpoint.pt"
    latest.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="epoch_0002.pt, epoch_0004.pt") as error:
        load_checkpoint(latest)
    _refused(error, str(latest), f"--checkpoint {tmp_path / 'epoch_0004.pt'}", "--resume")
    assert main(["knn", "--checkpoint", str(latest), "--device", "cpu"]) == 2
    assert "epoch_0004.pt" in capsys.readouterr().err
    load_model(tmp_path / "epoch_0004.pt")  # the advice works


# ------------------------------------------------------------------------- archives and downloads


def _tar_with(tmp_path: Path, *members: tarfile.TarInfo) -> Path:
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("ok/fine.txt"), io.BytesIO(b""))
        for member in members:
            data = io.BytesIO(b"\0" * member.size) if member.isfile() else None
            tar.addfile(member, data)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "/etc/passwd") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, 4 if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = link
    return info


def _contents(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([_member("../evil")], "leaves"),
        ([_member("ok/../../evil")], "leaves"),
        ([_member("/tmp/evil")], "leaves"),
        ([_member("ok/link", tarfile.SYMTYPE)], "a link"),
        ([_member("ok/hard", tarfile.LNKTYPE)], "a link"),
        ([_member("ok/fifo", tarfile.FIFOTYPE)], "a special file"),
        # A link to a folder inside the target, then a file written through it.
        ([_member("ok/up", tarfile.SYMTYPE, ".."), _member("ok/up/evil")], "a link"),
        ([_member("ok/up", tarfile.SYMTYPE, "../.."), _member("ok/up/evil")], "a link"),
    ],
)
def test_unsafe_members_are_refused_leaving_nothing(tmp_path, members, match) -> None:
    archive, dest = _tar_with(tmp_path, *members), tmp_path / "dest"
    with pytest.raises(ValueError, match=match) as error:
        extract_archive_safely(archive, dest)
    _refused(error)
    assert _contents(dest) == [] and not (tmp_path / "evil").exists()


def test_archive_declaring_too_much_is_refused_before_extracting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "MAX_EXTRACTED_BYTES", 3000)
    first, second = _member("ok/big1"), _member("ok/big2")
    first.size = second.size = 2500  # together they exceed the limit, each alone does not
    archive, dest = _tar_with(tmp_path, first, second), tmp_path / "dest"
    with pytest.raises(ValueError, match="at most 3000") as error:
        extract_archive_safely(archive, dest)
    _refused(error)
    assert _contents(dest) == []


def test_gzip_bomb_is_refused_while_decompressing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "MAX_EXTRACTED_BYTES", 1 << 20)
    archive = tmp_path / "bomb.tar.gz"
    with gzip.open(archive, "wb") as f:
        for _ in range(8):  # 8 MiB of zeros: a few KiB on disk
            f.write(b"\0" * (1 << 20))
    assert archive.stat().st_size < 100_000
    with pytest.raises(ValueError, match="unpacks to more than") as error:
        extract_archive_safely(archive, tmp_path / "dest")
    _refused(error)
    assert _contents(tmp_path / "dest") == []


def test_download_larger_than_the_limit_stops_and_leaves_nothing(
    archive: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "MAX_ARCHIVE_BYTES", 1000)
    with pytest.raises(download.DownloadError, match="more than 1000 bytes"):
        download_cifar10(
            tmp_path / "cache", url=archive[0].as_uri(), md5=archive[1], progress=False
        )
    assert _contents(tmp_path / "cache") == []
