"""Tests of the reconstruction pictures: a perfect prediction must reproduce the images exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from einops import rearrange
from matplotlib.figure import Figure
from torch import nn

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import denormalize, normalize
from mae_tutorial.losses import normalize_patches
from mae_tutorial.masking import random_masking
from mae_tutorial.model import MAEOutput, MaskedAutoencoder
from mae_tutorial.patches import patchify, unpatchify
from mae_tutorial.pretrained import pretrained
from mae_tutorial.runtime import seeded
from mae_tutorial.viz import (
    MASK_GREY,
    architecture_shapes,
    attention_distance,
    attention_distance_figure,
    attention_grid,
    attention_maps,
    attention_widget,
    draw_architecture,
    encoder_attention,
    mask_ratio_figure,
    mask_ratio_widget,
    mean_attention_distance,
    patch_attention,
    patch_distances,
    reconstruct_images,
    reconstruction_grid,
    visible_patch_stats,
)


class PerfectMAE(nn.Module):
    """Predicts every patch exactly (as the loss target), so the pictures can be checked."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MAEOutput:
        target = patchify(images, self.config.patch_size)  # (B, L, P*P*C)
        _, mask, _ = random_masking(target, self.config.mask_ratio, noise)  # (B, L)
        pred = normalize_patches(target) if self.config.norm_pix_loss else target
        return MAEOutput(loss=torch.zeros(()), pred=pred, mask=mask)


def _images(n: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return normalize(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator))


@pytest.mark.parametrize("norm_pix", [True, False])
def test_a_perfect_prediction_reproduces_the_images(norm_pix: bool) -> None:
    config = MAEConfig.from_preset("tiny", norm_pix_loss=norm_pix)
    model = PerfectMAE(config).train()
    images = _images()
    noise = torch.rand(3, config.num_patches, generator=torch.Generator().manual_seed(1))
    parts = reconstruct_images(model, images, noise)
    assert model.training  # the mode is restored
    original = denormalize(images)
    torch.testing.assert_close(parts["original"], original)
    torch.testing.assert_close(parts["reconstruction"], original, atol=1e-4, rtol=0)
    torch.testing.assert_close(parts["pasted"], original, atol=1e-4, rtol=0)
    mask = parts["mask"]
    assert mask.shape == (3, config.num_patches) and mask.sum() == 3 * 12  # 75% of 16 removed
    grid = mask.view(3, 1, 4, 1, 4, 1).expand(3, 3, 4, 8, 4, 8).reshape(3, 3, 32, 32)
    assert torch.all(parts["masked"][grid == 1] == MASK_GREY)
    assert torch.equal(parts["masked"][grid == 0], original[grid == 0])


def test_reconstruction_grid_draws_four_rows(tmp_path: Path) -> None:
    model = MaskedAutoencoder(MAEConfig.from_preset("tiny"))
    fig = reconstruction_grid(model, _images(5))
    assert isinstance(fig, Figure) and len(fig.axes) == 4 * 5
    assert [fig.axes[5 * r].get_ylabel() for r in range(4)] == [
        "original", "masked 75%", "reconstruction", "reconstruction\n+ visible",
    ]  # fmt: skip
    fig.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_visible_stats_never_look_at_the_removed_pixels() -> None:
    config = MAEConfig.from_preset("tiny")
    images = _images()
    target = patchify(images, config.patch_size)  # (B, L, P*P*C)
    noise = torch.rand(3, config.num_patches, generator=torch.Generator().manual_seed(2))
    _, mask, _ = random_masking(target, config.mask_ratio, noise)  # (B, L)
    mean, var = visible_patch_stats(target, mask, config.grid_size)
    # Visible patches keep their own statistics.
    visible = ~mask.bool()
    torch.testing.assert_close(mean[..., 0][visible], target.mean(-1)[visible])
    torch.testing.assert_close(var[..., 0][visible], target.var(-1)[visible])
    # Changing what is hidden changes nothing.
    scrambled = target + 5 * torch.randn_like(target) * mask[..., None]
    mean2, var2 = visible_patch_stats(scrambled, mask, config.grid_size)
    torch.testing.assert_close(mean2, mean)
    torch.testing.assert_close(var2, var)
    # With the true statistics instead, they would have changed.
    assert not torch.allclose(scrambled.mean(-1), target.mean(-1))


def test_visible_stats_are_exact_when_every_patch_has_the_same_statistics() -> None:
    config = MAEConfig.from_preset("tiny")
    one = torch.randn(1, 1, 3 * config.patch_size**2)  # (1, 1, P*P*C)
    target = one.expand(2, config.num_patches, -1)  # every patch identical
    mask = torch.zeros(2, config.num_patches)
    mask[:, ::2] = 1
    mean, var = visible_patch_stats(target, mask, config.grid_size)
    torch.testing.assert_close(mean, target.mean(-1, keepdim=True))
    torch.testing.assert_close(var, target.var(-1, keepdim=True))


