"""Checkpoint I/O: atomic writes, safe loads, config checks, and rebuilding a model.

A checkpoint is a plain dict saved with `torch.save`. Everything in it loads with
`torch.load(weights_only=True)`, which unpickles tensors and plain containers only and so cannot run
code from a downloaded file: the model config is a dict (`MAEConfig.to_dict`), the history a list of
dicts of numbers, RNG states tensors. The keys the pretraining loop writes:

    model      the MaskedAutoencoder's state_dict (fp32)
    config     MAEConfig.to_dict()
    optimizer, scaler, step, epoch, settings, history, rng, ...   (see `mae_tutorial.pretrain`)

Only `model` and `config` are required, so `load_model` also reads a checkpoint written by hand.

Loads trust nothing in the file. Before `torch.load` runs, the file must be a zip archive whose
members are stored uncompressed (as `torch.save` writes them) and at most `MAX_CHECKPOINT_BYTES`
long, so every size torch allocates is bounded by the bytes on disk; the legacy pre-zip format is
refused because it allocates the sizes it declares before checking them. After loading, the config
goes through `MAEConfig`'s checks, its model must be no larger than the stored weights allow, and
every weight must be finite.

Writes are atomic: the bytes go to a temporary file in the same folder, are flushed and fsync'ed,
and only then renamed over the target with `os.replace`. A process killed mid-write therefore
leaves the previous checkpoint intact (plus, at worst, a stray `.tmp` file that `latest_checkpoint`
ignores).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from mae_tutorial.config import MAEConfig
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.runtime import resolve_device

LATEST_NAME = "checkpoint.pt"
MAX_CHECKPOINT_BYTES = 4 << 30  # 4 GiB: far above any preset's checkpoint (vit_tiny: about 70 MB)
_SNAPSHOT = re.compile(r"^epoch_(\d+)\.pt$")


def snapshot_name(epoch: int) -> str:
    """File name of the snapshot kept after `epoch` completed epochs, e.g. `epoch_0010.pt`."""
    return f"epoch_{epoch:04d}.pt"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; not every platform can open a folder, so this is best effort.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically (temporary file, flush, fsync, `os.replace`).

    Args:
        path: the `.pt` file to create or replace; its folder is created if missing.
        state: a dict of tensors, numbers, strings, lists and dicts (weights_only-loadable).

    Returns:
        `path` as a `Path`.
    """
    if not isinstance(state, dict):
        raise TypeError(f"a checkpoint state must be a dict, got {type(state).__name__}")
    return _atomic_write(path, lambda f: torch.save(state, f))


def save_json(path: str | Path, value: Any) -> Path:
    """Write `value` as indented JSON to `path` atomically, like `save_checkpoint`."""
    text = json.dumps(value, indent=2) + "\n"
    return _atomic_write(path, lambda f: f.write(text.encode()))


