"""FoodieInternVL's speed switches (docs/PERFORMANCE.md) must not change what is learned: with them on, the
loss and every gradient equal those of XTuner's computation (full logits, eager attention with the padding
mask, InternViT inside autograd) on a right-padded batch with image tokens and a few labelled tokens."""
import pytest
import torch

pytest.importorskip("xtuner")

from peft import LoraConfig  # noqa: E402

from foodie.sdpa_attention import _llm_attention, use_sdpa  # noqa: E402
from foodie.xtuner_model import FoodieInternVL, is_right_padded  # noqa: E402

SLOW_PATH = dict(attn_implementation="eager", loss_on_labels_only=False, frozen_vit_without_grad=False,
                 causal_mask_for_right_padding=False, fused_lora=False, activation_checkpointing=True)
FAST_PATH = dict(attn_implementation="sdpa", activation_checkpointing=1)  # other switches on by default


def _model(path, **switches):
    torch.manual_seed(0)
    lora = dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM")
    switches = {"activation_checkpointing": False, **switches}
    model = FoodieInternVL(str(path), llm_lora=lora, torch_dtype="float32", **switches)
    return model.train()


def _batch(ctx_id, lengths, T=560, answer=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    ids = torch.randint(10, 500, (B, T), generator=g)
    ids[:, 5:5 + 256] = ctx_id  # one 448x448 tile = 256 image tokens per sample
    labels = torch.full((B, T), -100)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
        labels[i, n - answer:n] = ids[i, n - answer:n]
        ids[i, n:] = 0
    pixels = torch.randn(B, 1, 3, 448, 448, generator=g)
    return dict(pixel_values=list(pixels), input_ids=ids, attention_mask=mask,
                position_ids=torch.arange(T).repeat(B, 1), labels=labels)


def _loss_and_grads(model, data):
    loss = model(dict(data))["loss"]
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_speed_switches_give_the_same_loss_and_gradients(tiny_model_dir):
    slow = _model(tiny_model_dir, **SLOW_PATH)
    fast = _model(tiny_model_dir, **FAST_PATH)
    fast.load_state_dict(slow.state_dict(), strict=False)  # same LoRA init and mlp1
    data = _batch(slow.model.img_context_token_id, lengths=[560, 470, 520])

    loss_slow, grads_slow = _loss_and_grads(slow, data)
    loss_fast, grads_fast = _loss_and_grads(fast, data)

    assert loss_fast == pytest.approx(loss_slow, rel=1e-5)
    assert set(grads_fast) == set(grads_slow)
    assert any("mlp1" in n for n in grads_fast) and any("lora_B" in n for n in grads_fast)
    assert type(fast._llm_layers()[0].attention.wqkv).__name__ == "FusedLoraLinear"
    for name, g in grads_slow.items():
        assert torch.linalg.norm(grads_fast[name] - g) <= 1e-4 * torch.linalg.norm(g) + 1e-8, name


def test_a_batch_without_labels_gives_a_zero_loss_not_nan(tiny_model_dir):
    model = _model(tiny_model_dir, attn_implementation="sdpa")
    data = _batch(model.model.img_context_token_id, lengths=[560, 500])
    data["labels"][:] = -100
    loss = model(dict(data))["loss"]
    loss.backward()
    assert loss.item() == 0.0


def test_right_padding_detection():
    assert is_right_padded(torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert not is_right_padded(torch.tensor([[1, 1, 1], [0, 1, 1]]))  # left padding keeps its mask
    assert not is_right_padded(torch.tensor([[1, 0, 1]]))


def test_saved_lora_weights_do_not_depend_on_the_switches(tiny_model_dir):
    slow = _model(tiny_model_dir, **SLOW_PATH)
    fast = _model(tiny_model_dir, **FAST_PATH)
    assert list(slow.state_dict()) == list(fast.state_dict())  # what XTuner saves: LoRA + mlp1, same names


def test_partial_checkpointing_recomputes_only_the_chosen_layers(tiny_model_dir):
    model = _model(tiny_model_dir, attn_implementation="sdpa", activation_checkpointing=1)
    layers = model._llm_layers()
    assert not layers[0].forward is layers[0].__class__.forward  # wrapped
    assert "forward" not in vars(layers[1])  # untouched
    assert not model.model.language_model.get_base_model().model.gradient_checkpointing


def test_training_an_official_code_checkpoint_reports_and_runs_sdpa(tiny_model_dir, monkeypatch):
    """The embedded checkpoint carries OpenGVLab's files (eager or flash-attn only): on CPU, 'auto' swaps both
    encoders' attention for SDPA and keeps the partial checkpointing; 'eager' keeps the files' own attention and
    checkpoints every layer."""
    logged = []
    monkeypatch.setattr("foodie.xtuner_model.print_log", lambda msg, **kwargs: logged.append(msg))
    fast = _model(tiny_model_dir, attn_implementation="auto", activation_checkpointing=1)
    own = _model(tiny_model_dir, attn_implementation="eager", activation_checkpointing=1)
    assert type(fast.model.language_model.get_base_model()).__module__.startswith("transformers_modules.")
    log = "\n".join(logged)
    assert "attention=sdpa" in log and "attention=eager" in log
    assert all(m.forward.__func__ is _llm_attention for m in fast.model.modules()
               if type(m).__name__ == "InternLM2Attention")
    assert all("forward" not in vars(m) for m in own.model.modules() if type(m).__name__ == "InternLM2Attention")
    assert own.model.language_model.get_base_model().model.gradient_checkpointing  # all layers
    assert "forward" in vars(fast._llm_layers()[0]) and "forward" not in vars(own._llm_layers()[0])


@pytest.fixture(scope="module")
def eager_and_sdpa(tiny_model_dir):
    from transformers import AutoModel

    eager = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True, torch_dtype=torch.float32).eval()
    swapped = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True, torch_dtype=torch.float32).eval()
    assert use_sdpa(swapped) == swapped.config.llm_config.num_hidden_layers
    return eager, swapped


