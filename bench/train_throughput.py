"""Training throughput of InternVL2-2B + LoRA: the tutorial's setup against ours, on one device command.

    python3 bench/train_throughput.py --work /tmp/bench --out $OUT      # tutorial, baseline, ours, ours_eager
    python3 bench/train_throughput.py --variants tutorial,ours --iters 40
    python3 bench/train_throughput.py --nproc 2 --variants ours          # two GPUs, ZeRO-2

Builds what is missing under --work: a full-size random-weight InternVL2-2B checkpoint carrying OpenGVLab's
modeling files, as the real InternVL2-2B does (tools/make_tiny_model.py --full-size --device cuda); and a
synthetic FoodieQA-like training set of realistic photos (4:3 and 16:9, 1-4 megapixels: 13 and 9 tiles with the default max_dynamic_patch 12). Then, per row,
runs `xtuner/tools/train.py <config> --launcher pytorch --deepspeed deepspeed_zero2` under torchrun (what
`NPROC_PER_NODE=N xtuner train` runs) with bench/throughput_hook.py logging every iteration.

Rows:
* `tutorial`: the tutorial's setup: XTuner's own stock config (internvl_v2_internlm2_2b_lora_finetune.py, read
  from the installed XTuner) with the tutorial's overrides (batch 4 x accumulation 2, lr 3e-5, 10 epochs,
  max_length 8192, fp16 AmpOptimWrapper), its dataset, class and loader as they are;
* every other row inherits xtuner_configs/internvl_v2_internlm2_2b_lora_finetune_food.py exactly as shipped and
  changes only what VARIANTS names (`ours`: nothing). `baseline` puts XTuner's stock model class back into our
  config: the tutorial's computation on our data, order and schedule, so its loss curve is the reference for ours;
  `ours_eager` is ours with the SDPA swap off (the checkpoint's own eager attention): the attention lever.
Only measurement plumbing is added (iteration count, no checkpoint saving, the hook); `--workers N` changes
the loader's workers only when given.

Reports per row: s/iteration, samples/s, tokens/s (real tokens, padding excluded), peak GPU memory (max
allocated and max reserved), the attention that ran (the checkpoint's own code; eager, or swapped to SDPA)
and model FLOPs utilisation: the FLOPs the LoRA fine-tune must do (frozen InternViT forward; mlp1 forward +
weight gradients; InternLM2 forward, input gradients through every layer, LoRA weight gradients; causal
attention counted once; output head at labelled positions only; no activation recomputation) over the dense
bf16 peak measured on this GPU with an 8192^3 matmul. Writes results.json (with every iteration's record),
results.md, logs_tail.txt and loss.png (if matplotlib is there) to --out; full logs stay under WORK/logs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BASE_CONFIG = REPO / "xtuner_configs" / "internvl_v2_internlm2_2b_lora_finetune_food.py"
STOCK_CONFIG = "configs/internvl/v2/internvl_v2_internlm2_2b_lora_finetune.py"  # inside the installed xtuner

# The tutorial's overrides of XTuner's stock config (its path and data settings aside).
TUTORIAL = ("batch_size = 4\naccumulative_counts = 2\nlr = 3e-5\nmax_epochs = 10\nmax_length = 8192\n"
            "model.update(model_path=path)\n"
            "llava_dataset.update(model_path=path, data_paths=data_path, image_folders=image_folder,\n"
            "                     max_length=max_length)\n"
            "train_dataloader.update(batch_size=batch_size, dataset=llava_dataset)\n"
            "train_dataloader.sampler.update(per_device_batch_size=batch_size * accumulative_counts)\n"
            "optim_wrapper.update(accumulative_counts=accumulative_counts, dtype='float16')\n"
            "optim_wrapper.optimizer.update(lr=lr)\n"
            "param_scheduler = [dict(s, begin=s['begin'] * max_epochs, end=s['end'] * max_epochs)  # epochs: 1 -> 10\n"
            "                   for s in param_scheduler]\n"
            "tokenizer.update(pretrained_model_name_or_path=path)\n"
            "custom_hooks = [dict(type=DatasetInfoHook, tokenizer=tokenizer)]\n"
            "randomness = dict(seed=42, deterministic=False)\n")

# Each variant: extra imports + statements applied after inheriting the real config.
OURS_SLOW = "loss_on_labels_only=False, frozen_vit_without_grad=False, causal_mask_for_right_padding=False"
VARIANTS = {
    # The tutorial's setup, as a user runs it: XTuner's stock config + the tutorial's overrides (TUTORIAL).
    "tutorial": ("", ""),
    # XTuner's stock class (forces flash_attention_2, which without flash-attn falls
    # back to eager attention in the ViT and the LLM), fp16 AmpOptimWrapper (XTuner's DeepSpeed path turns
    # it into bf16 ZeRO-2, as for every variant), batch 4 x accumulation 2, max_length 8192.
    "baseline": ("from xtuner.model import InternVL_V1_5\n",
                 "model = dict(type=InternVL_V1_5, model_path=path, freeze_llm=True, freeze_visual_encoder=True,\n"
                 "             llm_lora=model['llm_lora'])\n"
                 "optim_wrapper.update(dtype='float16')\n"),
    # Our class with every speed switch off and eager attention: should match the baseline.
    "ours_as_baseline": ("", f"model.update(attn_implementation='eager', {OURS_SLOW})\n"),
    # SDPA attention only.
    "ours_sdpa_only": ("", f"model.update(attn_implementation='sdpa', {OURS_SLOW})\n"),
    # Speed switches on, the SDPA swap off: the checkpoint's eager attention, so every layer checkpointed.
    "ours_eager": ("", "model.update(attn_implementation='eager')\n"),
    # Our config as shipped.
    "ours": ("", ""),
    # Ours with fewer LLM layers checkpointed (memory against speed).
    "ours_ckpt12": ("", "model.update(activation_checkpointing=12)\n"),
    "ours_ckpt13": ("", "model.update(activation_checkpointing=13)\n"),
    "ours_ckpt14": ("", "model.update(activation_checkpointing=14)\n"),
    "ours_ckpt15": ("", "model.update(activation_checkpointing=15)\n"),
    # Ours with SDPA kept off cuDNN globally: since the swap chooses flash/efficient/math itself, the same as ours.
    "ours_flash_sdpa": ("", "__import__('torch').backends.cuda.enable_cudnn_sdp(False)  # parsed in the trainer\n"),
    # Ours without activation checkpointing in the LLM (memory check).
    "ours_no_ckpt": ("", "model.update(activation_checkpointing=False)\n"),
    # Ours with InternLM2's RMSNorm and SwiGLU through torch.compile.
    "ours_compile": ("", "model.update(compile_elementwise=True)\n"),
    # Ours with the LoRA update as PEFT computes it (a separate scale and add pass).
    "ours_unfused_lora": ("", "model.update(fused_lora=False)\n"),
    # Compile + pinned host memory for the images + only the first 12 of 24 LLM layers checkpointed.
    "ours_compile_pin_ckpt12": ("", "model.update(compile_elementwise=True, activation_checkpointing=12)\n"
                                    "train_dataloader.update(pin_memory=True)\n"),
    # Candidates for the shipped config: compiled RMSNorm/SwiGLU, pinned memory and 8 loader workers, and
    # either 15 of 24 LLM layers checkpointed (batch 4 x 2) or one micro-batch of 8 (fewer, larger kernels:
    # the step is CPU-bound once the GPU work shrank), all layers or 22 checkpointed.
    "ours_b4_ckpt15": ("", "model.update(compile_elementwise=True, activation_checkpointing=15)\n"
                           "train_dataloader.update(pin_memory=True, num_workers=8)\n"),
    "ours_b8_ckpt24": ("", "model.update(compile_elementwise=True)\n"
                           "train_dataloader.update(batch_size=8, pin_memory=True, num_workers=8)\n"
                           "optim_wrapper.update(accumulative_counts=1)\n"),
    "ours_b8_ckpt22": ("", "model.update(compile_elementwise=True, activation_checkpointing=22)\n"
                           "train_dataloader.update(batch_size=8, pin_memory=True, num_workers=8)\n"
                           "optim_wrapper.update(accumulative_counts=1)\n"),
    # Ours with one micro-batch of 8 instead of 4 x accumulation 2 (same samples per optimiser step).
    "ours_b8": ("", "batch_size = 8\naccumulative_counts = 1\n"
                    "train_dataloader.update(batch_size=8)\n"
                    "optim_wrapper.update(accumulative_counts=1)\n"),
}

# Realistic photo sizes (w, h): 4:3 -> 4x3 grid = 12 tiles + thumbnail; 16:9 -> 4x2 grid = 8 + thumbnail.
PHOTO_SIZES = [(1152, 864), (1600, 1200), (2048, 1536), (2304, 1728), (1600, 900), (1920, 1080), (2560, 1440)]


# ---------------------------------------------------------------------------------------------------- data

def _photo(job):
    index, folder, seed = job
    import numpy as np
    from PIL import Image

    from foodie.synthetic_data import DISHES, draw_dish
    rng = random.Random(seed * 100003 + index)
    dish = DISHES[index % len(DISHES)]
    w, h = PHOTO_SIZES[index % len(PHOTO_SIZES)]
    img = draw_dish(dish, rng).resize((w, h), Image.BICUBIC)
    grain = np.random.default_rng(index).normal(0, 6, (h, w, 1)).astype(np.int16)  # sensor-like noise
    arr = np.clip(np.asarray(img, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    path = Path(folder) / "images" / f"{index:04d}.jpg"
    Image.fromarray(arr).save(path, quality=90)
    letter = "ABCD"[index % 4]
    question = (f"<image>\n图片中的食物是什么菜？ 选项有: （A) {DISHES[(index + 1) % len(DISHES)].zh}\n"
                f"（B) {DISHES[(index + 2) % len(DISHES)].zh}\n（C) {dish.zh}\n（D) {DISHES[(index + 3) % len(DISHES)].zh}\n"
                f", 请根据上图从所提供的选项中选择一个正确答案，为（")
    answer = f"{letter}) {dish.zh}。图中的菜是{dish.zh}，属于{dish.cuisine.zh}。所以答案是（{letter}) {dish.zh}。"
    return dict(id=f"bench-{index:04d}", image=str(path), image_wh=[[w, h]],
                conversations=[dict(value=question, **{"from": "human"}), dict(value=answer, **{"from": "gpt"})])


def make_data(folder: Path, samples: int, seed: int = 0) -> None:
    """`samples` photos (1-4 MP, JPEG q90 with grain) + train.json in XTuner's LLaVA format."""
    if (folder / "train.json").is_file() and len(json.loads((folder / "train.json").read_text())) >= samples:
        return
    (folder / "images").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        items = pool.map(_photo, [(i, str(folder), seed) for i in range(samples)])
    from foodie.atomic import write_json
    write_json(folder / "train.json", items)
    print(f"[data] {samples} photos in {time.perf_counter() - start:.1f} s -> {folder}", flush=True)


