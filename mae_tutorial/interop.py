"""Weights in and out: Hugging Face `ViTMAEForPreTraining` and the official facebookresearch/mae release.

All three implementations compute the same function; they differ only in names and in three layouts:

- attention: ours and the official code use one fused `qkv` Linear, rows ordered (q, k, v) and,
  within each, (head, head width); Hugging Face keeps separate `q_proj`, `k_proj`, `v_proj` (named
  `attention.attention.query/key/value` before transformers 5), which concatenate into ours.
- patch embedding: theirs is a Conv2d weight (D, C, P, P); ours the Linear weight (D, P*P*C) acting on
  `patchify`'s (row, column, channel) patch vectors.
- position tables: all are fixed 2-D sin-cos, but the official code (and Hugging Face, which copies
  it) puts the column half first and ours the row half. A converted model keeps the tables it came
  with, so the converted model is the same function as the original, not merely a similar one.

Every conversion checks names and shapes exactly and raises `ValueError` naming what is missing,
left over or of the wrong shape. transformers is optional: it is imported only by the functions that
build a Hugging Face object.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange

from mae_tutorial.config import MAEConfig
from mae_tutorial.model import MaskedAutoencoder

if TYPE_CHECKING:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

StateDict = Mapping[str, torch.Tensor]

_PATCH_WEIGHT = "encoder.patch_embed.proj.weight"  # a Conv2d weight in both other formats
_POS_TABLES = ("encoder.pos_embed", "decoder.decoder_pos_embed")


@dataclass(frozen=True)
class _Scheme:
    """How one format names our tensors: top-level tensors and modules, and the inside of a block."""

    tensors: dict[str, str]
    modules: dict[str, str]
    encoder_blocks: str
    decoder_blocks: str
    block: dict[str, str]
    qkv: tuple[str, ...]  # the modules that concatenate, in order, into our fused `attn.qkv`


_HF = _Scheme(  # transformers 5.x names; `_HF4_RENAMES` maps the 4.x names onto these
    tensors={
        "encoder.cls_token": "vit.embeddings.cls_token",
        "encoder.pos_embed": "vit.embeddings.position_embeddings",
        "decoder.mask_token": "decoder.mask_token",
        "decoder.decoder_pos_embed": "decoder.decoder_pos_embed",
    },
    modules={
        "encoder.patch_embed.proj": "vit.embeddings.patch_embeddings.projection",
        "encoder.norm": "vit.layernorm",
        "decoder.decoder_embed": "decoder.decoder_embed",
        "decoder.norm": "decoder.decoder_norm",
        "decoder.pred": "decoder.decoder_pred",
    },
    encoder_blocks="vit.layers",
    decoder_blocks="decoder.decoder_layers",
    block={
        "norm1": "layernorm_before",
        "attn.proj": "attention.o_proj",
        "norm2": "layernorm_after",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    },
    qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
)

_OFFICIAL = _Scheme(  # facebookresearch/mae `models_mae.py` (timm blocks)
    tensors={
        "encoder.cls_token": "cls_token",
        "encoder.pos_embed": "pos_embed",
        "decoder.mask_token": "mask_token",
        "decoder.decoder_pos_embed": "decoder_pos_embed",
    },
    modules={
        "encoder.patch_embed.proj": "patch_embed.proj",
        "encoder.norm": "norm",
        "decoder.decoder_embed": "decoder_embed",
        "decoder.norm": "decoder_norm",
        "decoder.pred": "decoder_pred",
    },
    encoder_blocks="blocks",
    decoder_blocks="decoder_blocks",
    block={name: name for name in ("norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")},
    qkv=("attn.qkv",),
)

# transformers 4.x names -> 5.x names, applied in order (`attention.output` before `output`).
_HF4_RENAMES = (
    (r"^vit\.encoder\.layer\.", "vit.layers."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "converting to or from Hugging Face needs the transformers package; install it with "
            "`pip install transformers` (or `pip install -e '.[test]'`)"
        ) from err
    return transformers


def _some(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "nothing"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_representable(config: MAEConfig) -> None:
    if config.mask_token_in_encoder:
        raise ValueError(
            "mask_token_in_encoder=True (the Table 1c ablation) has no counterpart in the official "
            "or Hugging Face MAE; expected mask_token_in_encoder=False"
        )


def _name_table(config: MAEConfig, scheme: _Scheme) -> dict[str, tuple[str, ...]]:
    """Each of our state-dict keys -> the key(s) holding it in `scheme`'s format."""
    table = {ours: (theirs,) for ours, theirs in scheme.tensors.items()}
    modules = dict(scheme.modules)
    fused = {}
    stacks = (("encoder.blocks", scheme.encoder_blocks, config.depth),)
    stacks += (("decoder.blocks", scheme.decoder_blocks, config.decoder_depth),)
    for ours_stack, their_stack, depth in stacks:
        for i in range(depth):
            ours, theirs = f"{ours_stack}.{i}", f"{their_stack}.{i}"
            modules.update({f"{ours}.{a}": f"{theirs}.{b}" for a, b in scheme.block.items()})
            fused[f"{ours}.attn.qkv"] = tuple(f"{theirs}.{part}" for part in scheme.qkv)
    for param in ("weight", "bias"):
        table.update({f"{o}.{param}": (f"{t}.{param}",) for o, t in modules.items()})
        table.update({f"{o}.{param}": tuple(f"{p}.{param}" for p in t) for o, t in fused.items()})
    return table


