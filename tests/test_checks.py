"""mae_tutorial.checks: every check passes the reference and names the problem in wrong answers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from mae_tutorial import checks
from mae_tutorial.attention import attention_weights
from mae_tutorial.config import MAEConfig
from mae_tutorial.evaluate import knn_scores, topk_accuracy
from mae_tutorial.losses import masked_mse_loss, normalize_patches
from mae_tutorial.masking import grid_noise, random_masking
from mae_tutorial.model import MAEDecoder, MAEEncoder, MaskedAutoencoder
from mae_tutorial.patches import patchify, unpatchify
from mae_tutorial.training import lr_at, param_groups, train_step

# ----------------------------------------------------------------- right answers, one per check


def psnr(filled: torch.Tensor, images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    squared = ((filled - images) ** 2 * removed).sum((1, 2, 3))
    return -10 * (squared / (removed.sum((1, 2, 3)) * images.shape[1])).log10()


def patch_mask(removed: torch.Tensor, p: int) -> torch.Tensor:
    return (patchify(removed, p).amax(-1) > 0).float()


def causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


def forward_masked(encoder: MAEEncoder, images: torch.Tensor, ratio: float, noise: torch.Tensor):
    return encoder.forward_masked(images, ratio, noise)


def encoder_flops(config: MAEConfig, ratio: float) -> int:
    n, d = 1 + int(config.num_patches * (1 - ratio)), config.embed_dim
    embed = 2 * config.num_patches * config.patch_dim * d
    return embed + config.depth * (24 * n * d * d + 4 * n * n * d)


def fill_and_unshuffle(x: torch.Tensor, token: torch.Tensor, ids_restore: torch.Tensor):
    batch, length = ids_restore.shape
    shuffled = torch.cat([x[:, 1:], token.expand(batch, length + 1 - x.shape[1], -1)], 1)
    index = ids_restore[..., None].expand(-1, -1, x.shape[-1])
    return torch.cat([x[:, :1], shuffled.gather(1, index)], 1)


def paste(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool()[..., None], pred, target)


def topk(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    return topk_accuracy(scores, labels, (k,))[k]


def mask_token_fill(tokens, mask, token, pos):
    return torch.where(mask.bool()[..., None], token + pos, tokens)


RIGHT: dict[str, Callable[..., Any]] = {
    "check_psnr": psnr,
    "check_patch_mask": patch_mask,
    "check_patchify": patchify,
    "check_unpatchify": unpatchify,
    "check_attention_weights": attention_weights,
    "check_causal_attention": causal,
    "check_random_masking": random_masking,
    "check_inverse_permutation": lambda ids: torch.empty_like(ids).scatter_(
        1, ids, torch.arange(ids.shape[1]).expand_as(ids)
    ),
    "check_forward_masked": forward_masked,
    "check_encoder_flops": encoder_flops,
    "check_fill_and_unshuffle": fill_and_unshuffle,
    "check_paste_visible": paste,
    "check_normalize_patches": normalize_patches,
    "check_masked_mse_loss": masked_mse_loss,
    "check_lr_schedule": lr_at,
    "check_param_groups": param_groups,
    "check_train_step": train_step,
    "check_topk_accuracy": topk,
    "check_knn_scores": knn_scores,
    "check_grid_noise": lambda b, g, s, gen: grid_noise(b, g, s, gen),
    "check_mask_token_fill": mask_token_fill,
}


def test_every_check_has_a_right_answer_here() -> None:
    names = {name for name in checks.__all__ if name.startswith("check_")}
    assert names == set(RIGHT)


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_check_passes_the_reference_with_one_line(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    getattr(checks, name)(RIGHT[name])
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"{name} passed"), out


def test_checks_leave_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    checks.check_forward_masked(forward_masked)
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


def test_messages_do_not_show_reference_code() -> None:
    with pytest.raises(checks.ExerciseFailed) as info:
        checks.check_patchify(
            lambda x, p: rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)
        )
    assert "rearrange" not in str(info.value) and "def " not in str(info.value)


# ---------------------------------------------------------- wrong answers: two or more per check


def _causal_no_mask(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _causal_diagonal(q, k, v):
    n = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.masked_fill(torch.ones(n, n).triu(0).bool(), float("-inf")).softmax(-1) @ v


def _masking_opposite(x, r, noise):
    visible, mask, ids_restore = random_masking(x, r, noise)
    return visible, 1 - mask, ids_restore


def _masking_highest(x, r, noise):
    return random_masking(x, r, -noise)


def _masking_shuffled_mask(x, r, noise):
    visible, mask, ids_restore = random_masking(x, r, noise)
    return visible, mask.gather(1, noise.argsort(1)), ids_restore


def _masking_ids_shuffle(x, r, noise):
    visible, mask, _ = random_masking(x, r, noise)
    return visible, mask, noise.argsort(1)


def _masking_reuses_noise(x, r, noise):
    visible, mask, ids_restore = random_masking(x, r, noise.clone())
    noise.copy_(mask)  # the noise's memory reused for the mask: the caller loses its noise
    return visible, noise, ids_restore


def _inverse_in_place(ids):
    # The right values, written over the input: ids[b, ids[b, j]] = j.
    return ids.scatter_(1, ids.clone(), torch.arange(ids.shape[1]).expand_as(ids))


def _encoder_all_patches(encoder, images, r, noise):
    _, mask, ids_restore = encoder.forward_masked(images, r, noise)
    return encoder(images), mask, ids_restore


def _encoder_no_positions(encoder, images, r, noise):
    visible, mask, ids_restore = random_masking(encoder.patch_embed(images), r, noise)
    return encoder.run_blocks(visible), mask, ids_restore


def _unshuffle_with_shuffle(x, token, ids_restore):
    return fill_and_unshuffle(x, token, ids_restore.argsort(1))


def _unshuffle_no_cls(x, token, ids_restore):
    return fill_and_unshuffle(x, token, ids_restore)[:, 1:]


def _loss_all(pred, target, mask):
    return ((pred - normalize_patches(target)) ** 2).mean()


def _loss_biased(pred, target, mask):
    t = (target - target.mean(-1, keepdim=True)) / (
        target.var(-1, unbiased=False, keepdim=True) + 1e-6
    ) ** 0.5
    return masked_mse_loss(pred, t, mask, norm_pix=False)


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


def _groups_decay_all(model, wd):
    return [{"params": list(model.parameters()), "weight_decay": wd}]


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


def _knn_dot(train, labels, queries, classes, k, temperature):
    sim = queries @ train.T
    top, index = sim.topk(k, 1)
    return torch.zeros(len(queries), classes).scatter_add_(
        1, labels[index], (top / temperature).exp()
    )


def _knn_uniform(train, labels, queries, classes, k, temperature):
    sim = F.normalize(queries) @ F.normalize(train).T
    top, index = sim.topk(k, 1)
    return torch.zeros(len(queries), classes).scatter_add_(1, labels[index], torch.ones_like(top))


def _grid_fixed_offset(batch, grid, stride, generator):
    rows = torch.arange(grid).repeat_interleave(grid)
    cols = torch.arange(grid).repeat(grid)
    kept = (rows % stride == 0) & (cols % stride == 0)
    return torch.rand(batch, grid * grid, generator=generator) + (~kept).float()


def _grid_inverted(batch, grid, stride, generator):
    return 2 - grid_noise(batch, grid, stride, generator)


def _grid_unseeded(batch, grid, stride, generator):
    return grid_noise(batch, grid, stride)


WRONG: list[tuple[str, Callable[..., Any], str]] = [
    (
        "check_psnr",
        lambda f, x, r: -10 * ((f - x) ** 2).mean((1, 2, 3)).log10(),
        "removed pixels only",
    ),
    ("check_psnr", lambda f, x, r: 2 * psnr(f, x, r), "20 log10"),
    ("check_psnr", lambda f, x, r: psnr(f, x, r) - 10 * math.log10(x.shape[1]), "times C"),
    ("check_psnr", lambda f, x, r: psnr(f, x, r).mean(), "one PSNR per image"),
    ("check_patch_mask", lambda r, p: F.max_pool2d(r, p).transpose(2, 3).flatten(1), "row by row"),
    ("check_patch_mask", lambda r, p: F.avg_pool2d(r, p).flatten(1), "ANY"),
    ("check_patch_mask", lambda r, p: -F.max_pool2d(-r, p).flatten(1), "not only when all"),
    (
        "check_patchify",
        lambda x, p: rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p),
        "(row in patch, column in patch, channel)",
    ),
    (
        "check_patchify",
        lambda x, p: rearrange(x, "b c (h p) (w q) -> b (w h) (p q c)", p=p, q=p),
        "row by row",
    ),
    (
        "check_patchify",
        lambda x, p: rearrange(x, "b c (h p) (w q) -> b (h w) (q p c)", p=p, q=p),
        "(row in patch",
    ),
    (
        "check_unpatchify",
        lambda x, p, s: rearrange(x, "b (h w) (c p q) -> b c (h p) (w q)", p=p, q=p, h=s // p),
        "(row in patch, column in patch, channel)",
    ),
    (
        "check_unpatchify",
        lambda x, p, s: rearrange(x, "b (h w) (p q c) -> b c (w p) (h q)", p=p, q=p, h=s // p),
        "row by row",
    ),
    ("check_attention_weights", lambda q, k: (q @ k.transpose(-2, -1)).softmax(-1), "1/sqrt(d)"),
    (
        "check_attention_weights",
        lambda q, k: (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-2),
        "each row sums to 1",
    ),
    (
        "check_attention_weights",
        lambda q, k: (q @ k.transpose(-2, -1) / q.shape[-1]).softmax(-1),
        "not 1/d",
    ),
    ("check_causal_attention", _causal_no_mask, "future is not masked"),
    ("check_causal_attention", _causal_diagonal, "attend to itself"),
    (
        "check_causal_attention",
        lambda q, k, v: causal(q.flip(-2), k.flip(-2), v.flip(-2)).flip(-2),
        "masked the past",
    ),
    ("check_random_masking", _masking_opposite, "1 = removed"),
    ("check_random_masking", _masking_highest, "LOWEST noise"),
    ("check_random_masking", _masking_shuffled_mask, "gather it with ids_restore"),
    ("check_random_masking", _masking_ids_shuffle, "that is ids_shuffle"),
    ("check_inverse_permutation", lambda ids: ids, "the permutation itself"),
    ("check_inverse_permutation", lambda ids: ids.gather(1, ids), "scatter"),
    ("check_inverse_permutation", _inverse_in_place, "changed its input `ids_shuffle` in place"),
    ("check_random_masking", _masking_reuses_noise, "changed its input `noise` in place"),
    ("check_forward_masked", _encoder_all_patches, "all L patches"),
    ("check_forward_masked", _encoder_no_positions, "positions before masking"),
    ("check_encoder_flops", lambda c, r: encoder_flops(c, 0.0), "1 + K visible tokens only"),
    ("check_encoder_flops", lambda c, r: encoder_flops(c, r) // 2, "2 FLOPs per multiply-add"),
    (
        "check_encoder_flops",
        lambda c, r: encoder_flops(c, r) - 2 * c.num_patches * c.patch_dim * c.embed_dim,
        "patch embedding",
    ),
    ("check_fill_and_unshuffle", _unshuffle_with_shuffle, "gather with ids_restore"),
    ("check_fill_and_unshuffle", _unshuffle_no_cls, "cls token is missing"),
    ("check_paste_visible", lambda p, t, m: paste(t, p, m), "opposite convention"),
    ("check_paste_visible", lambda p, t, m: p, "differ"),
    (
        "check_normalize_patches",
        lambda x: (
            (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-6) ** 0.5
        ),
        "unbiased",
    ),
    (
        "check_normalize_patches",
        lambda x: (x - x.mean(1, keepdim=True)) / (x.var(1, keepdim=True) + 1e-6) ** 0.5,
        "last dimension",
    ),
    (
        "check_normalize_patches",
        lambda x: (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-6),
        "inside the square root",
    ),
    ("check_masked_mse_loss", _loss_all, "removed patches only"),
    ("check_masked_mse_loss", lambda p, t, m: masked_mse_loss(p, t, 1 - m), "opposite convention"),
    (
        "check_masked_mse_loss",
        lambda p, t, m: masked_mse_loss(p, t, m, norm_pix=False),
        "normalise each target",
    ),
    ("check_masked_mse_loss", _loss_biased, "unbiased"),
    ("check_lr_schedule", _lr_to_zero, "min_lr"),
    ("check_lr_schedule", _lr_warmup_off_by_one, "warmup off by one"),
    ("check_lr_schedule", _lr_ends_a_step_early, "min_lr at step total_steps - 1"),
    ("check_lr_schedule", _lr_warmup_to_the_step_before, "not at step warmup_steps - 1"),
    ("check_param_groups", _groups_decay_all, "decay weight matrices only"),
    ("check_param_groups", _groups_decay_tokens, "cls and mask tokens"),
    ("check_param_groups", _groups_keep_frozen, "requires_grad=False"),
    ("check_train_step", _step_no_zero_grad, "zero_grad() before backward"),
    ("check_train_step", _step_item, ".item()"),
    ("check_train_step", _step_not_detached, "detach"),
    ("check_train_step", _step_no_lr, "group['lr'] = lr"),
    ("check_train_step", _step_zero_grad_late, "not between backward and the step"),
    ("check_train_step", _step_lr_late, "previous lr"),
    ("check_topk_accuracy", lambda s, y, k: topk(s, y, k) / 100, "percentage"),
    ("check_topk_accuracy", lambda s, y, k: topk(-s, y, k), "HIGHEST"),
    ("check_knn_scores", _knn_dot, "cosine"),
    ("check_knn_scores", _knn_uniform, "exp(similarity / temperature)"),
    ("check_grid_noise", _grid_fixed_offset, "random offset"),
    ("check_grid_noise", _grid_inverted, "exactly 1"),
    ("check_grid_noise", _grid_unseeded, "generator"),
    (
        "check_mask_token_fill",
        lambda x, m, t, p: mask_token_fill(x, 1 - m, t, p),
        "opposite convention",
    ),
    ("check_mask_token_fill", lambda x, m, t, p: mask_token_fill(x, m, t, 0 * p), "position"),
]


def test_every_check_has_two_wrong_answers() -> None:
    counts = {name: sum(1 for n, _, _ in WRONG if n == name) for name in RIGHT}
    assert all(count >= 2 for count in counts.values()), counts


@pytest.mark.parametrize(
    ("name", "wrong", "says"), WRONG, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(WRONG)]
)
def test_check_fails_a_wrong_answer_naming_the_problem(
    name: str, wrong: Callable[..., Any], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(checks.ExerciseFailed) as info:
        getattr(checks, name)(wrong)
    assert says in str(info.value), str(info.value)
    assert str(info.value).startswith(f"{name} failed on ")
    assert capsys.readouterr().out == "", "a failing check prints nothing"


# --------------------------------------------- the checks' own references agree with the package


def test_fill_and_unshuffle_reference_is_the_decoders(tiny: MAEConfig) -> None:
    decoder = MAEDecoder(tiny).eval()
    decoder.blocks = torch.nn.ModuleList()  # only the filling, unshuffling and positions remain
    latent = torch.randn(2, 1 + tiny.num_visible, tiny.embed_dim)
    ids_restore = torch.rand(2, tiny.num_patches).argsort(1).argsort(1)
    with torch.no_grad():
        tokens = checks._fill_and_unshuffle(
            decoder.decoder_embed(latent), decoder.mask_token, ids_restore
        )
        ours = decoder.pred(decoder.norm(tokens + decoder.decoder_pos_embed))[:, 1:]
        torch.testing.assert_close(ours, decoder(latent, ids_restore))


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


# ------------------------- second right answers, written from the exercise text alone (B's chapters)
# Each exercise of chapters 0-3, 6 and 9 is solved again here the way a student reading only the
# task would, differently from the package's code; the check must accept it.


def _psnr_loops(filled, images, removed):
    out = []
    for f, x, r in zip(filled, images, removed):
        chosen = r.expand_as(x).bool()  # (C, H, W): every channel of a removed pixel
        out.append(-10 * torch.log10(((f - x)[chosen] ** 2).mean()))
    return torch.stack(out)


def _patch_mask_unfold(removed, p):
    # F.unfold lists each P x P window as a column; any removed pixel marks the patch.
    return (F.unfold(removed, kernel_size=p, stride=p).amax(1) > 0).float()


def _patchify_view(images, p):
    b, c, h, w = images.shape
    x = images.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, -1, p * p * c)


def _unpatchify_loops(patches, p, size):
    b, length, n = patches.shape
    c, g = n // (p * p), size // p
    images = torch.empty(b, c, size, size, dtype=patches.dtype)
    for i in range(length):
        row, col = divmod(i, g)
        images[:, :, row * p : (row + 1) * p, col * p : (col + 1) * p] = (
            patches[:, i].view(b, p, p, c).permute(0, 3, 1, 2)
        )
    return images


def _attention_weights_einsum(q, k):
    return torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5, dim=-1)


def _causal_tril(q, k, v):
    n = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))
    return torch.where(allowed, scores, torch.tensor(float("-inf"))).softmax(-1) @ v


def _random_masking_sort(x, r, noise):
    b, length, d = x.shape
    keep = int(length * (1 - r))
    _, ids_shuffle = torch.sort(noise, dim=1)
    ids_restore = torch.sort(ids_shuffle, dim=1).indices
    visible = torch.stack([x[i, ids_shuffle[i, :keep]] for i in range(b)])
    mask = (ids_restore >= keep).to(x.dtype)  # removed: placed after the first K in the shuffle
    return visible, mask, ids_restore


def _inverse_by_indexing(ids_shuffle):
    ids_restore = torch.zeros_like(ids_shuffle)
    rows = torch.arange(ids_shuffle.shape[0])[:, None]
    ids_restore[rows, ids_shuffle] = torch.arange(ids_shuffle.shape[1])
    return ids_restore


def _normalize_by_hand(patches):
    n = patches.shape[-1]
    mean = patches.sum(-1, keepdim=True) / n
    var = ((patches - mean) ** 2).sum(-1, keepdim=True) / (n - 1)
    return (patches - mean) / torch.sqrt(var + 1e-6)


def _masked_mse_boolean(pred, target, mask):
    removed = mask.bool()
    return ((pred - _normalize_by_hand(target))[removed] ** 2).mean()


def _grid_noise_loop(batch, grid, stride, generator):
    noise = torch.rand(batch, grid, grid, generator=generator) + 1  # [1, 2): removed
    for b in range(batch):
        r, c = torch.randint(0, stride, (2,), generator=generator).tolist()
        noise[b, r::stride, c::stride] -= 1  # [0, 1): the kept patch of every cell
    return noise.flatten(1)


def _mask_token_fill_arithmetic(tokens, mask, token, pos):
    m = mask[..., None]
    return tokens * (1 - m) + (token + pos) * m


SECOND_RIGHT = [
    ("check_psnr", _psnr_loops),
    ("check_patch_mask", _patch_mask_unfold),
    ("check_patchify", _patchify_view),
    ("check_unpatchify", _unpatchify_loops),
    ("check_attention_weights", _attention_weights_einsum),
    ("check_causal_attention", _causal_tril),
    ("check_random_masking", _random_masking_sort),
    ("check_inverse_permutation", _inverse_by_indexing),
    ("check_normalize_patches", _normalize_by_hand),
    ("check_masked_mse_loss", _masked_mse_boolean),
    ("check_grid_noise", _grid_noise_loop),
    ("check_mask_token_fill", _mask_token_fill_arithmetic),
]


@pytest.mark.parametrize(("name", "answer"), SECOND_RIGHT, ids=[n for n, _ in SECOND_RIGHT])
def test_check_passes_a_second_right_answer(
    name: str, answer: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    getattr(checks, name)(answer)
    assert capsys.readouterr().out.startswith(f"{name} passed")


# ------------------------------------------ chapter 7: second right answers, from the task text


def _lr_from_the_task(step, total_steps, warmup_steps, peak_lr, min_lr):
    if warmup_steps and step < warmup_steps:
        return peak_lr * step / warmup_steps
    angle = math.pi * (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(angle))


def _groups_from_the_task(model, weight_decay):
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    matrices = [p for name, p in trained if p.dim() >= 2 and not name.endswith("token")]
    others = [p for name, p in trained if p.dim() < 2 or name.endswith("token")]
    return [
        {"params": others, "weight_decay": 0.0},
        {"params": matrices, "weight_decay": weight_decay},
    ]


def _step_from_the_task(model, images, noise, optimizer, lr):
    optimizer.zero_grad(set_to_none=False)
    loss = model(images, noise=noise).loss
    loss.backward()
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return loss.detach()


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("check_lr_schedule", _lr_from_the_task),
        ("check_param_groups", _groups_from_the_task),
        ("check_train_step", _step_from_the_task),
    ],
)
def test_chapter7_checks_pass_a_second_correct_answer(
    name: str, answer: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    getattr(checks, name)(answer)
    assert capsys.readouterr().out.startswith(f"{name} passed")


def test_lr_check_asks_only_steps_a_run_takes() -> None:
    asked = []

    def spy(step, total, warmup, peak, low):
        asked.append((step, total))
        return lr_at(step, total, warmup, peak, low)

    checks.check_lr_schedule(spy)
    assert all(0 <= step < total for step, total in asked)
    assert any(step == total - 1 for step, total in asked)
