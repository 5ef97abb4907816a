"""Draw the figures of the book's prose pages (the chapters draw their own), with the package's code.

    python book/make_figures.py          (or `make figures`)
    python book/make_figures.py architecture attention_maps     (only the figures named)

writes book/images/intro_masking.png: four CIFAR-10 test images, each cut into 4x4 patches, with
75% of the patches removed as an MAE removes them, the 16 patches the encoder sees, and what the
shipped reference model (`pretrained("cifar10-cpu")`, chapter 7) paints into the holes; and the
site's icon, book/images/favicon.png: the first of those images, masked. It reads
CIFAR-10 through `mae_tutorial.data.load_cifar10` (set `MAE_TUTORIAL_DATA`); the images drawn are
test images 0-3, which the project's offline copy holds bit-exact.

It also writes book/images/architecture.png: the MAE at a glance (`viz.draw_architecture`) with the
reference model's sizes beside the book's shape letters; attention_maps.png and
attention_maps_random_init.png: where each head of the last encoder block looks from the cls token
(`viz.attention_maps`), for the reference model and for a random-init model of its config (seed 0),
on the first test image of classes 0-5, on one colour scale; and attention_distance.png: the mean attention distance of
every block and head (`viz.attention_distance_figure`) of both, over the first 1,000 test images.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import load_cifar10, normalize
from mae_tutorial.masking import random_masking
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.patches import patchify, unpatchify
from mae_tutorial.pretrained import pretrained
from mae_tutorial.runtime import seeded
from mae_tutorial.viz import (
    attention_distance_figure,
    attention_maps,
    draw_architecture,
    encoder_attention,
    patch_attention,
    reconstruct_images,
)

IMAGES = Path(__file__).parent / "images"
GREY = 0.5  # display value of a removed patch


def grid_lines(ax, image_size: int, patch_size: int) -> None:
    """White lines on the patch borders of an image drawn with `imshow`."""
    for edge in range(patch_size, image_size, patch_size):
        ax.axhline(edge - 0.5, color="white", linewidth=0.6)
        ax.axvline(edge - 0.5, color="white", linewidth=0.6)


def intro_masking(path: Path, num_images: int = 4, seed: int = 0) -> None:
    """The landing page's figure: image, patches, 75% removed, the encoder's input."""
    config = MAEConfig()  # the package defaults: 32x32 images, 4x4 patches, 75% masked
    p, size = config.patch_size, config.image_size
    test = load_cifar10().test_images[:num_images]  # (N, C, H, W) uint8
    images = test.float() / 255  # (N, C, H, W) in [0, 1]
    patches = patchify(images, p)  # (N, L, P*P*C)
    noise = torch.rand(
        num_images, config.num_patches, generator=torch.Generator().manual_seed(seed)
    )
    visible, mask, _ = random_masking(patches, config.mask_ratio, noise=noise)  # (N, K, P*P*C)
    removed = unpatchify(mask[..., None].expand_as(patches), p, size)  # (N, C, H, W), 1 = removed
    masked = images * (1 - removed) + GREY * removed
    side = int(config.num_visible**0.5)  # the K visible patches drawn as a side x side square
    encoder_input = unpatchify(visible, p, side * p)  # (N, C, side*P, side*P)
    reference = pretrained("cifar10-cpu")
    filled = reconstruct_images(reference, normalize(test), noise, stats="visible")["pasted"]

    titles = (
        "CIFAR-10 image\n32 x 32 pixels",
        f"{config.num_patches} patches\nof {p} x {p} pixels",
        f"{config.mask_ratio:.0%} of patches\nremoved at random",
        f"the encoder sees only\nthe {config.num_visible} visible patches",
        "the reference MAE\nfills the holes",
    )
    fig = Figure(figsize=(10, 2.1 * num_images), dpi=100, layout="constrained")
    axes = fig.subplots(num_images, len(titles))
    for row in range(num_images):
        pictures = (images[row], images[row], masked[row], encoder_input[row], filled[row])
        for col, picture in enumerate(pictures):
            ax = axes[row, col]
            ax.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if col in (1, 2):
                grid_lines(ax, size, p)
            if col == 3:
                grid_lines(ax, side * p, p)
            if row == 0:
                ax.set_title(titles[col], fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    favicon(masked[0], path.parent / "favicon.png")


def favicon(image: torch.Tensor, path: Path) -> None:
    """A 64 x 64 pixel icon of one masked image, each pixel drawn as a 2 x 2 block.

    Shapes:
        image: (C, 32, 32) in [0, 1].
    """
    fig = Figure(figsize=(0.64, 0.64), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax.axis("off")
    fig.savefig(path)


def architecture(path: Path) -> None:
    """The MAE at a glance, with the shipped reference model's sizes."""
    draw_architecture(pretrained("cifar10-cpu").config).savefig(path)


def random_init(seed: int = 0) -> MaskedAutoencoder:
    """A model of the reference's config, freshly initialised: what training starts from."""
    with seeded(seed):
        return MaskedAutoencoder(pretrained("cifar10-cpu").config).eval()


@functools.cache
def one_per_class(num_classes: int = 6) -> torch.Tensor:
    """The first test image of each of the classes 0 .. num_classes - 1, normalised.

    Shapes:
        -> (num_classes, C, H, W).
    """
    data = load_cifar10()
    labels = data.test_labels.tolist()
    return normalize(data.test_images[[labels.index(c) for c in range(num_classes)]])


@functools.cache
def reference_vmax() -> float:
    """The largest cls-to-patch weight of the reference's last block on these images: the top
    of the colour scale of both attention-map figures, so that they compare."""
    last = encoder_attention(pretrained("cifar10-cpu"), one_per_class())[-1]
    return float(patch_attention(last, "cls").max())


def attention_maps_reference(path: Path) -> None:
    """Where the reference model's last block looks, per head."""
    title = "reference model, last encoder block: attention of the cls token to each patch"
    model, images = pretrained("cifar10-cpu"), one_per_class()
    attention_maps(model, images, title=title, vmax=reference_vmax()).savefig(path)


def attention_maps_random_init(path: Path) -> None:
    """The same picture for a random-init model of the same config, on the same colour scale."""
    title = "random init (same config), last encoder block: attention of the cls token"
    attention_maps(random_init(), one_per_class(), title=title, vmax=reference_vmax()).savefig(path)


def attention_distance(path: Path, num_images: int = 1000) -> None:
    """Mean attention distance per block and head: the reference beside random init."""
    images = normalize(load_cifar10().test_images[:num_images])  # (N, C, H, W)
    models = {"reference model": pretrained("cifar10-cpu"), "random init": random_init()}
    attention_distance_figure(models, images).savefig(path)


FIGURES = {
    "intro_masking": intro_masking,
    "architecture": architecture,
    "attention_maps": attention_maps_reference,
    "attention_maps_random_init": attention_maps_random_init,
    "attention_distance": attention_distance,
}


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        raise SystemExit(f"unknown figures {unknown}; expected some of {sorted(FIGURES)}")
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        if not names or name in names:
            draw(IMAGES / f"{name}.png")


if __name__ == "__main__":
    main(sys.argv[1:])
