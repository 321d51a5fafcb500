"""Configuration of InternViT, the vision encoder of InternVL (model_type ``intern_vit_6b``).

Keys and defaults follow the published InternVL checkpoints, so their ``vision_config`` loads as is;
PretrainedConfig stores every key as an attribute and writes the ones that differ from these defaults.
"""
from transformers.configuration_utils import PretrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

DEFAULTS = dict(
    num_channels=3, patch_size=14, image_size=224, qkv_bias=False, hidden_size=3200, num_attention_heads=25,
    intermediate_size=12800, qk_normalization=True, num_hidden_layers=48, use_flash_attn=True, hidden_act='gelu',
    norm_type='rms_norm',  # 'rms_norm' (InternViT-6B) or 'layer_norm' (InternViT-300M)
    layer_norm_eps=1e-6, dropout=0.0, drop_path_rate=0.0, attention_dropout=0.0, initializer_range=0.02,
    initializer_factor=0.1,  # initial value of the layer scales ls1 / ls2
)


class InternVisionConfig(PretrainedConfig):
    model_type = 'intern_vit_6b'

    def __init__(self, attn_implementation=None, **kwargs):
        """attn_implementation: 'eager' | 'sdpa'; None: decided by the chat model (eager by default)."""
        super().__init__(**{**DEFAULTS, **kwargs})
        self.attn_implementation = attn_implementation

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Also accepts a full InternVL chat checkpoint, whose ``vision_config`` is taken."""
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        config_dict = config_dict.get('vision_config', config_dict)
        if config_dict.get('model_type', cls.model_type) != cls.model_type:
            logger.warning(f"Loading a {config_dict['model_type']} config into {cls.__name__} ({cls.model_type}).")
        return cls.from_dict(config_dict, **kwargs)
