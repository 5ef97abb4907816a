"""mae_tutorial.checks: every exercise's check passes the reference and a second correct answer,
fails every catalogued mistake with that mistake's own hint, and fails other wrong answers.

All of it is driven by one registry, `EXERCISES`: one `Exercise` per check, filled in the chapter
sections below. To add or change an exercise, edit only its entry, in its chapter's section:

    EXERCISES.append(
        Exercise(
            check="check_patchify",          # the function's name in mae_tutorial.checks
            reference=patchify,              # the package's (or the chapter's) implementation
            second=_patchify_by_hand,        # a second correct answer, written from the task text
            mistakes=[                       # every mistake the check catalogues: each must fail
                Mistake(_channels_first, r"\\(row in patch, column in patch, channel\\)"),
            ],                               # with a "Hint:" matching the regex, hints distinct
            wrong=[Wrong(lambda x, p: x, r"shape")],  # other wrong answers: must fail, any message
        )
    )

The tests below then check, for every entry: the reference passes (one printed line), the second
answer passes, each mistake fails with its own hint (no two mistakes of an exercise share a hint),
each other wrong answer fails naming the problem, a function that changes one of its tensor inputs
in place fails, and every mistake the check passes to `_compare` as catalogued (its `mistakes`
dict) is triggered by one of the registered mistakes. Checks whose hints come from a `known`
table or an explicit `_fail` need their mistakes registered by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from mae_tutorial import checks
from mae_tutorial.attention import attention_weights
from mae_tutorial.config import MAEConfig
from mae_tutorial.losses import masked_mse_loss, normalize_patches
from mae_tutorial.masking import gather_tokens, grid_noise, random_masking
from mae_tutorial.model import MAEDecoder, MAEEncoder, MaskedAutoencoder
from mae_tutorial.patches import patchify, unpatchify
from mae_tutorial.training import lr_at, param_groups, train_step

# ------------------------------------------------------------------------- the registry (shared)


@dataclass(frozen=True)
class Mistake:
    """A catalogued mistake: `wrong` makes it; the check must fail with a hint matching `hint`."""

    wrong: Callable[..., Any]
    hint: str


@dataclass(frozen=True)
class Wrong:
    """Another wrong answer: the check must fail, with a message matching `says`."""

    wrong: Callable[..., Any]
    says: str


@dataclass(frozen=True)
class Exercise:
    """One function exercise: its check, two right answers, and the wrong ones it must catch."""

    check: str
    reference: Callable[..., Any]
    second: Callable[..., Any]
    mistakes: list[Mistake] = field(default_factory=list)
    wrong: list[Wrong] = field(default_factory=list)


EXERCISES: list[Exercise] = []


def _run(exercise: Exercise, fn: Callable[..., Any]) -> None:
    getattr(checks, exercise.check)(fn)


def _failure(exercise: Exercise, fn: Callable[..., Any]) -> str:
    """The message of the check's failure on `fn` (the test fails if the check passes)."""
    with pytest.raises(checks.ExerciseFailed) as info:
        _run(exercise, fn)
    message = str(info.value)
    assert message.startswith(f"{exercise.check} failed on "), message
    return message


def _hint(message: str) -> str | None:
    found = re.search(r"^Hint: (.*)$", message, flags=re.MULTILINE | re.DOTALL)
    return found.group(1) if found else None


# -------------------------------------------------------------- chapter 0: the prelude (owner B)


