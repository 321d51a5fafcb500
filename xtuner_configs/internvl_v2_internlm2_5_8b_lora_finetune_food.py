# InternVL2-8B (InternViT-300M + InternLM2.5-7B-chat) + LoRA on FoodieQA: only what differs from the 2B recipe is
# here; the chat template, tile budget and special tokens come from the checkpoint.
#   FOODIE_MODEL=/path/InternVL2-8B FOODIE_DATA=work/foodieqa-xtuner \
#       xtuner train xtuner_configs/internvl_v2_internlm2_5_8b_lora_finetune_food.py --deepspeed deepspeed_zero2
from mmengine.config import read_base

with read_base():
    from .internvl_v2_internlm2_2b_lora_finetune_food import *  # noqa: F401,F403

_os = __import__("os")  # not `import os`: see the 2B config
_paths = __import__("foodie.paths", fromlist=["work_dir"])

path = _os.environ.get("FOODIE_MODEL", "OpenGVLab/InternVL2-8B")
work_dir = _os.environ.get("FOODIE_WORK_DIR",
                          str(_paths.work_dir() / "train" / "internvl_v2_internlm2_5_8b_lora_finetune_food"))
# All 32 LLM layers checkpointed (XTuner's default): the 2B's 15 of 24 was sized from 2B measurements, and a
# 7B layer keeps twice the activations; not measured at 8B.
llm_checkpoint_layers = 32

# MMEngine's inherited dicts are copies: a changed setting is written into each dict that uses it.
model.update(model_path=path, activation_checkpointing=llm_checkpoint_layers)
tokenizer.update(pretrained_model_name_or_path=path)
custom_hooks[0].tokenizer.update(pretrained_model_name_or_path=path)
train_dataloader.dataset.update(model_path=path)

del _os, _paths
