"""Tests for mae_tutorial.encoder (chapter 4): the per-block hook, one forward path, and the checks
at the door (images and masking noise are refused with a message saying what was expected)."""

from __future__ import annotations

import pytest
import torch

from mae_tutorial import encoder as encoder_module
from mae_tutorial import model as model_module
from mae_tutorial.config import MAEConfig
from mae_tutorial.encoder import MAEEncoder, check_images, check_noise, init_weights
from mae_tutorial.masking import block_noise, grid_noise
from mae_tutorial.model import MaskedAutoencoder


def test_model_module_re_exports_the_encoder() -> None:
    assert model_module.MAEEncoder is MAEEncoder
    assert model_module.init_weights is init_weights
    assert model_module.check_images is check_images


# ---------------------------------------------------------------- on_block


def test_on_block_sees_every_block_output_before_the_final_norm(
    tiny: MAEConfig, make_images
) -> None:
    encoder = MaskedAutoencoder(tiny).encoder.eval()
    images = make_images(tiny, 3)
    seen: list[tuple[int, torch.Tensor]] = []
    with torch.no_grad():
        tokens = encoder(images, on_block=lambda index, t: seen.append((index, t)))
        plain = encoder(images)
    assert [index for index, _ in seen] == list(range(tiny.depth))
    assert all(t.shape == (3, 1 + tiny.num_patches, tiny.embed_dim) for _, t in seen)
    assert torch.equal(tokens, plain), "the hook must not change the result"
    assert torch.equal(encoder.norm(seen[-1][1]), tokens)


def test_on_block_outputs_are_the_blocks_applied_in_turn(tiny: MAEConfig, make_images) -> None:
    encoder = MaskedAutoencoder(tiny).encoder.eval()
    images = make_images(tiny, 2)
    seen: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        encoder(images, on_block=lambda index, t: seen.update({index: t}))
        cls = encoder.cls_token + encoder.pos_embed[:, :1]  # (1, 1, D)
        x = torch.cat([cls.expand(2, -1, -1), encoder.embed(images)], dim=1)  # (B, 1 + L, D)
        for index, block in enumerate(encoder.blocks):
            x = block(x)
            torch.testing.assert_close(seen[index], x, rtol=0, atol=0)


def test_forward_masked_takes_the_same_hook_on_the_visible_tokens(
    tiny: MAEConfig, make_images, make_noise
) -> None:
    encoder = MaskedAutoencoder(tiny).encoder.eval()
    images, noise = make_images(tiny, 2), make_noise(tiny, 2)
    shapes = []
    with torch.no_grad():
        latent, _, _ = encoder.forward_masked(
            images, tiny.mask_ratio, noise, on_block=lambda i, t: shapes.append(tuple(t.shape))
        )
    assert shapes == [(2, 1 + tiny.num_visible, tiny.embed_dim)] * tiny.depth
    assert latent.shape == (2, 1 + tiny.num_visible, tiny.embed_dim)


def test_forward_and_forward_masked_share_one_block_loop(
    tiny: MAEConfig, make_images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """There is no second copy of the forward pass: both paths go through `run_blocks`."""
    encoder = MaskedAutoencoder(tiny).encoder.eval()
    calls = []
    original = MAEEncoder.run_blocks

    def spy(self, x, on_block=None):
        calls.append(x.shape[1])
        return original(self, x, on_block)

    monkeypatch.setattr(MAEEncoder, "run_blocks", spy)
    with torch.no_grad():
        encoder(make_images(tiny, 1))
        encoder.forward_masked(make_images(tiny, 1), tiny.mask_ratio)
        encoder.forward_features(make_images(tiny, 1))
    assert calls == [tiny.num_patches, tiny.num_visible, tiny.num_patches]


def test_hook_gradients_flow(tiny: MAEConfig, make_images) -> None:
    encoder = MaskedAutoencoder(tiny).encoder
    kept = []
    encoder(make_images(tiny, 2), on_block=lambda i, t: kept.append(t))
    kept[0].sum().backward()
    assert encoder.blocks[0].attn.qkv.weight.grad is not None


# ---------------------------------------------------------------- images at the door


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_images_of_another_float_dtype_are_refused(
    tiny: MAEConfig, make_images, dtype: torch.dtype
) -> None:
    model = MaskedAutoencoder(tiny)
    images = make_images(tiny, 2).to(dtype)
    with pytest.raises(TypeError, match=rf"expected torch.float32 images.*got {dtype}"):
        model(images)
    with pytest.raises(TypeError, match="float32"):
        model.encoder(images)
    with pytest.raises(TypeError, match="float32"):
        model.forward_features(images)


def test_float32_images_under_autocast_still_work(tiny: MAEConfig, make_images) -> None:
    model = MaskedAutoencoder(tiny)
    images = make_images(tiny, 2)
    noise = torch.rand(2, tiny.num_patches)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, noise=noise)
    assert torch.isfinite(out.loss)
    reference = model(images, noise=noise)
    torch.testing.assert_close(out.loss.float(), reference.loss, atol=0.05, rtol=0.05)


