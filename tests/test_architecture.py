"""Tests of `mae_tutorial.architecture`: the drawing prints the shape letters, and a config's
numbers when given one."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from mae_tutorial.architecture import architecture_shapes, draw_architecture
from mae_tutorial.config import MAEConfig


def _texts(fig: Figure) -> str:
    return "\n".join(text.get_text() for ax in fig.axes for text in ax.texts)


def test_architecture_prints_the_letters_and_a_configs_numbers(tmp_path: Path) -> None:
    symbolic = _texts(draw_architecture())
    for shape in ("(B, C, H, W)", "(B, L, P·P·C)", "(B, 1+K, D)", "(B, 1+L, E)", "(B, L)"):
        assert shape in symbolic
    assert "= (B," not in symbolic  # no numbers without a config
    config = MAEConfig.from_preset("cpu")
    fig = draw_architecture(config)
    text = _texts(fig)
    k, length = config.num_visible, config.num_patches
    assert f"(B, 1+K, D)\n= (B, {1 + k}, {config.embed_dim})" in text
    assert f"(B, 1+L, E)\n= (B, {1 + length}, {config.decoder_embed_dim})" in text
    assert f"(B, L, P·P·C)\n= (B, {length}, {config.patch_dim})" in text
    assert f"{config.depth} blocks" in text and f"{config.decoder_depth} blocks" in text
    assert f"75% removed,\nK = {k} kept" in text and "normalised" in text
    assert architecture_shapes(config)["encoder"] == "(B, 1+K, D)\n= (B, 17, 128)"
    fig.savefig(tmp_path / "architecture.png")
    assert (tmp_path / "architecture.png").read_bytes()[:4] == b"\x89PNG"
