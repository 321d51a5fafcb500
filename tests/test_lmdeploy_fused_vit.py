"""The fused InternViT layer computes what LMDeploy's own layer computes (runs where LMDeploy imports: the gpu
profile, or any machine with its Python package on the path; the same check on an H200 is in bench/eval_throughput.py
``fusevit=1``, against the stock engine's answers)."""
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
    return stock, fused.fused_copy(stock)


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


def test_an_official_checkpoint_loaded_by_lmdeploy_gives_the_stock_image_features(tiny_model_dir):
    """LMDeploy's own build and weight loading (``load_model_weights``, which calls ``update_weights``) of an InternVL2
    checkpoint in the official format: the fused model's image features are the stock model's."""
    from lmdeploy.pytorch.model_inputs import StepContextManager
    from lmdeploy.pytorch.models.internvl import InternVLChatModel
    from lmdeploy.pytorch.weight_loader.model_weight_loader import load_model_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir, trust_remote_code=True)
    models = []
    for cls in (InternVLChatModel, fused.InternVLChatModelFusedViT):
        model = cls(config, StepContextManager(), dtype=torch.float32, device=torch.device("cpu"))
        load_model_weights(model, str(tiny_model_dir))
        models.append(model)
    stock, layers = models[0], models[1].vision_model.encoder.layers
    assert {type(layer) for layer in layers} == {fused.FusedInternVisionEncoderLayer}
    assert not torch.equal(stock.vision_model.encoder.layers[0].ls1, layers[0].ls1)  # folded at load
    size = config.vision_config.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = stock.extract_feature(pixels), models[1].extract_feature(pixels)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
