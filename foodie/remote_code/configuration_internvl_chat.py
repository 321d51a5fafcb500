"""Configuration of InternVL chat models (model_type ``internvl_chat``): a vision config, an LLM config
and the settings that join them (pixel shuffle, dynamic tiling, chat template)."""
import copy

from transformers.configuration_utils import PretrainedConfig

from .configuration_intern_vit import InternVisionConfig
from .configuration_internlm2 import InternLM2Config

LLM_CONFIG_CLASSES = {'InternLM2ForCausalLM': InternLM2Config}

DEFAULTS = dict(
    use_backbone_lora=0, use_llm_lora=0, pad2square=False,
    select_layer=-1,  # which ViT layer feeds the projector; -1 is the last one
    force_image_size=None,  # tile size in pixels; None: vision_config.image_size
    downsample_ratio=0.5,  # pixel shuffle: 0.5 turns 32x32 patches into 16x16 tokens
    template=None,  # conversation template name, e.g. 'internlm2-chat'
    dynamic_image_size=False, use_thumbnail=False,
    ps_version='v1',  # pixel shuffle version; 'v2' swaps height and width back
    min_dynamic_patch=1, max_dynamic_patch=6,
)


class InternVLChatConfig(PretrainedConfig):
    model_type = 'internvl_chat'
    _auto_class = 'AutoConfig'  # save_pretrained copies this code next to config.json
    is_composition = True

    def __init__(self, vision_config=None, llm_config=None, **kwargs):
        super().__init__(**{**DEFAULTS, **kwargs})
        if isinstance(vision_config, PretrainedConfig):
            vision_config = vision_config.to_dict()
        if isinstance(llm_config, PretrainedConfig):
            llm_config = llm_config.to_dict()
        llm_config = llm_config or {'architectures': ['InternLM2ForCausalLM']}
        architecture = (llm_config.get('architectures') or ['InternLM2ForCausalLM'])[0]
        if architecture not in LLM_CONFIG_CLASSES:
            raise ValueError(f'llm_config.architectures[0] is {architecture!r}; this code supports '
                             f'{sorted(LLM_CONFIG_CLASSES)} (InternVL2-2B uses InternLM2ForCausalLM).')
        self.vision_config = InternVisionConfig(**(vision_config or {}))
        self.llm_config = LLM_CONFIG_CLASSES[architecture](**llm_config)

    def to_dict(self):
        output = copy.deepcopy(self.__dict__)
        output['model_type'] = self.__class__.model_type
        for sub in ('vision_config', 'llm_config'):
            output[sub] = getattr(self, sub).to_dict()
            output[sub].pop('transformers_version', None)
        for key in ('_commit_hash', '_attn_implementation_internal', '_attn_implementation_autoset',
                    'base_model_tp_plan'):
            output.pop(key, None)
        return output
