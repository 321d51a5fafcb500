"""What an InternVL2 checkpoint is, read from its config.json as the official model code reads it: the one home of
the facts every stage needs. A merged folder's config carries the tile budget its run trained with (foodie.merge).

    spec = ModelSpec.from_checkpoint("work/tiny-internvl2")
    spec.tile_size, spec.max_tiles, spec.tokens_per_tile    # 224, 12, 64 (InternVL2-2B: 448, 12, 256)
    spec.template, spec.lmdeploy_template, spec.base_model  # 'internlm2-chat', 'internvl2-internlm2', None
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from foodie import image_tiling

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
    tile_size: int  # force_image_size, else the ViT's image_size
    patch_size: int
    downsample_ratio: float  # pixel shuffle
    max_tiles: int  # tile budget of one image, thumbnail not counted (1 without dynamic_image_size)
    min_tiles: int
    use_thumbnail: bool
    template: str  # the conversation template of the checkpoint's conversation.py
    base_model: str | None  # hub id the weights came from; None when nothing records it

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> ModelSpec:
        path = Path(path)
        config = read_json(path / "config.json", "an InternVL2 checkpoint folder in the official format")
        try:
            vision, dynamic = config["vision_config"], config.get("dynamic_image_size", True)
            return cls(path=path, tile_size=int(config.get("force_image_size") or vision["image_size"]),
                       patch_size=int(vision["patch_size"]),
                       downsample_ratio=float(config.get("downsample_ratio", 0.5)),
                       max_tiles=int(config.get("max_dynamic_patch", 12)) if dynamic else 1,
                       min_tiles=int(config.get("min_dynamic_patch", 1)) if dynamic else 1,
                       use_thumbnail=bool(config.get("use_thumbnail", True)), template=str(config["template"]),
                       base_model=base_model_of(path, config))
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(f"{path / 'config.json'}: cannot read {e} (tile side force_image_size or "
                            f"vision_config.image_size, vision_config.patch_size, template). Point at an InternVL2 "
                            f"checkpoint folder in the official format") from None

    @property
    def tokens_per_tile(self) -> int:
        return image_tiling.tokens_per_tile(self.tile_size, self.patch_size, self.downsample_ratio)

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
        """Tiles the model sees of a width x height image (thumbnail included) within a tile budget."""
        budget = max_tiles or self.max_tiles
        return image_tiling.num_tiles(width, height, min_num=min(self.min_tiles, budget), max_num=budget,
                                      image_size=self.tile_size, use_thumbnail=self.use_thumbnail)

    def conversation(self):
        """A fresh conversation of the checkpoint's own template (its conversation.py), system message set."""
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        return get_class_from_dynamic_module("conversation.get_conv_template", str(self.path))(self.template)

    @property
    def system_message(self) -> str:
        return self.conversation().system_message


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

    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value if value.count("/") == 1 and not os.path.exists(value) else None


def base_model_of(path: Path, config: dict) -> str | None:
    """The hub id the folder's weights came from: for a merged folder, the base its provenance note records (a local
    base folder is asked in turn); else the hub cache folder it lies in, or config.json's ``_name_or_path``. None
    when nothing records it (a card must then not claim one)."""
    if not (path / PROVENANCE_FILE).is_file():
        cached = HF_CACHE_FOLDER.search(str(path.resolve()))
        return f"{cached[1]}/{cached[2]}" if cached else hub_id(config.get("_name_or_path"))
    recorded = read_json(path / PROVENANCE_FILE, "the provenance note foodie.merge writes")
    if hub_id(recorded.get("base_model")):
        return recorded["base_model"]
    for base in (recorded.get("base_model"), recorded.get("base_model_path")):
        if isinstance(base, str) and (Path(base) / "config.json").is_file() and Path(base).resolve() != path.resolve():
            found = ModelSpec.from_checkpoint(base).base_model
            if found:
                return found
    return None
