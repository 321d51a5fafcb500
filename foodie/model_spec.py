"""What an InternVL2 checkpoint is, read from its folder: the one home of the facts every stage needs.

    spec = ModelSpec.from_checkpoint("work/tiny-internvl2")
    spec.tile_size, spec.max_tiles, spec.tokens_per_tile    # 224, 12, 64 (InternVL2-2B: 448, 12, 256)
    spec.template, spec.lmdeploy_template, spec.base_model  # 'internlm2-chat', 'internvl2-internlm2', None

Read as the official model code reads config.json (tile side ``force_image_size``, else the ViT's ``image_size``;
no ``dynamic_image_size``: one tile). A merged folder's config.json carries the tile budget its run trained with
(foodie.merge), so every stage that asks the spec uses that budget without a flag.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

# The image markers of the official chat(): <img> + <IMG_CONTEXT> x tokens per tile x tiles + </img>.
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
PROVENANCE_FILE = "foodie_provenance.json"  # written by foodie.merge into a merged folder
# config.json ``template`` -> LMDeploy's chat template of that InternVL2 family (lmdeploy/model.py)
LMDEPLOY_TEMPLATES = {"internlm2-chat": "internvl2-internlm2", "phi3-chat": "internvl2-phi3",
                      "Hermes-2": "internvl-zh-hermes2"}
HF_CACHE_FOLDER = re.compile(r"models--([\w.-]+)--([\w.-]+)")  # the hub cache's layout: models--OWNER--NAME


class SpecError(ValueError):
    """A folder is not an InternVL2 checkpoint the project can read; the message names the file and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    tile_size: int  # pixels per tile side
    patch_size: int  # ViT patch side
    downsample_ratio: float  # pixel shuffle
    max_tiles: int  # tile budget of one image (thumbnail not counted)
    min_tiles: int
    use_thumbnail: bool
    template: str  # the conversation template of the checkpoint's conversation.py
    base_model: str | None  # hub id the weights came from; None when nothing records it

    @property
    def tokens_per_tile(self) -> int:
        from foodie.image_tiling import tokens_per_tile
        return tokens_per_tile(self.tile_size, self.patch_size, self.downsample_ratio)

    @property
    def lmdeploy_template(self) -> str:
        if self.template not in LMDEPLOY_TEMPLATES:
            raise SpecError(f"{self.path / 'config.json'}: LMDeploy has no InternVL2 chat template for "
                            f"template {self.template!r}; serve it with --backend transformers")
        return LMDEPLOY_TEMPLATES[self.template]

    def image_tokens(self, tiles: int) -> str:
        """The prompt text standing for one image of ``tiles`` tiles (thumbnail included)."""
        return IMG_START + IMG_CONTEXT * (self.tokens_per_tile * tiles) + IMG_END

    def tiles(self, width: int, height: int, max_tiles: int | None = None) -> int:
        """Tiles the model sees for a width x height image (thumbnail included) within a tile budget."""
        from foodie.image_tiling import num_tiles
        budget = max_tiles or self.max_tiles
        return num_tiles(width, height, min_num=min(self.min_tiles, budget), max_num=budget,
                         image_size=self.tile_size, use_thumbnail=self.use_thumbnail)

    def conversation(self):
        """A fresh conversation of the checkpoint's own template (its conversation.py), system message set."""
        from transformers.dynamic_module_utils import get_class_from_dynamic_module
        get_conv_template = get_class_from_dynamic_module("conversation.get_conv_template", str(self.path))
        return get_conv_template(self.template)

    @property
    def system_message(self) -> str:
        return self.conversation().system_message

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> "ModelSpec":
        path = Path(path)
        config = read_json(path / "config.json", "an InternVL2 checkpoint folder in the official format")
        try:
            vision = config["vision_config"]
            dynamic = config.get("dynamic_image_size", True)
            template = config["template"]
            return cls(path=path, tile_size=int(config.get("force_image_size") or vision["image_size"]),
                       patch_size=int(vision["patch_size"]),
                       downsample_ratio=float(config.get("downsample_ratio", 0.5)),
                       max_tiles=int(config.get("max_dynamic_patch", 12)) if dynamic else 1,
                       min_tiles=int(config.get("min_dynamic_patch", 1)) if dynamic else 1,
                       use_thumbnail=bool(config.get("use_thumbnail", True)), template=str(template),
                       base_model=base_model_of(path, config))
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(f"{path / 'config.json'}: cannot read {e} (tile side force_image_size or "
                            f"vision_config.image_size, vision_config.patch_size, template). Point at an InternVL2 "
                            f"checkpoint folder in the official format") from None


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: not found. Point at {what}") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"{path}: not readable JSON ({e}). Point at {what}") from None


def hub_id(value) -> str | None:
    """``value`` if it is a hub repo id (OWNER/NAME) and not a local path, else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if not isinstance(value, str) or value.count("/") != 1 or os.path.exists(value):
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def base_model_of(path: Path, config: dict) -> str | None:
    """The hub id the folder's weights came from: for a merged folder the base its provenance note records
    (a local base folder is asked in turn); else the hub cache folder it lies in, or config.json's
    ``_name_or_path``. None when nothing records it (a card must then not claim one)."""
    note = path / PROVENANCE_FILE
    if note.is_file():
        recorded = read_json(note, "the provenance note foodie.merge writes")
        if hub_id(recorded.get("base_model")):
            return recorded["base_model"]
        for base in (recorded.get(k) for k in ("base_model", "base_model_path")):
            if isinstance(base, str) and (Path(base) / "config.json").is_file() \
                    and Path(base).resolve() != path.resolve():
                found = ModelSpec.from_checkpoint(base).base_model
                if found:
                    return found
        return None
    cached = HF_CACHE_FOLDER.search(str(path.resolve()))
    return f"{cached[1]}/{cached[2]}" if cached else hub_id(config.get("_name_or_path"))