def _convert_in(
    state_dict: StateDict, config: MAEConfig, scheme: _Scheme, source: str
) -> MaskedAutoencoder:
    """Build our model from a state dict in `scheme`'s names; every tensor must be used, once."""
    _check_representable(config)
    table = _name_table(config, scheme)
    needed = [key for keys in table.values() for key in keys]
    missing = [key for key in needed if key not in state_dict]
    unused = sorted(set(state_dict) - set(needed))
    if missing or unused:
        raise ValueError(
            f"the {source} state dict does not match {config}: missing {_some(missing)}; "
            f"not consumed {_some(unused)}"
        )
    ours = {}
    for name, keys in table.items():
        tensor = torch.cat([state_dict[key] for key in keys], dim=0)  # q, k, v stacked: (3D, D)
        if name == _PATCH_WEIGHT:
            if tensor.ndim != 4:
                raise ValueError(
                    f"expected the {source} patch projection {keys[0]} to be a Conv2d weight of "
                    f"shape (D, C, P, P), got shape {tuple(tensor.shape)}"
                )
            tensor = rearrange(tensor, "d c p1 p2 -> d (p1 p2 c)")  # (D, P*P*C), patchify's layout
        ours[name] = tensor

    model = MaskedAutoencoder(config)
    expected = model.state_dict()
    assert set(expected) == set(ours), "the name table must cover our model exactly"
    wrong = [
        f"{name} from {table[name]}: got {tuple(t.shape)}, expected {tuple(expected[name].shape)}"
        for name, t in ours.items()
        if t.shape != expected[name].shape
    ]
    if wrong:
        raise ValueError(f"the {source} tensors do not fit {config}: " + "; ".join(wrong))
    model.load_state_dict(ours, strict=True)
    return model.to(device=ours[_PATCH_WEIGHT].device, dtype=ours[_PATCH_WEIGHT].dtype)


