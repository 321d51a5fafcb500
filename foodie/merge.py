"""Merge a trained XTuner run (LoRA + projector) into a standard InternVL2 checkpoint folder.

XTuner's ``InternVL_V1_5.state_dict`` (and so every ``iter_N.pth``) holds only what training changed,
under the names of the training-time module tree::

    model.language_model.base_model.model.<official suffix>.lora_A.default.weight    (r, in)
    model.language_model.base_model.model.<official suffix>.lora_B.default.weight    (out, r)
    model.vision_model.base_model.model.<...>.lora_{A,B}.default.weight               (ViT LoRA, if any)
    model.mlp1.{0,1,3}.{weight,bias}                                                  (projector, always)
    model.vision_model.<...> / model.language_model.<...>                             (fully trained parts)

The merged folder keeps the base checkpoint's official tensor names (``language_model.model.layers.N...``)
with, for every LoRA-wrapped linear layer, ``W <- W + scaling * B @ A`` (``scaling = alpha / r``, or as
PEFT computes it for rsLoRA / rank patterns) and the trained tensors put in place.

Steps, each its own function:

1. ``read_run``            the XTuner config: base model path, LoRA settings, frozen parts, QLoRA, data.
2. ``resolve_base_model``  the base checkpoint folder (local folder or the Hugging Face cache; no download).
3. ``resolve_checkpoint``  ``iter_N.pth`` (a file, or the DeepSpeed folder of ZeRO shards) or ``latest``;
                           half-written checkpoints are refused.
4. ``load_trained_state``  the trained tensors (DeepSpeed folders through XTuner's ZeRO reader, in fp32).
5. ``plan_merge``          which base tensors LoRA wraps (PEFT injected into the model built on the meta
                           device, so nothing is allocated); ``check_matches`` compares the checkpoint with it.
6. ``write_merged_weights``  reads the base safetensors tensor by tensor (memory-mapped), merges one layer at
                           a time in fp32 and streams each result into its output shard, whose header was
                           laid out beforehand: about one tensor is in memory, never a copy of the model.
7. ``verify_merged``       reloads the folder with ``AutoModel`` (trust_remote_code) and compares its
                           logits on a probe image + question with the unmerged base + LoRA model (PEFT).
8. ``convert``             all of it, into a temporary folder renamed onto ``SAVE_DIR`` at the end.
"""
from __future__ import annotations

import gc
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from foodie import paths
from foodie.atomic import atomic_path, write_json
from foodie.model_spec import IMG_CONTEXT, PROVENANCE_FILE, ModelSpec
from foodie.checkpoints import (PARTIAL_SUFFIX, checkpoint_iter, damaged_member, is_complete_checkpoint,
                                latest_complete_checkpoint, list_checkpoints)

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "2GB"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Files copied from the base checkpoint besides the remote-code *.py files (config.json is rewritten).
COPIED_FILES = ("generation_config.json", "preprocessor_config.json", "tokenizer.model", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")
TOKENIZER_VOCAB = ("tokenizer.model", "tokenizer.json", "vocab.json")
PARTS = ("language_model", "vision_model")
# Largest |merged - unmerged| logit difference accepted, as a fraction of the largest |logit| of the unmerged
# model (at least 1): rounding W + BA to the saved dtype is the only expected source of difference.
RELATIVE_TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 2e-2}


class ConvertError(Exception):
    """Conversion refused or failed; the message names the file, the item and the fix."""


# ---------------------------------------------------------------------------------------------------------
# 1. the run (XTuner config)


@dataclass
class LoraSettings:
    """The ``llm_lora`` / ``visual_encoder_lora`` dict of an XTuner config, minus its ``type``."""
    part: str  # "language_model" or "vision_model"
    kwargs: dict

    @property
    def r(self) -> int:
        return int(self.kwargs.get("r", 8))

    @property
    def alpha(self) -> float:
        return self.kwargs.get("lora_alpha", 8)

    @property
    def dropout(self) -> float:
        return self.kwargs.get("lora_dropout", 0.0)

    @property
    def targets(self):
        return self.kwargs.get("target_modules")

    def peft_config(self, targets):
        from peft import LoraConfig

        kwargs = {k: v for k, v in self.kwargs.items() if k not in ("type", "target_modules")}
        return LoraConfig(target_modules=targets, **kwargs)


@dataclass
class Run:
    config_path: Path
    work_dir: Path
    model_path: str  # as the config names it: a folder or a hub id
    model_class: str
    llm_lora: LoraSettings | None
    vit_lora: LoraSettings | None
    freeze_llm: bool
    freeze_vit: bool
    quantized: list[str]  # what a QLoRA config quantizes (empty: none)
    data_path: str | None
    summary: dict = field(default_factory=dict)

    def lora(self, part: str) -> LoraSettings | None:
        return self.llm_lora if part == "language_model" else self.vit_lora


SUMMARY_KEYS = ("lr", "max_epochs", "max_iters", "batch_size", "accumulative_counts", "max_length", "warmup_iters",
                "warmup_ratio", "weight_decay", "max_norm", "max_dynamic_patch", "torch_dtype", "seed")


def _plain(value):
    """A config value without MMEngine's lazy-import wrappers (LazyObject -> the object)."""
    if hasattr(value, "build") and type(value).__name__ in ("LazyObject", "LazyAttr"):
        return value.build()
    return value


def _as_dict(value) -> dict | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "to_dict"):  # an already built peft.LoraConfig
        return {k: v for k, v in value.to_dict().items() if v is not None}
    raise ConvertError(f"LoRA settings of an unexpected type {type(value).__name__}: expected a dict(type=LoraConfig, ...)")


