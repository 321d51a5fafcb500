"""InternLM2, the language model of InternVL2-2B (InternLM2-chat-1.8B).

A pre-norm decoder-only transformer: RMSNorm, rotary positions, grouped-query attention with one packed
wqkv projection, SwiGLU feed-forward. Parameter names and the wqkv layout match the published checkpoints.
The KV cache is the legacy tuple format ((k, v) per layer), which transformers 4.48 `generate` handles.
"""
import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging

from .configuration_internlm2 import InternLM2Config, resolve_attn_implementation

logger = logging.get_logger(__name__)


class InternLM2RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class InternLM2RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE), computed for the positions at hand.

    rope_scaling 'linear' divides positions by the factor; 'dynamic' (NTK-aware) keeps positions and
    enlarges the base once the sequence outgrows max_position_embeddings:
        base' = base * (factor * L / max_position_embeddings - (factor - 1)) ** (dim / (dim - 2)).
    """

    def __init__(self, dim, max_position_embeddings=2048, base=10000, scaling=None):
        super().__init__()
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        self.scaling_type = scaling['type'] if scaling else None
        self.scaling_factor = scaling['factor'] if scaling else 1.0

    def inv_freq(self, seq_len, device):
        base = self.base
        if self.scaling_type == 'dynamic' and seq_len > self.max_position_embeddings:
            f = self.scaling_factor
            base = base * (f * seq_len / self.max_position_embeddings - (f - 1)) ** (self.dim / (self.dim - 2))
        return 1.0 / (base ** (torch.arange(0, self.dim, 2, device=device).float() / self.dim))

    def forward(self, x, position_ids, seq_len):
        """cos, sin of shape [batch, seq, dim] in x's dtype for the given positions."""
        t = position_ids.float()
        if self.scaling_type == 'linear':
            t = t / self.scaling_factor
        freqs = t[..., None] * self.inv_freq(seq_len, x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class InternLM2MLP(nn.Module):
    """SwiGLU: w2(act(w1 x) * w3 x)."""

    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


class InternLM2Attention(nn.Module):
    """Grouped-query attention. wqkv packs, per KV head, its group of query heads, then its key, then
    its value: output features are laid out as [kv_heads, n_rep + 2, head_dim]."""

    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        if self.head_dim * self.num_heads != self.hidden_size or self.num_heads % self.num_key_value_heads:
            raise ValueError(f'hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads '
                             f'({self.num_heads}), itself a multiple of num_key_value_heads '
                             f'({self.num_key_value_heads})')
        self.wqkv = nn.Linear(self.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim,
                              bias=config.bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=config.bias)
        self.rotary_emb = InternLM2RotaryEmbedding(self.head_dim, config.max_position_embeddings,
                                                   config.rope_theta, config.rope_scaling)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False, **kwargs):
        B, T, _ = hidden_states.shape
        G, D = self.num_key_value_groups, self.head_dim
        qkv = self.wqkv(hidden_states).view(B, T, self.num_key_value_heads, G + 2, D)
        q = qkv[..., :G, :].reshape(B, T, self.num_heads, D).transpose(1, 2)  # [B, heads, T, D]
        k = qkv[..., -2, :].transpose(1, 2)  # [B, kv_heads, T, D]
        v = qkv[..., -1, :].transpose(1, 2)

        past_len = past_key_value[0].shape[-2] if past_key_value is not None else 0
        cos, sin = self.rotary_emb(v, position_ids, seq_len=past_len + T)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if past_key_value is not None:
            k = torch.cat([past_key_value[0], k], dim=2)
            v = torch.cat([past_key_value[1], v], dim=2)
        present = (k, v) if use_cache else None
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # each KV head serves G query heads

        attn_weights = None
        if self.config.attn_implementation == 'eager' or output_attentions:
            # As the official fallback: scores in the model dtype, softmax in float32.
            attn_weights = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(D)
            if attention_mask is not None:
                attn_weights = attn_weights + attention_mask
            attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(attn_weights, v)
        else:
            # attention_mask is None exactly when plain causal masking (or none, for one query) is right.
            is_causal = attention_mask is None and T > 1
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(B, T, self.hidden_size)
        return self.wo(out), (attn_weights if output_attentions else None), present


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.attention = InternLM2Attention(config)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False, **kwargs):
        h, attn_weights, present = self.attention(self.attention_norm(hidden_states), attention_mask=attention_mask,
                                                  position_ids=position_ids, past_key_value=past_key_value,
                                                  output_attentions=output_attentions, use_cache=use_cache)
        hidden_states = hidden_states + h
        hidden_states = hidden_states + self.feed_forward(self.ffn_norm(hidden_states))
        extra = (attn_weights,) if output_attentions else ()
        return (hidden_states,) + extra + ((present,) if use_cache else ())


class InternLM2PreTrainedModel(PreTrainedModel):
    config_class = InternLM2Config
    base_model_prefix = 'model'
    supports_gradient_checkpointing = True
    _no_split_modules = ['InternLM2DecoderLayer']
    _skip_keys_device_placement = 'past_key_values'
    _supports_flash_attn_2 = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()