def psnr(filled: torch.Tensor, images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    squared = ((filled - images) ** 2 * removed).sum((1, 2, 3))
    return -10 * (squared / (removed.sum((1, 2, 3)) * images.shape[1])).log10()


def _psnr_second(filled: torch.Tensor, images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    where = removed.expand_as(images).bool()  # (B, C, H, W)
    mse = torch.stack([(f[w] - x[w]).pow(2).mean() for f, x, w in zip(filled, images, where)])
    return 10 * torch.log10(1 / mse)


def patch_mask(removed: torch.Tensor, p: int) -> torch.Tensor:
    return (patchify(removed, p).amax(-1) > 0).float()


def _patch_mask_second(removed: torch.Tensor, p: int) -> torch.Tensor:
    cells = removed[:, 0].unfold(1, p, p).unfold(2, p, p)  # (B, H/P, W/P, P, P)
    return (cells.sum((-1, -2)) > 0).float().flatten(1)


EXERCISES += [
    Exercise(
        "check_psnr",
        psnr,
        _psnr_second,
        mistakes=[
            Mistake(lambda f, x, r: -10 * ((f - x) ** 2).mean((1, 2, 3)).log10(), "removed pixels"),
            Mistake(lambda f, x, r: 2 * psnr(f, x, r), "20 log10"),
            Mistake(lambda f, x, r: psnr(f, x, r) - 10 * math.log10(x.shape[1]), "times C"),
            Mistake(
                lambda f, x, r: psnr(f, x, r).mean().expand(x.shape[0]), "not one for the whole"
            ),
            Mistake(lambda f, x, r: psnr(f, x, r).mean(), "^return one PSNR per image$"),
        ],
    ),
    Exercise(
        "check_patch_mask",
        patch_mask,
        _patch_mask_second,
        mistakes=[
            Mistake(lambda r, p: F.max_pool2d(r, p).transpose(2, 3).flatten(1), "row by row"),
            Mistake(lambda r, p: F.avg_pool2d(r, p).flatten(1), r"\(a 0/1 mask\)"),
            Mistake(lambda r, p: -F.max_pool2d(-r, p).flatten(1), "not only when all"),
        ],
    ),
]

# ------------------------------------------------------- chapter 1: patches, positions (owner B)


def _patchify_second(images: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)  # (B, C, h, P, w, P)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def _unpatchify_second(patches: torch.Tensor, p: int, size: int) -> torch.Tensor:
    b, _, dim = patches.shape
    c, g = dim // (p * p), size // p
    x = patches.reshape(b, g, g, p, p, c)  # (B, h, w, P, P, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, size, size)


EXERCISES += [
    Exercise(
        "check_patchify",
        patchify,
        _patchify_second,
        mistakes=[
            Mistake(
                lambda x, p: rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p),
                r"each vector holds the right numbers in another order",
            ),
            Mistake(
                lambda x, p: rearrange(x, "b c (h p) (w q) -> b (w h) (p q c)", p=p, q=p),
                r"the right vectors, in another order: number the patches row by row",
            ),
            Mistake(
                lambda x, p: rearrange(x, "b c (h p) (w q) -> b (w h) (c p q)", p=p, q=p),
                r"all the right numbers, at the wrong places",
            ),
        ],
        wrong=[
            Wrong(
                lambda x, p: rearrange(x, "b c (h p) (w q) -> b (h w) (q p c)", p=p, q=p),
                r"\(row in patch",
            ),
        ],
    ),
    Exercise(
        "check_unpatchify",
        unpatchify,
        _unpatchify_second,
        mistakes=[
            Mistake(
                lambda x, p, s: rearrange(
                    x, "b (h w) (c p q) -> b c (h p) (w q)", p=p, q=p, h=s // p
                ),
                r"read each patch out as \(row in patch, column in patch, channel\)",
            ),
            Mistake(
                lambda x, p, s: rearrange(
                    x, "b (h w) (p q c) -> b c (w p) (h q)", p=p, q=p, h=s // p
                ),
                "the patches are numbered row by row",
            ),
        ],
    ),
]

# ------------------------------------------------------------------- chapter 2: attention (owner B)


def causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


def _causal_diagonal(q, k, v):
    n = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.masked_fill(torch.ones(n, n).triu(0).bool(), float("-inf")).softmax(-1) @ v


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bhqd,bhkd->bhqk", q, k)


EXERCISES += [
    Exercise(
        "check_attention_weights",
        attention_weights,
        lambda q, k: torch.softmax(_scores(q, k) / q.shape[-1] ** 0.5, dim=-1),
        mistakes=[
            Mistake(lambda q, k: _scores(q, k).softmax(-1), r"1/sqrt\(d\) before the softmax"),
            Mistake(lambda q, k: (_scores(q, k) / q.shape[-1]).softmax(-1), "not 1/d"),
            Mistake(
                lambda q, k: (_scores(q, k) / math.sqrt(q.shape[-1])).softmax(-2),
                "each row sums to 1",
            ),
            Mistake(lambda q, k: attention_weights(q, k).transpose(-2, -1), "key-query"),
        ],
    ),
    Exercise(
        "check_causal_attention",
        causal,
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        mistakes=[
            Mistake(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), "not masked"),
            Mistake(_causal_diagonal, "attend to itself"),
            Mistake(
                lambda q, k, v: causal(q.flip(-2), k.flip(-2), v.flip(-2)).flip(-2),
                "masked the past",
            ),
        ],
    ),
]

# --------------------------------------------------------------------- chapter 3: masking (owner B)


def _masking_second(x: torch.Tensor, ratio: float, noise: torch.Tensor):
    batch, length, _ = x.shape
    keep = int(length * (1 - ratio))
    order = noise.sort(dim=1).indices  # ids_shuffle: lowest noise first
    visible = torch.stack([x[b, order[b, :keep]] for b in range(batch)])  # (B, K, D)
    restore = torch.empty_like(order)
    restore.scatter_(1, order, torch.arange(length).expand(batch, -1))
    mask = (restore >= keep).float()  # 1 = removed
    return visible, mask, restore


def _masking_opposite(x, r, noise):
    visible, mask, ids_restore = random_masking(x, r, noise)
    return visible, 1 - mask, ids_restore


def _masking_original_order(x, r, noise):
    _, mask, ids_restore = random_masking(x, r, noise)
    keep = int(x.shape[1] * (1 - r))
    return gather_tokens(x, noise.argsort(1)[:, :keep].sort(1).values), mask, ids_restore


def _masking_shuffled_mask(x, r, noise):
    visible, mask, ids_restore = random_masking(x, r, noise)
    return visible, mask.gather(1, noise.argsort(1)), ids_restore


def _masking_ids_shuffle(x, r, noise):
    visible, mask, _ = random_masking(x, r, noise)
    return visible, mask, noise.argsort(1)