def make_model(folder: Path) -> None:
    """The full-size random-weight checkpoint with OpenGVLab's modeling files."""
    from foodie.tiny_model import RECIPE_FILE
    if (folder / RECIPE_FILE).is_file():
        return
    device = "cuda" if _cuda() else "cpu"
    subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_model.py"), "--full-size", "--device", device,
                    "--out", str(folder), "--force"], check=True)


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------------- peak

def measure_bf16_peak(n: int = 8192, repeats: int = 20) -> float:
    """Dense bf16 matmul TFLOP/s on random data (median of `repeats`, after warm-up), CUDA events."""
    import torch
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * n ** 3 / statistics.median(times) / 1e12


# ---------------------------------------------------------------------------------------------------- FLOPs

def model_shapes(model_dir: Path) -> dict:
    cfg = json.loads((model_dir / "config.json").read_text())
    v, l = cfg["vision_config"], cfg["llm_config"]
    return dict(vd=v["hidden_size"], vl=v["num_hidden_layers"], vff=v["intermediate_size"],
                patch=v["patch_size"], img=cfg.get("force_image_size") or v["image_size"],
                ds=cfg.get("downsample_ratio", 0.5), d=l["hidden_size"], L=l["num_hidden_layers"],
                heads=l["num_attention_heads"], kv=l["num_key_value_heads"], ff=l["intermediate_size"],
                vocab=l["vocab_size"])