def config_differences(stored: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Human-readable differences between two config dicts, one `field: a != b` per field.

    Returns:
        e.g. `["depth: checkpoint 2, expected 6"]`; empty when the configs agree.
    """
    missing = object()
    lines = []
    for name in sorted(set(stored) | set(expected)):
        a, b = stored.get(name, missing), expected.get(name, missing)
        if a != b:
            a_text = "(absent)" if a is missing else repr(a)
            b_text = "(absent)" if b is missing else repr(b)
            lines.append(f"{name}: checkpoint {a_text}, expected {b_text}")
    return lines


def load_checkpoint(
    path: str | Path,
    expected_config: MAEConfig | dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, safely (`weights_only=True`).

    Args:
        path: the `.pt` file.
        expected_config: when given, the stored model config must equal it field by field.
        map_location: where tensors are loaded (the CPU by default).

    Returns:
        The stored dict; it holds at least `model` (a state_dict) and `config` (a dict).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is corrupt, truncated, too large, not a checkpoint this package wrote
            (e.g. it references code), its config is invalid (the message names the field), a
            weight is not finite (the message names it), or its config differs from
            `expected_config` (the message names every differing field with both values), or
            `map_location` is not a device available here. Every message about the file names
            it, and points at the snapshots beside a bad `checkpoint.pt`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    resolve_device(map_location)  # a bad device is the caller's mistake, not an unreadable file
    try:
        state = _load_state(path, map_location)
    except ValueError as err:
        raise ValueError(f"{err}{_snapshot_hint(path)}") from None
    if expected_config is not None:
        expected = (
            expected_config.to_dict()
            if isinstance(expected_config, MAEConfig)
            else dict(expected_config)
        )
        diffs = config_differences(state["config"], expected)
        if diffs:
            raise ValueError(f"{path} was saved with a different model config: " + "; ".join(diffs))
    return state


def _load_state(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """`torch.load(weights_only=True)` after checking the container; then the config and weights."""
    _check_container(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types here (pickle, zip, OS, runtime errors)
        raise ValueError(
            f"{path} is not a readable checkpoint: {_load_error_reason(err)}"
        ) from None
    if not isinstance(state, dict) or not {"model", "config"} <= set(state):
        found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{path} is not an mae_tutorial checkpoint: expected a dict with keys 'model' and "
            f"'config', found {found}"
        )
    if not isinstance(state["config"], dict):
        raise ValueError(f"{path}: 'config' must be a dict, got {type(state['config']).__name__}")
    if not isinstance(state["model"], dict):
        raise ValueError(
            f"{path}: 'model' must be a state_dict, got {type(state['model']).__name__}"
        )
    _config_of(state, path)
    for name, value in state["model"].items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise ValueError(
                    f"{path}: weight {name!r} holds NaN or infinite values; a checkpoint's weights "
                    "must be finite (was it saved from a diverged run?)"
                )
    return state


def _check_container(path: Path) -> None:
    """Refuse files whose declared sizes torch would allocate before it could check them."""
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise ValueError(
            f"{path} is {size} bytes; a checkpoint may be at most {MAX_CHECKPOINT_BYTES} bytes"
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a readable checkpoint: not a zip archive as torch.save writes (a "
            "corrupt, truncated or legacy-format file, or another kind of file)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from None
    for member in members:
        stored = member.compress_type == zipfile.ZIP_STORED
        if not stored or member.file_size != member.compress_size or member.file_size > size:
            raise ValueError(
                f"{path}: archive member {member.filename!r} is compressed or declares "
                f"{member.file_size} bytes in a file of {size}; torch.save stores members "
                "uncompressed, so this is not a checkpoint this package wrote"
            )


def _config_of(state: dict[str, Any], path: str | Path) -> MAEConfig:
    """The stored config, through `MAEConfig`'s checks (the message names the file and field)."""
    try:
        return MAEConfig.from_dict(state["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} holds an invalid model config: {err}") from None


def _check_size(config: MAEConfig, state: dict[str, Any], path: str | Path) -> None:
    """Refuse a config that describes a model larger than the weights stored with it."""
    stored = sum(v.numel() for v in state["model"].values() if isinstance(v, torch.Tensor))
    if _least_weights(config) > stored:
        raise ValueError(
            f"{path}: its config (embed_dim={config.embed_dim}, depth={config.depth}, "
            f"decoder_embed_dim={config.decoder_embed_dim}, decoder_depth={config.decoder_depth}, "
            f"mlp_ratio={config.mlp_ratio}) describes a model of at least {_least_weights(config)} "
            f"weights, but the file stores {stored}; refusing to build it"
        )


def _least_weights(config: MAEConfig) -> int:
    """A lower bound on the values in a state_dict of `config`'s model, from its largest parts.

    Each block of width D has attention weights of at least D * D and an MLP of 2 * D * hidden;
    the patch embedding and the decoder's prediction have D * P*P*C and E * P*P*C; the position
    tables (1 + L) * D and (1 + L) * E. Checking it before building the model bounds what a crafted
    config can make us allocate by the size of the file.
    """
    d, e, patch = config.embed_dim, config.decoder_embed_dim, config.patch_dim
    blocks = config.depth * (d * d + 2 * d * config.mlp_hidden_dim)
    blocks += config.decoder_depth * (e * e + 2 * e * config.decoder_mlp_hidden_dim)
    return blocks + (d + e) * (patch + 1 + config.num_patches)


def _snapshot_hint(path: Path) -> str:
    """For a bad `checkpoint.pt`: which snapshots lie beside it, and how to use one."""
    if path.name != LATEST_NAME or not path.parent.is_dir():
        return ""
    names = sorted(p.name for p in path.parent.iterdir() if _SNAPSHOT.match(p.name))
    if not names:
        return ""
    return (
        f". The same folder holds the snapshots {', '.join(names)}: pass one of them instead "
        f"(e.g. --checkpoint {path.parent / names[-1]}), or move {path.name} out of the folder "
        f"so that --resume continues from {names[-1]}"
    )


def _load_error_reason(err: Exception) -> str:
    """Why `torch.load` refused the file, without torch's advice to disable the safe loader."""
    text = str(err)
    wrote = "a checkpoint this package wrote (those hold only tensors, numbers, strings, lists)"
    if blocked := re.search(r"GLOBAL ([\w.]+)", text):
        return (
            f"it references the global {blocked.group(1)}, which the safe loader refuses: it is "
            f"not {wrote}, and loading it any other way could run its code"
        )
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text:
        return f"its pickle is corrupt or holds other objects: it is not {wrote}"
    lines = text.strip().splitlines()
    return lines[0] if lines else type(err).__name__


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint in `folder`: `checkpoint.pt`, else the highest `epoch_XXXX.pt`.

    Temporary files left by an interrupted write are ignored.

    Returns:
        The path, or None when `folder` is missing or holds no checkpoint.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if (folder / LATEST_NAME).is_file():
        return folder / LATEST_NAME
    snapshots = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := _SNAPSHOT.match(p.name)) is not None and p.is_file()
    ]
    return max(snapshots)[1] if snapshots else None


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> MaskedAutoencoder:
    """Rebuild a `MaskedAutoencoder` from the config stored in a checkpoint and load its weights.

    The state_dict must match the rebuilt model exactly (strict loading). The model is returned in
    eval mode on `map_location`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a checkpoint, its config is invalid, or its weights do not fit
            the model its config describes.
    """
    state = load_checkpoint(path, map_location=map_location)
    return model_from_state(state, path).to(map_location)


def model_from_state(state: dict[str, Any], path: str | Path = "checkpoint") -> MaskedAutoencoder:
    """The `MaskedAutoencoder` a loaded checkpoint describes, with its weights, in eval mode.

    Raises:
        ValueError: its config is invalid, describes a model larger than the stored weights, or
            its weights do not fit that config (the message names `path`).
    """
    config = _config_of(state, path)
    _check_size(config, state, path)
    model = MaskedAutoencoder(config)
    try:
        model.load_state_dict(state["model"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()
        raise ValueError(
            f"{path}: the stored weights do not fit the stored config: "
            + " ".join(line.strip() for line in first[:3])
        ) from None
    return model.eval()
