"""The fused InternViT layer computes what LMDeploy's own layer computes (runs where LMDeploy imports: the gpu
profile, or any machine with its Python package on the path; the same check on an H200 is in bench/eval_throughput.py
``fusevit=1``, against the stock engine's answers)."""
import copy

import pytest
import torch

fused = pytest.importorskip("foodie.lmdeploy_fused_vit", exc_type=ImportError)
from lmdeploy.pytorch.models.internvl import InternVisionEncoderLayer  # noqa: E402
from transformers import PretrainedConfig  # noqa: E402

VISION = dict(hidden_size=64, num_attention_heads=4, intermediate_size=256, qkv_bias=True, qk_normalization=False,
              layer_norm_eps=1e-6, norm_type="layer_norm", hidden_act="gelu")


def stock_and_fused(dtype=torch.float64):
    torch.manual_seed(0)
    stock = InternVisionEncoderLayer(PretrainedConfig(**VISION), dtype=dtype, device="cpu")
    for p in stock.parameters():
        p.data.normal_(0, 0.3)
    with torch.no_grad():  # layer scales as InternViT's: small, per channel, some far from 1
        stock.ls1.uniform_(0.01, 1.5)
        stock.ls2.uniform_(0.01, 1.5)
    layer = copy.deepcopy(stock)
    layer.__class__ = fused.FusedInternVisionEncoderLayer
    layer.update_weights()
    return stock, layer


def test_fused_layer_matches_lmdeploys_layer():
    stock, layer = stock_and_fused()
    x = torch.randn(3, 17, VISION["hidden_size"], dtype=torch.float64)
    with torch.inference_mode():
        want, got = stock(x), layer(x)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)  # CPU: exact GELU, so only rounding differs


def test_folding_is_done_once():
    stock, layer = stock_and_fused()
    x = torch.randn(2, 5, VISION["hidden_size"], dtype=torch.float64)
    layer.update_weights()  # LMDeploy may visit a module again: the scales are already 1, nothing changes
    with torch.inference_mode():
        assert torch.allclose(layer(x), stock(x), rtol=1e-10, atol=1e-10)
    assert torch.equal(layer.ls1, torch.ones_like(layer.ls1)) and torch.equal(layer.ls2, torch.ones_like(layer.ls2))


def test_linear_gelu_is_linear_then_gelu():
    torch.manual_seed(1)
    x, w, b = torch.randn(2, 7, 16), torch.randn(32, 16), torch.randn(32)
    assert torch.allclose(fused.linear_gelu(x, w, b), torch.nn.functional.gelu(x @ w.T + b), atol=1e-5)


def test_engines_built_after_use_fused_vit_take_the_fused_model():
    from lmdeploy.pytorch.models.patch import _get_model_class, _get_module_map  # LMDeploy's own lookup
    config = PretrainedConfig(auto_map={"AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"})
    try:
        fused.use_fused_vit()
        assert _get_model_class(config, _get_module_map()) is fused.InternVLChatModelFusedViT
    finally:
        fused.use_fused_vit(False)
    assert _get_model_class(config, _get_module_map()) is not fused.InternVLChatModelFusedViT


def test_only_exact_gelu_layers_are_fused():
    assert fused.fusable(PretrainedConfig(hidden_act="gelu"))
    assert not fused.fusable(PretrainedConfig(hidden_act="gelu_pytorch_tanh"))  # would need no stand-in: left alone
    assert not fused.fusable(PretrainedConfig(hidden_act="silu"))