def test_a_double_model_expects_double_images(tiny: MAEConfig, make_images) -> None:
    model = MaskedAutoencoder(tiny).double()
    assert torch.isfinite(model(make_images(tiny, 2).double()).loss)
    with pytest.raises(TypeError, match="torch.float64 images"):
        model(make_images(tiny, 2))


def test_an_empty_batch_is_refused(tiny: MAEConfig) -> None:
    model = MaskedAutoencoder(tiny)
    empty = torch.zeros(0, tiny.in_chans, tiny.image_size, tiny.image_size)
    with pytest.raises(ValueError, match="at least one image.*B = 0"):
        model(empty)
    with pytest.raises(ValueError, match="B = 0"):
        model.forward_features(empty)


def test_images_that_are_not_tensors_are_refused(tiny: MAEConfig) -> None:
    with pytest.raises(TypeError, match="torch.Tensor, got list"):
        MaskedAutoencoder(tiny)([[0.0]])


# ---------------------------------------------------------------- noise at the door


@pytest.mark.parametrize(
    ("value", "shown"),
    [(float("nan"), "nan"), (float("inf"), "inf"), (-0.5, "-0.5"), (2.0, "2.0"), (7.0, "7.0")],
)
def test_noise_outside_zero_two_is_refused(
    tiny: MAEConfig, make_images, value: float, shown: str
) -> None:
    model = MaskedAutoencoder(tiny)
    noise = torch.rand(2, tiny.num_patches)
    noise[1, 3] = value
    with pytest.raises(ValueError, match=rf"expected finite noise in \[0, 2\).*got {shown}"):
        model(make_images(tiny, 2), noise=noise)


@pytest.mark.parametrize("shape", [(2, 15), (3, 16), (2, 16, 1), (16,)])
def test_noise_of_the_wrong_shape_is_refused(tiny: MAEConfig, make_images, shape) -> None:
    with pytest.raises(ValueError, match=r"expected noise of shape \(B, L\) = \(2, 16\)"):
        MaskedAutoencoder(tiny)(make_images(tiny, 2), noise=torch.rand(shape))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_noise_that_is_not_float_is_refused(tiny: MAEConfig, make_images, dtype) -> None:
    noise = torch.zeros(2, tiny.num_patches, dtype=dtype)
    with pytest.raises(TypeError, match=f"expected float noise.*{dtype}"):
        MaskedAutoencoder(tiny)(make_images(tiny, 2), noise=noise)


def test_the_packages_own_noise_is_accepted(tiny: MAEConfig, make_images) -> None:
    """Uniform noise, and block and grid noise (in [0, 2): removed patches get 1 added)."""
    model = MaskedAutoencoder(tiny)
    images = make_images(tiny, 4)
    gen = torch.Generator().manual_seed(0)
    grid = int(tiny.num_patches**0.5)
    for noise in (
        torch.rand(4, tiny.num_patches),
        torch.rand(4, tiny.num_patches, dtype=torch.float64),
        block_noise(4, grid, tiny.mask_ratio, gen),
        grid_noise(4, grid, 2, gen),
    ):
        assert torch.isfinite(model(images, noise=noise).loss)


def test_noise_values_are_read_on_the_cpu_only(
    tiny: MAEConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CUDA device the check must not synchronise: it goes to torch._assert_async instead of
    reading the values back (simulated here with a tensor that claims to live on CUDA)."""
    asserted = []
    monkeypatch.setattr(torch, "_assert_async", lambda t: asserted.append(t))

    class OnCuda(torch.Tensor):
        @property
        def device(self) -> torch.device:  # type: ignore[override]
            return torch.device("cuda")

        def __bool__(self) -> bool:
            raise AssertionError("the check read a CUDA tensor's value on the host")

    noise = torch.rand(2, tiny.num_patches).as_subclass(OnCuda)
    noise[0, 0] = float("nan")
    check_noise(noise, 2, tiny)
    assert len(asserted) == 1


def test_the_door_checks_cost_little(tiny: MAEConfig, make_images) -> None:
    """The checks are a few comparisons on a (B, L) tensor: far below one forward pass."""
    import time

    config = tiny
    images = make_images(config, 64)
    noise = torch.rand(64, config.num_patches)
    model = MaskedAutoencoder(config)
    start = time.perf_counter()
    for _ in range(20):
        check_images(images, config)
        check_noise(noise, 64, config)
    checks = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(20):
            model(images, noise=noise)
    forward = time.perf_counter() - start
    assert checks < 0.1 * forward, (checks, forward)


def test_the_encoder_module_imports_nothing_above_it() -> None:
    text = open(encoder_module.__file__, encoding="utf-8").read()
    for above in ("mae_tutorial.model", "mae_tutorial.pretrain", "mae_tutorial.evaluate"):
        assert above not in text
