"""Configuration of InternVL chat models (model_type ``internvl_chat``): a vision config, an LLM config
and the settings that join them (pixel shuffle, dynamic tiling, chat template)."""
import copy

from transformers.configuration_utils import PretrainedConfig
from transformers.utils import logging

from .configuration_intern_vit import InternVisionConfig
from .configuration_internlm2 import InternLM2Config

logger = logging.get_logger(__name__)

LLM_CONFIG_CLASSES = {'InternLM2ForCausalLM': InternLM2Config}


class InternVLChatConfig(PretrainedConfig):
    model_type = 'internvl_chat'
    _auto_class = 'AutoConfig'  # save_pretrained copies this code next to config.json
    is_composition = True

    def __init__(
        self,
        vision_config=None,
        llm_config=None,
        use_backbone_lora=0,
        use_llm_lora=0,
        pad2square=False,
        select_layer=-1,  # which ViT layer feeds the projector; -1 is the last one
        force_image_size=None,  # tile size in pixels; None: vision_config.image_size
        downsample_ratio=0.5,  # pixel shuffle: 0.5 turns 32x32 patches into 16x16 tokens
        template=None,  # conversation template name, e.g. 'internlm2-chat'
        dynamic_image_size=False,
        use_thumbnail=False,
        ps_version='v1',  # pixel shuffle version; 'v2' swaps height and width back
        min_dynamic_patch=1,
        max_dynamic_patch=6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        vision_config = {} if vision_config is None else vision_config
        llm_config = {'architectures': ['InternLM2ForCausalLM']} if llm_config is None else llm_config
        if isinstance(vision_config, PretrainedConfig):
            vision_config = vision_config.to_dict()
        if isinstance(llm_config, PretrainedConfig):
            llm_config = llm_config.to_dict()
        architecture = (llm_config.get('architectures') or ['InternLM2ForCausalLM'])[0]
        if architecture not in LLM_CONFIG_CLASSES:
            raise ValueError(f'llm_config.architectures[0] is {architecture!r}; this code supports '
                             f'{sorted(LLM_CONFIG_CLASSES)} (InternVL2-2B uses InternLM2ForCausalLM).')
        self.vision_config = InternVisionConfig(**vision_config)
        self.llm_config = LLM_CONFIG_CLASSES[architecture](**llm_config)
        self.use_backbone_lora = use_backbone_lora
        self.use_llm_lora = use_llm_lora
        self.pad2square = pad2square
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch

    def to_dict(self):
        output = copy.deepcopy(self.__dict__)
        output['vision_config'] = self.vision_config.to_dict()
        output['llm_config'] = self.llm_config.to_dict()
        for sub in ('vision_config', 'llm_config'):
            output[sub].pop('transformers_version', None)
        output['model_type'] = self.__class__.model_type
        for key in ('_commit_hash', '_attn_implementation_internal', '_attn_implementation_autoset',
                    'base_model_tp_plan'):
            output.pop(key, None)
        return output