def _quantization_in(obj, where: str) -> list[str]:
    """Places in the model dict that ask for 4/8-bit weights (QLoRA)."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            v = _plain(v)
            if k in ("quantization_llm", "quantization_vit") and v:
                found.append(f"{where}.{k}={v}")
            elif k in ("load_in_4bit", "load_in_8bit") and v is True:
                found.append(f"{where}.{k}=True")
            elif k == "type" and getattr(v, "__name__", "") == "BitsAndBytesConfig":
                found.append(f"{where} (BitsAndBytesConfig)")
            elif isinstance(v, dict) or hasattr(v, "items"):
                found += _quantization_in(dict(v.items()) if not isinstance(v, dict) else v, f"{where}.{k}")
    return found


def read_run(config: str | os.PathLike, work_dir: str | os.PathLike | None = None) -> Run:
    """Read what the merge needs from an XTuner config (an InternVL_V1_5-style model dict)."""
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
    model_class = _plain(model.get("type"))
    class_name = getattr(model_class, "__name__", str(model_class))
    try:
        from xtuner.model import InternVL_V1_5

        if isinstance(model_class, type) and not issubclass(model_class, InternVL_V1_5):
            raise ConvertError(f"{config}: model type {class_name} is not an InternVL model (InternVL_V1_5 or a "
                               "subclass such as FoodieInternVL); this tool merges InternVL2 runs only.")
    except ImportError:
        pass
    llm = _as_dict(model.get("llm_lora"))
    vit = _as_dict(model.get("visual_encoder_lora"))
    work = Path(work_dir or cfg.get("work_dir") or paths.work_dir() / "train" / config.stem)
    train_cfg = cfg.get("train_cfg") or {}
    summary = {k: cfg[k] for k in SUMMARY_KEYS if isinstance(cfg.get(k), (int, float, str))}
    if isinstance(train_cfg, dict) and ("max_iters" in train_cfg or "max_epochs" in train_cfg):
        for k in ("max_iters", "max_epochs"):  # what the loop really ran, not leftovers of a base config
            summary.pop(k, None)
            if isinstance(train_cfg.get(k), int):
                summary[k] = train_cfg[k]
    return Run(config_path=config.resolve(), work_dir=work.resolve(), model_path=str(model["model_path"]),
               model_class=class_name,
               llm_lora=LoraSettings("language_model", llm) if llm else None,
               vit_lora=LoraSettings("vision_model", vit) if vit else None,
               freeze_llm=bool(model.get("freeze_llm", False)), freeze_vit=bool(model.get("freeze_visual_encoder", False)),
               quantized=_quantization_in(dict(model), "model"),
               data_path=str(cfg["data_path"]) if isinstance(cfg.get("data_path"), str) else None, summary=summary)


def qlora_message(run: Run) -> str:
    return (
        f"{run.config_path} is a QLoRA run ({', '.join(run.quantized)}): its LoRA was trained against 4-bit (NF4) "
        "copies of the base weights. LoRA cannot be merged into 4-bit weights without losing it, so the standard "
        "way is to merge into the bf16 base model the 4-bit copy was made from: re-run with --allow-qlora to do "
        "that (the tool loads the original bf16 safetensors, adds scaling * B @ A per layer and saves bf16; no "
        "bitsandbytes or GPU needed). The merged model then differs from the quantized one you trained by the "
        "NF4 rounding of the base weights, so evaluate it again (tools/eval_food.py). Alternatively, train "
        "without quantization (FoodieInternVL has no quantization switches) and convert that run.")


# ---------------------------------------------------------------------------------------------------------
# 2. base model


def _has_weights(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).is_file() or (folder / WEIGHTS_INDEX).is_file()


def resolve_base_model(model_path: str, run: Run | None = None) -> Path:
    """The local folder of the base checkpoint: the path itself, or a hub id already in the HF cache."""
    where = f" (model_path in {run.config_path})" if run else ""
    fix = ("Point the config at a local InternVL2 checkpoint folder: the project's configs read FOODIE_MODEL "
           "(e.g. FOODIE_MODEL=/models/InternVL2-2B), or pass --base-model DIR. The embedded tiny model is "
           "built with `python tools/make_tiny_model.py`.")
    folder = Path(model_path).expanduser()
    if not folder.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", model_path):
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model_path, local_files_only=True))
        except Exception:
            raise ConvertError(f"base model {model_path!r}{where} is not a local folder and is not in the Hugging "
                               f"Face cache (nothing is downloaded). {fix}") from None
    if not folder.is_dir():
        raise ConvertError(f"base model folder not found: {folder}{where}. {fix}")
    if not (folder / "config.json").is_file():
        raise ConvertError(f"base model folder {folder}{where} has no config.json: not a checkpoint folder. {fix}")
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConvertError(f"{folder / 'config.json'}: not valid JSON ({e}): the base checkpoint{where} is damaged; "
                           "copy or download it again.") from None
    if not _has_weights(folder):
        raise ConvertError(f"base model folder {folder}{where} has no {WEIGHTS_FILE} or {WEIGHTS_INDEX}: the "
                           "merge reads the base weights from safetensors (convert .bin weights first, or use the "
                           f"official safetensors release). {fix}")
    return folder.resolve()


def base_weight_files(base_dir: Path) -> list[Path]:
    index = base_dir / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as e:
            raise ConvertError(f"{index}: not a safetensors index ({e}); the base checkpoint is damaged.") from None
        files = [base_dir / name for name in dict.fromkeys(weight_map.values())]
    else:
        files = [base_dir / WEIGHTS_FILE]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ConvertError(f"base model {base_dir}: weight file(s) missing: {', '.join(str(m) for m in missing)} "
                           "(incomplete download or copy).")
    return files


def base_tensor_shapes(base_dir: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from the safetensors headers (no weights read)."""
    from safetensors import safe_open

    shapes = {}
    for f in base_weight_files(base_dir):
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    shapes[name] = tuple(st.get_slice(name).get_shape())
        except Exception as e:  # noqa: BLE001 - safetensors' own error type for a damaged header
            raise ConvertError(f"{f}: not a readable safetensors file ({e}): the base checkpoint is damaged "
                               "(a truncated copy?); copy or download it again.") from None
    return shapes


