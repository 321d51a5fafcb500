"""Merge a trained XTuner run into a standard InternVL2 checkpoint folder (tools/convert_to_official.py), as XTuner's
converter does (xtuner/configs/internvl/v1_5/convert_to_official.py: PEFT ``merge_and_unload``, ``save_pretrained``),
plus the checks users rely on (docs/guide_gpu.md section 6; docs/PERFORMANCE.md measures it at 2B and 8B).
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from foodie import paths
from foodie.atomic import atomic_path, write_json
from foodie.checkpoints import (PARTIAL_SUFFIX, checkpoint_iter, damaged_member, latest_complete_checkpoint,
                                list_checkpoints)
from foodie.model_spec import IMG_CONTEXT, PROVENANCE_FILE, ModelSpec, SpecError, hub_id

DEFAULT_MAX_SHARD_SIZE = "2GB"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Files copied from the base checkpoint besides its code (*.py); config.json is rewritten.
COPIED_FILES = ("generation_config.json", "preprocessor_config.json", "tokenizer.model", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")
PARTS = {"language_model": "llm_lora", "vision_model": "visual_encoder_lora"}  # model part -> XTuner config key
# Largest |merged - unmerged| logit difference accepted, as a fraction of the largest |logit| of the unmerged
# model (at least 1): rounding W + BA to the saved dtype is the only expected source of difference.
RELATIVE_TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 2e-2}
SUMMARY_KEYS = ("lr", "max_epochs", "max_iters", "batch_size", "accumulative_counts", "max_length", "warmup_iters",
                "warmup_ratio", "weight_decay", "max_norm", "max_dynamic_patch", "torch_dtype", "seed")
BASE_FIX = ("Point the config at a local InternVL2 checkpoint folder: the project's configs read FOODIE_MODEL "
            "(e.g. FOODIE_MODEL=/models/InternVL2-2B), or pass --base-model DIR. The embedded tiny model is built "
            "with `python tools/make_tiny_model.py`.")


class ConvertError(Exception):
    """Conversion refused or failed; the message names the file, the item and the fix."""


@dataclass
class Run:
    config_path: Path
    work_dir: Path
    model_path: str  # as the config names it: a folder or a hub id
    lora: dict[str, dict]  # model part -> LoraConfig kwargs (only the parts with LoRA)
    trained: dict[str, str]  # model part -> "LoRA", "frozen" or "full" (freeze_llm / freeze_visual_encoder)
    quantized: list[str]  # what a QLoRA config quantizes (empty: none)
    data_path: str | None
    summary: dict


def _plain(value):
    """A config value without MMEngine's lazy-import wrappers, a built LoraConfig as its dict."""
    if type(value).__name__ in ("LazyObject", "LazyAttr"):
        return value.build()
    if hasattr(value, "to_dict"):
        return {k: v for k, v in value.to_dict().items() if v is not None}
    return dict(value) if isinstance(value, dict) else value


def read_run(config: str | os.PathLike, work_dir: str | os.PathLike | None = None) -> Run:
    """What the merge needs from an XTuner config (an InternVL_V1_5-style model dict)."""
    config = Path(config)
    if not config.is_file():
        raise ConvertError(f"config not found: {config}. Pass the XTuner config the run was trained with "
                           f"(configs live in {paths.REPO_ROOT / 'xtuner_configs'}; a copy is saved in the run's "
                           "work dir).")
    from mmengine.config import Config

    try:
        cfg = Config.fromfile(str(config))
    except Exception as e:  # syntax errors, bad imports, lazy-import failures
        raise ConvertError(f"cannot read config {config}: {type(e).__name__}: {e}") from e
    model = cfg.get("model")
    if not isinstance(model, dict) or "model_path" not in model:
        raise ConvertError(f"{config}: its `model` dict has no model_path; expected an InternVL model "
                           "(type=FoodieInternVL or XTuner's InternVL_V1_5, model_path=..., llm_lora=...).")
    summary = {k: cfg[k] for k in SUMMARY_KEYS if isinstance(cfg.get(k), (int, float, str))}
    loop = {k: v for k, v in (cfg.get("train_cfg") or {}).items() if k in ("max_iters", "max_epochs")}
    if loop:  # what the loop really ran, not leftovers of a base config
        summary = {k: v for k, v in summary.items() if k not in ("max_iters", "max_epochs")} | loop
    lora = {part: {k: _plain(v) for k, v in _plain(model[key]).items() if k != "type"}
            for part, key in PARTS.items() if model.get(key)}
    frozen = {"vision_model": model.get("freeze_visual_encoder"), "mlp1": False,
              "language_model": model.get("freeze_llm")}
    return Run(config_path=config.resolve(),
               work_dir=Path(work_dir or cfg.get("work_dir") or paths.work_dir() / "train" / config.stem).resolve(),
               model_path=str(model["model_path"]), lora=lora,
               trained={p: "LoRA" if p in lora else "frozen" if frozen[p] else "full" for p in frozen},
               quantized=[f"model.{k}={model[k]}" for k in ("quantization_llm", "quantization_vit") if model.get(k)],
               data_path=cfg["data_path"] if isinstance(cfg.get("data_path"), str) else None, summary=summary)


