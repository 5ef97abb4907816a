"""Tests for mae_tutorial.evaluate: the linear-probe, kNN and fine-tuning runs and their summaries.

Everything runs on the CPU with the tiny preset, on hand-made features or on small synthetic data in
the CIFAR format (whose classes differ in colour and texture, so they are learnable).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10
from mae_tutorial.evaluate import (
    build_finetune_model,
    evaluate_classifier,
    finetune,
    knn_eval,
    linear_probe,
    train_classifier,
)
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.pretrain import lr_at
from mae_tutorial.probe import extract_block_features, fit_linear_probe, topk_accuracy

FT = dict(epochs=1, batch_size=50, base_lr=1e-3, warmup_epochs=0, device="cpu")


@pytest.fixture
def mae(tiny: MAEConfig) -> MaskedAutoencoder:
    return MaskedAutoencoder(tiny)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_evaluate_classifier_counts_correct_predictions(small_cifar: CIFAR10) -> None:
    labels = small_cifar.test_labels  # 50 images
    wrong = (labels + 1) % 10
    eye = torch.eye(10)
    # Right for the first 30 images; the rest rank the true class second (top-5 still counts it).
    logits = torch.cat([eye[labels[:30]], 2 * eye[wrong[30:]] + eye[labels[30:]]])  # (50, 10)

    class Replay(nn.Module):  # returns the stored logits batch after batch
        def __init__(self) -> None:
            super().__init__()
            self.seen = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen += len(x)
            return logits[self.seen - len(x) : self.seen]

    result = evaluate_classifier(Replay(), small_cifar.test_images, labels, batch_size=20)
    assert result == pytest.approx({"top1": 60.0, "top5": 100.0})


def test_linear_probe_on_synthetic_data_beats_chance(
    mae: MaskedAutoencoder, small_cifar: CIFAR10
) -> None:
    before = snapshot(mae)
    result = linear_probe(mae, small_cifar, epochs=30, batch_size=50, device="cpu")
    assert set(result) == {
        "linprobe_top1", "linprobe_top5", "train_top1", "feature_dim", "last_blocks", "epochs",
        "lr", "seconds",
    }  # fmt: skip
    assert result["feature_dim"] == mae.config.embed_dim and result["epochs"] == 30
    assert result["linprobe_top1"] > 40  # chance is 10
    assert result["linprobe_top5"] >= result["linprobe_top1"]
    assert same(before, snapshot(mae))


def test_linear_probe_of_the_last_blocks_concatenates_their_features(
    mae: MaskedAutoencoder, small_cifar: CIFAR10
) -> None:
    result = linear_probe(mae, small_cifar, epochs=3, batch_size=50, device="cpu", last_blocks=2)
    assert result["feature_dim"] == 2 * mae.config.embed_dim and result["last_blocks"] == 2
    train, test = (
        extract_block_features(mae, images, device="cpu")[-2:].permute(1, 0, 2).flatten(1)
        for images in (small_cifar.train_images, small_cifar.test_images)
    )  # (N, 2 * D): the same probe by hand
    head = fit_linear_probe(train, small_cifar.train_labels, 10, epochs=3, batch_size=50, seed=0)
    with torch.no_grad():
        expected = topk_accuracy(head(test), small_cifar.test_labels)[1]
    assert result["linprobe_top1"] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match=r"last_blocks must be an integer in \[1, 2\], got 9"):
        linear_probe(mae, small_cifar, last_blocks=9)


def test_linear_probe_rejects_bad_values(mae: MaskedAutoencoder, small_cifar: CIFAR10) -> None:
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        linear_probe(mae, small_cifar, epochs=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got -5"):
        linear_probe(mae, small_cifar, batch_size=-5)


def test_knn_eval_on_synthetic_data(mae: MaskedAutoencoder, small_cifar: CIFAR10) -> None:
    result = knn_eval(mae, small_cifar, k=5, batch_size=64, device="cpu")
    assert set(result) == {"knn_top1", "knn_top5", "k", "temperature", "seconds"}
    assert result["k"] == 5 and result["knn_top1"] > 30  # chance is 10


def test_knn_rejects_bad_values(mae: MaskedAutoencoder, small_cifar: CIFAR10) -> None:
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 200\], got 0"):
        knn_eval(mae, small_cifar, k=0)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 200\], got 201"):
        knn_eval(mae, small_cifar, k=201)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        knn_eval(mae, small_cifar, temperature=0)


@pytest.mark.parametrize("blocks", [0, 1])
def test_partial_finetuning_changes_only_the_last_blocks(
    mae: MaskedAutoencoder, small_cifar: CIFAR10, blocks: int
) -> None:
    depth = mae.config.depth
    model = build_finetune_model(mae, mae.config, trainable_blocks=blocks)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"head.{n}" for n, _ in model.head.named_parameters()}
    expected |= {f"encoder.norm.{n}" for n, _ in model.encoder.norm.named_parameters()}
    for i in range(depth - blocks, depth):
        expected |= {
            f"encoder.blocks.{i}.{n}" for n, _ in model.encoder.blocks[i].named_parameters()
        }
    assert trainable == expected
    before = {f"encoder.{k}": v for k, v in snapshot(mae.encoder).items()}
    before |= {f"head.{k}": v for k, v in snapshot(model.head).items()}
    train_classifier(model, small_cifar, **FT)
    after = snapshot(model)
    for prefix in ("encoder.patch_embed.", "encoder.cls_token", "encoder.pos_embed"):
        assert same(before, after, prefix)
    for i in range(depth):
        assert same(before, after, f"encoder.blocks.{i}.") == (i < depth - blocks)
    assert not same(before, after, "encoder.norm.")
    assert not same(before, after, "head.")


def test_finetune_from_scratch_does_not_copy_pretrained_weights(
    mae: MaskedAutoencoder, tiny: MAEConfig
) -> None:
    scratch = build_finetune_model(None, tiny)
    pretrained = build_finetune_model(mae, tiny)
    for name, value in mae.encoder.state_dict().items():
        assert torch.equal(pretrained.encoder.state_dict()[name], value)
    differ = [
        name
        for name, value in mae.encoder.state_dict().items()
        if value.ndim > 1 and not name.endswith("pos_embed")
        and not torch.equal(scratch.encoder.state_dict()[name], value)
    ]  # fmt: skip
    assert "patch_embed.proj.weight" in differ and "blocks.0.attn.qkv.weight" in differ
    assert scratch.config.drop_path == 0.1
    assert scratch.encoder.blocks[-1].drop_path.p == pytest.approx(0.1)


def test_finetune_leaves_the_mae_and_global_rng_unchanged(
    mae: MaskedAutoencoder, small_cifar: CIFAR10
) -> None:
    before, flags = snapshot(mae), [p.requires_grad for p in mae.parameters()]
    mae.train()
    torch.manual_seed(123)
    result = finetune(mae, mae.config, small_cifar, trainable_blocks=1, **FT)
    draw = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(draw, torch.rand(3))  # the run forked the global generator
    assert same(before, snapshot(mae)) and mae.training
    assert flags == [p.requires_grad for p in mae.parameters()]
    assert set(result) == {
        "finetune_top1", "finetune_top5", "trainable_blocks", "trainable_params",
        "from_scratch", "epochs", "lr", "seconds", "history",
    }  # fmt: skip
    assert result["trainable_blocks"] == 1 and result["from_scratch"] is False
    assert result["lr"] == pytest.approx(1e-3 * 50 / 256)
    (epoch,) = result["history"]
    assert set(epoch) == {"epoch", "loss", "train_top1", "lr", "test_top1", "test_top5"}
    assert epoch["epoch"] == 1 and epoch["test_top1"] == result["finetune_top1"]
    assert torch.isfinite(torch.tensor(epoch["loss"]))


def test_finetune_is_reproducible_and_learns(tiny: MAEConfig, small_cifar: CIFAR10) -> None:
    kwargs = dict(FT, epochs=3, base_lr=5e-3, warmup_epochs=1)
    first = finetune(None, tiny, small_cifar, **kwargs)
    second = finetune(None, tiny, small_cifar, **kwargs)
    assert first["from_scratch"] is True and first["trainable_blocks"] is None
    assert first["history"] == second["history"]
    losses = [epoch["loss"] for epoch in first["history"]]
    assert losses[-1] < losses[0]
    lrs = [epoch["lr"] for epoch in first["history"]]  # at each epoch's last step
    peak = first["lr"]  # 4 steps per epoch, 4 of warmup, 12 in all
    assert lrs == pytest.approx([lr_at(step, 12, 4, peak, 0.0) for step in (3, 7, 11)])


def test_finetune_rejects_bad_values(mae: MaskedAutoencoder, small_cifar: CIFAR10) -> None:
    config = mae.config
    with pytest.raises(ValueError, match=r"trainable_blocks must be an integer in \[0, 2\], got 3"):
        finetune(mae, config, small_cifar, trainable_blocks=3, **FT)
    with pytest.raises(
        ValueError, match=r"trainable_blocks must be an integer in \[0, 2\], got -1"
    ):
        finetune(mae, config, small_cifar, trainable_blocks=-1, **FT)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        finetune(mae, config, small_cifar, **dict(FT, epochs=0))
    with pytest.raises(
        ValueError, match=r"warmup_epochs must be a finite number in \[0, 1\], got 2"
    ):
        finetune(mae, config, small_cifar, **dict(FT, warmup_epochs=2))
    with pytest.raises(ValueError, match=r"layer_decay must be a finite number in \(0, 1\]"):
        finetune(mae, config, small_cifar, layer_decay=1.5, **FT)
    with pytest.raises(ValueError, match=r"amp must be one of \('auto', 'bf16', 'fp16', 'off'\)"):
        finetune(mae, config, small_cifar, amp="yes", **FT)
    with pytest.raises(ValueError, match=r"embed_dim=64 vs 32"):
        finetune(mae, dataclasses.replace(config, embed_dim=64), small_cifar, **FT)
