"""Configuration of InternLM2, the language model of InternVL2-2B (model_type ``internlm2``).

Keys and defaults follow the published InternLM2 checkpoints, so their ``llm_config`` loads as is.
"""
from transformers.configuration_utils import PretrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

ATTN_IMPLEMENTATIONS = ('eager', 'sdpa', 'flash_attention_2')


class InternLM2Config(PretrainedConfig):
    model_type = 'internlm2'
    _auto_class = 'AutoConfig'
    keys_to_ignore_at_inference = ['past_key_values']

    def __init__(
        self,
        vocab_size=103168,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,  # None: multi-head attention (as many KV heads as query heads)
        hidden_act='silu',
        max_position_embeddings=2048,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        bias=True,
        rope_theta=10000,
        rope_scaling=None,  # e.g. {'type': 'dynamic', 'factor': 2.0}
        attn_implementation='eager',  # 'eager' | 'sdpa' | 'flash_attention_2'
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.bias = bias
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self._rope_scaling_validation()
        # transformers passes attn_implementation=None when it loads a config on its own: that means eager.
        self.attn_implementation = attn_implementation or 'eager'
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f'attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, '
                             f'got {self.attn_implementation!r}')
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _rope_scaling_validation(self):
        if self.rope_scaling is None:
            return
        if not isinstance(self.rope_scaling, dict) or len(self.rope_scaling) != 2:
            raise ValueError(f'rope_scaling must be a dict with two fields, type and factor; got {self.rope_scaling}')
        kind, factor = self.rope_scaling.get('type'), self.rope_scaling.get('factor')
        if kind not in ('linear', 'dynamic'):
            raise ValueError(f"rope_scaling type must be 'linear' or 'dynamic', got {kind!r}")
        if not isinstance(factor, float) or factor < 1.0:
            raise ValueError(f'rope_scaling factor must be a float >= 1, got {factor!r}')