def _convert_out(model: MaskedAutoencoder, scheme: _Scheme) -> dict[str, torch.Tensor]:
    """Our model's state dict in `scheme`'s names (copies, so the result owns its memory)."""
    if not isinstance(model, MaskedAutoencoder):
        raise TypeError(f"expected a MaskedAutoencoder, got {type(model).__name__}")
    _check_representable(model.config)
    state, p = model.state_dict(), model.config.patch_size
    theirs = {}
    for name, keys in _name_table(model.config, scheme).items():
        tensor = state[name].detach()
        if name == _PATCH_WEIGHT:
            tensor = rearrange(tensor, "d (p1 p2 c) -> d c p1 p2", p1=p, p2=p)  # (D, C, P, P)
        for key, chunk in zip(keys, tensor.chunk(len(keys), dim=0)):  # qkv: (3D, D) -> 3 x (D, D)
            theirs[key] = chunk.clone()
    return theirs


def _square(value: Any, field: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise ValueError(f"ViTMAEConfig.{field}={value!r} is not square; MAEConfig needs one int")


def config_from_hf(hf_config: ViTMAEConfig | Mapping[str, Any]) -> MAEConfig:
    """Our `MAEConfig` for a Hugging Face `ViTMAEConfig` (or its `config.json` as a dict).

    Raises:
        ValueError: naming the field and value for what our model cannot represent: non-square
            images or patches, `qkv_bias=False`, an activation other than exact "gelu", dropout,
            a decoder MLP ratio different from the encoder's, or sizes `MAEConfig` rejects.
    """
    if isinstance(hf_config, Mapping):
        hf_config = _transformers().ViTMAEConfig.from_dict(dict(hf_config))
    c = hf_config
    required = {"qkv_bias": True, "hidden_act": "gelu", "hidden_dropout_prob": 0.0}
    required["attention_probs_dropout_prob"] = 0.0
    for field, value in required.items():
        if getattr(c, field) != value:
            raise ValueError(
                f"ViTMAEConfig.{field}={getattr(c, field)!r} cannot be represented; expected "
                f"{value!r} (our blocks have biased qkv, exact GELU and no dropout)"
            )
    head_dim = getattr(c, "head_dim", None)
    if head_dim is not None and head_dim * c.num_attention_heads != c.hidden_size:
        raise ValueError(
            f"ViTMAEConfig.head_dim={head_dim} times num_attention_heads={c.num_attention_heads} "
            f"is not hidden_size={c.hidden_size}; our heads split the width evenly"
        )
    try:
        config = MAEConfig(
            image_size=_square(c.image_size, "image_size"),
            patch_size=_square(c.patch_size, "patch_size"),
            in_chans=c.num_channels,
            embed_dim=c.hidden_size,
            depth=c.num_hidden_layers,
            num_heads=c.num_attention_heads,
            mlp_ratio=c.intermediate_size / c.hidden_size,
            decoder_embed_dim=c.decoder_hidden_size,
            decoder_depth=c.decoder_num_hidden_layers,
            decoder_num_heads=c.decoder_num_attention_heads,
            mask_ratio=c.mask_ratio,
            norm_pix_loss=bool(c.norm_pix_loss),
            layer_norm_eps=c.layer_norm_eps,
        )
    except ValueError as err:
        raise ValueError(f"this ViTMAEConfig cannot be represented: {err}") from err
    if config.mlp_hidden_dim != c.intermediate_size:
        raise ValueError(
            f"ViTMAEConfig.intermediate_size={c.intermediate_size} is not reproduced by "
            f"hidden_size * mlp_ratio = {config.mlp_hidden_dim}"
        )
    if config.decoder_mlp_hidden_dim != c.decoder_intermediate_size:
        raise ValueError(
            f"ViTMAEConfig.decoder_intermediate_size={c.decoder_intermediate_size} cannot be "
            f"represented; our decoder shares the encoder's mlp_ratio={config.mlp_ratio}, so "
            f"expected decoder_hidden_size * mlp_ratio = {config.decoder_mlp_hidden_dim}"
        )
    return config


def config_to_hf(config: MAEConfig, attn_implementation: str | None = None) -> ViTMAEConfig:
    """The Hugging Face `ViTMAEConfig` of the same model (`pool` and `drop_path` have no field).

    Args:
        config: our configuration; `mask_token_in_encoder` and `drop_path` must be off.
        attn_implementation: "sdpa", "eager", ...; transformers' default when None.
    """
    if config.drop_path:
        raise ValueError(
            f"drop_path={config.drop_path} has no ViTMAEConfig field; expected 0.0 (stochastic "
            "depth is a fine-tuning setting)"
        )
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return _transformers().ViTMAEConfig(
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.in_chans,
        hidden_size=config.embed_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_hidden_dim,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=config.layer_norm_eps,
        qkv_bias=True,
        decoder_hidden_size=config.decoder_embed_dim,
        decoder_num_hidden_layers=config.decoder_depth,
        decoder_num_attention_heads=config.decoder_num_heads,
        decoder_intermediate_size=config.decoder_mlp_hidden_dim,
        mask_ratio=config.mask_ratio,
        norm_pix_loss=config.norm_pix_loss,
        **extra,
    )


def _hf5_name(key: str) -> str:
    for pattern, replacement in _HF4_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def normalize_hf_keys(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ViTMAE state dict from transformers 4.x names to 5.x names.

    5.x names pass through unchanged, so this is safe on either.
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new = _hf5_name(key)
        if new in renamed:
            raise ValueError(f"{key!r} and another key both name {new!r}; mixed 4.x and 5.x names")
        renamed[new] = tensor
    return renamed


def from_hf_state_dict(
    state_dict: StateDict, hf_config: ViTMAEConfig | Mapping[str, Any]
) -> MaskedAutoencoder:
    """Our model from a `ViTMAEForPreTraining` state dict (4.x or 5.x names) and its config.

    The position tables are copied as they are (Hugging Face's layout), so the result computes
    exactly what the Hugging Face model computes.

    Args:
        state_dict: e.g. `safetensors.torch.load_file("model.safetensors")` of a Hugging Face
            checkpoint folder.
        hf_config: its `ViTMAEConfig`, or the folder's `config.json` as a dict (transformers is
            then still needed, to fill in the defaults that `config.json` leaves out).

    Raises:
        ValueError: for a config we cannot represent (see `config_from_hf`), and naming the
            tensors that are missing, not consumed, or of the wrong shape.
    """
    config = config_from_hf(hf_config)
    state = normalize_hf_keys(state_dict)
    for name in _POS_TABLES:
        key = _HF.tensors[name]
        if key in state and not state[key].any():
            warnings.warn(
                f"{key} is all zeros (a freshly constructed ViTMAEForPreTraining in transformers "
                "5.x has no sin-cos tables); the converted model copies it, so it has no positions",
                stacklevel=2,
            )
    return _convert_in(state, config, _HF, "Hugging Face")


def from_hf(hf_model: ViTMAEForPreTraining) -> MaskedAutoencoder:
    """Our `MaskedAutoencoder` computing exactly what a Hugging Face `ViTMAEForPreTraining` does.

    For the same images and `noise`, `.loss`, `.pred` and `.mask` equal Hugging Face's `.loss`,
    `.logits` and `.mask` up to float rounding. The result is on the same device and dtype and in the
    same train/eval mode as `hf_model`.

    Raises:
        TypeError: if `hf_model` is not a `ViTMAEForPreTraining`.
        ValueError: as `from_hf_state_dict`.
    """
    transformers = _transformers()
    if not isinstance(hf_model, transformers.ViTMAEForPreTraining):
        raise TypeError(f"expected a ViTMAEForPreTraining, got {type(hf_model).__name__}")
    model = from_hf_state_dict(hf_model.state_dict(), hf_model.config)
    return model.train(hf_model.training)


def to_hf(model: MaskedAutoencoder, attn_implementation: str | None = None) -> ViTMAEForPreTraining:
    """A Hugging Face `ViTMAEForPreTraining` computing exactly what `model` does.

    Our own position tables travel with the weights, so the result matches `model` even though
    Hugging Face's default tables order rows and columns differently. Works with the names of
    transformers 4.x and 5.x. Same device, dtype and train/eval mode as `model`.

    Args:
        model: the model to convert; `mask_token_in_encoder` and `drop_path` must be off.
        attn_implementation: Hugging Face attention backend ("sdpa", "eager"); its default if None.

    Raises:
        TypeError: if `model` is not a `MaskedAutoencoder`.
        ValueError: for `mask_token_in_encoder=True` or `drop_path` > 0.
    """
    theirs = _convert_out(model, _HF)
    hf_model = _transformers().ViTMAEForPreTraining(config_to_hf(model.config, attn_implementation))
    installed = {_hf5_name(key): key for key in hf_model.state_dict()}  # 4.x or 5.x names
    assert set(installed) == set(theirs), "transformers' ViTMAE names moved: update _HF"
    hf_model.load_state_dict({installed[k]: t for k, t in theirs.items()}, strict=True)
    first = next(iter(model.state_dict().values()))
    return hf_model.to(device=first.device, dtype=first.dtype).train(model.training)


# ImageNet's per-channel statistics: the official models expect images normalised with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_HF_MODELS = ("facebook/vit-mae-base", "facebook/vit-mae-large", "facebook/vit-mae-huge")


class HubUnavailableError(OSError):
    """A model could not be fetched from the Hugging Face Hub (offline, or not in the cache)."""


def load_hf_pretrained(name: str = "facebook/vit-mae-base", **kwargs: Any) -> MaskedAutoencoder:
    """The official ImageNet MAE (or any `ViTMAEForPreTraining` checkpoint) as our model.

    Downloads `name` from the Hugging Face Hub on first use (the base model is about 450 MB),
    then loads it from the Hub's cache; a local folder written by `save_pretrained` works too.
    It expects 224 x 224 images normalised with `IMAGENET_MEAN` / `IMAGENET_STD`.

    Args:
        name: a Hub model id, e.g. one of `OFFICIAL_HF_MODELS`, or a local folder.
        **kwargs: passed to `ViTMAEForPreTraining.from_pretrained` (e.g. `local_files_only=True`).

    Returns:
        A `MaskedAutoencoder` in eval mode computing what the Hugging Face model computes.

    Raises:
        HubUnavailableError: when the model is neither reachable nor cached (offline machines).
    """
    transformers = _transformers()
    try:
        hf_model = transformers.ViTMAEForPreTraining.from_pretrained(name, **kwargs)
    except OSError as err:
        raise HubUnavailableError(
            f"could not load {name!r}: it is not in the Hugging Face cache and the Hub did not "
            f"answer ({type(err).__name__}); connect to the internet once, or pass a local folder "
            "written by `save_pretrained`"
        ) from err
    return from_hf(hf_model.eval())


def from_official_state_dict(
    state_dict: StateDict | Mapping[str, Any], config: MAEConfig
) -> MaskedAutoencoder:
    """Our model from a facebookresearch/mae `MaskedAutoencoderViT` state dict.

    Args:
        state_dict: `model.state_dict()` of `models_mae.py`, or a released checkpoint holding it
            under "model". The `mae_pretrain_vit_*.pth` releases hold the encoder only and are
            refused (missing decoder); `mae_visualize_vit_*.pth` hold both.
        config: the sizes; the official models use `layer_norm_eps=1e-6`, our default.

    Raises:
        ValueError: naming the tensors that are missing, not consumed, or of the wrong shape.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    return _convert_in(state_dict, config, _OFFICIAL, "official MAE")


def to_official_state_dict(model: MaskedAutoencoder) -> dict[str, torch.Tensor]:
    """`model`'s weights under facebookresearch/mae `models_mae.py` names, Conv2d patch weight."""
    return _convert_out(model, _OFFICIAL)
