"""Checks for the chapters' exercises: is a student's function right, without showing the answer.

Every exercise that asks for a function has a check here, named after it:
`check_patchify(my_patchify)` calls the student's function on several random inputs, edge cases
included, and compares each result with the package's own implementation (or, for chapter 0, which
builds no module, with the chapter's). On success it prints one line; on the first difference it
raises `ExerciseFailed`, an `AssertionError`, whose message says which input failed and what differs:
the shape, the value at the first differing index, and, where it recognises a common mistake (a
transposed layout, the opposite mask convention, a loss over every patch), its name. A function
that changes one of the tensors it was given in place fails too: callers still need their inputs.
It never shows the reference code. `NotImplementedError` from an unfinished stub passes through unchanged.

Printing is deliberate here and nowhere else in the package: a check is called from a notebook cell
for its message, as a unit test would be from a terminal.

Checks draw their inputs from their own seeded generators and leave the global RNG as they found
it, so calling one does not change what later cells draw.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mae_tutorial.attention import attention_weights
from mae_tutorial.config import MAEConfig
from mae_tutorial.losses import masked_mse_loss, normalize_patches
from mae_tutorial.masking import gather_tokens, random_masking
from mae_tutorial.model import MAEDecoder, MAEEncoder, MaskedAutoencoder, ViTClassifier
from mae_tutorial.patches import patchify, unpatchify

__all__ = [
    "ExerciseFailed",
    "check_attention_weights",
    "check_encoder_flops",
    "check_causal_attention",
    "check_fill_and_unshuffle",
    "check_forward_masked",
    "check_grid_noise",
    "check_inverse_permutation",
    "check_knn_scores",
    "check_layer_decay_groups",
    "check_lr_schedule",
    "check_mask_token_fill",
    "check_masked_mse_loss",
    "check_normalize_patches",
    "check_param_groups",
    "check_psnr",
    "check_paste_visible",
    "check_patchify",
    "check_patch_mask",
    "check_random_masking",
    "check_topk_accuracy",
    "check_train_step",
    "check_unpatchify",
]


class ExerciseFailed(AssertionError):
    """A student's function disagrees with the reference; the message says where and how."""


# ------------------------------------------------------------------------------------ helpers


@contextmanager
def _private_rng() -> Iterator[None]:
    """Seed the global RNG for building reference models, and restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else repr(value)


def _fail(name: str, case: str, problem: str, hint: str | None = None) -> ExerciseFailed:
    message = f"{name} failed on {case}: {problem}"
    if hint:
        message += f"\nHint: {hint}"
    return ExerciseFailed(message)


def _argument(fn: Callable[..., Any], position: int) -> str:
    """The name of `fn`'s parameter at `position`, for messages."""
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        names = []
    return f"`{names[position]}`" if position < len(names) else f"number {position + 1}"


def _unchanged(before: torch.Tensor, after: torch.Tensor) -> bool:
    if before.shape != after.shape or before.dtype != after.dtype:
        return False
    return bool(((before == after) | (before.isnan() & after.isnan())).all())


def _call(name: str, case: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the student's function on copies of the inputs, naming the case if it crashes, and
    fail if it changed one of the tensors it was given: a caller's data must survive the call."""
    given = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    try:
        result = fn(*given, **kwargs)
    except (NotImplementedError, ExerciseFailed):
        raise
    except Exception as err:
        raise _fail(name, case, f"your function raised {type(err).__name__}: {err}") from err
    for position, (original, passed) in enumerate(zip(args, given)):
        if isinstance(original, torch.Tensor) and not _unchanged(original, passed):
            raise _fail(
                name,
                case,
                f"your function changed its input {_argument(fn, position)} in place",
                "leave the inputs as they are: compute the result in a new tensor "
                "(out-of-place operations, or work on a .clone())",
            )
    return result


def _index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol)


