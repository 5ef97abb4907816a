"""Tests for mae_tutorial.interop: our MAE against Hugging Face's ViTMAE and the official names.

The Hugging Face models are small and randomly initialised here (no download); every parameter is
randomised so that agreement is not the trivial agreement of zeros and ones.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch

from mae_tutorial.config import MAEConfig
from mae_tutorial.interop import (
    config_from_hf,
    config_to_hf,
    from_hf,
    from_hf_state_dict,
    from_official_state_dict,
    normalize_hf_keys,
    to_hf,
    to_official_state_dict,
)
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.pos_embed import sincos_pos_embed_2d

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

ATOL = 1e-5
SMALL = dict(
    image_size=32,
    patch_size=4,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=256,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=128,
)
VARIANTS = {
    "1-channel": dict(num_channels=1),
    "3-channel, 2 decoder layers": dict(num_channels=3, decoder_num_hidden_layers=2),
    "mask ratio 0.5": dict(num_channels=3, mask_ratio=0.5),
}

# transformers 5.x names -> 4.x names, written independently of the module under test.
HF5_TO_HF4 = (
    (r"^vit\.layers\.", "vit.encoder.layer."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)
# transformers 4.x names -> facebookresearch/mae names (the inverse of the renames in transformers'
# original convert_vit_mae_to_pytorch.py); q, k and v are fused separately.
HF4_TO_OFFICIAL = (
    (r"^vit\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^vit\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^vit\.embeddings\.cls_token$", "cls_token"),
    (r"^vit\.encoder\.layer\.", "blocks."),
    (r"^vit\.layernorm\.", "norm."),
    (r"^decoder\.decoder_layers\.", "decoder_blocks."),
    (r"^decoder\.", ""),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)


def rename(state: dict[str, torch.Tensor], table) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        for pattern, replacement in table:
            key = re.sub(pattern, replacement, key)
        out[key] = tensor
    return out


def official_layout_table(dim: int, grid_size: int) -> torch.Tensor:
    """The official (and Hugging Face) sin-cos table: our table with the row and column halves
    swapped, since the official code encodes the column first."""
    ours = sincos_pos_embed_2d(dim, grid_size)
    return torch.cat([ours[:, dim // 2 :], ours[:, : dim // 2]], dim=1)[None]


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random (norm weights around 1); position tables sin-cos as in a checkpoint."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith(("position_embeddings", "pos_embed")):
                grid = int((param.shape[1] - 1) ** 0.5)
                param.copy_(official_layout_table(param.shape[-1], grid))
                continue
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1 + offset)


def make_hf(attn: str = "sdpa", **overrides) -> transformers.ViTMAEForPreTraining:
    config = transformers.ViTMAEConfig(**{**SMALL, **overrides}, attn_implementation=attn)
    model = transformers.ViTMAEForPreTraining(config).eval()
    randomise(model)
    return model


def inputs(config: MAEConfig, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    shape = (batch, config.in_chans, config.image_size, config.image_size)
    images = torch.randn(shape, generator=generator)
    return images, torch.rand(batch, config.num_patches, generator=generator)


def assert_same_outputs(hf_model, ours: MaskedAutoencoder, atol: float = ATOL) -> None:
    images, noise = inputs(ours.config)
    with torch.no_grad():
        theirs, mine = hf_model(images, noise=noise), ours(images, noise=noise)
    torch.testing.assert_close(mine.mask, theirs.mask, rtol=0, atol=0)
    torch.testing.assert_close(mine.pred, theirs.logits, rtol=0, atol=atol)
    torch.testing.assert_close(mine.loss, theirs.loss, rtol=0, atol=atol)


def assert_state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_from_hf_matches_hf(variant: str, norm_pix_loss: bool, attn: str) -> None:
    hf_model = make_hf(attn, norm_pix_loss=norm_pix_loss, **VARIANTS[variant])
    ours = from_hf(hf_model)
    assert not ours.training
    assert ours.config.norm_pix_loss is norm_pix_loss
    assert ours.config.layer_norm_eps == hf_model.config.layer_norm_eps == 1e-12
    assert_same_outputs(hf_model, ours)


def test_encoder_latent_matches_hf_vit() -> None:
    hf_model = make_hf()
    ours = from_hf(hf_model)
    images, noise = inputs(ours.config)
    with torch.no_grad():
        theirs = hf_model.vit(images, noise=noise)
        latent, mask, ids_restore = ours.encoder.forward_masked(images, 0.75, noise)
    torch.testing.assert_close(latent, theirs.last_hidden_state, rtol=0, atol=ATOL)
    assert torch.equal(mask, theirs.mask) and torch.equal(ids_restore, theirs.ids_restore)


def test_hf_round_trip_is_exact() -> None:
    hf_model = make_hf(num_channels=3)
    back = to_hf(from_hf(hf_model))
    assert isinstance(back, transformers.ViTMAEForPreTraining) and not back.training
    assert_state_dicts_equal(back.state_dict(), hf_model.state_dict())


def test_ours_to_hf_and_back() -> None:
    torch.manual_seed(0)
    ours = MaskedAutoencoder(MAEConfig.from_preset("tiny", norm_pix_loss=True)).eval()
    randomise(ours, seed=3)  # our own sin-cos tables are buffers, left as they are
    hf_model = to_hf(ours, attn_implementation="eager")
    table = hf_model.vit.embeddings.position_embeddings
    assert torch.equal(table, ours.encoder.pos_embed), "our tables must travel to Hugging Face"
    assert not torch.equal(table, official_layout_table(32, 4)), "the layouts differ"
    assert_same_outputs(hf_model, ours)

    back = from_hf(hf_model)
    assert back.config == ours.config
    assert_state_dicts_equal(back.state_dict(), ours.state_dict())
    images, noise = inputs(ours.config)
    with torch.no_grad():
        assert torch.equal(back(images, noise=noise).pred, ours(images, noise=noise).pred)


def test_hf_tables_are_ours_with_halves_swapped() -> None:
    from transformers.models.vit_mae import modeling_vit_mae

    build = getattr(modeling_vit_mae, "build_2d_sinusoidal_position_embedding", None)
    if build is None:
        pytest.skip("this transformers release builds its table under another name")
    table = build(height=8, width=8, embed_dim=64, cls_token=True)
    table = torch.cat([table[:, 32:], table[:, :32]], dim=1)  # ViTMAE's rotation of the halves
    torch.testing.assert_close(table[None], official_layout_table(64, 8), rtol=0, atol=1e-6)


def test_transformers_4_names(tmp_path) -> None:
    hf_model = make_hf(num_channels=3)
    old = rename(hf_model.state_dict(), HF5_TO_HF4)
    assert any(".attention.attention.query." in key for key in old)
    ours = from_hf_state_dict(old, hf_model.config)
    assert_state_dicts_equal(ours.state_dict(), from_hf(hf_model).state_dict())
    assert normalize_hf_keys(old).keys() == hf_model.state_dict().keys()

    # The 4.x names above are the ones transformers itself still accepts as legacy names.
    from safetensors.torch import save_file

    save_file({k: t.contiguous() for k, t in old.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(hf_model.config.to_dict()))
    loaded = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path)
    assert_state_dicts_equal(loaded.state_dict(), hf_model.state_dict())


def test_from_hf_state_dict_accepts_config_json_dict() -> None:
    hf_model = make_hf(num_channels=3)
    ours = from_hf_state_dict(hf_model.state_dict(), hf_model.config.to_dict())
    assert_same_outputs(hf_model, ours.eval())


def official_from_hf(hf_model) -> dict[str, torch.Tensor]:
    """An official-format state dict built from a Hugging Face model, independently of interop."""
    state = rename(rename(hf_model.state_dict(), HF5_TO_HF4), HF4_TO_OFFICIAL)
    out = {}
    for key, tensor in state.items():
        match = re.match(r"(.*)\.attention\.attention\.query\.(weight|bias)$", key)
        if match:
            parts = [
                f"{match[1]}.attention.attention.{p}.{match[2]}" for p in ("query", "key", "value")
            ]
            out[f"{match[1]}.attn.qkv.{match[2]}"] = torch.cat([state[p] for p in parts])
        elif ".attention.attention." not in key:
            out[key] = tensor
    return out


def test_official_matches_hf() -> None:
    hf_model = make_hf(num_channels=3, norm_pix_loss=True, layer_norm_eps=1e-6)
    config = config_from_hf(hf_model.config)
    official = official_from_hf(hf_model)
    assert "blocks.1.attn.qkv.weight" in official and "decoder_blocks.0.norm1.bias" in official
    assert official["patch_embed.proj.weight"].shape == (64, 3, 4, 4)
    ours = from_official_state_dict({"model": official, "epoch": 399}, config).eval()
    assert_same_outputs(hf_model, ours)
    assert_state_dicts_equal(to_official_state_dict(ours), official)


def test_official_round_trip_of_our_model() -> None:
    ours = MaskedAutoencoder(MAEConfig.from_preset("tiny"))
    randomise(ours, seed=5)
    back = from_official_state_dict(to_official_state_dict(ours), ours.config)
    assert_state_dicts_equal(back.state_dict(), ours.state_dict())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("qkv_bias", False),
        ("hidden_act", "gelu_new"),
        ("hidden_dropout_prob", 0.1),
        ("image_size", [32, 48]),
        ("patch_size", [4, 2]),
        ("decoder_intermediate_size", 96),
        ("intermediate_size", 100),
    ],
)
def test_config_from_hf_refuses_what_we_cannot_represent(field: str, value) -> None:
    hf_config = transformers.ViTMAEConfig(**{**SMALL, field: value})
    with pytest.raises(ValueError, match=field):
        config_from_hf(hf_config)


def test_config_from_hf_reports_mae_config_errors() -> None:
    hf_config = transformers.ViTMAEConfig(**{**SMALL, "image_size": 30})
    with pytest.raises(ValueError, match="image_size=30"):
        config_from_hf(hf_config)


def test_config_round_trip() -> None:
    config = MAEConfig.from_preset("cpu", mask_ratio=0.6, layer_norm_eps=1e-5)
    assert config_from_hf(config_to_hf(config)) == config


def test_leftover_and_missing_tensors_are_named() -> None:
    hf_model = make_hf()
    state = dict(hf_model.state_dict())
    state["vit.pooler.dense.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"not consumed vit\.pooler\.dense\.weight"):
        from_hf_state_dict(state, hf_model.config)
    del state["vit.pooler.dense.weight"], state["decoder.decoder_pred.bias"]
    with pytest.raises(ValueError, match=r"missing decoder\.decoder_pred\.bias"):
        from_hf_state_dict(state, hf_model.config)


def test_official_errors() -> None:
    ours = MaskedAutoencoder(MAEConfig.from_preset("tiny"))
    official = to_official_state_dict(ours)
    encoder_only = {k: t for k, t in official.items() if not k.startswith(("decoder", "mask"))}
    with pytest.raises(ValueError, match="missing mask_token, decoder_pos_embed"):
        from_official_state_dict(encoder_only, ours.config)
    wider = MAEConfig.from_preset("tiny", embed_dim=64)
    with pytest.raises(ValueError, match=r"encoder\.cls_token .*got \(1, 1, 32\), expected"):
        from_official_state_dict(official, wider)
    official["patch_embed.proj.weight"] = official["patch_embed.proj.weight"].flatten(1)
    with pytest.raises(ValueError, match="Conv2d weight"):
        from_official_state_dict(official, ours.config)


def test_to_hf_refuses_what_hf_cannot_represent() -> None:
    ablation = MaskedAutoencoder(MAEConfig.from_preset("tiny", mask_token_in_encoder=True))
    with pytest.raises(ValueError, match="mask_token_in_encoder"):
        to_hf(ablation)
    with pytest.raises(ValueError, match="mask_token_in_encoder"):
        to_official_state_dict(ablation)
    with pytest.raises(ValueError, match="drop_path=0.1"):
        to_hf(MaskedAutoencoder(MAEConfig.from_preset("tiny", drop_path=0.1)))
    with pytest.raises(TypeError, match="MaskedAutoencoder"):
        to_hf(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="ViTMAEForPreTraining"):
        from_hf(MaskedAutoencoder(MAEConfig.from_preset("tiny")))


def test_zero_position_tables_warn() -> None:
    config = transformers.ViTMAEConfig(**SMALL)
    fresh = transformers.ViTMAEForPreTraining(config)
    with torch.no_grad():
        fresh.vit.embeddings.position_embeddings.zero_()
    with pytest.warns(UserWarning, match="all zeros"):
        from_hf(fresh)


def test_missing_transformers_is_a_clear_import_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install transformers"):
        config_to_hf(MAEConfig.from_preset("tiny"))


def test_load_hf_pretrained_from_a_saved_folder(tmp_path) -> None:
    from mae_tutorial.interop import load_hf_pretrained

    hf_model = make_hf()
    hf_model.save_pretrained(tmp_path / "saved")
    ours = load_hf_pretrained(str(tmp_path / "saved"))
    assert not ours.training
    assert_same_outputs(hf_model, ours)


def test_load_hf_pretrained_offline_is_a_clear_error(tmp_path) -> None:
    from mae_tutorial.interop import HubUnavailableError, load_hf_pretrained

    with pytest.raises(HubUnavailableError, match="not in the Hugging Face cache"):
        load_hf_pretrained("facebook/vit-mae-base", local_files_only=True, cache_dir=tmp_path)