# ---------------------------------------------------------------------------------------------------------
# 3. checkpoint


def resolve_checkpoint(checkpoint: str | os.PathLike, run: Run) -> Path:
    """``latest``: the newest complete ``iter_N.pth`` of the run's work dir. Otherwise the given path, which
    must be a complete checkpoint (a torch archive, or a DeepSpeed folder whose shards are all readable)."""
    if str(checkpoint) == "latest":
        found = latest_complete_checkpoint(run.work_dir)
        if found is None:
            present = list_checkpoints(run.work_dir)
            detail = (f"it holds only incomplete ones ({', '.join(p.name for p in present)})" if present
                      else "it holds no iter_N.pth" if run.work_dir.is_dir() else "it does not exist")
            raise ConvertError(f"CHECKPOINT=latest: no complete checkpoint in the work dir {run.work_dir} of "
                               f"{run.config_path} ({detail}). Train first (make train), pass --work-dir if the "
                               "run used another one, or name the checkpoint file.")
        return found.resolve()
    path = Path(checkpoint)
    if not path.exists():
        raise ConvertError(f"checkpoint not found: {path}. Pass an iter_N.pth from the run's work dir "
                           f"({run.work_dir}) or `latest`.")
    if path.name.endswith(PARTIAL_SUFFIX) or not is_complete_checkpoint(path):
        what = ("a DeepSpeed folder with missing or unreadable shards" if path.is_dir()
                else "a truncated or unreadable torch archive")
        complete = latest_complete_checkpoint(path.parent)
        hint = (f" The newest complete checkpoint there is {complete} (or pass `latest`)." if complete
                else " Resume the run to write a complete one (make train RESUME=1).")
        raise ConvertError(f"checkpoint {path} is half-written ({what}): training was probably stopped while "
                           f"saving it.{hint}")
    return path.resolve()


def load_trained_state(ckpt: Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """The trained tensors of an MMEngine/XTuner checkpoint, by training-time name.

    Files load with ``weights_only=True`` (tensors and plain data only), which our AtomicCheckpointHook's
    checkpoints pass; one from MMEngine's stock CheckpointHook pickles logging objects and needs
    ``trust=True`` (``weights_only=False``: only for your own files, it can run code)."""
    damaged = damaged_member(ckpt)
    if damaged:
        raise ConvertError(f"checkpoint {ckpt} is damaged ({damaged}); merging it would publish corrupt weights. "
                           "Use another checkpoint (or `latest`), or resume training to write a new one.")
    if ckpt.is_dir():
        try:
            from xtuner.utils.zero_to_any_dtype import get_state_dict_from_zero_checkpoint

            # fp32 master weights from the optimizer shards; frozen base weights skipped (the base has them)
            state = get_state_dict_from_zero_checkpoint(str(ckpt.parent), ckpt.name, exclude_frozen_parameters=True,
                                                        dtype=torch.float32)
        except ImportError as e:
            raise ConvertError(f"{ckpt} is a DeepSpeed checkpoint folder; reading it needs deepspeed "
                               f"(pip install deepspeed==0.16.2): {e}") from e
        except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
            raise ConvertError(f"DeepSpeed checkpoint {ckpt} cannot be read ({e}): a rank's shard is missing or "
                               "the folder was half-written. Use another checkpoint (or `latest`).") from e
        return dict(state)
    try:
        obj = torch.load(ckpt, map_location="cpu", weights_only=not trust, mmap=True)
    except Exception as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        first = re.sub(r"\x1b\[[0-9;]*m", "", first)
        if "weights_only" in str(e) or "Weights only" in str(e) or "Unsupported global" in str(e):
            raise ConvertError(f"checkpoint {ckpt} holds Python objects besides tensors ({first}); MMEngine's stock "
                               "CheckpointHook pickles its logging state this way. If this file is from your own "
                               "training run, pass --trust-checkpoint to load it in full (never for files from "
                               "others: unpickling can run code).") from None
        raise ConvertError(f"cannot read checkpoint {ckpt}: {type(e).__name__}: {first}. A half-written file? Use "
                           "another one (or `latest`).") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvertError(f"checkpoint {ckpt} holds no state_dict of tensors: not an XTuner training checkpoint.")
    return obj


# ---------------------------------------------------------------------------------------------------------
# 4. training-time names -> official names

LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)\.(?P<adapter>[^.]+)\.weight$")
UNSUPPORTED_LORA = ("lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B")


def official_name(key: str) -> tuple[str, str | None]:
    """``(official tensor name, "A"|"B"|None)`` for a training-time key.

    ``model.language_model.base_model.model.model.layers.0.attention.wqkv.lora_A.default.weight``
    -> ``("language_model.model.layers.0.attention.wqkv.weight", "A")``; ``model.mlp1.1.bias`` -> ``("mlp1.1.bias", None)``.
    """
    name = key[len("model."):] if key.startswith("model.") else key
    for part in PARTS:  # PEFT's wrapper: <part>.base_model.model.<rest>
        if name.startswith(f"{part}.base_model.model."):
            name = part + "." + name[len(f"{part}.base_model.model."):]
    m = LORA_KEY.match(name)
    if m:
        return f"{m['module']}.weight", m["which"]
    name = name.replace(".base_layer.", ".")
    name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)
    return name, None