def _compare(
    name: str,
    case: str,
    got: Any,
    expected: torch.Tensor,
    *,
    what: str = "the result",
    mistakes: dict[str, torch.Tensor] | None = None,
    hint: Callable[[torch.Tensor, torch.Tensor], str | None] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Raise ExerciseFailed unless `got` matches `expected` in shape and values.

    `mistakes` maps the name of a known wrong answer to what that wrong answer returns; when `got`
    matches one, the message names it. `hint` may diagnose layouts from (got, expected).
    """
    if not isinstance(got, torch.Tensor):
        raise _fail(name, case, f"{what} should be a tensor, got {type(got).__name__}")
    known = None
    for mistake, wrong in (mistakes or {}).items():
        if got.shape == wrong.shape and not _close(wrong, expected, atol, rtol):
            if _close(got, wrong, atol, rtol) or (got.isnan().any() and wrong.isnan().any()):
                known = mistake
                break
    if got.shape != expected.shape:
        problem = f"{what} has shape {_shape(got)}, expected {_shape(expected)}"
        if got.numel() == expected.numel():
            problem += " (the same number of elements: a reshape or transpose in the wrong place?)"
        raise _fail(name, case, problem, known)
    if got.isnan().any() and not expected.isnan().any():
        where = _index(int(got.isnan().flatten().nonzero()[0]), got.shape)
        raise _fail(name, case, f"{what} contains NaN, first at index {where}", known)
    if not _close(got, expected, atol, rtol):
        g, e = got.double(), expected.double()
        wrong = ~torch.isclose(g, e, atol=atol, rtol=rtol)
        first = int(wrong.flatten().nonzero()[0])
        where = _index(first, got.shape)
        if got.numel() == 1:
            problem = f"{what} is {g.item():.6g}, expected {e.item():.6g}"
        else:
            problem = (
                f"{what}: {int(wrong.sum())} of {got.numel()} values differ; first at index "
                f"{where}: yours {g.flatten()[first].item():.6g}, "
                f"expected {e.flatten()[first].item():.6g}"
            )
        raise _fail(name, case, problem, known or (hint(got, expected) if hint else None))


def _vector_hint(inside: str, order: str) -> Callable[[torch.Tensor, torch.Tensor], str | None]:
    """Diagnose (B, L, X) tensors: right vectors in the wrong order, or right numbers in a vector
    in the wrong order."""

    def hint(got: torch.Tensor, expected: torch.Tensor) -> str | None:
        g, e = got.double(), expected.double()
        if g.ndim == 3 and torch.allclose(g.sort(-1).values, e.sort(-1).values, atol=1e-6):
            return f"each vector holds the right numbers in another order: {inside}"
        if g.ndim == 3 and torch.allclose(g.sort(1).values, e.sort(1).values, atol=1e-6):
            return f"the right vectors, in another order: {order}"
        if torch.allclose(g.flatten().sort().values, e.flatten().sort().values, atol=1e-6):
            return "all the right numbers, at the wrong places: check the layout"
        return None

    return hint


def _passed(name: str, cases: int, covers: str) -> None:
    print(f"{name} passed: {cases} cases agree with the reference, including {covers}.")


# ---------------------------------------------------------------------- chapter 0: the prelude


def _psnr(filled: torch.Tensor, images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    # The chapter's masked_mse, then PSNR for a peak value of 1.
    squared = (filled - images) ** 2 * removed  # (B, C, H, W)
    mse = squared.sum((1, 2, 3)) / (removed.sum((1, 2, 3)) * images.shape[1])  # (B,)
    return -10 * mse.log10()


def _pixel_masks(batch: int, size: int, p: int, seed: int) -> torch.Tensor:
    """(B, 1, H, W) pixel masks of whole removed P x P patches, 1 = removed."""
    grid = size // p
    mask = (torch.rand(batch, grid * grid, generator=_gen(seed)) < 0.6).float()
    mask[:, 0], mask[:, -1] = 1.0, 0.0
    return unpatchify(mask[..., None].expand(-1, -1, p * p), p, size)


def check_psnr(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 0.4: `fn(filled, images, removed)`, the PSNR in dB of each filled image on its
    removed pixels, for images in [0, 1]: -10 log10(mean squared error over the removed pixels
    and the channels).

    Shapes:
        filled, images: (B, C, H, W), removed: (B, 1, H, W) with 1 = removed -> (B,).
    """
    name = "check_psnr"
    cases = [(2, 3, 8, 4), (1, 1, 8, 2), (3, 3, 32, 4), (2, 3, 4, 1)]
    for number, (batch, chans, size, p) in enumerate(cases):
        gen = _gen(10 + number)
        images = torch.rand(batch, chans, size, size, generator=gen)
        removed = _pixel_masks(batch, size, p, 20 + number)
        filled = images * (1 - removed) + torch.rand(images.shape, generator=gen) * removed
        case = f"images of shape {(batch, chans, size, size)} and {p}x{p} patches removed"
        expected = _psnr(filled, images, removed)
        everywhere = -10 * ((filled - images) ** 2).mean((1, 2, 3)).log10()
        mistakes = {
            "measure the error on the removed pixels only": everywhere,
            "PSNR is 10 log10(1 / MSE) for a peak of 1 (20 log10 goes with the root of the MSE)": (
                2 * expected
            ),
            "average over the channels too: divide by the number of removed pixels times C": (
                expected - 10 * math.log10(chans)
            ),
            "one PSNR per image, not one for the whole batch": expected.mean().expand(batch),
        }
        got = _call(name, case, fn, filled, images, removed)
        if isinstance(got, torch.Tensor) and got.numel() == 1 and batch > 1:
            raise _fail(name, case, f"one number for {batch} images", "return one PSNR per image")
        _compare(name, case, got, expected, what="the PSNR", mistakes=mistakes, atol=1e-4)
    _passed(name, len(cases), "one channel and single-pixel patches")


def check_patch_mask(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """Exercise 0.5: `fn(removed, patch_size)` turns a pixel mask into a patch mask: a patch
    counts as removed when any of its pixels is, and patches are numbered row by row.

    Shapes:
        removed: (B, 1, H, W) with 1 = removed -> (B, L) with L = (H/P) * (W/P).
    """
    name = "check_patch_mask"
    cases = [(2, 8, 4), (1, 8, 2), (3, 32, 4), (2, 6, 3), (1, 4, 1), (1, 4, 4)]
    for number, (batch, size, p) in enumerate(cases):
        removed = (torch.rand(batch, 1, size, size, generator=_gen(30 + number)) < 0.2).float()
        removed[:, :, :p, :p] = 1.0  # the first patch entirely removed
        case = f"a pixel mask of shape {(batch, 1, size, size)} (scattered pixels), patch_size={p}"
        pooled = F.max_pool2d(removed, p)  # (B, 1, H/P, W/P)
        expected = pooled.flatten(1)  # (B, L)
        mistakes = {
            "number the patches row by row: patch i sits at grid row i // (W/P), column i % (W/P)": (
                pooled.transpose(2, 3).flatten(1)
            ),
            "a patch counts as removed when ANY of its pixels is removed (a 0/1 mask)": F.avg_pool2d(
                removed, p
            ).flatten(1),
            "a patch counts as removed when ANY of its pixels is removed, not only when all are": (
                -F.max_pool2d(-removed, p)
            ).flatten(1),
        }
        got = _call(name, case, fn, removed, p)
        if isinstance(got, torch.Tensor) and got.dtype == torch.bool:
            got = got.float()
        _compare(name, case, got, expected, what="the patch mask", mistakes=mistakes)
    _passed(name, len(cases), "scattered pixels, P = 1 and a single patch per image")


# ------------------------------------------------------------------ chapter 1: patches, positions


_PATCH_LAYOUT = "lay each patch out as (row in patch, column in patch, channel), einops '(p1 p2 c)'"
_PATCH_ORDER = "number the patches row by row over the image, einops '(h w)'"


def check_patchify(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """Exercise 1.4: `fn(images, patch_size)` against `mae_tutorial.patches.patchify`.

    Shapes:
        images: (B, C, H, W) -> (B, L, P*P*C).
    """
    name = "check_patchify"
    cases = [(2, 3, 8, 8, 4), (1, 1, 6, 6, 3), (2, 3, 4, 8, 2), (1, 3, 4, 4, 4), (2, 2, 3, 3, 1)]
    for number, (batch, chans, height, width, p) in enumerate(cases):
        images = torch.randn(batch, chans, height, width, generator=_gen(30 + number))
        case = f"images of shape {(batch, chans, height, width)}, patch_size={p}"
        expected = patchify(images, p)
        got = _call(name, case, fn, images, p)
        hint = _vector_hint(_PATCH_LAYOUT, _PATCH_ORDER)
        _compare(name, case, got, expected, what="the patches", hint=hint)
    _passed(name, len(cases), "one channel, a non-square image, one patch per image and P = 1")


def check_unpatchify(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    """Exercise 1.5: `fn(patches, patch_size, image_size)` against `unpatchify`.

    Shapes:
        patches: (B, L, P*P*C) -> (B, C, H, W) with H = W = image_size.
    """
    name = "check_unpatchify"
    cases = [(2, 3, 8, 4), (1, 1, 6, 3), (2, 3, 4, 4), (1, 2, 3, 1), (2, 3, 32, 4)]
    for number, (batch, chans, size, p) in enumerate(cases):
        images = torch.randn(batch, chans, size, size, generator=_gen(40 + number))
        patches = patchify(images, p)
        case = (
            f"patches of shape {_shape(patches)} (C = {chans}), patch_size={p}, image_size={size}"
        )
        got = _call(name, case, fn, patches, p, size)
        grid = size // p
        mistakes = {
            _PATCH_LAYOUT.replace("lay", "read"): rearrange(
                patches, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=grid, p1=p, p2=p
            ),
            _PATCH_ORDER.replace("number", "the patches are numbered").replace(
                "the patches row", "row"
            ): rearrange(patches, "b (h w) (p1 p2 c) -> b c (w p1) (h p2)", h=grid, p1=p, p2=p),
        }
        _compare(name, case, got, images, what="the images", mistakes=mistakes)
    _passed(name, len(cases), "one channel, one patch per image and P = 1")


# -------------------------------------------------------------------------- chapter 2: attention


def check_attention_weights(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 2.4: `fn(q, k)` against `mae_tutorial.attention.attention_weights`.

    Shapes:
        q, k: (B, h, N, d) -> (B, h, N, N), each row summing to 1.
    """
    name = "check_attention_weights"
    cases = [(2, 3, 5, 4), (1, 1, 1, 8), (2, 2, 7, 16), (1, 4, 3, 2), (1, 1, 6, 64)]
    for number, (batch, heads, n, d) in enumerate(cases):
        gen = _gen(50 + number)
        q, k = torch.randn(2, batch, heads, n, d, generator=gen) * 2
        case = f"q and k of shape {(batch, heads, n, d)}"
        expected = attention_weights(q, k)
        scores = q @ k.transpose(-2, -1)  # (B, h, N, N)
        mistakes = {
            "scale the scores by 1/sqrt(d) before the softmax": scores.softmax(-1),
            "scale by 1/sqrt(d), not 1/d": (scores / d).softmax(-1),
            "the softmax runs over the keys (the last dimension): each row sums to 1": (
                scores / math.sqrt(d)
            ).softmax(-2),
            "query-key products, not key-query: the weights are transposed": expected.transpose(
                -2, -1
            ),
        }
        got = _call(name, case, fn, q, k)
        _compare(name, case, got, expected, what="the attention weights", mistakes=mistakes)
    _passed(name, len(cases), "a single token and a single head")


def check_causal_attention(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """Exercise 2.1: `fn(q, k, v)` against `F.scaled_dot_product_attention(..., is_causal=True)`.

    Shapes:
        q, k, v: (B, h, N, d) -> (B, h, N, d).
    """
    name = "check_causal_attention"
    cases = [(2, 3, 5, 4), (1, 1, 1, 8), (2, 2, 9, 16), (1, 4, 2, 2)]
    for number, (batch, heads, n, d) in enumerate(cases):
        q, k, v = torch.randn(3, batch, heads, n, d, generator=_gen(60 + number))
        case = f"q, k and v of shape {(batch, heads, n, d)}"
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mistakes = {
            "token i may attend only to tokens j <= i: the future is not masked": (
                F.scaled_dot_product_attention(q, k, v)
            ),
            "you masked the past instead of the future (tril instead of triu)": (
                F.scaled_dot_product_attention(q.flip(-2), k.flip(-2), v.flip(-2), is_causal=True)
            ).flip(-2),
        }
        if n > 1:
            mistakes["a token must attend to itself: mask strictly above the diagonal"] = (
                torch.full((batch, heads, n, d), float("nan"))
            )
        got = _call(name, case, fn, q, k, v)
        _compare(name, case, got, expected, what="the output", mistakes=mistakes)
    _passed(name, len(cases), "a single token")


# ----------------------------------------------------------------------------- chapter 3: masking


def _distinct_noise(batch: int, length: int, seed: int) -> torch.Tensor:
    """Uniform-looking noise without ties, so the order it sorts into is unambiguous."""
    gen = _gen(seed)
    ranks = torch.stack([torch.randperm(length, generator=gen) for _ in range(batch)])
    return (ranks.float() + 0.5) / length  # (B, L) in (0, 1)


def check_random_masking(
    fn: Callable[[torch.Tensor, float, torch.Tensor], tuple[torch.Tensor, ...]],
) -> None:
    """Exercise 3.1: `fn(x, mask_ratio, noise)` against `mae_tutorial.masking.random_masking`;
    `x` and `noise` must come back unchanged.

    Shapes:
        x: (B, L, D), noise: (B, L) -> visible (B, K, D), mask (B, L) with 1 = removed,
        ids_restore (B, L); K = int(L * (1 - mask_ratio)).
    """
    name = "check_random_masking"
    cases = [(2, 16, 4, 0.75), (1, 64, 8, 0.75), (3, 10, 2, 0.5), (2, 7, 3, 0.8), (1, 4, 1, 0.25)]
    for number, (batch, length, dim, ratio) in enumerate(cases):
        x = torch.randn(batch, length, dim, generator=_gen(70 + number))
        noise = _distinct_noise(batch, length, 80 + number)
        keep = int(length * (1 - ratio))
        case = f"x of shape {(batch, length, dim)}, mask_ratio={ratio} (K = {keep})"
        visible, mask, ids_restore = random_masking(x, ratio, noise)
        got = _call(name, case, fn, x, ratio, noise)
        if not isinstance(got, tuple | list) or len(got) != 3:
            raise _fail(name, case, "return a tuple (visible, mask, ids_restore)")
        ids_shuffle = noise.argsort(1)
        _compare(
            name,
            case,
            got[0],
            visible,
            what="visible",
            mistakes={
                "keep the tokens with the LOWEST noise (ascending argsort)": gather_tokens(
                    x, noise.argsort(1, descending=True)[:, :keep]
                ),
                "give the visible tokens in ascending order of noise (ids_shuffle's order), "
                "not in their original order": gather_tokens(
                    x, ids_shuffle[:, :keep].sort(1).values
                ),
            },
        )
        _compare(
            name,
            case,
            got[1],
            mask,
            what="mask",
            mistakes={
                "the opposite convention: the mask is 1 = removed, 0 = visible": 1 - mask,
                "the mask is still in the shuffled order: gather it with ids_restore": (
                    mask.gather(1, ids_shuffle)
                ),
            },
        )
        _compare(
            name,
            case,
            got[2],
            ids_restore,
            what="ids_restore",
            mistakes={
                "that is ids_shuffle; ids_restore is its inverse, argsort(ids_shuffle)": (
                    ids_shuffle
                ),
            },
        )
    _passed(name, len(cases), "K = 1 and lengths where L * (1 - r) is not a whole number")


def check_inverse_permutation(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 3.2: `fn(ids_shuffle)` returns the inverse permutation, as argsort would, and
    leaves `ids_shuffle` unchanged.

    Shapes:
        ids_shuffle: (B, L) int64 -> ids_restore (B, L) int64.
    """
    name = "check_inverse_permutation"
    cases = [(2, 16), (1, 1), (3, 64), (1, 5)]
    for number, (batch, length) in enumerate(cases):
        ids_shuffle = _distinct_noise(batch, length, 90 + number).argsort(1)
        case = f"ids_shuffle of shape {(batch, length)}"
        expected = ids_shuffle.argsort(1)
        mistakes = {
            "you returned the permutation itself, not its inverse": ids_shuffle,
            "gather composes the permutation with itself; scatter writes "
            "ids_restore[ids_shuffle[i]] = i": ids_shuffle.gather(1, ids_shuffle),
        }
        got = _call(name, case, fn, ids_shuffle)
        _compare(name, case, got, expected, what="ids_restore", mistakes=mistakes)
        if got.is_floating_point():
            raise _fail(name, case, f"ids_restore must be integer indices, got {got.dtype}")
    _passed(name, len(cases), "L = 1")


# ------------------------------------------------------------------------------ chapter 4: encoder


def check_forward_masked(
    fn: Callable[[MAEEncoder, torch.Tensor, float, torch.Tensor], tuple[torch.Tensor, ...]],
) -> None:
    """Exercise 4.3: `fn(encoder, images, mask_ratio, noise)` against `encoder.forward_masked`.

    Shapes:
        images: (B, C, H, W), noise: (B, L) -> latent (B, 1 + K, D), mask (B, L),
        ids_restore (B, L).
    """
    name = "check_forward_masked"
    with _private_rng():
        encoder = MaskedAutoencoder(MAEConfig.from_preset("tiny")).encoder.eval()
    config = encoder.config
    cases = [(2, 0.75), (1, 0.5), (3, 0.9)]
    for number, (batch, ratio) in enumerate(cases):
        gen = _gen(100 + number)
        images = torch.randn(
            batch, config.in_chans, config.image_size, config.image_size, generator=gen
        )
        noise = _distinct_noise(batch, config.num_patches, 110 + number)
        case = f"the tiny preset (L = {config.num_patches}), {batch} images, mask_ratio={ratio}"
        with torch.no_grad():
            latent, mask, ids_restore = encoder.forward_masked(images, ratio, noise)
            unpositioned = encoder.patch_embed(images)  # (B, L, D), no positions
            no_positions = encoder.run_blocks(random_masking(unpositioned, ratio, noise)[0])
            got = _call(name, case, fn, encoder, images, ratio, noise)
        if not isinstance(got, tuple | list) or len(got) != 3:
            raise _fail(name, case, "return a tuple (latent, mask, ids_restore)")
        full = (batch, 1 + config.num_patches, config.embed_dim)
        if isinstance(got[0], torch.Tensor) and tuple(got[0].shape) == full:
            raise _fail(
                name,
                case,
                f"latent has shape {full}: the blocks ran on all L patches",
                "mask first, then run the blocks on the K visible tokens only",
            )
        mistakes = {"add the positions before masking (encoder.embed does both)": no_positions}
        _compare(name, case, got[0], latent, what="latent", mistakes=mistakes, atol=1e-4)
        _compare(name, case, got[1], mask, what="mask", mistakes={"opposite convention": 1 - mask})
        _compare(name, case, got[2], ids_restore, what="ids_restore")
    _passed(name, len(cases), "a single image and a 90% mask")


def _counted_encoder_flops(encoder: MAEEncoder, mask_ratio: float) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    c = encoder.config
    for module in encoder.modules():
        if hasattr(module, "fused"):
            module.fused = False  # explicit attention: its two matrix products are counted
    image = torch.zeros(1, c.in_chans, c.image_size, c.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder.forward_masked(image, mask_ratio)
    return counter.get_total_flops()


def check_encoder_flops(fn: Callable[[MAEConfig, float], int]) -> None:
    """Exercise 4.4: `fn(config, mask_ratio)`, the FLOPs of the matrix products of encoding one
    image with `mask_ratio` of its patches removed, against `FlopCounterMode` counting
    `MAEEncoder(config).forward_masked` (explicit attention, MLP width 4D)."""
    name = "check_encoder_flops"
    tiny = MAEConfig.from_preset("tiny")
    small = MAEConfig(embed_dim=64, depth=3, num_heads=2, decoder_embed_dim=32, decoder_num_heads=2)
    cases = [(tiny, 0.75), (tiny, 0.5), (small, 0.75), (small, 0.9), (tiny, 0.25)]
    for config, ratio in cases:
        with _private_rng():
            expected = _counted_encoder_flops(MAEEncoder(config), ratio)
        L, D, depth = config.num_patches, config.embed_dim, config.depth
        keep = int(L * (1 - ratio))
        case = (
            f"a config with L = {L}, D = {D}, depth = {depth}, P*P*C = {config.patch_dim} "
            f"and mask_ratio={ratio}"
        )
        got = _call(name, case, fn, config, ratio)
        if isinstance(got, torch.Tensor):
            got = got.item()
        if not isinstance(got, int | float) or isinstance(got, bool):
            raise _fail(name, case, f"return a number, got {type(got).__name__}")
        if got != expected:

            def blocks(n: int, depth: int = depth, D: int = D) -> int:
                return depth * (24 * n * D * D + 4 * n * n * D)

            embed = 2 * L * config.patch_dim * D
            known = {
                expected / 2: "count 2 FLOPs per multiply-add, as FlopCounterMode does",
                embed + blocks(L + 1): "the blocks run on the 1 + K visible tokens only",
                embed + blocks(keep): "the cls token joins the K visible tokens: N = 1 + K",
                blocks(keep + 1): "the patch embedding (a linear map of every patch) counts too",
                2 * keep * config.patch_dim * D + blocks(keep + 1): (
                    "the patch embedding runs on all L patches, before masking"
                ),
            }
            raise _fail(
                name,
                case,
                f"yours {got:,}, counted {expected:,}",
                known.get(got, "count the patch embedding, then each block's products"),
            )
    _passed(name, len(cases), "two model sizes and ratios from 25% to 90%")


# ------------------------------------------------------------------------------ chapter 5: decoder


def _fill_and_unshuffle(
    x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor
) -> torch.Tensor:
    """`MAEDecoder.fill_and_unshuffle` with a given mask token (the reference of exercise 5.1)."""
    config = MAEConfig.from_preset("tiny", decoder_embed_dim=x.shape[-1], decoder_num_heads=1)
    with _private_rng():
        decoder = MAEDecoder(config)
    with torch.no_grad():
        decoder.mask_token.copy_(mask_token)
        return decoder.fill_and_unshuffle(x, ids_restore)  # (B, 1 + L, E)


def check_fill_and_unshuffle(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """Exercise 5.1: `fn(x, mask_token, ids_restore)` against `MAEDecoder.fill_and_unshuffle`.

    Shapes:
        x: (B, 1 + K, E) with the cls token first, mask_token: (1, 1, E), ids_restore: (B, L)
        -> (B, 1 + L, E), the cls token first and every token at its patch's place.
    """
    name = "check_fill_and_unshuffle"
    cases = [(2, 16, 4, 8), (1, 64, 16, 8), (3, 10, 1, 4), (1, 5, 4, 12)]
    for number, (batch, length, keep, width) in enumerate(cases):
        gen = _gen(120 + number)
        x = torch.randn(batch, 1 + keep, width, generator=gen)
        mask_token = torch.randn(1, 1, width, generator=gen)
        ids_shuffle = _distinct_noise(batch, length, 130 + number).argsort(1)
        ids_restore = ids_shuffle.argsort(1)
        case = f"x of shape {(batch, 1 + keep, width)}, ids_restore of shape {(batch, length)}"
        expected = _fill_and_unshuffle(x, mask_token, ids_restore)
        fill = mask_token.expand(batch, length - keep, -1)  # (B, L - K, E)
        mistakes = {
            "the tokens are still in the shuffled order (visible first, then the mask tokens): "
            "unshuffle them with ids_restore": torch.cat([x, fill], 1),
            "you gathered with ids_shuffle's order; gather with ids_restore": _fill_and_unshuffle(
                x, mask_token, ids_shuffle
            ),
            "the mask tokens go after the visible tokens before unshuffling": torch.cat(
                [x[:, :1], gather_tokens(torch.cat([fill, x[:, 1:]], 1), ids_restore)], 1
            ),
            "the cls token was shuffled with the patches: set x[:, :1] aside, fill and unshuffle "
            "x[:, 1:] only, then put the cls token back in front": torch.cat(
                [x[:, :1], gather_tokens(torch.cat([x, fill], 1), ids_restore)], 1
            ),
        }
        got = _call(name, case, fn, x, mask_token, ids_restore)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (batch, length, width):
            raise _fail(
                name,
                case,
                f"the result has shape {(batch, length, width)}: the cls token is missing",
                "keep x[:, :1] in front",
            )
        _compare(name, case, got, expected, what="the tokens", mistakes=mistakes)
    _passed(name, len(cases), "K = 1")


def check_paste_visible(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """Exercise 5.3: `fn(pred, target, mask)`: the true patches where visible, the predicted ones
    where removed, as the paper's figures show.

    Shapes:
        pred, target: (B, L, P*P*C), mask: (B, L) with 1 = removed -> (B, L, P*P*C).
    """
    name = "check_paste_visible"
    cases = [(2, 16, 12), (1, 64, 48), (3, 4, 3)]
    for number, (batch, length, dim) in enumerate(cases):
        gen = _gen(140 + number)
        pred, target = torch.randn(2, batch, length, dim, generator=gen)
        mask = (torch.rand(batch, length, generator=gen) < 0.75).float()
        mask[:, 0], mask[:, -1] = 1.0, 0.0
        case = f"pred and target of shape {(batch, length, dim)}"
        m = mask[..., None]  # (B, L, 1)
        expected = target * (1 - m) + pred * m
        mistakes = {
            "the opposite convention: 1 = removed (show the prediction), 0 = visible": (
                pred * (1 - m) + target * m
            ),
        }
        got = _call(name, case, fn, pred, target, mask)
        _compare(name, case, got, expected, what="the pasted patches", mistakes=mistakes)
    _passed(name, len(cases), "patches of 3 numbers")


# ---------------------------------------------------------------------------------- chapter 6: loss


def _loss_inputs(batch: int, length: int, dim: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = _gen(seed)
    pred = torch.randn(batch, length, dim, generator=gen)
    target = torch.rand(batch, length, dim, generator=gen) * 3 + 1
    target[0, 0] = 0.5  # a flat patch, as a clear sky gives
    target[-1, 1] = 0.5 + 1e-3 * torch.randn(dim, generator=gen)  # nearly flat: eps matters
    mask = (torch.rand(batch, length, generator=gen) < 0.75).float()
    mask[:, 0], mask[:, -1] = 1.0, 0.0
    return pred, target, mask


def check_normalize_patches(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 6.4: `fn(patches)` against `mae_tutorial.losses.normalize_patches` (eps = 1e-6).

    Shapes:
        patches: (B, L, P*P*C) -> (B, L, P*P*C).
    """
    name = "check_normalize_patches"
    cases = [(2, 16, 12), (1, 64, 48), (3, 4, 2)]
    for number, (batch, length, dim) in enumerate(cases):
        patches = _loss_inputs(batch, length, dim, 160 + number)[1]
        case = f"patches of shape {(batch, length, dim)}, one of them flat"
        expected = normalize_patches(patches)
        mean = patches.mean(-1, keepdim=True)
        mistakes = {
            "use the unbiased variance (Tensor.var's default), as the official code does": (
                patches - mean
            )
            / (patches.var(-1, unbiased=False, keepdim=True) + 1e-6) ** 0.5,
            "normalise each patch over its own numbers (the last dimension)": (
                patches - patches.mean(1, keepdim=True)
            )
            / (patches.var(1, keepdim=True) + 1e-6) ** 0.5,
            "eps goes inside the square root: (var + eps) ** 0.5": (patches - mean)
            / (patches.var(-1, keepdim=True) ** 0.5 + 1e-6),
        }
        got = _call(name, case, fn, patches)
        _compare(name, case, got, expected, what="the normalised patches", mistakes=mistakes)
    _passed(name, len(cases), "flat and nearly flat patches and patches of 2 numbers")


def check_masked_mse_loss(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """Exercise 6.1: `fn(pred, target, mask)` against `masked_mse_loss(..., norm_pix=True)`.

    Shapes:
        pred, target: (B, L, P*P*C), mask: (B, L) with 1 = removed -> a scalar tensor.
    """
    name = "check_masked_mse_loss"
    cases = [(2, 16, 12), (1, 64, 48), (3, 4, 2), (1, 2, 3)]
    for number, (batch, length, dim) in enumerate(cases):
        pred, target, mask = _loss_inputs(batch, length, dim, 170 + number)
        case = f"pred and target of shape {(batch, length, dim)}, {int(mask.sum())} patches removed"
        expected = masked_mse_loss(pred, target, mask)
        per_patch = ((pred - normalize_patches(target)) ** 2).mean(-1)  # (B, L)
        mistakes = {
            "average over the removed patches only, not over every patch": per_patch.mean(),
            "the opposite convention: the loss counts the removed patches (mask = 1)": (
                masked_mse_loss(pred, target, 1 - mask)
            ),
            "normalise each target patch by its mean and variance first": masked_mse_loss(
                pred, target, mask, norm_pix=False
            ),
            "divide by the number of removed patches, not by B * L": (per_patch * mask).mean(),
            "use the unbiased variance (Tensor.var's default)": masked_mse_loss(
                pred,
                (target - target.mean(-1, keepdim=True))
                / (target.var(-1, unbiased=False, keepdim=True) + 1e-6) ** 0.5,
                mask,
                norm_pix=False,
            ),
        }
        got = _call(name, case, fn, pred, target, mask)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.reshape(())
        _compare(name, case, got, expected, what="the loss", mistakes=mistakes)
    _passed(name, len(cases), "a flat target patch and a single removed patch")


# ------------------------------------------------------------------------- chapter 7: pretraining


def check_lr_schedule(fn: Callable[[int, int, int, float, float], float]) -> None:
    """Exercise for chapter 7: `fn(step, total_steps, warmup_steps, peak_lr, min_lr)`, the learning
    rate of 0-based step `step`, against `mae_tutorial.training.lr_at`: linear warmup from 0 at
    step 0 to peak_lr at step warmup_steps, then half a cosine down to min_lr at step total_steps
    (one past the last step a run takes). Only steps a run takes, 0 to total_steps - 1, are tried."""
    from mae_tutorial.training import lr_at

    name = "check_lr_schedule"
    schedules = [
        (100, 10, 1e-3, 0.0), (50, 5, 1.5e-4, 1e-6), (20, 0, 0.1, 0.01), (8, 8, 1.0, 0.0),
        (12, 3, 0.5, 0.05),
    ]  # fmt: skip
    for total, warmup, peak, low in schedules:
        candidates = {0, 1, warmup // 2, warmup - 1, warmup, warmup + 1, total // 2}
        steps = sorted(s for s in candidates | {total - 2, total - 1} if 0 <= s < total)
        case_of = f"total_steps={total}, warmup_steps={warmup}, peak_lr={peak}, min_lr={low}"
        for step in steps:
            case = f"step={step} of a schedule with {case_of}"
            expected = lr_at(step, total, warmup, peak, low)
            got = _call(name, case, fn, step, total, warmup, peak, low)
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = got.item()
            if isinstance(got, bool) or not isinstance(got, int | float):
                raise _fail(name, case, f"return a float, got {type(got).__name__}")
            if not math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-12):
                hint = _lr_mistake(got, expected, step, total, warmup, peak, low)
                raise _fail(name, case, f"yours {got:.9g}, expected {expected:.9g}", hint)
    _passed(name, len(schedules), "no warmup, warmup for the whole run and the last step")


def _lr_mistake(
    got: float, expected: float, step: int, total: int, warmup: int, peak: float, low: float
) -> str | None:
    """Name the common wrong schedule that gives `got` at `step`, if one does."""

    def cosine(progress: float, floor: float = low) -> float:
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0), 1)))

    after = step >= warmup
    known: list[tuple[float | None, str]] = [
        (
            peak * (step + 1) / warmup if not after else None,
            "warmup off by one: the rate is 0 at step 0 and reaches peak_lr at step "
            "warmup_steps, i.e. peak_lr * step / warmup_steps",
        ),
        (
            peak * step / (warmup - 1) if not after and warmup > 1 else None,
            "the warmup reaches peak_lr at step warmup_steps, the first step after it, not at "
            "step warmup_steps - 1: divide by warmup_steps",
        ),
        (
            cosine((step - warmup) / (total - 1 - warmup))
            if after and total - 1 > warmup
            else None,
            "your cosine reaches min_lr at step total_steps - 1, the last step a run takes; here "
            "(as in the official code) it reaches min_lr at step total_steps, one step later, so "
            "progress = (step - warmup_steps) / (total_steps - warmup_steps)",
        ),
        (
            cosine((step - warmup) / (total - warmup), 0.0) if after else None,
            "the cosine ends at min_lr, not at 0",
        ),
        (
            low + (peak - low) * (1 - (step - warmup) / (total - warmup)) if after else None,
            "after the warmup the decay follows half a cosine, not a straight line",
        ),
        (
            cosine(step / total) if after and warmup else None,
            "the cosine starts where the warmup ends: measure its progress from step warmup_steps",
        ),
    ]
    for value, hint in known:
        if value is not None and not math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-15):
            if math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-12):
                return hint
    return None


def _decays(groups: Any, model: nn.Module, name: str, case: str) -> dict[str, float]:
    """{parameter name: weight decay} from a list of AdamW groups; each parameter exactly once."""
    if not isinstance(groups, list | tuple) or not all(isinstance(g, dict) for g in groups):
        raise _fail(name, case, "return a list of dicts, each with 'params' and 'weight_decay'")
    names = {id(p): n for n, p in model.named_parameters()}
    found: dict[str, float] = {}
    for group in groups:
        if "params" not in group or "weight_decay" not in group:
            raise _fail(
                name,
                case,
                f"a group has keys {sorted(group)}; it needs 'params' and 'weight_decay'",
            )
        for param in group["params"]:
            key = names.get(id(param))
            if key is None:
                raise _fail(
                    name, case, "a group holds a tensor that is not a parameter of the model"
                )
            if key in found:
                raise _fail(
                    name, case, f"{key} appears in two groups; every parameter belongs to one"
                )
            found[key] = float(group["weight_decay"])
    return found


def check_param_groups(fn: Callable[[nn.Module, float], list[dict[str, Any]]]) -> None:
    """Exercise for chapter 7: `fn(model, weight_decay)`, AdamW parameter groups, against
    `mae_tutorial.training.param_groups`: decay on weight matrices only, not on norms, biases or
    the cls and mask tokens; frozen parameters (requires_grad=False) in no group. Compared as
    {parameter: weight decay}, order-insensitive."""
    from mae_tutorial.training import param_groups

    name = "check_param_groups"
    with _private_rng():
        config = MAEConfig.from_preset("tiny")
        partly_frozen = ViTClassifier(config)
        for param in [
            *partly_frozen.encoder.patch_embed.parameters(),
            partly_frozen.encoder.cls_token,
        ]:
            param.requires_grad_(False)
        for param in partly_frozen.encoder.blocks[0].parameters():
            param.requires_grad_(False)
        models = [
            ("the tiny MaskedAutoencoder", MaskedAutoencoder(config), 0.05),
            ("a tiny ViTClassifier", ViTClassifier(config), 0.1),
            (
                "a tiny ViTClassifier with its patch embedding, cls token and first block frozen",
                partly_frozen,
                0.05,
            ),
        ]
    for label, model, decay in models:
        case = f"{label} with weight_decay={decay}"
        expected = _decays(param_groups(model, decay), model, name, case)
        got = _decays(_call(name, case, fn, model, decay), model, name, case)
        frozen = sorted(set(got) - set(expected))
        if frozen:
            raise _fail(
                name,
                case,
                f"{len(frozen)} frozen parameters are in a group, e.g. {frozen[0]}",
                "parameters with requires_grad=False do not train: leave them out of both groups",
            )
        missing = sorted(set(expected) - set(got))
        if missing:
            raise _fail(name, case, f"{len(missing)} parameters are in no group, e.g. {missing[0]}")
        for key in expected:
            if not math.isclose(got[key], expected[key]):
                token = key.rsplit(".", 1)[-1].endswith("token")
                why = (
                    "decay weight matrices only: the cls and mask tokens get 0 too, though they "
                    "are 3-D (a rule on ndim alone misses them)"
                    if token
                    else "decay weight matrices only: norms and biases get 0"
                    if expected[key] == 0
                    else f"weight matrices get weight_decay={decay}"
                )
                raise _fail(
                    name,
                    case,
                    f"{key} (shape {tuple(model.get_parameter(key).shape)}) gets weight decay "
                    f"{got[key]}, expected {expected[key]}",
                    why,
                )
    _passed(name, len(models), "the cls and mask tokens, a classifier head and frozen blocks")


def _copy_step_state(model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
    """A deep copy of (model, optimizer), gradients included (`deepcopy` leaves them out)."""
    import copy

    model_copy, optimizer_copy = copy.deepcopy((model, optimizer))
    for param, param_copy in zip(model.parameters(), model_copy.parameters()):
        param_copy.grad = None if param.grad is None else param.grad.clone()
    return model_copy, optimizer_copy


def _step_without_zero_grad(
    model: nn.Module, images: torch.Tensor, noise: torch.Tensor, optimizer: Any, lr: float
) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    model(images, noise=noise).loss.backward()
    optimizer.step()


def check_train_step(fn: Callable[..., Any]) -> None:
    """Exercise for chapter 7: `fn(model, images, noise, optimizer, lr)`, one optimiser step that
    returns the loss detached, against `mae_tutorial.training.train_step`, over three steps of a
    tiny MAE with AdamW. Every parameter starts with a stale gradient, as after an earlier step,
    and the optimiser was built with another lr, so a step must set the lr and clear the
    gradients itself."""
    from mae_tutorial.training import param_groups, train_step

    name = "check_train_step"
    with _private_rng():
        config = MAEConfig.from_preset("tiny")
        model = MaskedAutoencoder(config)
        shape = (4, config.in_chans, config.image_size, config.image_size)
        images = torch.randn(shape, generator=_gen(71))
        noises = [torch.rand(4, config.num_patches, generator=_gen(72 + i)) for i in range(3)]
        optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=0.5, betas=(0.9, 0.95))
        for param in model.parameters():
            param.grad = torch.randn(param.shape, generator=_gen(80))  # left by an earlier step
    ours = _copy_step_state(model, optimizer)
    theirs = _copy_step_state(model, optimizer)
    for i, lr in enumerate((1e-3, 5e-4, 2e-4)):
        case = f"step {i + 1} of 3 (lr={lr}) of the tiny MaskedAutoencoder"
        noise = noises[i]
        before = _copy_step_state(*ours)
        expected = train_step(ours[0], images, noise, ours[1], lr)
        start = [p.detach().clone() for p in theirs[0].parameters()]
        got = _call(name, case, fn, theirs[0], images, noise, theirs[1], lr)
        if isinstance(got, float | int):
            raise _fail(
                name,
                case,
                f"returned a Python {type(got).__name__}",
                "return the loss as a tensor (loss.detach()): .item() makes the host wait for the "
                "device at every step",
            )
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            raise _fail(name, case, f"return the loss, a tensor of one number, got {_shape(got)}")
        if got.requires_grad:
            raise _fail(
                name,
                case,
                "the returned loss still requires grad",
                "detach it (loss.detach()): a loss that holds its graph keeps the whole step's "
                "activations alive",
            )
        lrs = [group["lr"] for group in theirs[1].param_groups]
        if any(not math.isclose(value, lr) for value in lrs):
            raise _fail(
                name,
                case,
                f"after the step the param groups have lr {lrs}, expected {lr} in every group",
                "set group['lr'] = lr on every one of optimizer.param_groups before the step",
            )
        _compare(
            name, case, got.reshape(()), expected, what="the loss", atol=1e-6, rtol=1e-5,
            hint=lambda g, e: "the loss is model(images, noise=noise).loss: the noise decides "
            "which patches are removed",
        )  # fmt: skip
        after = list(theirs[0].parameters())
        if all(torch.equal(a, b) for a, b in zip(start, after)):
            raise _fail(
                name,
                case,
                "no parameter changed",
                "call optimizer.step() after loss.backward(), and clear the gradients before "
                "backward, not between backward and the step",
            )
        old_lr = before[1].param_groups[0]["lr"]
        late = _copy_step_state(*before)
        train_step(late[0], images, noise, late[1], old_lr)  # the lr set only after the step
        stale_model, stale_optimizer = before
        _step_without_zero_grad(stale_model, images, noise, stale_optimizer, lr)
        params = zip(
            ours[0].named_parameters(), after, stale_model.parameters(), late[0].parameters()
        )
        for (key, want), got_param, stale, late_param in params:
            if not torch.allclose(got_param, want, atol=1e-6, rtol=1e-5):
                hint = None
                if torch.allclose(got_param, stale, atol=1e-6, rtol=1e-5):
                    hint = (
                        "the previous step's gradients were still there: PyTorch adds new "
                        "gradients to old ones, so call optimizer.zero_grad() before backward"
                    )
                elif torch.allclose(got_param, late_param, atol=1e-6, rtol=1e-5):
                    hint = (
                        "the step ran with the previous lr: set the groups' lr before "
                        "optimizer.step(), which uses the lr they hold when it runs"
                    )
                worst = float((got_param - want).detach().abs().max())
                raise _fail(
                    name,
                    case,
                    f"{key} differs from the reference after the step by {worst:.3g}",
                    hint,
                )
    _passed(name, 3, "stale gradients and an optimiser built with another lr")


# -------------------------------------------------------------------------- chapter 8: evaluation


def check_topk_accuracy(fn: Callable[[torch.Tensor, torch.Tensor, int], float]) -> None:
    """Exercise for chapter 8: `fn(scores, labels, k)`, the percentage (0-100) of rows whose label
    is among the k highest scores, against `mae_tutorial.probe.topk_accuracy(scores, labels,
    ks=(k,))[k]` (the package's version takes several k at once and returns a dict).

    Shapes:
        scores: (N, classes), labels: (N,) -> a float.
    """
    from mae_tutorial.probe import topk_accuracy

    name = "check_topk_accuracy"
    cases = [(50, 10, 1), (50, 10, 5), (7, 3, 2), (1, 10, 1), (20, 4, 4), (30, 100, 10)]
    for number, (n, classes, k) in enumerate(cases):
        gen = _gen(180 + number)
        scores = torch.randn(n, classes, generator=gen)
        labels = torch.randint(0, classes, (n,), generator=gen)
        labels[: n // 3] = scores[: n // 3].argmax(1)  # some hits for k = 1
        case = f"scores of shape {(n, classes)}, k={k}"
        expected = topk_accuracy(scores, labels, (k,))[k]
        got = _call(name, case, fn, scores, labels, k)
        if isinstance(got, torch.Tensor):
            got = got.item()
        if not isinstance(got, int | float):
            raise _fail(name, case, f"return a number, got {type(got).__name__}")
        if not math.isclose(got, expected, abs_tol=1e-4):
            lowest = topk_accuracy(-scores, labels, (k,))[k]
            known = {
                round(expected / 100, 6): "return a percentage, 0-100, not a fraction",
                round(lowest, 6): "take the k HIGHEST scores",
            }
            raise _fail(
                name, case, f"yours {got:.6g}, expected {expected:.6g}", known.get(round(got, 6))
            )
    _passed(name, len(cases), "a single row and k equal to the number of classes")


def _votes(
    labels: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, classes: int
) -> torch.Tensor:
    """Per class, the sum of the neighbours' weights: (M, k) indices and weights -> (M, classes)."""
    return torch.zeros(len(index), classes).scatter_add_(1, labels[index], weights)


def check_knn_scores(fn: Callable[..., torch.Tensor]) -> None:
    """Exercise for chapter 8: `fn(train_features, train_labels, query_features, num_classes, k=...,
    temperature=...)` against `mae_tutorial.probe.knn_scores`: each of the k most cosine-similar
    training points votes for its label with weight exp(similarity / temperature).

    Shapes:
        train_features: (N, D), train_labels: (N,), query_features: (M, D) -> (M, num_classes).
    """
    from mae_tutorial.probe import knn_scores

    name = "check_knn_scores"
    cases = [
        (40, 8, 10, 5, 5, 0.07),
        (30, 4, 3, 4, 1, 0.5),
        (12, 16, 6, 3, 12, 0.1),
        (20, 2, 1, 6, 3, 1.0),
    ]
    for number, (n, dim, m, classes, k, temperature) in enumerate(cases):
        gen = _gen(190 + number)
        train = torch.randn(n, dim, generator=gen) * torch.rand(n, 1, generator=gen) * 5
        labels = torch.randint(0, classes - 1, (n,), generator=gen)  # the last class never occurs
        queries = torch.randn(m, dim, generator=gen)
        case = f"{n} training points of width {dim}, {m} queries, {classes} classes, k={k}, temperature={temperature}"
        expected = knn_scores(train, labels, queries, classes, k=k, temperature=temperature)
        top, index = (F.normalize(queries) @ F.normalize(train).T).topk(k, dim=1)  # (M, k)
        top_raw, index_raw = (queries @ train.T).topk(k, dim=1)  # (M, k), not cosine
        mistakes = {
            "weight each vote by exp(similarity / temperature), not 1": _votes(
                labels, index, torch.ones_like(top), classes
            ),
            "divide the similarity by the temperature before exp: exp(similarity / temperature)": (
                _votes(labels, index, top.exp(), classes)
            ),
            "the weight is exp(similarity / temperature), not similarity / temperature": _votes(
                labels, index, top / temperature, classes
            ),
            "use cosine similarity: normalise the features to unit length first": _votes(
                labels, index_raw, (top_raw / temperature).exp(), classes
            ),
        }
        got = _call(name, case, fn, train, labels, queries, classes, k=k, temperature=temperature)
        _compare(name, case, got, expected, what="the votes", mistakes=mistakes, rtol=1e-4)
    _passed(name, len(cases), "k = 1, k = N, temperature 1 and a class no training point has")


def _decay_hint(param_name: str, shape: tuple[int, ...], decay: float) -> str:
    if len(shape) == 1:
        return "1-D parameters (biases, norm weights) get no weight decay"
    if param_name.endswith(("cls_token", "mask_token")):
        return "the cls and mask tokens get no weight decay (the official no_weight_decay list)"
    return f"weight matrices keep weight_decay={decay}; only 1-D parameters and the tokens get 0"


def _scale_hint(param_name: str, depth: int, got: float, decay: float) -> str | None:
    """Name the mistake behind a wrong lr scale, from the parameter's part of the model."""
    if param_name.startswith(("head.", "encoder.norm.")):
        return "the head and the final norm are not decayed: their lr_scale is 1"
    if param_name.startswith("encoder.blocks."):
        i = int(param_name.split(".")[2])
        for power in (depth - i + 1, depth - i - 1, i, i + 1):
            if math.isclose(got, decay**power, rel_tol=1e-6):
                return (
                    f"off by one in the layer ids? block i (0-based) gets layer_decay ** "
                    f"(depth - i); here block {i} of {depth}, so the power is {depth - i}, "
                    f"yours looks like {power}"
                )
        return "block i (0-based) gets layer_decay ** (depth - i): the last block is one step below the head"
    return "the patch embedding and the tokens sit below block 0: layer_decay ** (depth + 1)"


def check_layer_decay_groups(fn: Callable[[nn.Module, float, float], list[dict[str, Any]]]) -> None:
    """Exercise for chapter 8: `fn(model, weight_decay, layer_decay)`, AdamW groups with layer-wise
    lr decay for a `ViTClassifier`, against `mae_tutorial.lr_decay.layer_decay_param_groups`:
    compared per parameter as (lr_scale, weight_decay); frozen parameters belong to no group."""
    from mae_tutorial.lr_decay import freeze_all_but_last, layer_decay_param_groups

    name = "check_layer_decay_groups"
    with _private_rng():
        tiny = MAEConfig.from_preset("tiny")
        models = [
            ("a ViTClassifier of depth 2", ViTClassifier(tiny), 0.05, 0.75),
            (
                "a ViTClassifier of depth 4",
                ViTClassifier(MAEConfig.from_preset("tiny", depth=4)),
                0.1,
                0.5,
            ),
            (
                "a ViTClassifier of depth 3 with all but its last block frozen",
                freeze_all_but_last(ViTClassifier(MAEConfig.from_preset("tiny", depth=3)), 1),
                0.05,
                0.65,
            ),
        ]
    for label, model, decay, layer_decay in models:
        case = f"{label}, weight_decay={decay}, layer_decay={layer_decay}"
        depth = len(model.encoder.blocks)
        reference = layer_decay_param_groups(model, weight_decay=decay, layer_decay=layer_decay)
        groups = _call(name, case, fn, model, decay, layer_decay)
        got_decay = _decays(groups, model, name, case)
        if any("lr_scale" not in group for group in groups):
            raise _fail(name, case, "every group needs an 'lr_scale' for the schedule to multiply")
        names = {id(p): n for n, p in model.named_parameters()}
        got_scale = {names[id(p)]: float(g["lr_scale"]) for g in groups for p in g["params"]}
        expected_decay = _decays(reference, model, name, case)
        expected_scale = {names[id(p)]: g["lr_scale"] for g in reference for p in g["params"]}
        frozen = sorted(set(got_decay) - set(expected_decay))
        if frozen:
            raise _fail(
                name, case, f"{frozen[0]} is frozen (requires_grad=False) but is in a group",
                "leave out parameters that do not require gradients",
            )  # fmt: skip
        missing = sorted(set(expected_decay) - set(got_decay))
        if missing:
            raise _fail(name, case, f"{len(missing)} parameters are in no group, e.g. {missing[0]}")
        for key, expected in expected_scale.items():
            if not math.isclose(got_scale[key], expected, rel_tol=1e-6):
                raise _fail(
                    name, case, f"{key} gets lr_scale {got_scale[key]:.6g}, expected {expected:.6g}",
                    _scale_hint(key, depth, got_scale[key], layer_decay),
                )  # fmt: skip
        for key, expected in expected_decay.items():
            if not math.isclose(got_decay[key], expected):
                shape = tuple(model.get_parameter(key).shape)
                raise _fail(
                    name, case, f"{key} (shape {shape}) gets weight decay {got_decay[key]}, "
                    f"expected {expected}", _decay_hint(key, shape, decay),
                )  # fmt: skip
    _passed(name, len(models), "depths 2 to 4 and a partly frozen classifier")


# ------------------------------------------------------------------------- chapter 9: ablations


def check_grid_noise(fn: Callable[[int, int, int, torch.Generator], torch.Tensor]) -> None:
    """Exercise for chapter 9: `fn(batch, grid_size, stride, generator)` returns noise (B, L) such
    that `random_masking` at mask ratio 1 - 1/stride**2 keeps exactly one patch in every stride x
    stride cell, at a random offset per image. A property check, since the offsets are random (the
    package's version is `mae_tutorial.masking.grid_noise`)."""
    name = "check_grid_noise"
    cases = [(64, 8, 2), (32, 8, 4), (16, 4, 2), (32, 6, 3), (8, 2, 2)]
    for number, (batch, grid, stride) in enumerate(cases):
        case = f"batch={batch}, grid_size={grid}, stride={stride}"
        got = _call(name, case, fn, batch, grid, stride, _gen(200 + number))
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (batch, grid * grid):
            raise _fail(
                name, case, f"the noise has shape {_shape(got)}, expected {(batch, grid * grid)}"
            )
        again = _call(name, case, fn, batch, grid, stride, _gen(200 + number))
        if not torch.equal(got, again):
            raise _fail(
                name,
                case,
                "two calls with identically seeded generators differ",
                "draw every random number from `generator`",
            )
        ratio = 1 - 1 / stride**2
        tokens = torch.zeros(batch, grid * grid, 1)
        mask = random_masking(tokens, ratio, got.float())[1].view(batch, grid, grid)  # 1 = removed
        kept = 1 - mask  # (B, grid, grid)
        cells = kept.view(batch, grid // stride, stride, grid // stride, stride).sum((2, 4))
        if not torch.all(cells == 1):
            image = int((cells != 1).any(2).any(1).nonzero()[0])
            row, col = (cells[image] != 1).nonzero()[0].tolist()
            raise _fail(
                name,
                case,
                f"image {image} keeps {int(cells[image, row, col])} patches in the cell at "
                f"row {row}, column {col} of the {stride}x{stride} cells, expected exactly 1",
                "give the one patch to keep per cell the lowest noise, every other patch a higher one",
            )
        offsets = {
            tuple(int(v) for v in kept[b].nonzero()[0] % stride) for b in range(batch)
        }  # the kept patch's place in its cell
        if stride > 1 and len(offsets) == 1:
            raise _fail(
                name,
                case,
                f"all {batch} images keep the patch at offset {offsets.pop()} of every cell",
                "draw a random offset (row and column) per image",
            )
    _passed(name, len(cases), "a stride of 3 and a grid of a single cell")


def _mask_token_fill(
    tokens: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    # MAEEncoder.forward_masked with mask_token_in_encoder (tests check that they agree).
    m = mask.unsqueeze(-1)  # (B, L, 1)
    return tokens * (1 - m) + (mask_token + pos_embed) * m  # (B, L, D)


def check_mask_token_fill(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """Exercise for chapter 9 (the mask token in the encoder, the paper's Table 1c):
    `fn(tokens, mask, mask_token, pos_embed)` replaces every removed token by the mask token plus
    its position, as `MAEEncoder.forward_masked` does with `mask_token_in_encoder=True`.

    Shapes:
        tokens: (B, L, D) patch embeddings with positions, mask: (B, L) with 1 = removed,
        mask_token: (1, 1, D), pos_embed: (1, L, D) -> (B, L, D).
    """
    name = "check_mask_token_fill"
    cases = [(2, 16, 8), (1, 64, 32), (3, 4, 2)]
    for number, (batch, length, dim) in enumerate(cases):
        gen = _gen(210 + number)
        tokens = torch.randn(batch, length, dim, generator=gen)
        mask_token = torch.randn(1, 1, dim, generator=gen)
        pos_embed = torch.randn(1, length, dim, generator=gen)
        mask = (torch.rand(batch, length, generator=gen) < 0.75).float()
        mask[:, 0], mask[:, -1] = 1.0, 0.0
        case = f"tokens of shape {(batch, length, dim)}"
        expected = _mask_token_fill(tokens, mask, mask_token, pos_embed)
        mistakes = {
            "the opposite convention: 1 = removed (gets the mask token), 0 = visible": (
                _mask_token_fill(tokens, 1 - mask, mask_token, pos_embed)
            ),
            "add the position of each place to its mask token, or every mask token looks alike": (
                _mask_token_fill(tokens, mask, mask_token, torch.zeros_like(pos_embed))
            ),
        }
        got = _call(name, case, fn, tokens, mask, mask_token, pos_embed)
        _compare(name, case, got, expected, what="the tokens", mistakes=mistakes)
    _passed(name, len(cases), "tokens of width 2")
