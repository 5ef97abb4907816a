"""mae_tutorial.augment: the batched crops and flips, their determinism and their frozen numerics."""

from pathlib import Path

import pytest
import torch

from mae_tutorial import data as data_module
from mae_tutorial.augment import random_crop_flip, random_resized_crop_flip
from mae_tutorial.data import CIFAR10, load_cifar10, normalize


@pytest.fixture(scope="module")
def data(synthetic_root: Path) -> CIFAR10:
    return load_cifar10(synthetic_root, download=False)


def _is_self_or_mirror(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    same = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-4
    mirror = (out - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert bool((same | mirror).all())
    return mirror


def test_resized_crop_full_scale_is_identity_or_flip(data) -> None:
    x = normalize(data.train_images[:64])
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=g)
    flipped = _is_self_or_mirror(out, x)
    assert 0 < int(flipped.sum()) < 64  # both outcomes happen


def test_resized_crop_shapes_and_determinism(data) -> None:
    x = normalize(data.train_images[:16])
    out = random_resized_crop_flip(x, size=24, generator=torch.Generator().manual_seed(1))
    assert out.shape == (16, 3, 24, 24) and out.dtype == torch.float32
    again = random_resized_crop_flip(x, size=24, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    # A crop never leaves the image, so its values stay inside each image's range.
    assert bool((out.amax(dim=(1, 2, 3)) <= x.amax(dim=(1, 2, 3)) + 1e-5).all())
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop_flip(x, scale=(0.5, 0.2))


def test_random_crop_flip_matches_a_reference_crop(data) -> None:
    x = normalize(data.train_images[:16])
    _is_self_or_mirror(random_crop_flip(x, padding=0), x)
    out = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    for image, result in zip(padded, out, strict=True):
        crops = [
            image[:, top : top + 32, left : left + 32] for top in range(9) for left in range(9)
        ]
        assert any(torch.equal(c, result) or torch.equal(c.flip(-1), result) for c in crops)


@pytest.mark.parametrize(
    ("augment", "kwargs", "match"),
    [
        (random_resized_crop_flip, {"size": 0}, "size"),
        (random_resized_crop_flip, {"ratio": (2.0, 1.0)}, "ratio"),
        (random_crop_flip, {"padding": -1}, "padding"),
        (random_crop_flip, {"padding_mode": "wrap"}, "padding_mode"),
        (random_crop_flip, {"padding": 32}, "reflect padding"),
    ],
)
def test_bad_arguments_raise_value_error(augment, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        augment(torch.zeros(2, 3, 32, 32), **kwargs)


@pytest.mark.parametrize("augment", [random_resized_crop_flip, random_crop_flip])
def test_uint8_or_unbatched_images_are_a_type_error(augment) -> None:
    with pytest.raises(TypeError, match="float images"):
        augment(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="float images"):
        augment(torch.zeros(3, 32, 32))


def test_numerics_are_those_of_the_functions_moved_out_of_data() -> None:
    """Frozen values, measured with the functions as they were in data.py before the move."""
    x = torch.linspace(-2, 2, 4 * 3 * 32 * 32).reshape(4, 3, 32, 32).sin()
    a = random_resized_crop_flip(x, generator=torch.Generator().manual_seed(0))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(0))
    got = [
        a.double().sum().item(), a.double().abs().sum().item(), a[1, 2, 5, 7].item(),
        a[3, 0, 31, 0].item(), b.double().sum().item(), b.double().abs().sum().item(),
        b[1, 2, 5, 7].item(), b[3, 0, 31, 0].item(),
    ]  # fmt: skip
    frozen = [
        -39.933162946254015, 8788.185515414923, -0.274417906999588, 0.9596636295318604,
        -67.37412450416014, 8778.317269757856, -0.30575844645500183, 0.9693413376808167,
    ]  # fmt: skip
    assert got == pytest.approx(frozen, rel=1e-6, abs=1e-6)


def test_data_module_uses_these_functions() -> None:
    assert data_module.random_resized_crop_flip is random_resized_crop_flip
    assert data_module.random_crop_flip is random_crop_flip