@dataclass
class TrainedWeights:
    lora: dict[str, dict[str, torch.Tensor]]  # official weight name -> {"A": (r, in), "B": (out, r)}
    full: dict[str, torch.Tensor]  # official name -> trained tensor (projector, fully trained parts)
    keys: dict[str, str]  # "<official>:A|B|full" -> training-time key (for messages)


def split_trained_state(state: dict[str, torch.Tensor], ckpt: Path) -> TrainedWeights:
    unsupported = [k for k in state if any(u in k for u in UNSUPPORTED_LORA)]
    if unsupported:
        raise ConvertError(f"{ckpt}: {len(unsupported)} tensors of a LoRA variant this tool does not merge "
                           f"(DoRA or LoRA on embeddings), e.g. {unsupported[0]!r}. Train plain LoRA on linear layers.")
    adapters = {m["adapter"] for k in state if (m := LORA_KEY.match(k))}
    if len(adapters) > 1:
        raise ConvertError(f"{ckpt}: LoRA weights of several adapters ({', '.join(sorted(adapters))}); expected "
                           "XTuner's single 'default' adapter.")
    lora: dict[str, dict[str, torch.Tensor]] = {}
    full: dict[str, torch.Tensor] = {}
    keys: dict[str, str] = {}
    for key, tensor in state.items():
        if ".original_module." in key:
            continue
        name, which = official_name(key)
        if which:
            lora.setdefault(name, {})[which] = tensor
        else:
            full[name] = tensor
        keys[f"{name}:{which or 'full'}"] = key
    return TrainedWeights(lora, full, keys)


# ---------------------------------------------------------------------------------------------------------
# 5. what the config says was trained, and whether the checkpoint agrees


@dataclass
class LoraTarget:
    part: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    scaling: float


@dataclass
class MergePlan:
    base_dir: Path
    base_shapes: dict[str, tuple[int, ...]]
    lora: dict[str, LoraTarget]  # official weight name -> what the config's LoRA puts there
    targets: dict[str, list[str]]  # part -> target module names PEFT was given
    trained_parts: dict[str, str]  # vision_model / mlp1 / language_model -> frozen | LoRA | full


def build_meta_model(model_dir: Path):
    """The InternVL2 model of ``model_dir``'s config.json with its parameters on the meta device (names and
    shapes, no memory), built by the checkpoint's own code. Only parameters go to meta (accelerate's
    ``init_empty_weights``), not every tensor: OpenGVLab's InternViT calls ``.item()`` on a ``torch.linspace``
    in ``__init__``, which ``with torch.device("meta")`` cannot run."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=True)
    with init_empty_weights(include_buffers=False):
        return AutoModel.from_config(config, trust_remote_code=True)


def lora_targets(module, settings: LoraSettings) -> list[str]:
    """PEFT target modules as XTuner resolves them: ``None`` means every linear layer of the part."""
    if settings.targets is not None:
        return list(settings.targets) if not isinstance(settings.targets, str) else settings.targets
    from xtuner.model.utils import find_all_linear_names

    return sorted(find_all_linear_names(module))


def inject_lora(model, run: Run) -> dict[str, list[str]]:
    """Add the run's LoRA layers (PEFT, adapter 'default') to ``model`` in place; return the targets used."""
    from peft import inject_adapter_in_model

    targets = {}
    for part in PARTS:
        settings = run.lora(part)
        if settings is None:
            continue
        module = getattr(model, part)
        targets[part] = lora_targets(module, settings)
        inject_adapter_in_model(settings.peft_config(targets[part]), module)
    return targets