def resolve_base_model(model_path: str, run: Run | None = None) -> Path:
    """The local folder of the base checkpoint (the path itself, or a hub id already in the HF cache), checked."""
    where = f" (model_path in {run.config_path})" if run else ""
    folder = Path(model_path).expanduser()
    if not folder.exists() and model_path.count("/") == 1:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(model_path, local_files_only=True))
        except Exception:
            raise ConvertError(f"base model {model_path!r}{where} is not a local folder and is not in the Hugging "
                               f"Face cache (nothing is downloaded). {BASE_FIX}") from None
    if not folder.is_dir():
        raise ConvertError(f"base model folder not found: {folder}{where}. {BASE_FIX}")
    try:
        ModelSpec.from_checkpoint(folder)
    except SpecError as e:
        raise ConvertError(f"{e}: the base checkpoint{where} is damaged or not an InternVL2 folder. {BASE_FIX}") \
            from None
    from safetensors import safe_open

    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ConvertError(f"base model folder {folder}{where} has no safetensors weights. {BASE_FIX}")
    for file in weights:
        try:
            safe_open(str(file), framework="pt")  # checks the header against the file size
        except Exception as e:  # noqa: BLE001 - safetensors' own error type
            raise ConvertError(f"{file}: unreadable safetensors file ({e}): the base checkpoint is damaged "
                               "(a truncated copy?); copy it again.") from None
    return folder.resolve()


def resolve_checkpoint(checkpoint: str | os.PathLike, run: Run) -> Path:
    """``latest``: the newest complete ``iter_N.pth`` of the run's work dir; else the given path. Either must be
    whole (a torch archive, or a DeepSpeed folder of shards) with every byte passing its CRC check."""
    path = Path(checkpoint)
    if str(checkpoint) == "latest":
        path = latest_complete_checkpoint(run.work_dir)
        if path is None:
            present = list_checkpoints(run.work_dir)
            detail = (f"it holds only incomplete ones ({', '.join(p.name for p in present)})" if present
                      else "it holds no iter_N.pth" if run.work_dir.is_dir() else "it does not exist")
            raise ConvertError(f"CHECKPOINT=latest: no complete checkpoint in the work dir {run.work_dir} of "
                               f"{run.config_path} ({detail}). Train first (make train), pass --work-dir if the "
                               "run used another one, or name the checkpoint file.")
    damaged = "a partial save" if path.name.endswith(PARTIAL_SUFFIX) else damaged_member(path)
    if damaged:
        complete = latest_complete_checkpoint(path.parent)
        hint = (f" The newest complete checkpoint there is {complete} (or pass `latest`)." if complete not in
                (None, path) else " Resume the run to write a complete one (make train RESUME=1).")
        raise ConvertError(f"checkpoint {path} is half-written or damaged ({damaged}): training was stopped while "
                           f"saving it, or the copy is corrupt; merging it would publish corrupt weights.{hint}")
    return path.resolve()


