# InternVL2-2B + LoRA on FoodieQA (single-image VQA), XTuner 0.2.0. From the repository root:
#   FOODIE_MODEL=/path/InternVL2-2B FOODIE_DATA=work/foodieqa-xtuner \
#       xtuner train xtuner_configs/internvl_v2_internlm2_2b_lora_finetune_food.py --deepspeed deepspeed_zero2
# or `make train CONFIG=<this file> TRAIN_ARGS="--deepspeed deepspeed_zero2"` (resume: add RESUME=1).
# Paths come from the environment: FOODIE_MODEL (checkpoint folder or hub id; default OpenGVLab/InternVL2-2B),
# FOODIE_DATA (a tools/process_food.py output folder; default work/foodieqa-xtuner), FOODIE_WORK_DIR (logs and
# checkpoints; default work/train/<this file's name>), FOODIE_WORK (root of work/).
from mmengine.hooks import DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from peft import LoraConfig
from torch.optim import AdamW
from transformers import AutoTokenizer

from foodie.checkpoints import AtomicCheckpointHook
from foodie.xtuner_dataset import FoodieInternVLDataset
from foodie.xtuner_model import FoodieInternVL
from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.dataset.samplers import LengthGroupedSampler
from xtuner.engine.hooks import DatasetInfoHook
from xtuner.engine.runner import TrainLoop

# Not `import os`: MMEngine turns imports in configs into lazy proxies (a stdlib outside its own
# prefix, e.g. under a venv, counts as third-party), and a proxy cannot be called while parsing.
_os = __import__("os")
_paths = __import__("foodie.paths", fromlist=["work_dir"])  # work/ (or $FOODIE_WORK)

# ------------------------------------------------------------ PART 1  Settings
# Model
path = _os.environ.get("FOODIE_MODEL", "OpenGVLab/InternVL2-2B")
torch_dtype = "auto"  # bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU
# The checkpoint's own code runs; its eager attention (OpenGVLab's files: eager or flash-attn) is swapped for
# SDPA at load time: same parameters, same logits (foodie/sdpa_attention.py).
attn_implementation = "auto"  # flash_attention_2 with flash-attn on a GPU, else sdpa; "eager": no swap
# Speed (docs/PERFORMANCE.md, measured on a checkpoint with OpenGVLab's files).
# Activation checkpointing recomputes a layer's forward in backward; memory freed by computing logits only
# at labelled positions pays for keeping 9 of the 24 LLM layers' activations (about 1.2 GB each at batch 4
# of ~3,000-token samples). Use 24 (all) if memory is short, e.g. with longer samples or a larger batch.
# With eager attention every layer is checkpointed regardless.
llm_checkpoint_layers = 15
compile_elementwise = "auto"  # torch.compile RMSNorm + SwiGLU on GPUs (CPU: off)

# Data (written by tools/process_food.py: train.json in LLaVA format; held-out split kept aside)
data_root = _os.environ.get("FOODIE_DATA", str(_paths.work_dir() / "foodieqa-xtuner"))
data_path = _os.path.join(data_root, "train.json")
image_folder = data_root
max_length = 8192
max_dynamic_patch = None  # None: the model's config.json (12 for InternVL2-2B)
repeat_times = 1

# Scheduler & Optimizer: 3 epochs at peak lr 4e-5 (InternVL's own LoRA recipe), cosine; on ~200 training
# questions more epochs only memorise the photos (docs/TRAINING.md). Batch 4 x 2: ~150 iterations.
batch_size = 4  # per device
accumulative_counts = 2
dataloader_num_workers = 8  # image decoding + tiling of ~3 MP photos; 4 starved the GPU at times
max_epochs = 3
optim_type = AdamW
lr = 4e-5
betas = (0.9, 0.999)
weight_decay = 0.05
max_norm = 1  # grad clip
# Warm-up counted in iterations: a ratio (the stock 0.03) rounds to 0 iterations on small data.
warmup_iters = 10
amp_dtype = "bfloat16"  # AmpOptimWrapper without DeepSpeed; use "float16" on GPUs without bf16 (V100, T4)

# Save
save_steps = 50
save_total_limit = 2  # keep the last 2 complete checkpoints (-1: all)
seed = 42  # fixed so a resumed run sees the same data order

work_dir = _os.environ.get("FOODIE_WORK_DIR",
                          str(_paths.work_dir() / "train" / "internvl_v2_internlm2_2b_lora_finetune_food"))

# ------------------------------------------------------------ PART 2  Model
model = dict(
    type=FoodieInternVL,
    model_path=path,
    torch_dtype=torch_dtype,
    attn_implementation=attn_implementation,
    activation_checkpointing=llm_checkpoint_layers,
    compile_elementwise=compile_elementwise,
    freeze_llm=True,  # the LLM learns through LoRA only
    freeze_visual_encoder=True,  # InternViT frozen; the MLP projector (mlp1) is trained
    # target_modules None: every linear layer of the LLM (wqkv, wo, w1, w2, w3, output)
    llm_lora=dict(type=LoraConfig, r=128, lora_alpha=256, lora_dropout=0.05, target_modules=None,
                  task_type="CAUSAL_LM"),
)

# ------------------------------------------------------------ PART 3  Dataset & Dataloader
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    pin_memory=True,  # the images' host->GPU copy without a pageable bounce
    persistent_workers=dataloader_num_workers > 0,  # no worker restart (~3 s on 2 GPUs) at each epoch
    dataset=dict(
        type=FoodieInternVLDataset,
        model_path=path,
        data_paths=data_path,
        image_folders=image_folder,
        repeat_times=repeat_times,  # the prompt is the checkpoint's own chat template and system message
        max_length=max_length,
        max_dynamic_patch=max_dynamic_patch,
    ),
    sampler=dict(type=LengthGroupedSampler, length_property="modality_length",
                 per_device_batch_size=batch_size * accumulative_counts),
    collate_fn=dict(type=default_collate_fn),
)

# ------------------------------------------------------------ PART 4  Scheduler & Optimizer
optim_wrapper = dict(
    type=AmpOptimWrapper,  # replaced by DeepSpeedOptimWrapper under --deepspeed (bf16 when supported)
    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts, loss_scale="dynamic", dtype=amp_dtype,
)

# Linear warm-up over the first `warmup_iters` iterations, cosine decay over the whole run
# (the two overlap: MMEngine chains scheduler factors, and cosine is ~1 during warm-up).
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

# ------------------------------------------------------------ PART 5  Runtime
tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=path, trust_remote_code=True)

custom_hooks = [dict(type=DatasetInfoHook, tokenizer=tokenizer)]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    # Checkpoints appear only when complete; the optimizer state lets a resumed run continue exactly.
    checkpoint=dict(type=AtomicCheckpointHook, save_optimizer=True, by_epoch=False, interval=save_steps,
                    max_keep_ckpts=save_total_limit, save_last=True),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

# MMEngine's defaults otherwise: fork workers, INFO log, scalars in <work_dir>/<time>/vis_data, no resume
# (tools/train.py passes resume=True load_from=<the newest complete checkpoint>).
env_cfg = dict(dist_cfg=dict(backend="nccl"))
randomness = dict(seed=seed, deterministic=False)
log_processor = dict(by_epoch=False)

del _os, _paths