def plan_merge(run: Run, base_dir: Path) -> MergePlan:
    """Which base tensors the config's LoRA wraps (shapes and scaling from PEFT itself) and which parts were
    trained in full, from the model built on the meta device."""
    from peft.tuners.lora import LoraLayer

    model = build_meta_model(base_dir)
    targets = inject_lora(model, run)
    lora: dict[str, LoraTarget] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            if "default" in getattr(module, "lora_magnitude_vector", {}):
                raise ConvertError(f"{run.config_path}: use_dora=True; this tool merges plain LoRA only.")
            part = name.split(".", 1)[0]
            lora[f"{name}.weight"] = LoraTarget(part, tuple(module.lora_A["default"].weight.shape),
                                                tuple(module.lora_B["default"].weight.shape),
                                                float(module.scaling["default"]))
    parts = {}
    for part, frozen in (("vision_model", run.freeze_vit), ("language_model", run.freeze_llm)):
        parts[part] = "LoRA" if run.lora(part) else "frozen" if frozen else "full"
    parts["mlp1"] = "full"
    del model
    return MergePlan(base_dir, base_tensor_shapes(base_dir), lora, targets,
                     {k: parts[k] for k in ("vision_model", "mlp1", "language_model")})


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_matches(trained: TrainedWeights, plan: MergePlan, run: Run, ckpt: Path) -> None:
    """Raise ConvertError naming every key where checkpoint and config (+ base model) disagree."""
    missing, unexpected, shapes = [], [], []
    for name, target in plan.lora.items():
        got = trained.lora.get(name, {})
        for which, want in (("A", target.a_shape), ("B", target.b_shape)):
            if which not in got:
                missing.append(f"{name[: -len('.weight')]}.lora_{which}")
            elif tuple(got[which].shape) != want:
                shapes.append(f"{trained.keys[f'{name}:{which}']}: {tuple(got[which].shape)} in the checkpoint, "
                              f"{want} expected")
    for name in trained.lora:
        if name not in plan.lora:
            for which in sorted(trained.lora[name]):
                unexpected.append(trained.keys[f"{name}:{which}"])
    for name, tensor in trained.full.items():
        if name not in plan.base_shapes:
            unexpected.append(trained.keys[f"{name}:full"])
        elif tuple(tensor.shape) != plan.base_shapes[name]:
            shapes.append(f"{trained.keys[f'{name}:full']}: {tuple(tensor.shape)} in the checkpoint, "
                          f"{plan.base_shapes[name]} in the base model")
        elif name in plan.lora:
            unexpected.append(f"{trained.keys[f'{name}:full']} (a full copy of a LoRA-wrapped weight)")
    for prefix, status in plan.trained_parts.items():
        if status == "full":
            expected = [n for n in plan.base_shapes if n.startswith(prefix + ".")]
            missing += [n for n in expected if n not in trained.full]
    if not (missing or unexpected or shapes):
        return
    lines = [f"checkpoint {ckpt} does not match config {run.config_path} with base model {plan.base_dir}:"]
    if missing:
        lines.append(f"  the config expects {len(missing)} tensors the checkpoint lacks: {_listing(missing)}")
    if unexpected:
        lines.append(f"  the checkpoint has {len(unexpected)} tensors the config does not train: {_listing(unexpected)}")
    if shapes:
        lines.append(f"  {len(shapes)} shapes differ: {_listing(shapes, 5)}")
    saved = sorted(ckpt.parent.glob("*.py"))
    hint = f" (the work dir keeps a copy of the config it was trained with: {saved[0]})" if saved else ""
    lines.append(f"Fix: pass the config this checkpoint was trained with{hint}, with the same base model "
                 "(FOODIE_MODEL / --base-model) and the same LoRA settings (r, target_modules).")
    raise ConvertError("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------
# 6. streaming merge


def parse_size(text: str | int) -> int:
    """'2GB' -> 2*10**9, '500MiB' -> 500*2**20, '1024' -> 1024 bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", str(text), re.I)
    if not m:
        raise ConvertError(f"--max-shard-size {text!r}: expected a size like 2GB, 500MB or 1GiB.")
    unit = m[2].upper().rstrip("B")
    base = 1024 if unit.endswith("I") else 1000
    power = "KMGT".find(unit[:1]) + 1 if unit else 0
    return int(float(m[1]) * base ** power)


SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                      torch.bool: "BOOL"}
FLOAT_CODES = ("F16", "BF16", "F32", "F64")


@dataclass
class ShardPlan:
    file: str
    tensors: list[tuple[str, str, tuple[int, ...]]]  # (name, safetensors dtype code, shape), in writing order

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(code, shape) for _, code, shape in self.tensors)


def _nbytes(code: str, shape: tuple[int, ...]) -> int:
    size = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}.get(code, 1)
    return math.prod(shape) * size


def plan_shards(layout: list[tuple[str, str, tuple[int, ...]]], max_bytes: int) -> list[ShardPlan]:
    """Split the output tensors, in order, into shards of at most ``max_bytes`` (a bigger tensor gets its own);
    one shard is ``model.safetensors``, several are ``model-0000i-of-0000n.safetensors`` + an index."""
    groups, size = [[]], 0
    for entry in layout:
        nbytes = _nbytes(entry[1], entry[2])
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += nbytes
    n = len(groups)
    names = [WEIGHTS_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    return [ShardPlan(name, group) for name, group in zip(names, groups)]


class SafetensorsStreamWriter:
    """Writes one safetensors file tensor by tensor: the header is laid out beforehand from the planned names,
    dtypes and shapes, so no tensor has to wait in memory for the others (``safetensors.torch.save_file``
    needs the whole shard in memory, plus a bytes copy of it)."""

    def __init__(self, path: Path, plan: ShardPlan):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, code, shape in plan.tensors:
            nbytes = _nbytes(code, shape)
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self.expected = list(plan.tensors)
        self.file = open(path, "wb")
        self.file.write(len(raw).to_bytes(8, "little") + raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want = self.expected.pop(0)
        got = (name, SAFETENSORS_DTYPES.get(tensor.dtype), tuple(tensor.shape))
        if got != want:
            raise RuntimeError(f"safetensors writer: expected {want}, got {got}")
        self.file.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)

    def close(self) -> None:
        self.file.close()
        if self.expected:
            raise RuntimeError(f"safetensors writer: {len(self.expected)} tensors were not written")


@torch.no_grad()
def merge_lora_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
                      dtype: torch.dtype) -> torch.Tensor:
    """``W + scaling * B @ A`` computed in float32, returned in ``dtype``."""
    merged = weight.to(torch.float32, copy=True)
    merged.addmm_(b.to(torch.float32), a.to(torch.float32), alpha=scaling)
    return merged.to(dtype)


def output_layout(plan: MergePlan, dtype: torch.dtype) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype code, shape) of every output tensor, in the base checkpoint's order; floating-point
    tensors in ``dtype``, others (if any) as they are."""
    from safetensors import safe_open

    code = SAFETENSORS_DTYPES[dtype]
    layout = []
    for path in base_weight_files(plan.base_dir):
        with safe_open(str(path), framework="pt") as st:
            for name in st.keys():
                sl = st.get_slice(name)
                layout.append((name, code if sl.get_dtype() in FLOAT_CODES else sl.get_dtype(), tuple(sl.get_shape())))
    return layout


@torch.no_grad()
def write_merged_weights(plan: MergePlan, trained: TrainedWeights, out_dir: Path, dtype: torch.dtype,
                         max_shard_bytes: int, progress: bool = True) -> dict:
    """Read the base tensors one at a time (memory-mapped), merge LoRA into the wrapped ones, put the trained
    ones in place, and stream each straight into its output shard: about one tensor in memory at a time."""
    from safetensors import safe_open
    from tqdm import tqdm

    shards = plan_shards(output_layout(plan, dtype), max_shard_bytes)
    where = {name: i for i, shard in enumerate(shards) for name, _, _ in shard.tensors}
    writers = [SafetensorsStreamWriter(out_dir / shard.file, shard) for shard in shards]
    counts = {"merged": 0, "replaced": 0, "copied": 0}
    total = sum(shard.nbytes for shard in shards)
    bar = tqdm(total=total, desc="merge", unit="B", unit_scale=True, disable=not progress, dynamic_ncols=True)
    try:
        for path in base_weight_files(plan.base_dir):
            with safe_open(str(path), framework="pt") as st:
                for name in st.keys():
                    if name in plan.lora:
                        pair = trained.lora[name]
                        tensor = merge_lora_weight(st.get_tensor(name), pair["A"], pair["B"],
                                                   plan.lora[name].scaling, dtype)
                        counts["merged"] += 1
                    elif name in trained.full:
                        tensor = trained.full[name].to(dtype)
                        counts["replaced"] += 1
                    else:
                        tensor = st.get_tensor(name)
                        tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
                        counts["copied"] += 1
                    writers[where[name]].write(name, tensor)
                    bar.update(tensor.numel() * tensor.element_size())
                    del tensor
    finally:
        for w in writers:
            w.file.close()
        bar.close()
    for w in writers:
        w.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {name: shard.file for shard in shards for name, _, _ in shard.tensors}}
        (out_dir / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    counts["files"] = [shard.file for shard in shards]
    counts["bytes"] = total
    return counts


# ---------------------------------------------------------------------------------------------------------
# 7. the rest of the folder


def write_config(base_dir: Path, out_dir: Path, dtype: torch.dtype, max_dynamic_patch: int | None = None) -> None:
    """The base config.json with torch_dtype set to the saved dtype (top level and both sub-configs) and,
    when the training config set one, the tile budget it trained with (``max_dynamic_patch``): the demo
    and evaluation read it from the checkpoint, so the merged model is served as it was trained."""
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    if max_dynamic_patch is not None:
        config["max_dynamic_patch"] = int(max_dynamic_patch)
    name = str(dtype).replace("torch.", "")
    config["torch_dtype"] = name
    for sub in ("vision_config", "llm_config"):
        if isinstance(config.get(sub), dict):
            config[sub]["torch_dtype"] = name
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def copy_support_files(base_dir: Path, out_dir: Path) -> list[str]:
    """Remote code (*.py), tokenizer and generation config from the base checkpoint."""
    copied = []
    for src in sorted(base_dir.iterdir()):
        if src.is_file() and (src.suffix == ".py" or src.name in COPIED_FILES):
            shutil.copyfile(src, out_dir / src.name)
            copied.append(src.name)
    if not any((out_dir / f).is_file() for f in TOKENIZER_VOCAB) or not (out_dir / "tokenizer_config.json").is_file():
        raise ConvertError(f"base model {base_dir} has no tokenizer files (tokenizer_config.json and one of "
                           f"{', '.join(TOKENIZER_VOCAB)}): copy them from the original InternVL2 release.")
    if not (out_dir / "generation_config.json").is_file():
        (out_dir / "generation_config.json").write_text(json.dumps(default_generation_config(out_dir), indent=2)
                                                         + "\n", encoding="utf-8")
        copied.append("generation_config.json (written: the base has none)")
    return copied


def default_generation_config(out_dir: Path) -> dict:
    """Stop at </s> and <|im_end|> (the chat template's turn end), as InternVL2-2B's chat() does."""
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8")).get("llm_config", {})
    tok = json.loads((out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    im_end = [int(i) for i, t in (tok.get("added_tokens_decoder") or {}).items() if t.get("content") == "<|im_end|>"]
    eos = config.get("eos_token_id", 2)
    return {"bos_token_id": config.get("bos_token_id", 1), "eos_token_id": [eos] + im_end,
            "pad_token_id": config.get("pad_token_id", eos)}


def describe_data(run: Run) -> dict:
    """What the run trained on: process_food's summary.json as tools/train.py kept it in the work dir
    (foodie.terms.DATA_SOURCE_FILE), else the one beside the training data now."""
    from foodie.terms import DATA_SOURCE_FILE, describe_source

    if not run.data_path:
        return {}
    data: dict = {"path": _display(Path(run.data_path))}
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
    tasks = summary.get("options", {}).get("tasks") or list(summary.get("items", {}))
    items = summary.get("items", {})
    data.update(source, train_questions=summary.get("train_samples"),
                held_out=sum(int(items.get(t, {}).get("held_out", 0)) for t in tasks))
    data["source"] = data.pop("root")
    return data


def _display(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(paths.REPO_ROOT))
    except ValueError:
        return str(path)


def provenance(run: Run, plan: MergePlan, ckpt: Path, dtype: torch.dtype, verification: dict | None,
               allow_qlora: bool) -> dict:
    note: dict = {
        "base_model": run.model_path,
        "base_model_path": str(plan.base_dir),
        "config": _display(run.config_path),
        "config_summary": run.summary,
        "checkpoint": _display(ckpt),
        "iteration": checkpoint_iter(ckpt),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for part, key in (("language_model", "lora"), ("vision_model", "vision_lora")):
        settings = run.lora(part)
        if settings:
            targets = plan.targets.get(part, [])
            note[key] = {"r": settings.r, "alpha": settings.alpha, "dropout": settings.dropout,
                         "targets": (f"all {'LLM' if part == 'language_model' else 'ViT'} linear layers "
                                     f"({', '.join(targets)})" if settings.targets is None else ", ".join(targets))}
    note["data"] = describe_data(run)
    note["trained"] = plan.trained_parts
    note["dtype"] = str(dtype).replace("torch.", "")
    if run.quantized and allow_qlora:
        note["qlora"] = "trained against 4-bit base weights; LoRA merged into the original bf16 base weights"
    note["verification"] = verification or "skipped (--no-verify)"
    note["tool"] = "internvl-foodie tools/convert_to_official.py"
    return note


# ---------------------------------------------------------------------------------------------------------
# 8. verification


def probe_image():
    """A fixed 448x336 picture (colour gradients and a disc): deterministic, no file needed."""
    import numpy as np
    from PIL import Image

    h, w = 336, 448
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, ((x - w / 2) ** 2 + (y - h / 2) ** 2 < 80 ** 2) * 200 + 30], -1)
    return Image.fromarray(rgb.astype("uint8"), "RGB")


def probe_inputs(model_dir: Path):
    """Tokenised probe (chat format, one tile of the checkpoint's size) for the models of ``model_dir``."""
    from transformers import AutoTokenizer

    from foodie.image_tiling import load_image

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    spec = ModelSpec.from_checkpoint(model_dir)
    pixel_values = load_image(probe_image(), input_size=spec.tile_size, max_num=1)
    prompt = ("<|im_start|>user\n" + spec.image_tokens(pixel_values.shape[0])
              + "\n图片中的食物是什么菜？请说出菜名和菜系。<|im_end|>\n<|im_start|>assistant\n")
    enc = tokenizer(prompt, return_tensors="pt")
    return tokenizer, pixel_values, enc


@torch.no_grad()
def probe_logits(model, tokenizer, pixel_values, enc) -> torch.Tensor:
    model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    out = model(pixel_values=pixel_values.to(torch.float32), input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                image_flags=torch.ones(pixel_values.shape[0], 1, dtype=torch.long), return_dict=True)
    return out.logits.float()


def load_model(model_dir: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir), torch_dtype=torch.float32, trust_remote_code=True,
                                     low_cpu_mem_usage=True).eval()


def unmerged_model(run: Run, plan: MergePlan, trained: TrainedWeights):
    """Base model + the run's LoRA as PEFT layers (not merged) + the trained tensors, in float32."""
    model = load_model(plan.base_dir)
    inject_lora(model, run)
    state = {}
    for name, pair in trained.lora.items():
        module = name[: -len(".weight")]
        state[f"{module}.lora_A.default.weight"] = pair["A"]
        state[f"{module}.lora_B.default.weight"] = pair["B"]
    state.update(trained.full)
    result = model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    missing_lora = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing_lora:
        raise ConvertError(f"verification: the unmerged model did not take the checkpoint's tensors "
                           f"(unexpected: {_listing(result.unexpected_keys)}; missing: {_listing(missing_lora)}).")
    return model.eval()


def set_adapters(model, enabled: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(enabled)


def default_tolerance(dtype: torch.dtype, scale: float) -> float:
    return RELATIVE_TOLERANCE[str(dtype).replace("torch.", "")] * max(1.0, scale)


def verify_merged(out_dir: Path, run: Run, plan: MergePlan, trained: TrainedWeights, dtype: torch.dtype,
                  tolerance: float | None = None, log=print) -> dict:
    """Compare logits of the merged folder (AutoModel, trust_remote_code) with the unmerged base + LoRA on a
    probe image + question. Both run in float32, one model in memory at a time. Raises ConvertError above
    the tolerance (default: RELATIVE_TOLERANCE[dtype] x the largest |logit| of the unmerged model, at least 1)."""
    t0 = time.time()
    tokenizer, pixel_values, enc = probe_inputs(out_dir)
    log(f"[verify] probe: one {pixel_values.shape[-1]}px tile + question, {enc['input_ids'].shape[1]} tokens")

    log("[verify] 1/2 base model + LoRA, unmerged (float32): loading, probing with and without the adapters")
    reference = unmerged_model(run, plan, trained)
    ref = probe_logits(reference, tokenizer, pixel_values, enc)
    set_adapters(reference, False)
    without_lora = probe_logits(reference, tokenizer, pixel_values, enc)
    set_adapters(reference, True)
    del reference
    gc.collect()

    log("[verify] 2/2 merged folder through AutoModel (trust_remote_code, float32): loading, probing")
    merged = load_model(out_dir)
    got = probe_logits(merged, tokenizer, pixel_values, enc)
    del merged
    gc.collect()

    scale = float(ref.abs().max())
    diff = float((got - ref).abs().max())
    lora_effect = float((ref - without_lora).abs().max())
    top1 = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    tol = default_tolerance(dtype, scale) if tolerance is None else float(tolerance)
    result = {"max_abs_logit_diff": diff, "tolerance": tol, "max_abs_logit": scale, "lora_effect": lora_effect,
              "top1_agreement": top1, "probe_tokens": int(enc["input_ids"].shape[1]),
              "seconds": round(time.time() - t0, 1)}
    log(f"[verify] max |logits(merged) - logits(base+LoRA, unmerged)| = {diff:.3g} (tolerance {tol:.3g} for "
        f"{str(dtype).replace('torch.', '')}; logits up to {scale:.3g}); LoRA changes logits by up to "
        f"{lora_effect:.3g}; same top-1 token at {top1:.1%} of positions")
    if math.isfinite(diff) and diff <= tol and diff > 0.5 * lora_effect:
        log(f"[verify] warning: rounding to {str(dtype).replace('torch.', '')} undoes much of what training changed "
            f"(difference {diff:.3g} vs LoRA effect {lora_effect:.3g}; an early or lightly trained checkpoint?). "
            "--dtype float32 keeps small LoRA updates.")
    if not math.isfinite(diff) or diff > tol:
        raise ConvertError(f"verification failed: the merged model's logits differ from the unmerged base + LoRA "
                           f"by up to {diff:.3g} (tolerance {tol:.3g}). The merge is wrong for this checkpoint; "
                           "nothing was written. Check the config's LoRA settings (r, lora_alpha, use_rslora) "
                           "match the run, or try --dtype float32 to rule out rounding; --tolerance X overrides.")
    return result


# ---------------------------------------------------------------------------------------------------------
# 9. the whole conversion


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies inside b."""
    try:
        a.relative_to(b)
        return True
    except ValueError:
        return False


def check_save_dir(save_dir: Path, ckpt: Path, base_dir: Path, force: bool) -> None:
    save = save_dir.resolve()
    for other, what in ((ckpt, "the checkpoint"), (base_dir, "the base model")):
        other = other.resolve()
        if _inside(save, other) or _inside(other, save):
            relation = ("is" if save == other else "is inside" if _inside(save, other) else "contains")
            raise ConvertError(f"SAVE_DIR {save_dir} {relation} {what} ({other}); writing there could destroy it. "
                               "Choose a separate folder.")
    if "." in save_dir.name:
        raise ConvertError(f"SAVE_DIR {save_dir}: transformers imports a checkpoint's remote code as a Python package "
                           f"named after its folder, and the '.' in {save_dir.name!r} breaks that import (`No module "
                           f"named 'transformers_modules.{save_dir.name.split('.')[0]}'`): AutoModel could not load "
                           f"the result. Choose a name without dots, e.g. {save_dir.name.replace('.', '-')!r}.")
    if save_dir.exists() and not save_dir.is_dir():
        raise ConvertError(f"SAVE_DIR {save_dir} exists and is a file; choose a folder name.")
    if save_dir.is_dir() and any(save_dir.iterdir()) and not force:
        raise ConvertError(f"SAVE_DIR {save_dir} already exists and is not empty: pass --force to replace it (it "
                           "stays untouched until the new folder is complete), or choose another folder.")


def resolve_dtype(name: str, base_dir: Path) -> torch.dtype:
    if name == "auto":
        name = json.loads((base_dir / "config.json").read_text(encoding="utf-8")).get("torch_dtype") or "bfloat16"
    if name not in DTYPES:
        raise ConvertError(f"--dtype {name!r}: choose auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


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
            progress: bool = True, log=print) -> ConvertResult:
    """Merge the run's checkpoint into an official-format InternVL2 folder at ``save_dir`` (atomically)."""
    t0 = time.time()
    save_dir = Path(save_dir)
    if str(checkpoint) != "latest" and not Path(checkpoint).exists():  # before the (slow) config read
        raise ConvertError(f"checkpoint not found: {checkpoint}. Pass an iter_N.pth from the run's work dir or "
                           "`latest`.")
    run = read_run(config, work_dir)
    if run.quantized and not allow_qlora:
        raise ConvertError(qlora_message(run))
    base_dir = resolve_base_model(base_model or run.model_path, None if base_model else run)
    if base_model:  # the provenance names the model actually merged into
        run.model_path = str(base_model)
    ckpt = resolve_checkpoint(checkpoint, run)
    check_save_dir(save_dir, ckpt, base_dir, force)
    out_dtype = resolve_dtype(dtype, base_dir)
    max_bytes = parse_size(max_shard_size)
    log(f"[convert] config {run.config_path}\n[convert] base model {base_dir}\n[convert] checkpoint {ckpt}")

    trained = split_trained_state(load_trained_state(ckpt, trust_checkpoint), ckpt)
    plan = plan_merge(run, base_dir)
    check_matches(trained, plan, run, ckpt)
    log(f"[convert] merging LoRA into {len(plan.lora)} weights ({', '.join(f'{k}: {v}' for k, v in plan.trained_parts.items())}); "
        f"saving {str(out_dtype).replace('torch.', '')}")
    seconds = {"prepare": round(time.time() - t0, 1)}

    with atomic_path(save_dir, is_dir=True) as staging:
        # Built under staging/<SAVE_DIR name>: transformers imports remote code under the folder's name,
        # and the hidden staging name (".x.tmp-...") is not a valid module name.
        out = staging / save_dir.name
        out.mkdir()
        t1 = time.time()
        write_config(base_dir, out, out_dtype, run.summary.get("max_dynamic_patch"))
        copy_support_files(base_dir, out)
        counts = write_merged_weights(plan, trained, out, out_dtype, max_bytes, progress)
        seconds["merge"] = round(time.time() - t1, 1)
        verification = None
        if verify:
            t2 = time.time()
            verification = verify_merged(out, run, plan, trained, out_dtype, tolerance, log)
            seconds["verify"] = round(time.time() - t2, 1)
        write_json(out / PROVENANCE_FILE, provenance(run, plan, ckpt, out_dtype, verification, allow_qlora))
        moving = staging / f".{save_dir.name}.moving"
        os.replace(out, moving)
        for f in moving.iterdir():
            os.replace(f, staging / f.name)
        moving.rmdir()
        staging.chmod(0o755)
        for f in staging.iterdir():
            f.chmod(0o644)
    files = sorted(p.name for p in save_dir.iterdir())
    seconds["total"] = round(time.time() - t0, 1)
    return ConvertResult(save_dir, ckpt, files, counts, verification, seconds)
