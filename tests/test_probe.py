"""Tests for mae_tutorial.probe (chapter 8): features through the encoder's per-block hook, the
BatchNorm + linear probe, the weighted kNN vote and top-k accuracy.

Everything runs on the CPU with the tiny preset, on hand-made features or on small synthetic data in
the CIFAR format.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10, normalize
from mae_tutorial.model import MaskedAutoencoder, ViTClassifier
from mae_tutorial.probe import (
    extract_block_features,
    extract_features,
    fit_linear_probe,
    knn_scores,
    make_probe_head,
    map_batches,
    topk_accuracy,
)


@pytest.fixture
def mae(tiny: MAEConfig) -> MaskedAutoencoder:
    return MaskedAutoencoder(tiny)


# ------------------------------------------------------------------------------------ features


def test_extract_features_shapes_and_values(mae: MaskedAutoencoder, small_cifar: CIFAR10) -> None:
    images = small_cifar.test_images[:10]
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
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        extract_features(mae, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), batch_size=0)


def test_topk_accuracy() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(scores, torch.tensor([1, 2, 0]), ks=(1, 2, 5))
    assert acc == pytest.approx({1: 100 / 3, 2: 200 / 3, 5: 100.0})


def test_block_features_follow_the_blocks_one_by_one(tiny: MAEConfig) -> None:
    """The hook's per-block tokens, pooled, equal the blocks run by hand (the old way)."""
    model = MaskedAutoencoder(MAEConfig.from_preset("tiny", depth=3)).eval()
    encoder = model.encoder
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        x = encoder.embed(normalize(images))  # (B, L, D)
        cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(len(x), -1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + L, D)
        expected = []
        for number, block in enumerate(encoder.blocks, start=1):
            x = block(x)
            out = encoder.norm(x) if number == len(encoder.blocks) else x
            expected.append(out[:, 1:].mean(dim=1))
    got = extract_block_features(model, images, batch_size=3, device="cpu")
    torch.testing.assert_close(got, torch.stack(expected))


def test_map_batches_keeps_order_and_mode() -> None:
    class Mean(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert not self.training
            return x.mean(dim=(1, 2, 3), keepdim=False)[:, None]  # (b, 1)

    module = Mean().train()
    images = torch.randint(0, 256, (7, 3, 4, 4), dtype=torch.uint8)
    out = map_batches(module, images, lambda m, x: m(x), batch_size=3, device="cpu")
    assert out.shape == (7, 1) and module.training
    torch.testing.assert_close(out[:, 0], normalize(images).mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="amp must be one of"):
        map_batches(module, images, lambda m, x: m(x), amp="yes")


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_block_features_end_with_the_encoders_features(pool: str) -> None:
    config = MAEConfig.from_preset("tiny", pool=pool, depth=3)
    model = MaskedAutoencoder(config)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    blocks = extract_block_features(model, images, batch_size=2, device="cpu")
    assert blocks.shape == (3, 5, config.embed_dim)
    torch.testing.assert_close(blocks[-1], extract_features(model, images, device="cpu"))
    assert not torch.allclose(blocks[0], blocks[1])  # each block changes the tokens
    with pytest.raises(TypeError, match="expected an MAE"):
        extract_block_features(torch.nn.Linear(2, 2), images)


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


def test_linear_probe_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        fit_linear_probe(torch.randn(10, 4), torch.zeros(10, dtype=torch.long), 2, epochs=0)
    with pytest.raises(ValueError, match=r"expected features \(N >= 2, D\)"):
        fit_linear_probe(torch.randn(10, 4), torch.zeros(9, dtype=torch.long), 2)


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


def test_knn_votes_are_exp_of_similarity_over_temperature() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])  # cosine 1, 0 and 1/sqrt(2) with the bank
    votes = knn_scores(bank, labels, query, 3, k=2, temperature=0.5)
    expected = torch.tensor([[torch.e**2, torch.e ** (2**0.5), 0.0]])
    torch.testing.assert_close(votes, expected)


def test_knn_rejects_bad_values() -> None:
    bank, labels = torch.randn(5, 3), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="k=6 exceeds the 5 training points"):
        knn_scores(bank, labels, bank, 2, k=6)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        knn_scores(bank, labels, bank, 2, temperature=0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got nan"):
        knn_scores(bank, labels, bank, 2, temperature=float("nan"))  # all-nan votes otherwise
