"""Conversation templates of InternVL chat models (the MPT separator style of the official code).

A prompt is  system_template.format(system_message) + sep, then for each message role + text + sep,
and for the open assistant turn just its role. With 'internlm2-chat' (InternVL2-2B):

    <|im_start|>system\\n{system}<|im_end|><|im_start|>user\\n{question}<|im_end|><|im_start|>assistant\\n

Note: no newline after <|im_end|>; this is what InternVL2 was trained and is prompted with.
"""
import dataclasses
from typing import Dict, List, Optional, Tuple


@dataclasses.dataclass
class Conversation:
    name: str
    system_template: str = '{system_message}'
    system_message: str = ''
    roles: Tuple[str, str] = ('USER', 'ASSISTANT')
    messages: List[List[Optional[str]]] = dataclasses.field(default_factory=list)
    sep: str = '\n'
    stop_str: Optional[str] = None
    stop_token_ids: Optional[List[int]] = None

    def get_prompt(self) -> str:
        prompt = self.system_template.format(system_message=self.system_message) + self.sep
        for role, message in self.messages:
            prompt += role + message + self.sep if message else role
        return prompt

    def append_message(self, role: str, message: Optional[str]):
        self.messages.append([role, message])

    def copy(self) -> 'Conversation':
        return dataclasses.replace(self, messages=[list(m) for m in self.messages])


INTERNVL_SYSTEM_MESSAGE = '你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。'

# The chatml-format templates of InternVL 1.5 / 2. 'Hermes-2' and 'internlm2-chat' prompt identically;
# they differ only in whether training data starts with <s>.
conv_templates: Dict[str, Conversation] = {template.name: template for template in (
    Conversation(name='internlm2-chat', system_template='<|im_start|>system\n{system_message}',
                 system_message=INTERNVL_SYSTEM_MESSAGE, roles=('<|im_start|>user\n', '<|im_start|>assistant\n'),
                 sep='<|im_end|>'),
    Conversation(name='Hermes-2', system_template='<|im_start|>system\n{system_message}',
                 system_message=INTERNVL_SYSTEM_MESSAGE, roles=('<|im_start|>user\n', '<|im_start|>assistant\n'),
                 sep='<|im_end|>', stop_str='<|endoftext|>'),
    Conversation(name='phi3-chat', system_template='<|system|>\n{system_message}',
                 system_message=INTERNVL_SYSTEM_MESSAGE, roles=('<|user|>\n', '<|assistant|>\n'), sep='<|end|>'),
)}


def get_conv_template(name: str) -> Conversation:
    if name not in conv_templates:
        raise KeyError(f'unknown conversation template {name!r}; known: {sorted(conv_templates)}')
    return conv_templates[name].copy()