def test_honest_pictures_keep_the_visible_patches_and_reject_unknown_stats() -> None:
    config = MAEConfig.from_preset("tiny")
    model = PerfectMAE(config)
    images = _images()
    noise = torch.rand(3, config.num_patches, generator=torch.Generator().manual_seed(1))
    parts = reconstruct_images(model, images, noise, stats="visible")
    keep = unpatchify(
        (1 - parts["mask"])[..., None].expand(-1, -1, 3 * config.patch_size**2),
        config.patch_size,
        config.image_size,
    )  # (B, C, H, W), 1 = visible
    torch.testing.assert_close(parts["reconstruction"] * keep, parts["original"] * keep)
    with pytest.raises(ValueError, match="stats must be one of"):
        reconstruct_images(model, images, noise, stats="oracle")


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


@pytest.fixture(scope="module")
def reference() -> MaskedAutoencoder:
    return pretrained("cifar10-cpu")


def test_attention_weights_reproduce_each_blocks_fused_attention(reference) -> None:
    images = _images(4)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input, output) of each Attention

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.append((args[0], output))

    attns = [block.attn for block in reference.encoder.blocks]
    assert all(attn.fused for attn in attns)  # the model runs F.scaled_dot_product_attention
    handles = [attn.register_forward_hook(record) for attn in attns]
    reference.train()
    try:
        weights = encoder_attention(reference, images)
    finally:
        for handle in handles:
            handle.remove()
    assert all(m.training for m in reference.modules())  # modes restored
    reference.eval()
    assert all(not attn._forward_hooks for attn in attns)  # its hooks are gone
    config = reference.config
    n, h = 1 + config.num_patches, config.num_heads
    assert len(weights) == config.depth == len(seen)
    for w, attn, (x, output) in zip(weights, attns, seen):
        assert w.shape == (4, h, n, n)
        torch.testing.assert_close(w.sum(-1), torch.ones(4, h, n))
        with torch.no_grad():
            v = rearrange(attn.qkv(x), "b n (three h d) -> three b h n d", three=3, h=h)[2]
            mixed = rearrange(w @ v, "b h n d -> b n (h d)")  # (B, 1 + L, D)
            torch.testing.assert_close(attn.proj(mixed), output, atol=1e-5, rtol=0)


def test_encoder_attention_takes_an_encoder_or_a_model_and_rejects_others(reference) -> None:
    images = _images(2)
    for one, two in zip(
        encoder_attention(reference, images), encoder_attention(reference.encoder, images)
    ):
        torch.testing.assert_close(one, two)
    with pytest.raises(TypeError, match="expected a MaskedAutoencoder"):
        encoder_attention(nn.Linear(2, 2), images)


def test_attention_distance_of_known_patterns() -> None:
    grid, p = 4, 8
    length = grid * grid
    dist = patch_distances(grid, p)
    assert dist.shape == (length, length) and dist[0, 1] == p and dist[0, 5] == p * 2**0.5

    def with_cls(patches: torch.Tensor, cls_share: float) -> torch.Tensor:
        w = torch.zeros(1, 1, 1 + length, 1 + length)
        w[..., 1:, 1:] = (1 - cls_share) * patches
        w[..., 1:, 0] = cls_share
        w[..., 0, :] = 1 / (1 + length)
        return w

    assert attention_distance(with_cls(torch.eye(length), 0.0), p).item() == 0
    uniform = torch.full((length, length), 1 / length)
    for share in (0.0, 0.9):  # the share sent to the cls token does not count
        torch.testing.assert_close(
            attention_distance(with_cls(uniform, share), p), dist.mean().view(1, 1)
        )
    right = torch.zeros(length, length)  # every patch looks at its right neighbour, or the left one
    for i in range(length):
        right[i, i + 1 if i % grid < grid - 1 else i - 1] = 1
    torch.testing.assert_close(
        attention_distance(with_cls(right, 0.5), p), torch.full((1, 1), float(p))
    )


def test_patch_attention_picks_the_cls_row_or_averages_the_patch_rows() -> None:
    w = torch.rand(2, 3, 5, 5).softmax(-1)
    torch.testing.assert_close(patch_attention(w, "cls"), w[:, :, 0, 1:])
    torch.testing.assert_close(patch_attention(w, "mean"), w[:, :, 1:, 1:].mean(2))
    with pytest.raises(ValueError, match="query must be one of"):
        patch_attention(w, "max")