def sample_flops(s: dict, length: int, tiles: int, labelled: int, lora_r: int = 128) -> float:
    """FLOPs one sample's LoRA fine-tuning step must do (see the module docstring)."""
    # InternViT forward over each tile (class token + patches), frozen: forward only.
    t = (s["img"] // s["patch"]) ** 2 + 1
    vit_layer = 2 * t * (4 * s["vd"] ** 2 + 2 * s["vd"] * s["vff"]) + 4 * t * t * s["vd"]
    vit = tiles * (s["vl"] * vit_layer + 2 * (t - 1) * 3 * s["patch"] ** 2 * s["vd"])
    # mlp1 on 256 tokens a tile: forward + weight gradients (its input needs no gradient).
    n_img = int((t - 1) * s["ds"] ** 2)
    shuffled = s["vd"] * int(1 / s["ds"]) ** 2
    mlp1 = tiles * n_img * 2 * (shuffled * s["d"] + s["d"] * s["d"]) * 2
    # InternLM2: frozen linears forward + input gradients (2x forward); LoRA forward + both gradients (3x).
    d, hd = s["d"], s["d"] // s["heads"]
    qkv_out = (s["heads"] + 2 * s["kv"]) * hd
    base = 2 * (d * qkv_out + d * d + 3 * d * s["ff"])
    lora = 2 * lora_r * ((d + qkv_out) + (d + d) + 3 * (d + s["ff"]))
    linears = s["L"] * length * (2 * base + 3 * lora)
    # causal attention: QK^T and AV over half the square, forward + backward (2x).
    attn = s["L"] * 3 * (2 * 2 * length * length * d / 2)
    # output head (with its LoRA) where a label exists: forward + input gradient + LoRA.
    head = labelled * (2 * 2 * d * s["vocab"] + 3 * 2 * lora_r * (d + s["vocab"]))
    return vit + mlp1 + linears + attn + head


# ---------------------------------------------------------------------------------------------------- runs

CPU_SMOKE = ("from mmengine.optim import OptimWrapper\n",
             "optim_wrapper = dict(type=OptimWrapper, optimizer=optim_wrapper['optimizer'],\n"
             "                     accumulative_counts=optim_wrapper['accumulative_counts'])\n"
             "env_cfg.dist_cfg.update(backend='gloo')\n"
             "if 'torch_dtype' in model: model.update(torch_dtype='float32')\n")


def stock_config() -> Path:
    import importlib.util
    return Path(list(importlib.util.find_spec("xtuner").submodule_search_locations)[0]) / STOCK_CONFIG


def write_config(variant: str, folder: Path, iters: int, jsonl: Path, workers: int | None, cpu_smoke: bool = False,
                 profile_iter: int | None = None, model: Path | None = None, data: Path | None = None) -> Path:
    """A config that inherits the shipped one (or, for `tutorial`, XTuner's stock one) and adds the variant's
    changes and the measurement plumbing."""
    imports, body = VARIANTS[variant]
    base = BASE_CONFIG
    if variant == "tutorial":  # XTuner's stock config: paths are set here (it has no environment variables)
        base = stock_config()
        body = (f"path = {str(model)!r}\ndata_path = {str(Path(data) / 'train.json')!r}\n"
                f"image_folder = {str(data)!r}\n" + TUTORIAL + body)
    if cpu_smoke and variant in ("tutorial", "baseline"):
        # XTuner's class needs a process group (torch.distributed.get_rank): ours stands in for the smoke
        imports += "from foodie.xtuner_model import FoodieInternVL\n"
        body += "model.update(type=FoodieInternVL)\n"
    if cpu_smoke:  # plumbing check on a machine without a GPU: no DeepSpeed, float32, gloo
        imports, body = imports + CPU_SMOKE[0], body + CPU_SMOKE[1]
    if workers is not None:
        body = (f"train_dataloader.update(num_workers={workers}, persistent_workers={workers > 0})\n"
                + body)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(base, folder / base.name)
    cfg = folder / f"bench_{variant}.py"
    cfg.write_text(
        "from mmengine.config import read_base\n"
        "from xtuner.engine.runner import TrainLoop\n"
        "from xtuner.engine.hooks import DatasetInfoHook\n"
        "from bench.throughput_hook import ThroughputHook\n" + imports +
        "with read_base():\n"
        f"    from .{base.stem} import *  # noqa: F401,F403\n\n" + body +
        f"train_cfg = dict(type=TrainLoop, max_iters={iters})\n"
        "default_hooks.update(checkpoint=None)\n"
        "default_hooks.logger.update(interval=5)\n"
        f"custom_hooks.append(dict(type=ThroughputHook, out_file={str(jsonl)!r}, profile_iter={profile_iter!r},\n"
        f"                         profile_file={str(jsonl.with_suffix('.profile.txt'))!r}))\n")
    return cfg


def run_variant(row: str, args, model: Path, data: Path) -> dict:
    """One row: `VARIANT` on the official-code checkpoint."""
    import xtuner
    variant = tag = row
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    jsonl = args.work / "logs" / f"iters_{tag}.jsonl"
    cfg = write_config(variant, args.work / "configs" / tag, args.iters, jsonl, args.workers, args.cpu_smoke,
                       args.profile_iter, model=model, data=data)
    log = args.work / "logs" / f"train_{tag}.log"
    env = dict(os.environ, FOODIE_MODEL=str(model), FOODIE_DATA=str(data),
               FOODIE_WORK_DIR=str(args.work / "runs" / tag),
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    train_py = str(Path(xtuner.__file__).parent / "tools" / "train.py")
    if args.cpu_smoke:  # one plain process (MMEngine's pytorch launcher needs CUDA)
        cmd = [sys.executable, train_py, str(cfg)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
               f"--master_port={29500 + random.randint(0, 999)}", train_py, str(cfg), "--launcher", "pytorch",
               "--deepspeed", "deepspeed_zero2"]
    print(f"[{row}] {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    elapsed = time.perf_counter() - start
    records = [json.loads(x) for x in jsonl.read_text().splitlines()] if jsonl.is_file() else []
    text = log.read_text(errors="replace")
    result = dict(variant=row, rc=rc, elapsed_s=round(elapsed, 1), iters_logged=len(records), records=records,
                  ran=attention_that_ran(text))
    profile = jsonl.with_suffix(".profile.txt")
    with open(args.out / "logs_tail.txt", "a") as f:  # few files come back from a device: one for all logs
        f.write(f"===== {row} (rc {rc}) {log}\n" + "\n".join(x[:300] for x in text.splitlines()[-40:]) + "\n")
        if profile.is_file():
            f.write(f"----- {row}: torch.profiler, iteration {args.profile_iter}\n{profile.read_text()}\n")
    if len(records) <= args.skip:
        tail = text[-3000:]
        print(f"[{row}] FAILED rc={rc}, {len(records)} iterations logged; log tail:\n{tail}", flush=True)
        return dict(result, error=tail[-800:])
    return dict(result, **summarise(records, args))


def attention_that_ran(log: str) -> str:
    """From the training log: foodie's 'InternVL2 loaded: ..., attention=X' line, or XTuner's stock class
    (attention as the checkpoint's InternVLChatModel fell back)."""
    import re
    m = re.search(r"InternVL2 loaded: dtype=\S+, attention=(\w+)", log)
    if m:
        return m.group(1) + (" (swapped in)" if m.group(1) == "sdpa" else "")
    fell_back = "flash_attn is not installed" in log or "FlashAttention2 is not installed" in log
    return "eager (XTuner's class)" if fell_back or "falls back" in log else "as the checkpoint chose (XTuner's class)"


def summarise(records: list[dict], args) -> dict:
    shapes = model_shapes(args.model)
    steady = [r for r in records[args.skip:] if not r.get("profiled")]
    wall = sum(r["wall_s"] for r in steady)
    n = args.nproc  # the hook logs rank 0's batch; every rank runs one of the same size
    samples = n * sum(r["samples"] for r in steady)
    tokens = n * sum(r["tokens"] for r in steady)
    flops = n * sum(sample_flops(shapes, length, tiles, r["labelled"] / max(1, r["samples"]))
                    for r in steady for length, tiles in zip(r["lengths"], r["tiles"]))
    return dict(
        s_per_iter=wall / len(steady), samples_per_iter=samples / len(steady), samples_per_s=samples / wall, tokens_per_s=tokens / wall,
        padding_share=1 - sum(r["tokens"] for r in steady) / sum(r["padded_tokens"] for r in steady),
        tiles_per_sample=sum(sum(r["tiles"]) for r in steady) / sum(r["samples"] for r in steady),
        tokens_per_sample=sum(r["tokens"] for r in steady) / sum(r["samples"] for r in steady),
        tflops_per_s=flops / wall / 1e12, mfu=flops / wall / 1e12 / args.peak / n,
        max_allocated_gib=max(r["max_allocated"] for r in records) / 2 ** 30,
        max_reserved_gib=max(r["max_reserved"] for r in records) / 2 ** 30,
        loss=[r["loss"] for r in records], iters_timed=len(steady))


def versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "xtuner", "mmengine", "deepspeed", "peft", "triton"):
        try:
            out[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001
            out[name] = f"not importable ({type(e).__name__})"
    import torch
    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    out["gpus"] = torch.cuda.device_count()
    out["python"] = sys.version.split()[0]
    return out


def table(results: list[dict], base: dict | None) -> str:
    rows = ["| row | attention (checkpoint's own code) | samples/iter | s/iter | samples/s | tokens/s | "
            f"x {base['variant'] if base else 'base'} | MFU | max alloc GiB | max reserved GiB | loss first -> last |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['variant']} | {r['ran']} | | failed (rc {r['rc']}) | | | | | | | |")
            continue
        speed = f"{r['samples_per_s'] / base['samples_per_s']:.2f}" if base and "samples_per_s" in base else "-"
        rows.append(f"| {r['variant']} | {r['ran']} | {r['samples_per_iter']:.0f} | "
                    f"{r['s_per_iter']:.3f} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:,.0f} | "
                    f"{speed} | {100 * r['mfu']:.1f}% | {r['max_allocated_gib']:.1f} | {r['max_reserved_gib']:.1f} | "
                    f"{r['loss'][0]:.3f} -> {r['loss'][-1]:.3f} |")
    return "\n".join(rows)


def loss_agreement(results: list[dict], reference: str = "baseline") -> dict:
    """Largest per-iteration loss difference of each row against `reference` (same data, order, schedule)."""
    ref = next((r for r in results if r["variant"] == reference and "loss" in r), None)
    if ref is None:
        return {}
    return {r["variant"]: max(abs(a - b) for a, b in zip(r["loss"], ref["loss"]))
            for r in results if "loss" in r and r is not ref and not r["variant"].startswith("tutorial")}


def loss_chart(results: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        if "loss" in r:
            ax.plot(range(1, len(r["loss"]) + 1), r["loss"], label=r["variant"], marker=".")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_title("Same data, order and schedule: loss per iteration")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"), help="model, data, configs, runs")
    ap.add_argument("--model", type=Path, help="InternVL2 checkpoint for the rows (default: WORK/internvl2-2b-random, "
                                                "built with OpenGVLab's modeling files)")
    ap.add_argument("--data", type=Path, help="XTuner data folder (default: WORK/data, built)")
    ap.add_argument("--samples", type=int, default=160, help="synthetic photos/samples to build")
    ap.add_argument("--variants", default="tutorial,baseline,ours,ours_eager",
                    help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--iters", type=int, default=30, help="training iterations per variant")
    ap.add_argument("--skip", type=int, default=5, help="first iterations left out of the timing (warm-up)")
    ap.add_argument("--nproc", type=int, default=1, help="GPUs (torchrun processes)")
    ap.add_argument("--workers", type=int, default=None,
                    help="dataloader workers per process (default: each config's own; the shipped one has 8)")
    ap.add_argument("--peak", type=float, help="bf16 dense peak TFLOP/s (default: measured here)")
    ap.add_argument("--timeout", type=int, default=400, help="seconds per variant")
    ap.add_argument("--profile-iter", type=int, help="profile this iteration (left out of the timing)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="check the plumbing without a GPU (use with --model pointing at the tiny model)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "work/bench/train_throughput")))
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = args.variants.split(",")
    args.data = args.data or args.work / "data"
    if args.model is None:
        args.model = args.work / "internvl2-2b-random"
        make_model(args.model)
    make_data(args.data, args.samples)
    args.peak = args.peak or (measure_bf16_peak() if _cuda() else float("nan"))
    info = dict(versions(), peak_bf16_tflops=args.peak, nproc=args.nproc, iters=args.iters, skip=args.skip,
                command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
    print(f"[bench] {json.dumps(info)}", flush=True)

    results = []
    for row in rows:
        results.append(run_variant(row, args, args.model, args.data))
        r = results[-1]
        print(f"[{row}] " + json.dumps({k: v for k, v in r.items() if k not in ("loss", "records")}), flush=True)
        from foodie.atomic import write_json
        write_json(args.out / "results.json", dict(info=info, results=results, loss_max_abs_diff=loss_agreement(results)))

    base = next((r for r in results if r["variant"] in ("tutorial", "baseline") and "error" not in r), None)
    md = table(results, base)
    agreement = loss_agreement(results)
    if agreement:
        md += "\n\nLargest per-iteration loss difference against `baseline` (same data, order, schedule): " + \
              ", ".join(f"{k} {v:.4f}" for k, v in agreement.items())
    (args.out / "results.md").write_text(md + "\n")
    loss_chart(results, args.out / "loss.png")
    print(f"\n{info['gpu']} x{args.nproc}, bf16 peak {args.peak:.0f} TFLOP/s, {args.iters} iterations "
          f"({args.skip} warm-up left out), versions {json.dumps({k: info[k] for k in ('torch', 'transformers', 'xtuner', 'deepspeed', 'peft')})}")
    print(md)
    for r in results:
        if "loss" in r:
            print(f"loss {r['variant']}: " + " ".join(f"{x:.4f}" for x in r["loss"]))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
