"""InternViT's and InternLM2's eager attention through ``scaled_dot_product_attention`` on a loaded InternVL2 model,
whatever modeling files it carries (OpenGVLab's have eager and flash-attn only): same parameters, same maths."""
import functools
import inspect
import types

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# Not cuDNN: it builds an execution plan per new sequence length (~0.2 s each on an H200, docs/PERFORMANCE.md).
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _vit_attention(self, x):
    """InternAttention._naive_attn through SDPA: softmax(q k^T / sqrt(d)) v per head (SDPA's default scale)."""
    B, N, C = x.shape
    H = self.num_heads
    q, k, v = self.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, d]
    if self.qk_normalization:  # RMSNorm over all heads together
        q = self.q_norm(q.transpose(1, 2).flatten(-2, -1)).view(B, N, H, -1).transpose(1, 2)
        k = self.k_norm(k.transpose(1, 2).flatten(-2, -1)).view(B, N, H, -1).transpose(1, 2)
    with sdpa_kernel(SDPA_BACKENDS):
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
    return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


def _llm_attention(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                   output_attentions=False, use_cache=False, cache_position=None, **kwargs):
    """InternLM2Attention.forward through SDPA. ``attention_mask``: the model's additive 4D mask, or None when plain
    causal masking is right (see ``_skip_causal_mask``). Handles both official variants: InternVL2's (rotary by
    sequence length, tuple cache) and InternLM2.5's as XTuner ships it (rotary by positions, ``Cache`` object)."""
    if output_attentions:
        raise ValueError("output_attentions: SDPA returns no attention weights; train with attn_implementation='eager'")
    B, T, _ = hidden_states.shape
    G, D = self.num_key_value_groups, self.head_dim
    qkv = self.wqkv(hidden_states).view(B, T, self.num_key_value_heads, G + 2, D)  # per KV head: G queries, k, v
    q = qkv[..., :G, :].reshape(B, T, self.num_heads, D).transpose(1, 2)  # [B, heads, T, D]
    k, v = qkv[..., -2, :].transpose(1, 2), qkv[..., -1, :].transpose(1, 2)  # [B, kv_heads, T, D]
    rope = inspect.getmodule(type(self)).apply_rotary_pos_emb
    if self._rotary_by_positions:  # InternLM2.5's dynamic NTK reads max(position_ids) on the host, in every layer:
        past_len = past_key_value.get_seq_length(self.layer_idx) if past_key_value is not None else 0
        rotary = self._rotary_unscaled if past_len + T <= self.rotary_emb.max_position_embeddings else self.rotary_emb
        cos, sin = rotary(v, position_ids)  # positions < past_len + T: within the unscaled range, no host sync
    else:
        past_len = past_key_value[0].shape[-2] if past_key_value is not None else 0
        cos, sin = self.rotary_emb(v, seq_len=past_len + T)
    q, k = rope(q, k, cos, sin, position_ids)
    if past_key_value is None or isinstance(past_key_value, tuple):
        if past_key_value is not None:
            k, v = torch.cat([past_key_value[0], k], dim=2), torch.cat([past_key_value[1], v], dim=2)
        present = (k, v) if use_cache else None
    else:
        k, v = past_key_value.update(k, v, self.layer_idx, dict(sin=sin, cos=cos, cache_position=cache_position))
        present = past_key_value
    mask = attention_mask[..., :k.shape[-2]] if attention_mask is not None else None
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # each KV head serves G query heads
    with sdpa_kernel(SDPA_BACKENDS):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1)
    return self.wo(out.transpose(1, 2).reshape(B, T, self.num_heads * D)), None, present


def _skip_causal_mask(model) -> None:
    """Make InternLM2Model pass no mask (SDPA's fused causal kernel, no O(T^2) tensor) when no token is padding and
    nothing is cached; else the model's own additive 4D mask."""
    if hasattr(model, "_update_causal_mask"):  # InternLM2.5-style file (XTuner's copy)
        build = model._update_causal_mask

        def update(attention_mask, input_tensor, cache_position, past_key_values, output_attentions):
            past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
            if past_len == 0 and (attention_mask is None or bool(attention_mask.all())) and not output_attentions:
                return None
            return build(attention_mask, input_tensor, cache_position, past_key_values, output_attentions)
        model._update_causal_mask = update
    else:  # InternVL2's released file: the model replaces a missing mask by ones before this call
        build = model._prepare_decoder_attention_mask

        def prepare(attention_mask, input_shape, inputs_embeds, past_key_values_length):
            if past_key_values_length == 0 and (attention_mask is None or bool(attention_mask.all())):
                return None
            return build(attention_mask, input_shape, inputs_embeds, past_key_values_length)
        model._prepare_decoder_attention_mask = prepare


def use_sdpa(model) -> int:
    """Run a loaded InternVL2 model's eager InternViT and InternLM2 attention through SDPA (same parameters, same
    maths); flash-attn modules are left alone. Returns how many InternLM2 attention modules now use SDPA."""
    swapped = 0
    for module in model.modules():
        kind = type(module).__name__
        if kind == "InternAttention":
            module._naive_attn = types.MethodType(_vit_attention, module)
        elif kind == "InternLM2Attention":
            module._rotary_by_positions = "position_ids" in inspect.signature(module.rotary_emb.forward).parameters
            rotary, parents = module.rotary_emb, type(module.rotary_emb).__mro__
            dynamic = "Dynamic" in parents[0].__name__ and parents[1].__name__ == "InternLM2RotaryEmbedding"
            module._rotary_unscaled = functools.partial(parents[1].forward, rotary) if dynamic else rotary
            module.forward = types.MethodType(_llm_attention, module)
            swapped += 1
        elif kind == "InternLM2Model":
            _skip_causal_mask(module)
    return swapped
