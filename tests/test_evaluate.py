"""Tests for mae_tutorial.evaluate: features, linear probe, kNN, partial and full fine-tuning.

Everything runs on the CPU with the tiny preset, on hand-made features or on small synthetic data in
the CIFAR format (whose classes differ in colour and texture, so they are learnable).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10, load_cifar10, make_synthetic_cifar, normalize
from mae_tutorial.evaluate import (
    build_finetune_model,
    evaluate_classifier,
    extract_block_features,
    extract_features,
    finetune,
    fit_linear_probe,
    knn_eval,
    knn_scores,
    layer_decay_param_groups,
    linear_probe,
    make_probe_head,
    topk_accuracy,
    train_classifier,
)
from mae_tutorial.model import MaskedAutoencoder, ViTClassifier
from mae_tutorial.pretrain import lr_at

FT = dict(epochs=1, batch_size=50, base_lr=1e-3, warmup_epochs=0, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> CIFAR10:
    root: Path = make_synthetic_cifar(tmp_path_factory.mktemp("cifar"), 200, 50, seed=0)
    return load_cifar10(root, download=False)


@pytest.fixture
def mae(tiny: MAEConfig) -> MaskedAutoencoder:
    return MaskedAutoencoder(tiny)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


# ------------------------------------------------------------------------------------ features


def test_extract_features_shapes_and_values(mae: MaskedAutoencoder, data: CIFAR10) -> None:
    images = data.test_images[:10]
    classifier = ViTClassifier.from_pretrained(mae)
    mae.train()
    mae.encoder.blocks[0].eval()  # a mixed train/eval state must survive
    for model in (mae, classifier, mae.encoder):
        features = extract_features(model, images, batch_size=4, device="cpu")
        assert features.shape == (10, mae.config.embed_dim)
        assert features.dtype == torch.float32 and not features.requires_grad
    assert mae.training and mae.encoder.training and not mae.encoder.blocks[0].training
    mae.eval()
    with torch.no_grad():
        expected = mae.forward_features(normalize(images))  # (10, D)
    torch.testing.assert_close(extract_features(mae, images, device="cpu"), expected)


def test_extract_features_rejects_float_images(mae: MaskedAutoencoder) -> None:
    with pytest.raises(ValueError, match="uint8"):
        extract_features(mae, torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        extract_features(mae, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), batch_size=0)


def test_topk_accuracy() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(scores, torch.tensor([1, 2, 0]), ks=(1, 2, 5))
    assert acc == pytest.approx({1: 100 / 3, 2: 200 / 3, 5: 100.0})


def test_evaluate_classifier_counts_correct_predictions(data: CIFAR10) -> None:
    labels = data.test_labels  # 50 images
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

    result = evaluate_classifier(Replay(), data.test_images, labels, batch_size=20)
    assert result == pytest.approx({"top1": 60.0, "top5": 100.0})


# -------------------------------------------------------------------------------- linear probe


def test_probe_head_batchnorm_has_no_affine_parameters() -> None:
    head = make_probe_head(8, 3)
    norm, linear = head
    assert isinstance(norm, nn.BatchNorm1d) and not norm.affine
    assert norm.weight is None and norm.bias is None
    assert {id(p) for p in head.parameters()} == {id(linear.weight), id(linear.bias)}


def test_linear_probe_separates_linearly_separable_features() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(5, 16, generator=gen)  # (classes, D)
    labels = torch.arange(600) % 5
    features = centres[labels] + 0.5 * torch.randn(600, 16, generator=gen)  # (N, D)
    head = fit_linear_probe(features[:500], labels[:500], 5, epochs=20, batch_size=100)
    assert not head.training
    with torch.no_grad():
        assert topk_accuracy(head(features[500:]), labels[500:], ks=(1,))[1] == 100.0


def test_linear_probe_on_synthetic_data_beats_chance(mae: MaskedAutoencoder, data: CIFAR10) -> None:
    before = snapshot(mae)
    result = linear_probe(mae, data, epochs=30, batch_size=50, device="cpu")
    assert set(result) == {
        "linprobe_top1", "linprobe_top5", "train_top1", "feature_dim", "last_blocks", "epochs",
        "lr", "seconds",
    }  # fmt: skip
    assert result["feature_dim"] == mae.config.embed_dim and result["epochs"] == 30
    assert result["linprobe_top1"] > 40  # chance is 10
    assert result["linprobe_top5"] >= result["linprobe_top1"]
    assert same(before, snapshot(mae))


def test_linear_probe_of_the_last_blocks_concatenates_their_features(
    mae: MaskedAutoencoder, data: CIFAR10
) -> None:
    result = linear_probe(mae, data, epochs=3, batch_size=50, device="cpu", last_blocks=2)
    assert result["feature_dim"] == 2 * mae.config.embed_dim and result["last_blocks"] == 2
    train, test = (
        extract_block_features(mae, images, device="cpu")[-2:].permute(1, 0, 2).flatten(1)
        for images in (data.train_images, data.test_images)
    )  # (N, 2 * D): the same probe by hand
    head = fit_linear_probe(train, data.train_labels, 10, epochs=3, batch_size=50, seed=0)
    with torch.no_grad():
        expected = topk_accuracy(head(test), data.test_labels)[1]
    assert result["linprobe_top1"] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="last_blocks=9 exceeds the encoder's 2 blocks"):
        linear_probe(mae, data, last_blocks=9)


def test_linear_probe_rejects_bad_values(mae: MaskedAutoencoder, data: CIFAR10) -> None:
    with pytest.raises(ValueError, match="epochs must be an int >= 1, got 0"):
        fit_linear_probe(torch.randn(10, 4), torch.zeros(10, dtype=torch.long), 2, epochs=0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got -5"):
        linear_probe(mae, data, batch_size=-5)


# ------------------------------------------------------------------------------------------ kNN


def test_knn_on_noisy_one_hot_features_is_near_perfect() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(600) % 10
    features = nn.functional.one_hot(labels, 10).float() + 0.2 * torch.randn(600, 10, generator=gen)
    votes = knn_scores(features[:500], labels[:500], features[500:], 10, k=20, chunk_size=7)
    assert votes.shape == (100, 10)
    assert topk_accuracy(votes, labels[500:], ks=(1,))[1] >= 99.0


def test_knn_with_k1_returns_the_label_of_an_identical_training_point() -> None:
    gen = torch.Generator().manual_seed(1)
    bank = torch.randn(50, 8, generator=gen)
    labels = torch.randint(0, 4, (50,), generator=gen)
    votes = knn_scores(bank, labels, 3 * bank[[7, 21, 42]], 4, k=1)  # scale: cosine ignores it
    assert votes.argmax(dim=1).tolist() == labels[[7, 21, 42]].tolist()


def test_knn_weighting_favours_nearer_neighbours() -> None:
    # One close neighbour of class 0, two farther ones of class 1.
    bank = torch.tensor([[1.0, 0.1], [1.0, 0.8], [1.0, -0.8]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    sharp = knn_scores(bank, labels, query, 2, k=3, temperature=0.07)
    flat = knn_scores(bank, labels, query, 2, k=3, temperature=100.0)
    assert sharp.argmax().item() == 0  # exp(sim / T) lets the nearest point outvote two others
    assert flat.argmax().item() == 1  # as T grows the vote becomes a plain majority


def test_knn_eval_on_synthetic_data(mae: MaskedAutoencoder, data: CIFAR10) -> None:
    result = knn_eval(mae, data, k=5, batch_size=64, device="cpu")
    assert set(result) == {"knn_top1", "knn_top5", "k", "temperature", "seconds"}
    assert result["k"] == 5 and result["knn_top1"] > 30  # chance is 10


def test_knn_rejects_bad_values(mae: MaskedAutoencoder, data: CIFAR10) -> None:
    bank, labels = torch.randn(5, 3), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        knn_eval(mae, data, k=0)
    with pytest.raises(ValueError, match="k=6 exceeds the 5 training points"):
        knn_scores(bank, labels, bank, 2, k=6)
    with pytest.raises(ValueError, match="temperature must be a positive number, got 0"):
        knn_scores(bank, labels, bank, 2, temperature=0)


# ---------------------------------------------------------------------------------- fine-tuning


@pytest.mark.parametrize("blocks", [0, 1])
def test_partial_finetuning_changes_only_the_last_blocks(
    mae: MaskedAutoencoder, data: CIFAR10, blocks: int
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
    train_classifier(model, data, **FT)
    after = snapshot(model)
    for prefix in ("encoder.patch_embed.", "encoder.cls_token", "encoder.pos_embed"):
        assert same(before, after, prefix)
    for i in range(depth):
        assert same(before, after, f"encoder.blocks.{i}.") == (i < depth - blocks)
    assert not same(before, after, "encoder.norm.")
    assert not same(before, after, "head.")


def test_full_finetuning_param_groups_decay_per_layer(tiny: MAEConfig) -> None:
    config = dataclasses.replace(tiny, depth=3)
    model = build_finetune_model(MaskedAutoencoder(config), config)
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
    mae: MaskedAutoencoder, data: CIFAR10
) -> None:
    before, flags = snapshot(mae), [p.requires_grad for p in mae.parameters()]
    mae.train()
    torch.manual_seed(123)
    result = finetune(mae, mae.config, data, trainable_blocks=1, **FT)
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


def test_finetune_is_reproducible_and_learns(tiny: MAEConfig, data: CIFAR10) -> None:
    kwargs = dict(FT, epochs=3, base_lr=5e-3, warmup_epochs=1)
    first = finetune(None, tiny, data, **kwargs)
    second = finetune(None, tiny, data, **kwargs)
    assert first["from_scratch"] is True and first["trainable_blocks"] is None
    assert first["history"] == second["history"]
    losses = [epoch["loss"] for epoch in first["history"]]
    assert losses[-1] < losses[0]
    lrs = [epoch["lr"] for epoch in first["history"]]  # at each epoch's last step
    peak = first["lr"]  # 4 steps per epoch, 4 of warmup, 12 in all
    assert lrs == pytest.approx([lr_at(step, 12, 4, peak, 0.0) for step in (3, 7, 11)])


def test_finetune_rejects_bad_values(mae: MaskedAutoencoder, data: CIFAR10) -> None:
    config = mae.config
    with pytest.raises(ValueError, match="trainable_blocks=3 exceeds the encoder's depth=2"):
        finetune(mae, config, data, trainable_blocks=3, **FT)
    with pytest.raises(ValueError, match="trainable_blocks must be an int >= 0, got -1"):
        finetune(mae, config, data, trainable_blocks=-1, **FT)
    with pytest.raises(ValueError, match="epochs must be an int >= 1, got 0"):
        finetune(mae, config, data, **dict(FT, epochs=0))
    with pytest.raises(ValueError, match="warmup_epochs=2 exceeds epochs=1"):
        finetune(mae, config, data, **dict(FT, warmup_epochs=2))
    with pytest.raises(ValueError, match="layer_decay must lie in"):
        finetune(mae, config, data, layer_decay=1.5, **FT)
    with pytest.raises(ValueError, match="amp must be 'auto', True or False, got 'yes'"):
        finetune(mae, config, data, amp="yes", **FT)
    with pytest.raises(ValueError, match=r"embed_dim=64 vs 32"):
        finetune(mae, dataclasses.replace(config, embed_dim=64), data, **FT)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_block_features_end_with_the_encoders_features(pool: str) -> None:
    from mae_tutorial.evaluate import extract_block_features

    config = MAEConfig.from_preset("tiny", pool=pool, depth=3)
    model = MaskedAutoencoder(config)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    blocks = extract_block_features(model, images, batch_size=2, device="cpu")
    assert blocks.shape == (3, 5, config.embed_dim)
    torch.testing.assert_close(blocks[-1], extract_features(model, images, device="cpu"))
    assert not torch.allclose(blocks[0], blocks[1])  # each block changes the tokens
    with pytest.raises(TypeError, match="expected an MAE"):
        extract_block_features(torch.nn.Linear(2, 2), images)