def load_trained_state(ckpt: Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """The trained tensors of an XTuner checkpoint, by training-time name; ``weights_only`` unless ``trust``
    (MMEngine's stock CheckpointHook pickles logging objects; unpickling can run code)."""
    if ckpt.is_dir():  # DeepSpeed: fp32 master weights from the optimizer shards, frozen weights skipped
        try:
            from xtuner.utils.zero_to_any_dtype import get_state_dict_from_zero_checkpoint

            state = get_state_dict_from_zero_checkpoint(str(ckpt.parent), ckpt.name, dtype=torch.float32,
                                                        exclude_frozen_parameters=True)
        except (ImportError, ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
            raise ConvertError(f"DeepSpeed checkpoint {ckpt} cannot be read ({e}): a rank's shard is missing or "
                               "the folder was half-written (reading it needs deepspeed). Use another checkpoint "
                               "(or `latest`).") from e
        return {k.removeprefix("model."): v for k, v in state.items()}
    try:
        obj = torch.load(ckpt, map_location="cpu", weights_only=not trust, mmap=True)
    except Exception as e:
        first = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), str(e)[:300])
        raise ConvertError(f"cannot read checkpoint {ckpt}: {type(e).__name__}: {first}. If it holds Python objects "
                           "besides tensors (MMEngine's stock CheckpointHook pickles its logging state) and is from "
                           "your own training run, pass --trust-checkpoint to load it in full (never for files from "
                           "others: unpickling can run code).") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvertError(f"checkpoint {ckpt} holds no state_dict of tensors: not an XTuner training checkpoint.")
    return {k.removeprefix("model."): v for k, v in state.items()}  # InternVL_V1_5 keeps the HF model as .model


def build_model(base_dir: Path, run: Run, dtype: torch.dtype):
    """The base checkpoint (its own code, built by transformers under accelerate's init_empty_weights, so the
    official InternViT's ``.item()`` in ``__init__`` runs) with the run's LoRA wrapped as XTuner wraps it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel
    from xtuner.model.utils import find_all_linear_names

    model = AutoModel.from_pretrained(str(base_dir), torch_dtype=dtype, trust_remote_code=True,
                                      low_cpu_mem_usage=True)
    for part, kwargs in run.lora.items():
        module = getattr(model, part)
        targets = kwargs.get("target_modules") or sorted(find_all_linear_names(module))
        setattr(model, part, get_peft_model(module, LoraConfig(**{**kwargs, "target_modules": targets})))
    return model.eval()


def load_trained(model, state: dict, run: Run, ckpt: Path) -> None:
    """Put the checkpoint's tensors into ``model``; raise ConvertError naming every key where checkpoint and
    config (+ base model) disagree."""
    own = model.state_dict()
    trained_full = [p for p, how in run.trained.items() if how == "full"]
    missing = [k for k in own if ("lora_" in k or k.split(".")[0] in trained_full) and k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} expected"
              for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        saved = sorted(ckpt.parent.glob("*.py"))
        problems = [(missing, f"the config expects {len(missing)} tensors the checkpoint lacks: "
                              f"{', '.join(missing[:8])}"),
                    (unexpected, f"the checkpoint has {len(unexpected)} tensors the config does not train: "
                                 f"{', '.join(unexpected[:8])}"),
                    (shapes, f"{len(shapes)} shapes differ: {'; '.join(shapes[:5])}")]
        raise ConvertError("\n  ".join(
            [f"checkpoint {ckpt} does not match config {run.config_path}:", *(t for found, t in problems if found),
             f"Fix: pass the config this checkpoint was trained with"
             f"{f' (the work dir keeps a copy: {saved[0]})' if saved else ''}, with the same base model "
             "(FOODIE_MODEL / --base-model) and the same LoRA settings (r, target_modules)."]))
    model.load_state_dict(state, strict=False)


def write_config(base_dir: Path, out_dir: Path, dtype: torch.dtype, max_dynamic_patch: int | None) -> None:
    """The base config.json with the saved dtype and the tile budget the run trained with (when its config set
    one): the demo and evaluation read it from the checkpoint, so the model is served as trained."""
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    if max_dynamic_patch is not None:
        config["max_dynamic_patch"] = int(max_dynamic_patch)
    for section in (config, config.get("vision_config"), config.get("llm_config")):
        if isinstance(section, dict):
            section["torch_dtype"] = str(dtype).removeprefix("torch.")
    write_json(out_dir / "config.json", config)


def probe_image():
    """A fixed 448x336 picture: deterministic, no file needed."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (336, 448, 3), dtype=np.uint8), "RGB")


