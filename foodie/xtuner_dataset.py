"""XTuner's InternVL dataset, tokenising conversations exactly as the model's ``chat()`` does.

``xtuner.dataset.InternVL_V1_5_Dataset`` hard-codes InternLM2's turn markup and the system prompt "You are an AI
assistant whose name is InternLM (书生·浦语).", while InternVL2's ``chat()`` (and ``foodie.inference``) render the
checkpoint's own conversation template with the model's system message. ``FoodieInternVLDataset`` keeps XTuner's
loading, tiling and label masking and takes the template and system prompt from the checkpoint, so training tokens
equal inference tokens (tests/test_training.py checks it against ``chat()``).
"""
from __future__ import annotations

from mmengine.config import ConfigDict
from transformers import AutoConfig
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from xtuner.dataset import InternVL_V1_5_Dataset

_SYS, _IN, _OUT, _IN2 = "\x00SYS\x00", "\x00IN\x00", "\x00OUT\x00", "\x00IN2\x00"


def conversation_template(model_path: str) -> tuple[dict, str]:
    """(XTuner template dict, system message) equivalent to the checkpoint's ``chat()`` prompt: marker
    conversations rendered by the checkpoint's own ``conversation.get_conv_template``, cut into XTuner's SYSTEM
    (system block), INSTRUCTION (a user turn up to the assistant's reply) and SUFFIX (after a reply)."""
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=True)
    name = getattr(config, "template", None)
    if not name:
        raise ValueError(f"{model_path}/config.json has no 'template' (the conversation template name, "
                         f"e.g. 'internlm2-chat'): cannot build the training prompt the model's chat() uses")
    get_conv_template = get_class_from_dynamic_module("conversation.get_conv_template", model_path)
    system = getattr(config, "system_message", None) or get_conv_template(name).system_message

    def render(turns):
        conv = get_conv_template(name)
        conv.system_message = _SYS
        for text in turns:
            conv.append_message(conv.roles[len(conv.messages) % 2], text)
        return conv.get_prompt()

    one, two = render([_IN, None]), render([_IN, _OUT, _IN2, None])
    user = get_conv_template(name).roles[0]
    cut = one.index(user + _IN) if (user + _IN) in one else one.index(_IN)
    suffix = two[two.index(_OUT) + len(_OUT):two.index(_IN2)]
    escape = lambda text: text.replace("{", "{{").replace("}", "}}")  # noqa: E731
    template = dict(SYSTEM=escape(one[:cut]).replace(_SYS, "{system}"),
                    INSTRUCTION=escape(one[cut:]).replace(_IN, "{input}"),
                    SUFFIX=suffix[:suffix.rindex(user)] if user in suffix else suffix)
    if "{system}" not in template["SYSTEM"] or "{input}" not in template["INSTRUCTION"]:
        raise ValueError(f"conversation template {name!r} of {model_path} did not render as expected: {template}")
    return template, system


class FoodieInternVLDataset(InternVL_V1_5_Dataset):
    """``max_dynamic_patch`` (tiles per image) set here overrides config.json's; inference must use the same."""

    def __init__(self, model_path, data_paths, image_folders=None, repeat_times=1, max_length=8192,
                 max_dynamic_patch: int | None = None):
        if max_dynamic_patch is not None and max_dynamic_patch < 1:
            raise ValueError(f"max_dynamic_patch must be >= 1, got {max_dynamic_patch}")
        self._max_dynamic_patch_override = max_dynamic_patch
        template, system = conversation_template(model_path)
        # The parent overwrites the template it gets with InternLM's: hand it a copy, then put ours back.
        super().__init__(model_path, ConfigDict(template), data_paths, image_folders=image_folders,
                         repeat_times=repeat_times, max_length=max_length)
        self.template, self._system = ConfigDict(template), system

    # The parent assigns max_dynamic_patch from config.json and uses it at once (token lengths, tiling).
    @property
    def max_dynamic_patch(self) -> int:
        return self._max_dynamic_patch

    @max_dynamic_patch.setter
    def max_dynamic_patch(self, value: int) -> None:
        override = self._max_dynamic_patch_override
        self._max_dynamic_patch = value if override is None else override
