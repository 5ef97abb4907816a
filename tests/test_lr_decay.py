"""Tests for mae_tutorial.lr_decay (chapter 8): layer ids, layer-wise lr-decay groups with their
weight-decay rules, partial freezing and the train mode that keeps frozen parts in eval mode."""

from __future__ import annotations

import dataclasses

import pytest

from mae_tutorial.config import MAEConfig
from mae_tutorial.lr_decay import (
    freeze_all_but_last,
    layer_decay_param_groups,
    layer_id,
    train_mode,
)
from mae_tutorial.model import MaskedAutoencoder, ViTClassifier


def test_layer_ids_count_from_the_input() -> None:
    assert layer_id("encoder.patch_embed.proj.weight", 6) == 0
    assert layer_id("encoder.cls_token", 6) == 0
    assert layer_id("encoder.blocks.0.attn.qkv.weight", 6) == 1
    assert layer_id("encoder.blocks.5.mlp.fc2.bias", 6) == 6
    assert layer_id("encoder.norm.weight", 6) == 7
    assert layer_id("head.bias", 6) == 7


def test_full_finetuning_param_groups_decay_per_layer(tiny: MAEConfig) -> None:
    config = dataclasses.replace(tiny, depth=3)
    model = ViTClassifier.from_pretrained(MaskedAutoencoder(config))
    groups = layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale, decay = {}, {}
    for group in groups:
        for param in group["params"]:
            scale[id(param)], decay[id(param)] = group["lr_scale"], group["weight_decay"]
    named = dict(model.named_parameters())
    assert set(scale) == {id(p) for p in named.values()}  # every parameter, exactly once
    assert sum(len(g["params"]) for g in groups) == len(named)
    expected = {
        "head.weight": 1.0,
        "encoder.norm.weight": 1.0,
        "encoder.blocks.2.mlp.fc1.weight": 0.5,
        "encoder.blocks.1.attn.qkv.weight": 0.25,
        "encoder.blocks.0.norm1.bias": 0.5**3,
        "encoder.patch_embed.proj.weight": 0.5**4,
        "encoder.cls_token": 0.5**4,
    }
    for name, value in expected.items():
        assert scale[id(named[name])] == pytest.approx(value), name
    for name, param in named.items():
        no_decay = param.ndim == 1 or name == "encoder.cls_token"
        assert decay[id(param)] == (0.0 if no_decay else 0.05), name


def test_frozen_parameters_are_left_out_of_the_groups(tiny: MAEConfig) -> None:
    model = freeze_all_but_last(ViTClassifier(dataclasses.replace(tiny, depth=3)), 1)
    grouped = {id(p) for g in layer_decay_param_groups(model) for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped == trainable
    scales = sorted({g["lr_scale"] for g in layer_decay_param_groups(model, layer_decay=0.5)})
    assert scales == [0.5, 1.0]  # the last block, then the norm and the head


@pytest.mark.parametrize("blocks", [0, 2])
def test_freeze_all_but_last_trains_the_last_blocks_the_norm_and_the_head(
    tiny: MAEConfig, blocks: int
) -> None:
    model = freeze_all_but_last(ViTClassifier(dataclasses.replace(tiny, depth=3)), blocks)
    trainable = {n.split(".")[0] if n.startswith("head") else ".".join(n.split(".")[:3])
                 for n, p in model.named_parameters() if p.requires_grad}  # fmt: skip
    expected = {"head", "encoder.norm.weight", "encoder.norm.bias"}
    expected |= {f"encoder.blocks.{i}" for i in range(3 - blocks, 3)}
    assert trainable == expected
    train_mode(model)
    assert model.training and model.head.training
    assert [b.training for b in model.encoder.blocks] == [i >= 3 - blocks for i in range(3)]
    assert not model.encoder.patch_embed.training


def test_freeze_all_but_last_rejects_bad_counts(tiny: MAEConfig) -> None:
    model = ViTClassifier(tiny)
    for blocks in (-1, tiny.depth + 1, 1.0, True):
        with pytest.raises(ValueError, match="blocks must be an int in"):
            freeze_all_but_last(model, blocks)
    assert all(p.requires_grad for p in model.parameters())