def probe_inputs(model_dir: Path):
    """Tokenised probe (the checkpoint's chat format, one tile of its size) for the models of ``model_dir``."""
    from transformers import AutoTokenizer

    from foodie.image_tiling import load_image

    spec = ModelSpec.from_checkpoint(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    pixel_values = load_image(probe_image(), input_size=spec.tile_size, max_num=1)
    prompt = (f"<|im_start|>user\n{spec.image_tokens(pixel_values.shape[0])}\n图片中的食物是什么菜？请说出菜名和菜系。"
              "<|im_end|>\n<|im_start|>assistant\n")
    return tokenizer, pixel_values, tokenizer(prompt, return_tensors="pt")


@torch.no_grad()
def probe_logits(model, tokenizer, pixel_values, enc) -> torch.Tensor:
    model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    out = model(pixel_values=pixel_values.to(model.dtype), input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                image_flags=torch.ones(pixel_values.shape[0], 1, dtype=torch.long), return_dict=True)
    return out.logits.float()


def compare(got: torch.Tensor, ref: torch.Tensor, without_lora: torch.Tensor, dtype: torch.dtype,
            tolerance: float | None, log=print) -> dict:
    """Raise ConvertError when the merged logits differ from the unmerged ones by more than the tolerance
    (default: RELATIVE_TOLERANCE[dtype] x the largest |logit| of the unmerged model, at least 1)."""
    name = str(dtype).removeprefix("torch.")
    scale, diff = float(ref.abs().max()), float((got - ref).abs().max())
    lora_effect = float((ref - without_lora).abs().max())
    tol = RELATIVE_TOLERANCE[name] * max(1.0, scale) if tolerance is None else float(tolerance)
    top1 = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    log(f"[verify] max |logits(merged) - logits(base+LoRA, unmerged)| = {diff:.3g} (tolerance {tol:.3g} for "
        f"{name}; logits up to {scale:.3g}); LoRA changes logits by up to {lora_effect:.3g}; same top-1 token at "
        f"{top1:.1%} of positions")
    if not math.isfinite(diff) or diff > tol:
        raise ConvertError(f"verification failed: the merged model's logits differ from the unmerged base + LoRA "
                           f"by up to {diff:.3g} (tolerance {tol:.3g}). The merge is wrong for this checkpoint; "
                           "nothing was written. Check the config's LoRA settings (r, lora_alpha, use_rslora) "
                           "match the run, or try --dtype float32 to rule out rounding; --tolerance X overrides.")
    return {"max_abs_logit_diff": diff, "tolerance": tol, "max_abs_logit": scale, "lora_effect": lora_effect,
            "top1_agreement": top1, "probe_tokens": int(ref.shape[1])}


def describe_data(run) -> dict:
    """What the run trained on: process_food's summary.json as tools/train.py kept it in the work dir
    (foodie.terms.DATA_SOURCE_FILE), else the one beside the training data now."""
    from foodie.terms import DATA_SOURCE_FILE, describe_source

    if not run.data_path:
        return {}
    data: dict = {"path": _display(run.data_path)}
    for summary_path in (run.work_dir / DATA_SOURCE_FILE, Path(run.data_path).parent / "summary.json"):
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            break
        except (OSError, ValueError):
            continue
    else:
        return data
    # summaries written before the source was recorded: work it out from the folder (FoodieQA unless marked)
    source = summary.get("source") or describe_source(summary.get("data_root", ""))
    items = summary.get("items", {})
    tasks = summary.get("options", {}).get("tasks") or list(items)
    data.update(source, train_questions=summary.get("train_samples"),
                held_out=sum(int(items.get(t, {}).get("held_out", 0)) for t in tasks))
    data["source"] = data.pop("root")
    return data


def _display(path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(paths.REPO_ROOT)) if path.is_relative_to(paths.REPO_ROOT) else str(path)


def provenance(run: Run, base_dir: Path, ckpt: Path, dtype: torch.dtype, targets: dict, verification: dict | None,
               allow_qlora: bool) -> dict:
    """The note foodie.publish turns into the card. It keeps local paths (the evaluation report names the data
    folder from it); publish shortens them to their last part before anything is uploaded."""
    note: dict = {"base_model": hub_id(run.model_path) or ModelSpec.from_checkpoint(base_dir).base_model,
                  "base_model_path": _display(base_dir), "config": _display(run.config_path),
                  "config_summary": run.summary, "checkpoint": _display(ckpt), "iteration": checkpoint_iter(ckpt),
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    for part, key, what in (("language_model", "lora", "LLM"), ("vision_model", "vision_lora", "ViT")):
        if part in run.lora:
            kwargs, listed = run.lora[part], ", ".join(targets[part])
            note[key] = {"r": kwargs.get("r", 8), "alpha": kwargs.get("lora_alpha", 8),
                         "dropout": kwargs.get("lora_dropout", 0.0),
                         "targets": listed if kwargs.get("target_modules") else f"all {what} linear layers ({listed})"}
    note["data"] = describe_data(run)
    note["trained"] = run.trained
    note["dtype"] = str(dtype).removeprefix("torch.")
    if run.quantized and allow_qlora:
        note["qlora"] = "trained against 4-bit base weights; LoRA merged into the original bf16 base weights"
    note["verification"] = verification or "skipped (--no-verify)"
    note["tool"] = "internvl-foodie tools/convert_to_official.py"
    return note


def check_save_dir(save_dir: Path, ckpt: Path, base_dir: Path, force: bool) -> None:
    save = save_dir.resolve()
    for other, what in ((ckpt.resolve(), "the checkpoint"), (base_dir.resolve(), "the base model")):
        if save.is_relative_to(other) or other.is_relative_to(save):
            relation = "is" if save == other else "is inside" if save.is_relative_to(other) else "contains"
            raise ConvertError(f"SAVE_DIR {save_dir} {relation} {what} ({other}); writing there could destroy it. "
                               "Choose a separate folder.")
    if "." in save_dir.name:
        raise ConvertError(f"SAVE_DIR {save_dir}: transformers imports a checkpoint's remote code as a Python package "
                           f"named after its folder, and the '.' in {save_dir.name!r} breaks that import (AutoModel "
                           f"could not load the result). Choose a name without dots, e.g. "
                           f"{save_dir.name.replace('.', '-')!r}.")
    if save_dir.exists() and not save_dir.is_dir():
        raise ConvertError(f"SAVE_DIR {save_dir} exists and is a file; choose a folder name.")
    if save_dir.is_dir() and any(save_dir.iterdir()) and not force:
        raise ConvertError(f"SAVE_DIR {save_dir} already exists and is not empty: pass --force to replace it (it "
                           "stays untouched until the new folder is complete), or choose another folder.")


@dataclass
class ConvertResult:
    save_dir: Path
    checkpoint: Path
    files: list[str]
    counts: dict
    verification: dict | None
    seconds: dict


def convert(config: str | os.PathLike, checkpoint: str | os.PathLike, save_dir: str | os.PathLike, *,
            force: bool = False, verify: bool = True, tolerance: float | None = None, dtype: str = "auto",
            max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE, base_model: str | None = None,
            work_dir: str | os.PathLike | None = None, allow_qlora: bool = False, trust_checkpoint: bool = False,
            log=print) -> ConvertResult:
    """Merge the run's checkpoint into an official-format InternVL2 folder at ``save_dir`` (atomically)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModel
    from transformers.utils.hub import convert_file_size_to_int

    t0 = time.time()
    save_dir = Path(save_dir)
    try:  # save_pretrained's own reading of the size, here before minutes of loading
        convert_file_size_to_int(max_shard_size)
    except ValueError:
        raise ConvertError(f"--max-shard-size {max_shard_size!r}: expected a size like 2GB, 500MB or 1GiB.") from None
    if str(checkpoint) != "latest" and not Path(checkpoint).exists():  # before the (slow) config read
        raise ConvertError(f"checkpoint not found: {checkpoint}. Pass an iter_N.pth from the run's work dir or "
                           "`latest`.")
    run = read_run(config, work_dir)
    if run.quantized and not allow_qlora:
        raise ConvertError(f"{run.config_path} is a QLoRA run ({', '.join(run.quantized)}): its LoRA was trained "
                           "against 4-bit copies of the base weights and cannot be merged into them. Re-run with "
                           "--allow-qlora to merge it into the bf16 base model they were made from, then evaluate "
                           "the result again (it differs from what you trained by the 4-bit rounding).")
    base_dir = resolve_base_model(base_model or run.model_path, None if base_model else run)
    run.model_path = str(base_model or run.model_path)  # the provenance names the model actually merged into
    ckpt = resolve_checkpoint(checkpoint, run)
    check_save_dir(save_dir, ckpt, base_dir, force)
    if dtype == "auto":
        dtype = json.loads((base_dir / "config.json").read_text(encoding="utf-8")).get("torch_dtype", "bfloat16")
    out_dtype = DTYPES[dtype]
    log(f"[convert] config {run.config_path}\n[convert] base model {base_dir}\n[convert] checkpoint {ckpt}")
    state = load_trained_state(ckpt, trust_checkpoint)

    # Verification runs both models in float32; without it the base loads straight in the saved dtype.
    model = build_model(base_dir, run, torch.float32 if verify else out_dtype)
    load_trained(model, state, run, ckpt)
    targets = {part: list(kwargs.get("target_modules") or sorted(getattr(model, part).peft_config["default"]
                                                                 .target_modules)) for part, kwargs in run.lora.items()}
    seconds = {"prepare": round(time.time() - t0, 1)}
    if verify:
        probe = probe_inputs(base_dir)
        ref = probe_logits(model, *probe)
        with contextlib.ExitStack() as stack:
            for part in run.lora:
                stack.enter_context(getattr(model, part).disable_adapter())
            without_lora = probe_logits(model, *probe)
    counts = {"merged": sum(isinstance(m, BaseTunerLayer) for m in model.modules()),
              "replaced": sum("lora_" not in k for k in state)}
    log(f"[convert] merging LoRA into {counts['merged']} weights, {counts['replaced']} trained tensors in place; "
        f"saving {dtype}")
    with atomic_path(save_dir, is_dir=True) as staging:
        # Built under staging/<SAVE_DIR name>: transformers imports remote code under the folder's name,
        # and the hidden staging name (".x.tmp-...") is not a valid module name.
        out = staging / save_dir.name
        t1 = time.time()
        for part in run.lora:
            setattr(model, part, getattr(model, part).merge_and_unload())
        model.to(out_dtype).save_pretrained(out, max_shard_size=max_shard_size, safe_serialization=True)
        del model
        gc.collect()
        for src in base_dir.iterdir():  # the checkpoint's own code and tokenizer, byte for byte
            if src.is_file() and (src.suffix == ".py" or src.name in COPIED_FILES):
                shutil.copyfile(src, out / src.name)
        write_config(base_dir, out, out_dtype, run.summary.get("max_dynamic_patch"))
        seconds["merge"] = round(time.time() - t1, 1)
        verification = None
        if verify:
            t2 = time.time()
            log("[verify] merged folder through AutoModel (trust_remote_code, float32): loading, probing")
            merged = AutoModel.from_pretrained(str(out), torch_dtype=torch.float32, trust_remote_code=True,
                                               low_cpu_mem_usage=True).eval()
            verification = compare(probe_logits(merged, *probe), ref, without_lora, out_dtype, tolerance, log)
            del merged
            seconds["verify"] = round(time.time() - t2, 1)
        write_json(out / PROVENANCE_FILE, provenance(run, base_dir, ckpt, out_dtype, targets, verification,
                                                     allow_qlora))
        weights = sorted(p.name for p in out.glob("*.safetensors"))
        counts.update(files=weights, bytes=sum((out / w).stat().st_size for w in weights))
        for f in list(out.iterdir()):
            os.replace(f, staging / f.name)
            (staging / f.name).chmod(0o644)
        out.rmdir()
        staging.chmod(0o755)
    seconds["total"] = round(time.time() - t0, 1)
    return ConvertResult(save_dir, ckpt, sorted(p.name for p in save_dir.iterdir()), counts, verification, seconds)
