# Generated from notebooks/08_evaluation.ipynb by `make export`; edit the notebook, not this file.
"""Fine-tuning a pretrained encoder: layer-wise lr decay and partial freezing (paper, Section 4).

    layer ids     0 = patch embedding and tokens, i + 1 = block i, depth + 1 = final norm and head
    lr scale      layer_decay ** (depth + 1 - id): 1 for the head, layer_decay ** (depth - i) for
                  block i, layer_decay ** (depth + 1) for the embedding
    weight decay  on weight matrices; none on 1-D parameters (biases, norm weights), the cls token
                  and the mask token
    freezing      `freeze_all_but_last(model, k)` trains the last k blocks, the final norm, the head

The official MAE fine-tuning code (`util/lr_decay.py`, after BEiT) builds the same groups; each
carries an "lr_scale" that the schedule multiplies into the lr at every step.
"""

from __future__ import annotations

from typing import Any

from mae_tutorial.model import ViTClassifier

# Parameters of the embedding layer, below block 0 (the position table is a fixed buffer).
EMBEDDING = ("encoder.patch_embed.", "encoder.cls_token", "encoder.mask_token")
# Parameters that get no weight decay although they are not 1-D (the official `no_weight_decay`).
NO_DECAY_TOKENS = ("encoder.cls_token", "encoder.mask_token")


def layer_id(name: str, depth: int) -> int:
    """The layer a parameter of a `ViTClassifier` belongs to, counted from the input.

    0 for the patch embedding and the tokens, i + 1 for block i (0-based), depth + 1 for the
    final norm and the head.
    """
    if name.startswith(EMBEDDING):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def layer_decay_param_groups(
    model: ViTClassifier, *, weight_decay: float = 0.05, layer_decay: float = 0.75
) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise lr decay (BEiT, ELECTRA; the official MAE's).

    Block i (0-based) gets lr scale layer_decay ** (depth - i), the patch embedding and tokens
    layer_decay ** (depth + 1), the final norm and the head 1: layers near the input, which
    pretraining got most right, move least. 1-D parameters (biases, norm weights) and the tokens
    get no weight decay. Frozen parameters are left out. Each group carries its "lr_scale".

    Returns:
        One dict per (layer, decayed or not) with "params", "lr_scale" and "weight_decay",
        ordered from the input to the head.
    """
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depth)
        no_decay = param.ndim == 1 or name.startswith(NO_DECAY_TOKENS)
        group = groups.setdefault(
            (layer, no_decay),
            {
                "params": [],
                "lr_scale": layer_decay ** (depth + 1 - layer),
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def freeze_all_but_last(model: ViTClassifier, blocks: int) -> ViTClassifier:
    """Partial fine-tuning (the paper's Figure 9): train the last `blocks` blocks, the final norm
    and the head; freeze the rest (`requires_grad=False`). Returns `model`, changed in place.

    `blocks=0` leaves the norm and the head: a linear classifier on frozen features (the norm's
    affine folds into the head), trained with the fine-tuning recipe.
    """
    depth = len(model.encoder.blocks)
    if isinstance(blocks, bool) or not isinstance(blocks, int) or not 0 <= blocks <= depth:
        raise ValueError(f"blocks must be an int in [0, {depth}] (the depth), got {blocks!r}")
    model.requires_grad_(False)
    for module in (*model.encoder.blocks[depth - blocks :], model.encoder.norm, model.head):
        module.requires_grad_(True)
    return model


def train_mode(model: ViTClassifier) -> None:
    """Train mode, except the frozen parts: they stay fixed feature extractors in eval mode (no
    stochastic depth, no dropout)."""
    model.train()
    for part in (model.encoder.patch_embed, *model.encoder.blocks, model.encoder.norm):
        part.train(any(p.requires_grad for p in part.parameters()))
