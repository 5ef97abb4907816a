"""Tests for mae_tutorial.config: validation, derived sizes, presets, round trips."""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time

import pytest
import torch

from mae_tutorial.config import MAX_PARAMETERS, PRESETS, MAEConfig
from mae_tutorial.model import MaskedAutoencoder


def test_presets_are_the_three_named_ones() -> None:
    assert {"tiny", "cpu", "vit_tiny"} <= set(PRESETS)
    for name, config in PRESETS.items():
        assert isinstance(config, MAEConfig), name
        assert MAEConfig.from_preset(name) == config


def test_vit_tiny_is_vit_tiny() -> None:
    config = PRESETS["vit_tiny"]
    assert (config.embed_dim, config.depth, config.num_heads) == (192, 12, 3)
    assert (config.patch_size, config.image_size, config.in_chans) == (4, 32, 3)
    assert config.mask_ratio == 0.75


def test_presets_shrink_from_vit_tiny_to_tiny() -> None:
    def width_depth(name: str) -> tuple[int, int]:
        return PRESETS[name].embed_dim, PRESETS[name].depth

    assert width_depth("tiny") < width_depth("cpu") < width_depth("vit_tiny")


def test_config_is_frozen(tiny: MAEConfig) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.mask_ratio = 0.5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["vit_tiny"].depth = 1  # type: ignore[misc]
    assert PRESETS["vit_tiny"].depth == 12


@pytest.mark.parametrize(
    ("overrides", "grid", "patches", "visible", "patch_dim"),
    [
        ({}, 8, 64, 16, 48),
        ({"patch_size": 8}, 4, 16, 4, 192),
        ({"patch_size": 2, "in_chans": 1}, 16, 256, 64, 4),
        ({"image_size": 64, "patch_size": 16, "mask_ratio": 0.6}, 4, 16, 6, 768),
        ({"mask_ratio": 0.9}, 8, 64, 6, 48),
        ({"mask_ratio": 0.15}, 8, 64, 54, 48),
    ],
)
def test_derived_properties(
    overrides: dict, grid: int, patches: int, visible: int, patch_dim: int
) -> None:
    config = MAEConfig(**overrides)
    assert config.grid_size == grid
    assert config.num_patches == patches
    assert config.num_visible == visible
    assert config.patch_dim == patch_dim


def test_num_visible_rounds_as_the_official_code() -> None:
    for ratio in (0.15, 0.5, 0.6, 0.75, 0.9):
        config = MAEConfig(mask_ratio=ratio)
        assert config.num_visible == int(config.num_patches * (1 - ratio))


def test_mlp_hidden_dims() -> None:
    config = MAEConfig(embed_dim=64, num_heads=4, decoder_embed_dim=32, mlp_ratio=2.0)
    assert config.mlp_hidden_dim == 128
    assert config.decoder_mlp_hidden_dim == 64


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_to_dict_from_dict_round_trip(name: str) -> None:
    config = dataclasses.replace(PRESETS[name], mask_ratio=0.6, norm_pix_loss=False, pool="cls")
    values = config.to_dict()
    assert isinstance(values, dict)
    assert set(values) == {f.name for f in dataclasses.fields(MAEConfig)}
    assert MAEConfig.from_dict(values) == config
    # Checkpoints store the dict as JSON: it must survive that too.
    assert MAEConfig.from_dict(json.loads(json.dumps(values))) == config


def test_from_dict_accepts_a_subset() -> None:
    assert MAEConfig.from_dict({"depth": 3}) == MAEConfig(depth=3)


def test_from_dict_rejects_unknown_fields() -> None:
    values = MAEConfig().to_dict() | {"hidden_size": 768}
    with pytest.raises(ValueError, match="hidden_size"):
        MAEConfig.from_dict(values)


def test_from_preset_overrides_without_touching_the_preset() -> None:
    config = MAEConfig.from_preset("tiny", mask_ratio=0.5, depth=3)
    assert (config.mask_ratio, config.depth) == (0.5, 3)
    assert config.embed_dim == PRESETS["tiny"].embed_dim
    assert PRESETS["tiny"].mask_ratio == 0.75 and PRESETS["tiny"].depth == 2