def test_the_reference_attends_more_locally_than_random_init(reference) -> None:
    images = _images(8)
    trained = mean_attention_distance(reference, images)
    with seeded(0):
        random_init = MaskedAutoencoder(reference.config)
    untrained = mean_attention_distance(random_init, images)
    config = reference.config
    assert trained.shape == untrained.shape == (config.depth, config.num_heads)
    uniform = patch_distances(config.grid_size, config.patch_size).mean()
    assert (untrained - uniform).abs().max() < 1.5  # random init spreads attention almost evenly
    # Its late blocks look nearer, even on these noise images (on CIFAR-10 the gap is wider).
    assert trained[-3:].mean() < untrained[-3:].mean() - 1


def test_attention_figures_draw_one_panel_per_head(reference, tmp_path: Path) -> None:
    images = _images(3)
    config = reference.config
    fig = attention_maps(reference, images)
    assert len(fig.axes) == 3 * (1 + config.num_heads) + 1  # and the colour bar
    assert (
        fig._suptitle.get_text() == f"block {config.depth} of {config.depth}: cls token -> patches"
    )
    assert [ax.get_title() for ax in fig.axes[: 1 + config.num_heads]] == [
        "input",
        *[f"head {i + 1}" for i in range(config.num_heads)],
    ]
    fig.savefig(tmp_path / "maps.png")
    grid = attention_grid(reference, images, index=2, query="mean")
    assert len(grid.axes) == config.depth * (1 + config.num_heads) + 1
    assert "mean over patch queries" in grid._suptitle.get_text()
    with seeded(0):
        random_init = MaskedAutoencoder(reference.config)
    distance = attention_distance_figure(
        {"reference": reference, "random init": random_init}, images
    )
    assert [ax.get_title() for ax in distance.axes] == ["reference", "random init"]
    distance.savefig(tmp_path / "distance.png")
    with pytest.raises(ValueError, match="block must lie in"):
        attention_maps(reference, images, block=config.depth)
    with pytest.raises(ValueError, match="index must lie in"):
        attention_grid(reference, images, index=3)


def test_other_mask_ratios_run_the_models_own_parts(reference) -> None:
    images = _images(2)
    noise = torch.rand(2, reference.config.num_patches, generator=torch.Generator().manual_seed(3))
    own = reconstruct_images(reference, images, noise, stats="visible")
    same = reconstruct_images(reference, images, noise, stats="visible", mask_ratio=0.75)
    for key in ("pasted", "mask", "loss"):
        torch.testing.assert_close(same[key], own[key])
    low = reconstruct_images(reference, images, noise, mask_ratio=0.25)["mask"]
    high = reconstruct_images(reference, images, noise, mask_ratio=0.9)["mask"]
    assert low.sum() == 2 * 16 and high.sum() == 2 * (64 - 6)
    assert torch.all(high >= low)  # one noise: a higher ratio removes a superset


def test_mask_ratio_figure_has_two_rows_per_ratio(reference) -> None:
    fig = mask_ratio_figure(reference, _images(3), ratios=(0.5, 0.9))
    labels = [fig.axes[3 * r].get_ylabel() for r in range(5)]
    assert labels[:2] == ["original", "masked 50%"] and labels[3] == "masked 90%"
    assert labels[2].startswith("painted\nloss ") and len(fig.axes) == 5 * 3


def test_widgets_redraw_without_blocking_and_offer_only_valid_choices() -> None:
    ipywidgets = pytest.importorskip("ipywidgets")
    model = MaskedAutoencoder(MAEConfig.from_preset("tiny"))  # 16 patches: 95% would keep none
    images = _images(2)
    box = mask_ratio_widget(model, images)
    assert isinstance(box, ipywidgets.VBox)
    slider, picture = box.children
    assert slider.value == 0.75 and max(slider.options, key=lambda o: o[1])[1] == 0.9
    before = picture.value
    assert before[:4] == b"\x89PNG"
    slider.value = 0.5
    assert picture.value != before
    box = attention_widget(model, images)
    (block, head), query, picture = box.children[0].children, box.children[1], box.children[2]
    assert block.max == model.config.depth and [o[1] for o in head.options] == [-1, 0, 1]
    for control, value in ((head, 1), (block, 1), (query, "mean")):
        before = picture.value
        control.value = value
        assert picture.value != before and picture.value[:4] == b"\x89PNG"


def _make_figures():
    path = Path(__file__).parents[1] / "book" / "make_figures.py"
    spec = importlib.util.spec_from_file_location("make_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_figures_draws_what_the_book_holds(tmp_path: Path) -> None:
    make_figures = _make_figures()
    images = Path(make_figures.__file__).parent / "images"
    for name in make_figures.FIGURES:
        assert (images / f"{name}.png").is_file(), f"run `make figures`: {name}.png is missing"
    make_figures.FIGURES["architecture"](tmp_path / "architecture.png")
    assert (tmp_path / "architecture.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="unknown figures"):
        make_figures.main(["no_such_figure"])
