"""Tests for mae_tutorial.model: shapes, the encoder never sees masked patches, gradients,
overfitting one batch, input checks, and the classifier built from a pretrained MAE."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mae_tutorial.config import PRESETS, MAEConfig
from mae_tutorial.model import (
    MAEDecoder,
    MAEEncoder,
    MAEOutput,
    MaskedAutoencoder,
    ViTClassifier,
)
from mae_tutorial.patches import patchify, unpatchify


def replace_patches(images: torch.Tensor, config: MAEConfig, where: torch.Tensor) -> torch.Tensor:
    """Images whose patches at `where` (B, L) bool are replaced by fresh random values."""
    patches = patchify(images, config.patch_size)  # (B, L, P*P*C)
    fresh = torch.randn_like(patches) * 3
    mixed = torch.where(where[..., None], fresh, patches)
    return unpatchify(mixed, config.patch_size, config.image_size)


def assert_every_parameter_has_a_gradient(model: torch.nn.Module) -> None:
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_mae_output_shapes(name: str, make_images) -> None:
    config = PRESETS[name]
    model = MaskedAutoencoder(config)
    out = model(make_images(config, 2))
    assert isinstance(out, MAEOutput)
    assert out.loss.shape == ()
    assert torch.isfinite(out.loss)
    assert out.pred.shape == (2, config.num_patches, config.patch_dim)
    assert out.mask.shape == (2, config.num_patches)
    assert out.mask.sum(dim=1).tolist() == [config.num_patches - config.num_visible] * 2


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_encoder_and_decoder_shapes(name: str, make_images, make_noise) -> None:
    config = PRESETS[name]
    encoder, decoder = MAEEncoder(config), MAEDecoder(config)
    images, noise = make_images(config, 2), make_noise(config, 2)
    L, K, D = config.num_patches, config.num_visible, config.embed_dim
    assert encoder(images).shape == (2, 1 + L, D)
    assert encoder.embed(images).shape == (2, L, D)
    latent, mask, ids_restore = encoder.forward_masked(images, config.mask_ratio, noise)
    assert latent.shape == (2, 1 + K, D)
    assert mask.shape == (2, L) and ids_restore.shape == (2, L)
    assert encoder.forward_features(images).shape == (2, D)
    assert decoder(latent, ids_restore).shape == (2, L, config.patch_dim)
    assert encoder.pos_embed.shape == (1, 1 + L, D)
    assert decoder.decoder_pos_embed.shape == (1, 1 + L, config.decoder_embed_dim)


def test_encoder_with_mask_tokens_sees_all_positions(
    tiny: MAEConfig, make_images, make_noise
) -> None:
    config = dataclasses.replace(tiny, mask_token_in_encoder=True)
    model = MaskedAutoencoder(config)
    images, noise = make_images(config, 2), make_noise(config, 2)
    latent, mask, ids_restore = model.encoder.forward_masked(images, config.mask_ratio, noise)
    assert latent.shape == (2, 1 + config.num_patches, config.embed_dim)
    assert model.decoder(latent, ids_restore).shape == (2, config.num_patches, config.patch_dim)
    assert model(images, noise=noise).pred.shape == (2, config.num_patches, config.patch_dim)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_forward_features_pools_as_configured(tiny: MAEConfig, make_images, pool: str) -> None:
    config = dataclasses.replace(tiny, pool=pool)
    model = MaskedAutoencoder(config).eval()
    images = make_images(config, 2)
    tokens = model.encoder(images)  # (B, 1 + L, D)
    expected = tokens[:, 1:].mean(dim=1) if pool == "mean" else tokens[:, 0]
    torch.testing.assert_close(model.forward_features(images), expected)
    torch.testing.assert_close(model.encoder.forward_features(images), expected)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_classifier_shapes(name: str, make_images) -> None:
    config = PRESETS[name]
    images = make_images(config, 2)
    assert ViTClassifier(config)(images).shape == (2, 10)
    assert ViTClassifier(config, num_classes=7)(images).shape == (2, 7)
    mae = MaskedAutoencoder(config)
    assert ViTClassifier.from_pretrained(mae, num_classes=5)(images).shape == (2, 5)


def test_every_model_keeps_its_config(tiny: MAEConfig) -> None:
    mae = MaskedAutoencoder(tiny)
    for model in (
        mae,
        mae.encoder,
        mae.decoder,
        MAEEncoder(tiny),
        MAEDecoder(tiny),
        ViTClassifier(tiny),
    ):
        assert model.config == tiny
    assert ViTClassifier.from_pretrained(mae).config == tiny


def test_position_tables_are_buffers_not_parameters(tiny: MAEConfig) -> None:
    model = MaskedAutoencoder(tiny)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    assert "encoder.pos_embed" in buffers and "decoder.decoder_pos_embed" in buffers
    assert not any("pos_embed" in name for name in params)
    assert "encoder.pos_embed" in model.state_dict()  # saved with checkpoints, all the same


def test_mask_is_the_argsort_of_the_noise(tiny: MAEConfig, make_images, make_noise) -> None:
    model = MaskedAutoencoder(tiny)
    noise = make_noise(tiny, 2)
    out = model(make_images(tiny, 2), noise=noise)
    kept = torch.argsort(noise, dim=1)[:, : tiny.num_visible]
    expected = torch.ones(2, tiny.num_patches).scatter(1, kept, 0.0)  # 1 = removed
    assert torch.equal(out.mask, expected)


def test_mask_ratio_argument_overrides_the_configs(
    tiny: MAEConfig, make_images, make_noise
) -> None:
    model = MaskedAutoencoder(tiny)
    images, noise = make_images(tiny, 2), make_noise(tiny, 2)
    own = model(images, noise=noise)
    torch.testing.assert_close(
        model(images, noise=noise, mask_ratio=tiny.mask_ratio).loss, own.loss
    )
    low = model(images, noise=noise, mask_ratio=0.25).mask  # (B, L)
    assert low.sum(dim=1).tolist() == [tiny.num_patches // 4] * 2
    assert torch.all(own.mask >= low)  # one noise: a higher ratio removes a superset


# ---------------------------------------------------------------- the encoder never sees masked patches


@pytest.mark.parametrize("mask_token_in_encoder", [False, True])
def test_masked_pixels_do_not_change_the_prediction(
    tiny: MAEConfig, make_images, make_noise, mask_token_in_encoder: bool
) -> None:
    config = dataclasses.replace(tiny, mask_token_in_encoder=mask_token_in_encoder)
    model = MaskedAutoencoder(config).eval()
    images, noise = make_images(config, 3), make_noise(config, 3)
    with torch.no_grad():
        out = model(images, noise=noise)
        changed_images = replace_patches(images, config, out.mask == 1)
        assert not torch.equal(changed_images, images)
        changed = model(changed_images, noise=noise)
    assert torch.equal(changed.mask, out.mask)
    torch.testing.assert_close(changed.pred, out.pred, atol=1e-6, rtol=0)
    assert not torch.isclose(changed.loss, out.loss)  # the targets did change


@pytest.mark.parametrize("mask_token_in_encoder", [False, True])
def test_a_visible_patch_does_change_the_prediction(
    tiny: MAEConfig, make_images, make_noise, mask_token_in_encoder: bool
) -> None:
    config = dataclasses.replace(tiny, mask_token_in_encoder=mask_token_in_encoder)
    model = MaskedAutoencoder(config).eval()
    images, noise = make_images(config, 2), make_noise(config, 2)
    with torch.no_grad():
        out = model(images, noise=noise)
        one_visible = torch.zeros_like(out.mask, dtype=torch.bool)
        one_visible[0, (out.mask[0] == 0).nonzero()[0]] = True
        changed = model(replace_patches(images, config, one_visible), noise=noise)
    assert (changed.pred[0] - out.pred[0]).abs().max() > 1e-4
    torch.testing.assert_close(
        changed.pred[1], out.pred[1], atol=1e-6, rtol=0
    )  # samples independent


def test_masked_pixels_get_no_gradient(tiny: MAEConfig, make_images, make_noise) -> None:
    # The gradient of the prediction with respect to the input is zero on masked patches.
    model = MaskedAutoencoder(tiny)
    images = make_images(tiny, 2).requires_grad_()
    out = model(images, noise=make_noise(tiny, 2))
    out.pred.square().sum().backward()
    per_patch = patchify(images.grad, tiny.patch_size).abs().sum(-1)  # (B, L)
    assert (per_patch[out.mask == 1] == 0).all()
    assert (per_patch[out.mask == 0] > 0).all()


# ---------------------------------------------------------------- gradients


def test_every_mae_parameter_gets_a_gradient(tiny: MAEConfig, make_images) -> None:
    model = MaskedAutoencoder(tiny)
    model(make_images(tiny, 4)).loss.backward()
    assert_every_parameter_has_a_gradient(model)


def test_every_mae_parameter_gets_a_gradient_with_mask_tokens_in_encoder(
    tiny: MAEConfig, make_images
) -> None:
    model = MaskedAutoencoder(dataclasses.replace(tiny, mask_token_in_encoder=True))
    model(make_images(tiny, 4)).loss.backward()
    assert_every_parameter_has_a_gradient(model)


def test_every_classifier_parameter_gets_a_gradient(tiny: MAEConfig, make_images) -> None:
    model = ViTClassifier(tiny)
    logits = model(make_images(tiny, 4))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert_every_parameter_has_a_gradient(model)


# ---------------------------------------------------------------- training and determinism


def test_tiny_preset_overfits_one_batch(tiny: MAEConfig) -> None:
    """The chapter-6 sanity check: with the mask fixed, the model memorises one small batch."""
    torch.manual_seed(0)
    model = MaskedAutoencoder(tiny)
    # Smooth images (4x4 random colours, bilinearly upsampled): structure to learn, like photos.
    coarse = torch.randn(8, tiny.in_chans, 4, 4)
    images = F.interpolate(coarse, size=tiny.image_size, mode="bilinear", align_corners=False)
    noise = torch.rand(8, tiny.num_patches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = model(images, noise=noise).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.5  # a real starting error, not an already-solved problem
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])


def test_same_seed_and_noise_give_identical_outputs(
    tiny: MAEConfig, make_images, make_noise
) -> None:
    images, noise = make_images(tiny, 2), make_noise(tiny, 2)
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        outputs.append(MaskedAutoencoder(tiny)(images, noise=noise))
    first, second = outputs
    assert torch.equal(first.pred, second.pred)
    assert torch.equal(first.mask, second.mask)
    assert torch.equal(first.loss, second.loss)


def test_same_seed_without_noise_gives_identical_masks(tiny: MAEConfig, make_images) -> None:
    model = MaskedAutoencoder(tiny)
    images = make_images(tiny, 4)
    torch.manual_seed(7)
    first = model(images)
    torch.manual_seed(7)
    second = model(images)
    assert torch.equal(first.mask, second.mask) and torch.equal(first.pred, second.pred)
    third = model(images)  # the RNG moved on: a new mask
    assert not torch.equal(first.mask, third.mask)


def test_different_seeds_give_different_weights(tiny: MAEConfig) -> None:
    torch.manual_seed(1)
    a = MaskedAutoencoder(tiny)
    torch.manual_seed(2)
    b = MaskedAutoencoder(tiny)
    assert not torch.equal(a.encoder.patch_embed.proj.weight, b.encoder.patch_embed.proj.weight)


def test_initialisation_follows_the_official_code(tiny: MAEConfig) -> None:
    model = MaskedAutoencoder(tiny)
    linear = model.encoder.blocks[0].attn.qkv
    bound = (6 / (linear.in_features + linear.out_features)) ** 0.5  # xavier-uniform
    assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.9 * bound
    assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    assert model.encoder.cls_token.std().item() == pytest.approx(0.02, rel=0.5)
    assert model.decoder.mask_token.std().item() == pytest.approx(0.02, rel=0.5)
    norm = model.encoder.norm
    assert (
        torch.equal(norm.weight, torch.ones_like(norm.weight)) and norm.eps == tiny.layer_norm_eps
    )


# ---------------------------------------------------------------- bad input


def test_wrong_channel_count_raises(tiny: MAEConfig) -> None:
    model = MaskedAutoencoder(tiny)
    with pytest.raises(ValueError, match=r"3.*\(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(2, 1, 32, 32\)"):
        ViTClassifier(tiny)(torch.randn(2, 1, 32, 32))


def test_wrong_image_size_raises(tiny: MAEConfig) -> None:
    model = MaskedAutoencoder(tiny)
    with pytest.raises(ValueError, match=r"32.*\(2, 3, 16, 16\)"):
        model(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(2, 3, 32, 48\)"):
        model.forward_features(torch.randn(2, 3, 32, 48))


def test_wrong_rank_raises(tiny: MAEConfig) -> None:
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        MaskedAutoencoder(tiny)(torch.randn(3, 32, 32))


def test_uint8_images_raise_type_error(tiny: MAEConfig) -> None:
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8"):
        MaskedAutoencoder(tiny)(images)
    with pytest.raises(TypeError, match="uint8"):
        ViTClassifier(tiny)(images)


def test_wrong_noise_shape_raises(tiny: MAEConfig, make_images) -> None:
    with pytest.raises(ValueError, match="noise"):
        MaskedAutoencoder(tiny)(make_images(tiny, 2), noise=torch.rand(2, 64))


def test_constructor_checks(tiny: MAEConfig) -> None:
    with pytest.raises(TypeError, match="dict"):
        MaskedAutoencoder(tiny.to_dict())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="0"):
        ViTClassifier(tiny, num_classes=0)


# ---------------------------------------------------------------- ViTClassifier.from_pretrained


def test_from_pretrained_copies_the_encoder_exactly(tiny: MAEConfig, make_images) -> None:
    mae = MaskedAutoencoder(tiny)
    with torch.no_grad():  # move every weight off its initial value, so a copy is not a coincidence
        for param in mae.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    classifier = ViTClassifier.from_pretrained(mae, num_classes=10)
    ours, theirs = classifier.encoder.state_dict(), mae.encoder.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    images = make_images(tiny, 2)
    mae.eval(), classifier.eval()
    torch.testing.assert_close(
        classifier.encoder.forward_features(images), mae.forward_features(images), atol=0, rtol=0
    )


def test_from_pretrained_weights_are_copies_not_shared(tiny: MAEConfig) -> None:
    mae = MaskedAutoencoder(tiny)
    classifier = ViTClassifier.from_pretrained(mae)
    before = mae.encoder.patch_embed.proj.weight.clone()
    for a, b in zip(classifier.encoder.parameters(), mae.encoder.parameters()):
        assert a.data_ptr() != b.data_ptr()
    with torch.no_grad():
        for param in classifier.encoder.parameters():
            param.add_(1.0)
    assert torch.equal(mae.encoder.patch_embed.proj.weight, before)


def test_from_pretrained_head_is_fresh(tiny: MAEConfig) -> None:
    mae = MaskedAutoencoder(tiny)
    head = ViTClassifier.from_pretrained(mae, num_classes=10).head
    assert head.weight.shape == (10, tiny.embed_dim)
    assert torch.equal(head.bias, torch.zeros(10))
    assert 1e-5 < head.weight.std().item() < 4e-5  # the official head init: std 2e-5
    other = ViTClassifier.from_pretrained(mae, num_classes=10).head
    assert not torch.equal(head.weight, other.weight)  # drawn afresh each time


def test_from_pretrained_drop_path_reaches_the_blocks(tiny: MAEConfig) -> None:
    mae = MaskedAutoencoder(dataclasses.replace(tiny, depth=3))
    classifier = ViTClassifier.from_pretrained(mae, drop_path=0.2)
    assert classifier.config.drop_path == 0.2
    rates = [block.drop_path.p for block in classifier.encoder.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])  # linearly increasing, as in the official code
    assert mae.config.drop_path == 0.0  # the MAE's config is untouched
    assert all(block.drop_path.p == 0.0 for block in mae.encoder.blocks)
    # Without an override the MAE's own rate is kept.
    assert ViTClassifier.from_pretrained(mae).config.drop_path == 0.0


def test_classifier_drop_path_changes_training_outputs_only(tiny: MAEConfig, make_images) -> None:
    mae = MaskedAutoencoder(tiny)
    classifier = ViTClassifier.from_pretrained(mae, drop_path=0.5)
    with torch.no_grad():
        classifier.head.weight.normal_()  # a visible head, so feature changes show in logits
    images = make_images(tiny, 8)
    classifier.eval()
    assert torch.equal(classifier(images), classifier(images))
    classifier.train()
    assert not torch.equal(classifier(images), classifier(images))


# ---------------------------------------------------------------- fill_and_unshuffle


def test_fill_and_unshuffle_puts_every_token_at_its_patch(tiny: MAEConfig) -> None:
    """Label the visible tokens with their patch index and the mask token with -1: after
    unshuffling, each visible place holds its own index and each removed place -1."""
    decoder = MAEDecoder(dataclasses.replace(tiny, decoder_embed_dim=4, decoder_num_heads=1))
    B, L, K = 3, tiny.num_patches, tiny.num_visible
    noise = torch.rand(B, L)
    ids_shuffle = noise.argsort(1)
    ids_restore = ids_shuffle.argsort(1)
    kept = ids_shuffle[:, :K].float()[..., None].expand(-1, -1, 4)  # (B, K, E): patch index
    x = torch.cat([torch.full((B, 1, 4), 100.0), kept], dim=1)  # (B, 1 + K, E), cls = 100
    with torch.no_grad():
        decoder.mask_token.fill_(-1.0)
        out = decoder.fill_and_unshuffle(x, ids_restore)
    assert out.shape == (B, 1 + L, 4)
    assert (out[:, 0] == 100).all(), "the cls token stays first"
    mask = torch.ones(B, L)
    mask.scatter_(1, ids_shuffle[:, :K], 0.0)  # 1 = removed
    places = out[:, 1:, 0]  # (B, L)
    positions = torch.arange(L).float().expand(B, L)
    assert torch.equal(places[mask == 0], positions[mask == 0])
    assert (places[mask == 1] == -1).all()


def test_decoder_forward_goes_through_fill_and_unshuffle(
    tiny: MAEConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = MAEDecoder(tiny)
    calls = []
    original = MAEDecoder.fill_and_unshuffle

    def spy(self, x, ids_restore):
        calls.append(tuple(x.shape))
        return original(self, x, ids_restore)

    monkeypatch.setattr(MAEDecoder, "fill_and_unshuffle", spy)
    latent = torch.randn(2, 1 + tiny.num_visible, tiny.embed_dim)
    decoder(latent, torch.rand(2, tiny.num_patches).argsort(1))
    assert calls == [(2, 1 + tiny.num_visible, tiny.decoder_embed_dim)]


def test_fill_and_unshuffle_leaves_the_mask_token_ablation_alone(tiny: MAEConfig) -> None:
    decoder = MAEDecoder(dataclasses.replace(tiny, mask_token_in_encoder=True))
    x = torch.randn(2, 1 + tiny.num_patches, tiny.decoder_embed_dim)
    assert decoder.fill_and_unshuffle(x, torch.rand(2, tiny.num_patches).argsort(1)) is x


# ---------------------------------------------------------------- from_pretrained


def test_from_pretrained_loads_the_shipped_model_as_pretrained_does() -> None:
    from mae_tutorial.pretrained import pretrained

    ours = MaskedAutoencoder.from_pretrained("cifar10-cpu")
    theirs = pretrained("cifar10-cpu")
    assert isinstance(ours, MaskedAutoencoder) and not ours.training
    assert ours.config == theirs.config
    mine, other = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(other)
    for key in mine:
        assert mine[key].dtype == torch.float32, key
        assert torch.equal(mine[key], other[key]), key
    assert MaskedAutoencoder.from_pretrained().config == ours.config  # "cifar10-cpu" by default


def test_from_pretrained_unknown_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ValueError, match=r"no shipped model named 'nope'.*cifar10-cpu"):
        MaskedAutoencoder.from_pretrained("nope")


@pytest.mark.parametrize(
    ("num_classes", "pattern"),
    [(0, r"\[1, 100000\], got 0"), (10**9, "got 1000000000"), (2.0, "integer"), (True, "True")],
)
def test_classifier_head_size_is_checked_before_allocation(
    tiny: MAEConfig, num_classes, pattern: str
) -> None:
    with pytest.raises(ValueError, match=pattern):
        ViTClassifier(tiny, num_classes=num_classes)


def test_classifier_refuses_a_config_that_is_not_one(tiny: MAEConfig) -> None:
    with pytest.raises(TypeError, match="expected an MAEConfig, got dict"):
        ViTClassifier(tiny.to_dict())  # type: ignore[arg-type]