def test_from_preset_unknown_name() -> None:
    with pytest.raises(ValueError, match="huge"):
        MAEConfig.from_preset("huge")


def test_from_preset_validates_overrides() -> None:
    with pytest.raises(ValueError, match="1.5"):
        MAEConfig.from_preset("tiny", mask_ratio=1.5)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"image_size": 30, "patch_size": 4}, "30"),
        ({"image_size": 32, "patch_size": 5}, "patch_size=5"),
        ({"embed_dim": 100, "num_heads": 3}, "100.*3"),
        ({"decoder_embed_dim": 36, "decoder_num_heads": 8}, "36.*8"),
        ({"embed_dim": 30, "num_heads": 3}, "30"),  # not divisible by 4 for sin-cos
        ({"mask_ratio": 0.0}, "0.0"),
        ({"mask_ratio": 1.0}, "1.0"),
        ({"mask_ratio": 1.2}, "1.2"),
        ({"mask_ratio": -0.1}, "-0.1"),
        ({"patch_size": 16, "mask_ratio": 0.9}, "0.9"),  # int(4 * 0.1) = 0 patches visible
        ({"depth": 0}, "depth"),
        ({"patch_size": 0}, "patch_size"),
        ({"num_heads": 2.0}, "num_heads"),
        ({"pool": "max"}, "max"),
        ({"drop_path": 1.0}, "drop_path"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
    ],
)
def test_bad_values_raise_naming_the_value(overrides: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        MAEConfig(**overrides)


def test_replace_revalidates() -> None:
    with pytest.raises(ValueError, match=re.escape("patch_size=3")):
        dataclasses.replace(MAEConfig(), patch_size=3)


def test_tiny_training_step_is_fast(tiny: MAEConfig) -> None:
    """The tiny preset exists for CI: one AdamW step on 64 images takes milliseconds.

    A generous guard (median under 2 s), not a benchmark.
    """
    model = MaskedAutoencoder(tiny)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(64, tiny.in_chans, tiny.image_size, tiny.image_size)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad()
        model(images).loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    step()  # warm-up
    assert statistics.median(step() for _ in range(3)) < 2.0


# ---------------------------------------------------------------- types and finiteness (issue 15)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            {"norm_pix_loss": "no"},
            r"norm_pix_loss must be True or False \(a bool\), got 'no' \(str\)",
        ),
        ({"mask_token_in_encoder": "False"}, r"mask_token_in_encoder .*got 'False' \(str\)"),
        ({"norm_pix_loss": 1}, r"norm_pix_loss .*got 1 \(int\)"),
        ({"mask_token_in_encoder": None}, r"mask_token_in_encoder .*got None"),
        ({"depth": True}, r"depth must be an integer .*got True \(bool\)"),
        ({"embed_dim": "192"}, r"embed_dim must be an integer .*got '192' \(str\)"),
        ({"patch_size": 4.0}, r"patch_size must be an integer .*got 4.0 \(float\)"),
        ({"mlp_ratio": float("nan")}, r"mlp_ratio must be a finite number in \(0, 16.0\], got nan"),
        ({"mlp_ratio": float("inf")}, r"mlp_ratio must be a finite number .*got inf"),
        ({"mlp_ratio": "4"}, r"mlp_ratio must be a finite number .*got '4' \(str\)"),
        ({"mlp_ratio": True}, r"mlp_ratio .*got True \(bool\)"),
        ({"mlp_ratio": 1e-9}, r"mlp_ratio=1e-09 gives an MLP of width 0"),
        ({"layer_norm_eps": float("nan")}, r"layer_norm_eps must be a finite number .*got nan"),
        ({"layer_norm_eps": float("inf")}, r"layer_norm_eps .*got inf"),
        (
            {"layer_norm_eps": -1e-6},
            r"layer_norm_eps must be a finite number in \(0, 1\], got -1e-06",
        ),
        ({"mask_ratio": float("nan")}, r"mask_ratio must be a finite number .*got nan"),
        ({"drop_path": float("nan")}, r"drop_path must be a finite number .*got nan"),
        ({"drop_path": -0.1}, r"drop_path must be a finite number in \[0, 1\), got -0.1"),
        ({"pool": None}, r"pool must be 'mean' or 'cls', got None"),
        ({"pool": ["mean"]}, r"pool must be 'mean' or 'cls'"),
    ],
)
def test_wrong_types_and_non_finite_values_are_refused(overrides: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        MAEConfig(**overrides)


def test_a_checkpoint_config_goes_through_the_same_checks() -> None:
    stored = MAEConfig().to_dict() | {"norm_pix_loss": "no"}
    with pytest.raises(ValueError, match="norm_pix_loss .*'no'"):
        MAEConfig.from_dict(stored)
    stored = MAEConfig().to_dict() | {"layer_norm_eps": float("nan")}
    with pytest.raises(ValueError, match="layer_norm_eps .*nan"):
        MAEConfig.from_dict(stored)
    with pytest.raises(ValueError, match="expected a dict of MAEConfig fields, got list"):
        MAEConfig.from_dict([("depth", 3)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown MAEConfig fields \[1\]"):
        MAEConfig.from_dict({1: 2})  # type: ignore[dict-item]


def test_ints_given_for_float_fields_are_accepted() -> None:
    assert MAEConfig(mlp_ratio=4) == MAEConfig(mlp_ratio=4.0)
    assert MAEConfig(drop_path=0).drop_path == 0


# ---------------------------------------------------------------- size bounds (issue 15 item 1)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"decoder_depth": 100_000}, r"decoder_depth must be an integer in \[1, 64\], got 100000"),
        ({"depth": 65}, r"depth must be an integer in \[1, 64\], got 65"),
        (
            {"decoder_embed_dim": 2**20, "decoder_num_heads": 4},
            r"decoder_embed_dim must be an integer in \[1, 4096\], got 1048576",
        ),
        ({"embed_dim": 2**22, "num_heads": 4}, r"embed_dim must be an integer in \[1, 4096\]"),
        (
            {"image_size": 2**20, "patch_size": 2**10},
            r"image_size must be an integer in \[1, 4096\]",
        ),
        ({"image_size": 4096, "patch_size": 1}, r"16777216 patches .*at most MAX_PATCHES = 4096"),
        ({"in_chans": 10_000}, r"in_chans must be an integer in \[1, 64\]"),
        ({"mlp_ratio": 1000.0}, r"mlp_ratio must be a finite number in \(0, 16.0\], got 1000.0"),
        (
            {"embed_dim": 4096, "depth": 64, "num_heads": 16},
            r"asks for 12,889,846,832 parameters .*at most MAX_PARAMETERS = 1,000,000,000",
        ),
    ],
)
def test_sizes_are_bounded_before_anything_is_allocated(overrides: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        MAEConfig(**overrides)


def test_a_checkpoint_asking_for_a_huge_model_is_refused_before_building_it() -> None:
    stored = MAEConfig().to_dict() | {"embed_dim": 2**22, "num_heads": 4}
    with pytest.raises(ValueError, match="embed_dim must be an integer in"):
        MAEConfig.from_dict(stored)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize(
    "change", [{}, {"mask_token_in_encoder": True}, {"mlp_ratio": 2.5, "patch_size": 8}]
)
def test_num_parameters_counts_the_built_model(name: str, change: dict) -> None:
    config = dataclasses.replace(PRESETS[name], **change)
    model = MaskedAutoencoder(config)
    assert config.num_parameters == sum(p.numel() for p in model.parameters())


def test_the_limits_admit_the_papers_models_and_lie_far_above_the_presets() -> None:
    vit_h = MAEConfig(
        image_size=224,
        patch_size=14,
        embed_dim=1280,
        depth=32,
        num_heads=16,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
    )
    assert 600e6 < vit_h.num_parameters < MAX_PARAMETERS  # about 657 million
    largest = max(config.num_parameters for config in PRESETS.values())
    assert MAX_PARAMETERS > 100 * largest