def _inverse_by_scatter(ids: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(ids).scatter_(1, ids, torch.arange(ids.shape[1]).expand_as(ids))


EXERCISES += [
    Exercise(
        "check_random_masking",
        random_masking,
        _masking_second,
        mistakes=[
            Mistake(_masking_opposite, "1 = removed"),
            Mistake(lambda x, r, noise: random_masking(x, r, -noise), "LOWEST noise"),
            Mistake(_masking_original_order, "not in their original order"),
            Mistake(_masking_shuffled_mask, "gather it with ids_restore"),
            Mistake(_masking_ids_shuffle, "that is ids_shuffle"),
        ],
    ),
    Exercise(
        "check_inverse_permutation",
        lambda ids: ids.argsort(1),
        _inverse_by_scatter,
        mistakes=[
            Mistake(lambda ids: ids.clone(), "the permutation itself"),
            Mistake(lambda ids: ids.gather(1, ids), "scatter"),
        ],
        wrong=[Wrong(lambda ids: ids.argsort(1).float(), "integer indices")],
    ),
]

# --------------------------------------------------------------------- chapter 4: encoder (owner M)


def forward_masked(encoder: MAEEncoder, images: torch.Tensor, ratio: float, noise: torch.Tensor):
    return encoder.forward_masked(images, ratio, noise)


def _forward_masked_second(encoder, images, mask_ratio, noise):
    """Written from exercise 4.3's text: the parts, `random_masking`, no `embed`/`run_blocks`."""
    tokens = encoder.patch_embed(images) + encoder.pos_embed[:, 1:]  # (B, L, D)
    visible, mask, ids_restore = random_masking(tokens, mask_ratio, noise)  # (B, K, D)
    cls = (encoder.cls_token + encoder.pos_embed[:, :1]).repeat(images.shape[0], 1, 1)
    x = torch.cat((cls, visible), dim=1)  # (B, 1 + K, D)
    for block in encoder.blocks:
        x = block(x)
    return encoder.norm(x), mask, ids_restore


def _encoder_all_patches(encoder, images, r, noise):
    _, mask, ids_restore = encoder.forward_masked(images, r, noise)
    return encoder(images), mask, ids_restore


def _encoder_no_positions(encoder, images, r, noise):
    visible, mask, ids_restore = random_masking(encoder.patch_embed(images), r, noise)
    return encoder.run_blocks(visible), mask, ids_restore


def _encoder_opposite_mask(encoder, images, r, noise):
    latent, mask, ids_restore = encoder.forward_masked(images, r, noise)
    return latent, 1 - mask, ids_restore


def encoder_flops(config: MAEConfig, ratio: float) -> int:
    n, d = 1 + int(config.num_patches * (1 - ratio)), config.embed_dim
    embed = 2 * config.num_patches * config.patch_dim * d
    return embed + config.depth * (24 * n * d * d + 4 * n * n * d)


def _encoder_flops_second(config: MAEConfig, mask_ratio: float) -> int:
    """Written from exercise 4.4's text: multiply-adds of each product, times 2."""
    L, D = config.num_patches, config.embed_dim
    N = 1 + int(L * (1 - mask_ratio))  # cls + the K visible tokens
    per_block = 4 * N * D * D + 2 * N * D * (4 * D) + 2 * N * N * D  # qkv+proj, MLP, attention
    return 2 * (L * config.patch_dim * D + config.depth * per_block)


def _flops_with_blocks_on(config: MAEConfig, n: int, embedded: int) -> int:
    d = config.embed_dim
    return 2 * embedded * config.patch_dim * d + config.depth * (24 * n * d * d + 4 * n * n * d)


def _visible(config: MAEConfig, ratio: float) -> int:
    return int(config.num_patches * (1 - ratio))


EXERCISES += [
    Exercise(
        "check_forward_masked",
        forward_masked,
        _forward_masked_second,
        mistakes=[
            Mistake(_encoder_all_patches, "run the blocks on the K visible tokens only"),
            Mistake(_encoder_no_positions, "positions before masking"),
            Mistake(_encoder_opposite_mask, "^opposite convention$"),
        ],
    ),
    Exercise(
        "check_encoder_flops",
        encoder_flops,
        _encoder_flops_second,
        mistakes=[
            Mistake(lambda c, r: encoder_flops(c, r) // 2, "2 FLOPs per multiply-add"),
            Mistake(
                lambda c, r: _flops_with_blocks_on(c, c.num_patches + 1, c.num_patches),
                "1 \\+ K visible tokens only",
            ),
            Mistake(
                lambda c, r: _flops_with_blocks_on(c, _visible(c, r), c.num_patches),
                "the cls token joins",
            ),
            Mistake(
                lambda c, r: _flops_with_blocks_on(c, _visible(c, r) + 1, 0),
                r"the patch embedding \(a linear map of every patch\) counts too",
            ),
            Mistake(
                lambda c, r: _flops_with_blocks_on(c, _visible(c, r) + 1, _visible(c, r)),
                "runs on all L patches, before masking",
            ),
        ],
        wrong=[Wrong(lambda c, r: encoder_flops(c, r) + 1, "yours .*counted")],
    ),
]

# --------------------------------------------------------------------- chapter 5: decoder (owner M)


def decoder_fill_and_unshuffle(x: torch.Tensor, token: torch.Tensor, ids_restore: torch.Tensor):
    """The package's `MAEDecoder.fill_and_unshuffle`, with the given mask token."""
    config = MAEConfig.from_preset("tiny", decoder_embed_dim=x.shape[-1], decoder_num_heads=1)
    decoder = MAEDecoder(config)
    with torch.no_grad():
        decoder.mask_token.copy_(token)
        return decoder.fill_and_unshuffle(x, ids_restore)


def _fill_by_scatter(x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor):
    """Written from exercise 5.1's text: start from mask tokens everywhere, then write each
    visible token at its patch's place."""
    batch, length = ids_restore.shape
    keep = x.shape[1] - 1
    places = ids_restore.argsort(1)[:, :keep]  # (B, K): the patch of each visible token
    tokens = mask_token.expand(batch, length, -1).clone()  # (B, L, E)
    tokens.scatter_(1, places[..., None].expand(-1, -1, x.shape[-1]), x[:, 1:])
    return torch.cat([x[:, :1], tokens], dim=1)  # (B, 1 + L, E)


def _fill(x, token, ids_restore):  # (B, L - K, E) mask tokens
    return token.expand(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], -1)


def _no_unshuffle(x, token, ids_restore):
    return torch.cat([x, _fill(x, token, ids_restore)], dim=1)


def _unshuffle_with_shuffle(x, token, ids_restore):
    return decoder_fill_and_unshuffle(x, token, ids_restore.argsort(1))


def _mask_tokens_first(x, token, ids_restore):
    shuffled = torch.cat([_fill(x, token, ids_restore), x[:, 1:]], dim=1)
    return torch.cat([x[:, :1], gather_tokens(shuffled, ids_restore)], dim=1)


def _cls_shuffled(x, token, ids_restore):
    shuffled = torch.cat([x, _fill(x, token, ids_restore)], dim=1)  # cls among the patches
    return torch.cat([x[:, :1], gather_tokens(shuffled, ids_restore)], dim=1)


def _no_cls(x, token, ids_restore):
    return decoder_fill_and_unshuffle(x, token, ids_restore)[:, 1:]


def paste(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool()[..., None], pred, target)


def _paste_second(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Written from exercise 5.3's text: a copy of the target, the removed patches replaced."""
    out = target.clone()
    removed = mask == 1  # (B, L)
    out[removed] = pred[removed]
    return out


def _paste_in_place(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pred[mask == 0] = target[mask == 0]
    return pred


EXERCISES += [
    Exercise(
        "check_fill_and_unshuffle",
        decoder_fill_and_unshuffle,
        _fill_by_scatter,
        mistakes=[
            Mistake(_no_unshuffle, "still in the shuffled order.*unshuffle them with ids_restore"),
            Mistake(_unshuffle_with_shuffle, "gathered with ids_shuffle's order"),
            Mistake(_mask_tokens_first, "mask tokens go after the visible tokens"),
            Mistake(_cls_shuffled, "cls token was shuffled with the patches"),
            Mistake(_no_cls, r"keep x\[:, :1\] in front"),
        ],
    ),
    Exercise(
        "check_paste_visible",
        paste,
        _paste_second,
        mistakes=[
            Mistake(lambda p, t, m: paste(t, p, m), "opposite convention"),
            Mistake(_paste_in_place, "leave the inputs as they are"),
        ],
        wrong=[Wrong(lambda p, t, m: p, "differ")],
    ),
]

# ------------------------------------------------------------------------ chapter 6: loss (owner B)


def _normalize_second(patches: torch.Tensor) -> torch.Tensor:
    n = patches.shape[-1]
    mean = patches.sum(-1, keepdim=True) / n
    var = ((patches - mean) ** 2).sum(-1, keepdim=True) / (n - 1)
    return (patches - mean) / torch.sqrt(var + 1e-6)


def _loss_second(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_patch = ((pred - _normalize_second(target)) ** 2).mean(-1)  # (B, L)
    return per_patch[mask == 1].mean()


def _loss_all(pred, target, mask):
    return ((pred - normalize_patches(target)) ** 2).mean()


def _loss_biased(pred, target, mask):
    t = (target - target.mean(-1, keepdim=True)) / (
        target.var(-1, unbiased=False, keepdim=True) + 1e-6
    ) ** 0.5
    return masked_mse_loss(pred, t, mask, norm_pix=False)


def _loss_over_b_times_l(pred, target, mask):
    return (((pred - normalize_patches(target)) ** 2).mean(-1) * mask).mean()


EXERCISES += [
    Exercise(
        "check_normalize_patches",
        normalize_patches,
        _normalize_second,
        mistakes=[
            Mistake(
                lambda x: (
                    (x - x.mean(-1, keepdim=True))
                    / (x.var(-1, unbiased=False, keepdim=True) + 1e-6) ** 0.5
                ),
                "unbiased",
            ),
            Mistake(
                lambda x: (x - x.mean(1, keepdim=True)) / (x.var(1, keepdim=True) + 1e-6) ** 0.5,
                "last dimension",
            ),
            Mistake(
                lambda x: (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-6),
                "inside the square root",
            ),
        ],
    ),
    Exercise(
        "check_masked_mse_loss",
        masked_mse_loss,
        _loss_second,
        mistakes=[
            Mistake(_loss_all, "removed patches only"),
            Mistake(lambda p, t, m: masked_mse_loss(p, t, 1 - m), "opposite convention"),
            Mistake(
                lambda p, t, m: masked_mse_loss(p, t, m, norm_pix=False), "normalise each target"
            ),
            Mistake(_loss_over_b_times_l, r"not by B \* L"),
            Mistake(_loss_biased, "unbiased"),
        ],
    ),
]

# ----------------------------------------------------------------- chapter 7: pretraining (owner T1)


def _lr_from_the_task(step, total_steps, warmup_steps, peak_lr, min_lr):
    if warmup_steps and step < warmup_steps:
        return peak_lr * step / warmup_steps
    angle = math.pi * (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(angle))


def _lr_to_zero(step, total, warmup, peak, low):
    return lr_at(step, total, warmup, peak, 0.0)


def _lr_warmup_off_by_one(step, total, warmup, peak, low):
    if step < warmup:
        return peak * (step + 1) / warmup
    return lr_at(step, total, warmup, peak, low)


def _lr_ends_a_step_early(step, total, warmup, peak, low):
    if step < warmup:
        return peak * step / warmup
    progress = (step - warmup) / (total - 1 - warmup)
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * progress))


def _lr_warmup_to_the_step_before(step, total, warmup, peak, low):
    if step < warmup:
        return peak * step / (warmup - 1)
    return lr_at(step, total, warmup, peak, low)


def _lr_linear(step, total, warmup, peak, low):
    if step < warmup:
        return peak * step / warmup
    return low + (peak - low) * (1 - min(1.0, (step - warmup) / max(1, total - warmup)))


def _groups_from_the_task(model, weight_decay):
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    matrices = [p for name, p in trained if p.dim() >= 2 and not name.endswith("token")]
    others = [p for name, p in trained if p.dim() < 2 or name.endswith("token")]
    return [
        {"params": others, "weight_decay": 0.0},
        {"params": matrices, "weight_decay": weight_decay},
    ]


def _groups_decay_all(model, wd):
    return [{"params": list(model.parameters()), "weight_decay": wd}]


def _groups_decay_biases(model, wd):
    decay = [p for n, p in model.named_parameters() if not n.endswith("token")]
    rest = [p for n, p in model.named_parameters() if n.endswith("token")]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def _groups_decay_tokens(model, wd):
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def _groups_keep_frozen(model, wd):
    groups = [{"params": [], "weight_decay": wd}, {"params": [], "weight_decay": 0.0}]
    for name, param in model.named_parameters():
        decayed = param.ndim > 1 and not name.endswith("token")
        groups[0 if decayed else 1]["params"].append(param)
    return groups


def _step_from_the_task(model, images, noise, optimizer, lr):
    optimizer.zero_grad(set_to_none=False)
    loss = model(images, noise=noise).loss
    loss.backward()
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return loss.detach()


def _step_no_zero_grad(model, images, noise, optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(images, noise=noise).loss
    loss.backward()
    optimizer.step()
    return loss.detach()


def _step_item(model, images, noise, optimizer, lr):
    return train_step(model, images, noise, optimizer, lr).item()


def _step_not_detached(model, images, noise, optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad()
    loss = model(images, noise=noise).loss
    loss.backward()
    optimizer.step()
    return loss


def _step_no_lr(model, images, noise, optimizer, lr):
    optimizer.zero_grad()
    loss = model(images, noise=noise).loss
    loss.backward()
    optimizer.step()
    return loss.detach()


def _step_zero_grad_late(model, images, noise, optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(images, noise=noise).loss
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
    return loss.detach()


def _step_lr_late(model, images, noise, optimizer, lr):
    optimizer.zero_grad()
    loss = model(images, noise=noise).loss
    loss.backward()
    optimizer.step()
    for group in optimizer.param_groups:
        group["lr"] = lr
    return loss.detach()


EXERCISES += [
    Exercise(
        "check_lr_schedule",
        lr_at,
        _lr_from_the_task,
        mistakes=[
            Mistake(_lr_warmup_off_by_one, "warmup off by one"),
            Mistake(_lr_warmup_to_the_step_before, "not at step warmup_steps - 1"),
            Mistake(_lr_ends_a_step_early, "min_lr at step total_steps - 1"),
            Mistake(_lr_to_zero, "ends at min_lr, not at 0"),
            Mistake(_lr_linear, "half a cosine"),
        ],
    ),
    Exercise(
        "check_param_groups",
        param_groups,
        _groups_from_the_task,
        mistakes=[
            Mistake(_groups_decay_biases, "norms and biases get 0"),
            Mistake(_groups_decay_tokens, "cls and mask tokens get 0 too"),
            Mistake(_groups_keep_frozen, "requires_grad=False"),
            Mistake(
                lambda model, wd: [{"params": list(model.parameters()), "weight_decay": 0.0}],
                "weight matrices get weight_decay=",
            ),
        ],
        wrong=[Wrong(_groups_decay_all, "decay weight matrices only")],
    ),
    Exercise(
        "check_train_step",
        train_step,
        _step_from_the_task,
        mistakes=[
            Mistake(_step_no_zero_grad, r"zero_grad\(\) before backward"),
            Mistake(_step_item, r"\.item\(\)"),
            Mistake(_step_not_detached, "detach"),
            Mistake(_step_no_lr, r"group\['lr'\] = lr"),
            Mistake(_step_zero_grad_late, "not between backward and the step"),
            Mistake(_step_lr_late, "previous lr"),
        ],
    ),
]


def test_lr_check_asks_only_steps_a_run_takes() -> None:
    asked = []

    def spy(step, total, warmup, peak, low):
        asked.append((step, total))
        return lr_at(step, total, warmup, peak, low)

    checks.check_lr_schedule(spy)
    assert all(0 <= step < total for step, total in asked)
    assert any(step == total - 1 for step, total in asked)


# ------------------------------------------------------------------ chapter 8: evaluation (owner E)


def _topk_reference(scores, labels, k):
    from mae_tutorial.probe import topk_accuracy

    return topk_accuracy(scores, labels, (k,))[k]


def _topk_second(scores, labels, k):
    top = scores.argsort(dim=1, descending=True)[:, :k]  # (N, k)
    return 100.0 * (top == labels[:, None]).any(1).float().mean().item()


def _knn_reference(*args, **kwargs):
    from mae_tutorial.probe import knn_scores

    return knn_scores(*args, **kwargs)


def _knn_second(train_features, train_labels, query_features, num_classes, k=20, temperature=0.07):
    votes = torch.zeros(len(query_features), num_classes)
    bank = train_features / train_features.norm(dim=1, keepdim=True)
    for row, query in enumerate(query_features):
        similarity = bank @ (query / query.norm())  # (N,)
        for j in similarity.argsort(descending=True)[:k].tolist():
            votes[row, train_labels[j]] += math.exp(similarity[j].item() / temperature)
    return votes


def _knn_weighted(train, labels, queries, classes, k, weight, cosine=True):
    """Votes of the k nearest neighbours, each weighted by `weight(similarity)`."""
    if cosine:
        train, queries = F.normalize(train), F.normalize(queries)
    top, index = (queries @ train.T).topk(k, 1)  # (M, k)
    return torch.zeros(len(queries), classes).scatter_add_(1, labels[index], weight(top))


def _knn_dot(train, labels, queries, classes, k, temperature):
    return _knn_weighted(
        train, labels, queries, classes, k, lambda s: (s / temperature).exp(), False
    )


def _knn_uniform(train, labels, queries, classes, k, temperature):
    return _knn_weighted(train, labels, queries, classes, k, torch.ones_like)


def _knn_no_temperature(train, labels, queries, classes, k, temperature):
    return _knn_weighted(train, labels, queries, classes, k, torch.exp)


def _knn_no_exp(train, labels, queries, classes, k, temperature):
    return _knn_weighted(train, labels, queries, classes, k, lambda s: s / temperature)


def _layer_groups_reference(model, weight_decay, layer_decay):
    from mae_tutorial.lr_decay import layer_decay_param_groups

    return layer_decay_param_groups(model, weight_decay=weight_decay, layer_decay=layer_decay)


def _layer_groups_second(model, weight_decay, layer_decay):
    depth = len(model.encoder.blocks)
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        elif name.startswith(("head.", "encoder.norm.")):
            layer = depth + 1
        else:
            layer = 0
        no_decay = param.ndim == 1 or name in ("encoder.cls_token", "encoder.mask_token")
        groups.append({
            "params": [param],
            "lr_scale": layer_decay ** (depth + 1 - layer),
            "weight_decay": 0.0 if no_decay else weight_decay,
        })  # fmt: skip
    return groups


def _layer_groups(model, wd, ld, *, scale=None, no_decay=None, frozen=False):
    """Per-parameter groups with optional wrong rules: scale(name, depth), no_decay(name, p)."""
    depth = len(model.encoder.blocks)
    groups = []
    for name, p in model.named_parameters():
        if not (p.requires_grad or frozen):
            continue
        if name.startswith("encoder.blocks."):
            power = depth - int(name.split(".")[2])
        elif name.startswith(("encoder.patch_embed", "encoder.cls_token")):
            power = depth + 1
        else:
            power = 0
        lr_scale = ld**power if scale is None else scale(name, depth)
        skip = (p.ndim == 1 or "token" in name) if no_decay is None else no_decay(name, p)
        groups.append({"params": [p], "lr_scale": lr_scale, "weight_decay": 0.0 if skip else wd})
    return groups


def _layers_head_decayed(model, wd, ld):
    def scale(name, depth):
        if name.startswith("encoder.blocks."):
            return ld ** (depth - int(name.split(".")[2]))
        return ld if name.startswith(("head", "encoder.norm")) else ld ** (depth + 1)

    return _layer_groups(model, wd, ld, scale=scale)


def _layers_off_by_one(model, wd, ld):
    def scale(name, depth):
        if name.startswith("encoder.blocks."):
            return ld ** (depth - int(name.split(".")[2]) - 1)
        return 1.0 if name.startswith(("head", "encoder.norm")) else ld ** (depth + 1)

    return _layer_groups(model, wd, ld, scale=scale)


def _layers_embedding_as_block0(model, wd, ld):
    def scale(name, depth):
        if name.startswith("encoder.blocks."):
            return ld ** (depth - int(name.split(".")[2]))
        return 1.0 if name.startswith(("head", "encoder.norm")) else ld**depth

    return _layer_groups(model, wd, ld, scale=scale)


EXERCISES += [
    Exercise(
        "check_topk_accuracy",
        _topk_reference,
        _topk_second,
        mistakes=[
            Mistake(lambda s, y, k: _topk_reference(s, y, k) / 100, "percentage"),
            Mistake(lambda s, y, k: _topk_reference(-s, y, k), "HIGHEST"),
        ],
    ),
    Exercise(
        "check_knn_scores",
        _knn_reference,
        _knn_second,
        mistakes=[
            Mistake(_knn_dot, "cosine"),
            Mistake(_knn_uniform, r"exp\(similarity / temperature\), not 1"),
            Mistake(_knn_no_temperature, "divide the similarity by the temperature"),
            Mistake(_knn_no_exp, r"not similarity / temperature"),
        ],
    ),
    Exercise(
        "check_layer_decay_groups",
        _layer_groups_reference,
        _layer_groups_second,
        mistakes=[
            Mistake(_layers_head_decayed, "head and the final norm are not decayed"),
            Mistake(_layers_off_by_one, "off by one"),
            Mistake(_layers_embedding_as_block0, r"below block 0: layer_decay \*\* \(depth \+ 1\)"),
            Mistake(
                lambda m, wd, ld: _layer_groups(m, wd, ld, no_decay=lambda n, p: "token" in n),
                "1-D parameters",
            ),
            Mistake(
                lambda m, wd, ld: _layer_groups(m, wd, ld, no_decay=lambda n, p: p.ndim == 1),
                "cls and mask tokens",
            ),
            Mistake(
                lambda m, wd, ld: _layer_groups(m, wd, ld, frozen=True), "do not require gradients"
            ),
        ],
        wrong=[
            Wrong(
                lambda m, wd, ld: [{"params": list(m.parameters()), "weight_decay": wd}],
                "lr_scale",
            ),
        ],
    ),
]

# ------------------------------------------------------------------- chapter 9: ablations (owner B)


def _grid_second(batch, grid, stride, generator):
    rows = torch.arange(grid)[:, None].expand(grid, grid)  # (grid, grid)
    cols = torch.arange(grid)[None, :].expand(grid, grid)
    offsets = torch.randint(0, stride, (batch, 2), generator=generator)  # (B, 2)
    keep = (rows % stride == offsets[:, 0, None, None]) & (
        cols % stride == offsets[:, 1, None, None]
    )
    noise = torch.rand(batch, grid * grid, generator=generator)  # (B, L) in [0, 1)
    return noise + (~keep).flatten(1).float()  # kept ones lowest


def _grid_fixed_offset(batch, grid, stride, generator):
    rows = torch.arange(grid).repeat_interleave(grid)
    cols = torch.arange(grid).repeat(grid)
    kept = (rows % stride == 0) & (cols % stride == 0)
    return torch.rand(batch, grid * grid, generator=generator) + (~kept).float()


def mask_token_fill(tokens, mask, token, pos):
    m = mask.unsqueeze(-1)  # (B, L, 1), as MAEEncoder.forward_masked computes it
    return tokens * (1 - m) + (token + pos) * m


EXERCISES += [
    Exercise(
        "check_grid_noise",
        lambda b, g, s, gen: grid_noise(b, g, s, gen),
        _grid_second,
        mistakes=[
            Mistake(_grid_fixed_offset, "random offset"),
            Mistake(lambda b, g, s, gen: 2 - grid_noise(b, g, s, gen), "lowest noise"),
            Mistake(lambda b, g, s, gen: grid_noise(b, g, s), "generator"),
        ],
    ),
    Exercise(
        "check_mask_token_fill",
        mask_token_fill,
        lambda x, m, t, p: torch.where(m.bool()[..., None], t + p, x),
        mistakes=[
            Mistake(lambda x, m, t, p: mask_token_fill(x, 1 - m, t, p), "opposite convention"),
            Mistake(lambda x, m, t, p: mask_token_fill(x, m, t, 0 * p), "position"),
        ],
    ),
]

# ----------------------------------------------------------------- the tests over the registry

BY_CHECK = {exercise.check: exercise for exercise in EXERCISES}
MISTAKES = [(e.check, i) for e in EXERCISES for i in range(len(e.mistakes))]
WRONGS = [(e.check, i) for e in EXERCISES for i in range(len(e.wrong))]


def test_every_check_has_exactly_one_exercise_entry() -> None:
    names = [exercise.check for exercise in EXERCISES]
    assert len(names) == len(set(names)), "one entry per check"
    assert set(names) == {name for name in checks.__all__ if name.startswith("check_")}


def test_every_exercise_catalogues_at_least_two_mistakes() -> None:
    few = {e.check: len(e.mistakes) for e in EXERCISES if len(e.mistakes) < 2}
    assert not few, few


@pytest.mark.parametrize("name", sorted(BY_CHECK))
def test_check_passes_the_reference_with_one_line(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(BY_CHECK[name], BY_CHECK[name].reference)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"{name} passed"), out


@pytest.mark.parametrize("name", sorted(BY_CHECK))
def test_check_passes_a_second_answer_written_from_the_task(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(BY_CHECK[name], BY_CHECK[name].second)
    assert capsys.readouterr().out.startswith(f"{name} passed")


@pytest.mark.parametrize(("name", "number"), MISTAKES, ids=[f"{n}-{i}" for n, i in MISTAKES])
def test_each_catalogued_mistake_fails_with_its_hint(
    name: str, number: int, capsys: pytest.CaptureFixture[str]
) -> None:
    mistake = BY_CHECK[name].mistakes[number]
    message = _failure(BY_CHECK[name], mistake.wrong)
    hint = _hint(message)
    assert hint is not None, f"no hint for a catalogued mistake: {message}"
    assert re.search(mistake.hint, hint, flags=re.MULTILINE), message
    assert capsys.readouterr().out == "", "a failing check prints nothing"


@pytest.mark.parametrize("name", sorted(BY_CHECK))
def test_the_mistakes_of_an_exercise_get_different_hints(name: str) -> None:
    hints = [_hint(_failure(BY_CHECK[name], m.wrong)) for m in BY_CHECK[name].mistakes]
    assert len(set(hints)) == len(hints), hints


@pytest.mark.parametrize(("name", "number"), WRONGS, ids=[f"{n}-{i}" for n, i in WRONGS])
def test_other_wrong_answers_fail_naming_the_problem(
    name: str, number: int, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = BY_CHECK[name].wrong[number]
    message = _failure(BY_CHECK[name], wrong.wrong)
    assert re.search(wrong.says, message), message
    assert capsys.readouterr().out == "", "a failing check prints nothing"


@pytest.mark.parametrize("name", sorted(BY_CHECK))
def test_every_mistake_a_check_catalogues_can_fire(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The mistakes a check hands to `_compare` are exactly ones some registered mistake triggers:
    a catalogued mistake that equals the reference on every case could never be named."""
    catalogued: set[str] = set()
    compare = checks._compare

    def spy(*args: Any, mistakes: dict[str, torch.Tensor] | None = None, **kwargs: Any) -> None:
        catalogued.update(mistakes or {})
        compare(*args, mistakes=mistakes, **kwargs)

    monkeypatch.setattr(checks, "_compare", spy)
    _run(BY_CHECK[name], BY_CHECK[name].reference)
    fired = {_hint(_failure(BY_CHECK[name], m.wrong)) for m in BY_CHECK[name].mistakes}
    assert catalogued <= fired, f"never triggered here: {sorted(catalogued - fired)}"


def _changes_input(reference: Callable[..., Any], position: int) -> Callable[..., Any]:
    """The reference's result, but tensor argument `position` is changed in place afterwards."""

    def vandal(*args: Any, **kwargs: Any) -> Any:
        result = reference(
            *(a.clone() if isinstance(a, torch.Tensor) else a for a in args), **kwargs
        )
        target = args[position]
        if target.dtype == torch.bool:
            target.logical_not_()
        else:
            target.add_(1)
        return result

    return vandal


def _tensor_positions(exercise: Exercise) -> list[int]:
    """Which positional arguments of the reference are tensors, found by a recording call."""
    seen: list[int] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        if not seen:
            seen.extend(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        return exercise.reference(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("builtins.print", lambda *a, **k: None)
        _run(exercise, record)
    return seen


@pytest.mark.parametrize("name", sorted(BY_CHECK))
def test_a_function_that_changes_its_inputs_in_place_fails(name: str) -> None:
    exercise = BY_CHECK[name]
    for position in _tensor_positions(exercise):
        message = _failure(exercise, _changes_input(exercise.reference, position))
        assert "in place" in message, message


# ------------------------------------------------------------------ how the checks behave in general


def test_checks_leave_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    checks.check_forward_masked(forward_masked)
    checks.check_fill_and_unshuffle(_fill_by_scatter)
    checks.check_param_groups(param_groups)
    assert torch.equal(state, torch.get_rng_state())


def test_not_implemented_passes_through_and_failures_are_assertion_errors() -> None:
    def stub(*args: Any) -> None:
        raise NotImplementedError("exercise 1.4: implement my_patchify")

    with pytest.raises(NotImplementedError, match="exercise 1.4"):
        checks.check_patchify(stub)
    assert issubclass(checks.ExerciseFailed, AssertionError)


def test_a_crash_names_the_case() -> None:
    with pytest.raises(checks.ExerciseFailed, match=r"raised ZeroDivisionError.*|shape"):
        checks.check_patchify(lambda images, p: 1 / 0)


def test_an_input_changed_in_place_is_named() -> None:
    with pytest.raises(checks.ExerciseFailed, match="changed its input `pred` in place"):
        checks.check_paste_visible(_paste_in_place)


def test_messages_do_not_show_reference_code() -> None:
    with pytest.raises(checks.ExerciseFailed) as info:
        checks.check_patchify(
            lambda x, p: rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)
        )
    assert "rearrange" not in str(info.value) and "def " not in str(info.value)


# --------------------------------------------- the checks' own references agree with the package


def test_fill_and_unshuffle_reference_is_the_decoders_method(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    method = MAEDecoder.fill_and_unshuffle

    def spy(self, x, ids_restore):
        calls.append(tuple(x.shape))
        return method(self, x, ids_restore)

    monkeypatch.setattr(MAEDecoder, "fill_and_unshuffle", spy)
    checks.check_fill_and_unshuffle(_fill_by_scatter)
    assert len(calls) == 4 * 2, calls  # the reference and the ids_shuffle mistake, per case


def test_mask_token_fill_reference_is_the_encoders(tiny: MAEConfig) -> None:
    import dataclasses

    config = dataclasses.replace(tiny, mask_token_in_encoder=True)
    encoder = MaskedAutoencoder(config).encoder.eval()
    images = torch.randn(2, config.in_chans, config.image_size, config.image_size)
    noise = torch.rand(2, config.num_patches)
    with torch.no_grad():
        latent, mask, _ = encoder.forward_masked(images, config.mask_ratio, noise)
        filled = checks._mask_token_fill(
            encoder.embed(images), mask, encoder.mask_token, encoder.pos_embed[:, 1:]
        )
        torch.testing.assert_close(encoder.run_blocks(filled), latent)


def test_psnr_reference_is_the_chapters() -> None:
    images, filled = torch.rand(2, 2, 3, 8, 8)
    removed = (torch.rand(2, 1, 8, 8) < 0.5).float()
    torch.testing.assert_close(checks._psnr(filled, images, removed), psnr(filled, images, removed))