@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_sdpa_swap_gives_the_official_eager_logits(eager_and_sdpa, padding):
    eager, swapped = eager_and_sdpa
    ids = torch.randint(10, 500, (3, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if padding == "right":
        mask[1, 30:], mask[2, 11:] = 0, 0
    elif padding == "left":
        mask[1, :10] = 0
    with torch.no_grad():
        want = eager.language_model(input_ids=ids, attention_mask=None if padding is None else mask).logits
        got = swapped.language_model(input_ids=ids, attention_mask=None if padding is None else mask).logits
    real = mask.bool()
    assert torch.allclose(got[real], want[real], rtol=1e-5, atol=1e-5)


def test_sdpa_swap_builds_no_square_mask_without_padding(eager_and_sdpa):
    """The fused causal kernel needs no mask: none is built unless a token is padding (XTuner's InternLM2 file;
    InternVL2-2B's own builds it in _prepare_decoder_attention_mask, swapped the same way)."""
    eager, swapped = eager_and_sdpa
    embeds, positions = torch.zeros(2, 7, 8), torch.arange(7)
    padded = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    build = swapped.language_model.model._update_causal_mask
    assert build(torch.ones(2, 7), embeds, positions, None, False) is None
    assert build(None, embeds, positions, None, False) is None
    assert build(padded, embeds, positions, None, False).shape == (2, 1, 7, 7)
    assert eager.language_model.model._update_causal_mask(None, embeds, positions, None, False) is not None


def test_sdpa_swap_gives_the_official_vision_features_and_generation(eager_and_sdpa):
    eager, swapped = eager_and_sdpa
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(swapped.extract_feature(pixels), eager.extract_feature(pixels), rtol=1e-5, atol=1e-5)
    ids = torch.randint(10, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # generation pads on the left
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(swapped.language_model.generate(**kwargs), eager.language_model.generate(**kwargs))