def additive_attention_mask(attention_mask, batch_size, q_len, past_len, dtype, device):
    """[B, 1, q_len, past_len + q_len] additive mask: 0 where a query may attend, dtype-min elsewhere.

    The causal part and the padding part are added, as in the official code (so a masked causal and
    padded entry holds min + min = -inf)."""
    min_value = torch.finfo(dtype).min
    kv_len = past_len + q_len
    mask = None
    if q_len > 1:
        causal = torch.full((q_len, q_len), min_value, dtype=dtype, device=device).triu(1)
        causal = torch.cat([torch.zeros(q_len, past_len, dtype=dtype, device=device), causal], dim=-1)
        mask = causal[None, None].expand(batch_size, 1, q_len, kv_len)
    if attention_mask is not None:
        padding = (1.0 - attention_mask[:, None, None, :].to(dtype)).expand(batch_size, 1, q_len, kv_len)
        padding = padding.masked_fill(padding.bool(), min_value)
        mask = padding if mask is None else padding + mask
    return mask


class InternLM2Model(InternLM2PreTrainedModel):
    _auto_class = 'AutoModel'

    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        config.attn_implementation = resolve_attn_implementation(config.attn_implementation)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([InternLM2DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def set_input_embeddings(self, value):
        self.tok_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        """past_key_values: the legacy cache, a (k, v) tuple per layer."""
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError('Pass exactly one of input_ids and inputs_embeds')
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        B, T = inputs_embeds.shape[:2]
        past_len = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, dtype=torch.long, device=inputs_embeds.device)
            position_ids = position_ids.unsqueeze(0).expand(B, T)
        elif position_ids.shape[0] != B:
            position_ids = position_ids.expand(B, T)

        if self.config.attn_implementation == 'eager' or output_attentions:
            mask = additive_attention_mask(attention_mask, B, T, past_len, inputs_embeds.dtype, inputs_embeds.device)
        else:
            # SDPA: causal masking by flag when there is no padding and no cache offset; else the full mask.
            has_padding = attention_mask is not None and not bool(attention_mask.all())
            mask = None
            if has_padding or (past_len > 0 and T > 1):
                mask = additive_attention_mask(attention_mask if has_padding else None, B, T, past_len,
                                               inputs_embeds.dtype, inputs_embeds.device)

        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning_once('use_cache=True is incompatible with gradient checkpointing; using use_cache=False')
            use_cache = False

        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        next_cache = () if use_cache else None
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            past = past_key_values[i] if past_key_values is not None else None
            if self.gradient_checkpointing and self.training:
                outputs = self._gradient_checkpointing_func(layer.__call__, hidden_states, mask, position_ids,
                                                            None, output_attentions, False)
            else:
                outputs = layer(hidden_states, attention_mask=mask, position_ids=position_ids, past_key_value=past,
                                output_attentions=output_attentions, use_cache=use_cache)
            hidden_states = outputs[0]
            if output_attentions:
                all_attentions += (outputs[1],)
            if use_cache:
                next_cache += (outputs[-1],)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        outputs = BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=next_cache,
                                          hidden_states=all_hidden_states, attentions=all_attentions)
        return outputs if return_dict else outputs.to_tuple()


class InternLM2ForCausalLM(InternLM2PreTrainedModel, GenerationMixin):
    _auto_class = 'AutoModelForCausalLM'
    _tied_weights_keys = ['output.weight']

    def __init__(self, config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):  # the input embeddings come from self.model (base_model_prefix)
        return self.output

    def set_output_embeddings(self, new_embeddings):
        self.output = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True)
        logits = self.output(outputs.last_hidden_state).float()

        loss = None
        if labels is not None:  # tokens < n predict token n; -100 is ignored
            shift_logits = logits[..., :-1, :].reshape(-1, self.config.vocab_size)
            shift_labels = labels[..., 1:].reshape(-1).to(shift_logits.device)
            loss = CrossEntropyLoss()(shift_logits, shift_labels)

        outputs = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                         hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return outputs if return_dict else outputs.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, **kwargs):
        if past_key_values is not None:
            past_len = past_key_values[0][0].shape[2]
            # keep only the ids the cache has not seen (at least the last one)
            keep_from = past_len if input_ids.shape[1] > past_len else input_ids.shape[1] - 1
            input_ids = input_ids[:, keep_from:]

        position_ids = kwargs.get('position_ids')
        if attention_mask is not None and position_ids is None:
            # left-padded batches: positions count real tokens only
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            if past_key_values:
                position_ids = position_ids[:, -input_ids.shape[1]:]

        if inputs_embeds is not None and past_key_values is None:
            model_inputs = {'inputs_embeds': inputs_embeds}  # the prompt, first step only
        else:
            model_inputs = {'input_ids': input_ids}
        model_inputs.update({'position_ids': position_ids, 'past_key_values': past_key_values,
                             'use_cache': kwargs.get('use_cache'), 'attention_mask': attention_mask})
        return model_inputs

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        return tuple(tuple(t.index_select(0, beam_idx.to(t.device)) for t in layer) for layer in past_key_values)
