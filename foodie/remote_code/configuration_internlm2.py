"""Configuration of InternLM2, the language model of InternVL2-2B (model_type ``internlm2``).

Keys and defaults follow the published InternLM2 checkpoints, so their ``llm_config`` loads as is;
PretrainedConfig stores every key as an attribute and writes the ones that differ from these defaults.
"""
import importlib.util

from transformers.configuration_utils import PretrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

ATTN_IMPLEMENTATIONS = ('eager', 'sdpa', 'flash_attention_2')


def resolve_attn_implementation(requested):
    """One of ATTN_IMPLEMENTATIONS (None: eager) -> the implementation that will run.

    'flash_attention_2' without the flash_attn package falls back to eager attention, as the official
    code does. With flash_attn installed it runs through torch's scaled_dot_product_attention, whose
    CUDA backend is itself a FlashAttention-2 kernel.
    """
    requested = requested or 'eager'
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f'attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {requested!r}')
    if requested == 'flash_attention_2' and importlib.util.find_spec('flash_attn') is None:
        logger.warning('flash_attn is not installed: using eager attention instead of flash_attention_2 '
                       "(set attn_implementation='sdpa' for a faster exact alternative).")
        return 'eager'
    return requested

DEFAULTS = dict(
    vocab_size=103168, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    hidden_act='silu', max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
    pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, bias=True, rope_theta=10000,
    rope_scaling=None,  # e.g. {'type': 'dynamic', 'factor': 2.0}
)


class InternLM2Config(PretrainedConfig):
    model_type = 'internlm2'
    _auto_class = 'AutoConfig'
    keys_to_ignore_at_inference = ['past_key_values']

    def __init__(self, num_key_value_heads=None, attn_implementation='eager', **kwargs):
        """num_key_value_heads None: multi-head attention. attn_implementation: one of ATTN_IMPLEMENTATIONS
        (transformers passes None when it loads a config on its own: that means eager)."""
        super().__init__(**{**DEFAULTS, **kwargs})
        self.num_key_value_heads = num_key_value_heads or self.num_attention_heads
        self.attn_implementation = attn_implementation or 'eager'
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f'attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}')
        scaling = self.rope_scaling
        if scaling is not None and not (isinstance(scaling, dict) and len(scaling) == 2
                                        and scaling.get('type') in ('linear', 'dynamic')
                                        and isinstance(scaling.get('factor'), float) and scaling['factor'] >= 1.0):
            raise ValueError("rope_scaling must be {'type': 'linear' or 'dynamic', 'factor': float >= 1}, "
                             f'got {scaling}')
