"""foodie.model_spec: what an InternVL2 checkpoint is, read from its folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from foodie.model_spec import IMG_CONTEXT, PROVENANCE_FILE, ModelSpec, SpecError

# The top of config.json of the released InternVL2-2B and -8B (the parts the spec reads).
RELEASED = {
    "InternVL2-2B": dict(force_image_size=448, downsample_ratio=0.5, dynamic_image_size=True, max_dynamic_patch=12,
                         min_dynamic_patch=1, use_thumbnail=True, template="internlm2-chat",
                         vision_config=dict(image_size=448, patch_size=14),
                         llm_config=dict(architectures=["InternLM2ForCausalLM"], hidden_size=2048)),
    "InternVL2-8B": dict(force_image_size=448, downsample_ratio=0.5, dynamic_image_size=True, max_dynamic_patch=12,
                         min_dynamic_patch=1, use_thumbnail=True, template="internlm2-chat",
                         vision_config=dict(image_size=448, patch_size=14),
                         llm_config=dict(architectures=["InternLM2ForCausalLM"], hidden_size=4096)),
}


def folder(root: Path, config: dict, provenance: dict | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    if provenance is not None:
        (root / PROVENANCE_FILE).write_text(json.dumps(provenance))
    return root


def test_tiny_checkpoint(tiny_model_dir):
    spec = ModelSpec.from_checkpoint(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert (spec.tile_size, spec.max_tiles, spec.min_tiles, spec.use_thumbnail) == (224, 12, 1, True)
    assert spec.tokens_per_tile == 64  # (224/14)^2 * 0.5^2
    assert spec.template == config["template"] == "internlm2-chat"
    assert spec.lmdeploy_template == "internvl2-internlm2"
    assert spec.base_model is None  # built here: it came from no hub repo
    assert spec.image_tokens(2) == "<img>" + IMG_CONTEXT * 128 + "</img>"
    assert spec.tiles(1800, 600) == 13 and spec.tiles(1800, 600, max_tiles=6) == 4  # 6x2, 3x1; + thumbnail
    assert spec.tiles(1800, 600, max_tiles=1) == 1


def test_tiny_checkpoint_system_message_is_its_conversation_templates(tiny_model_dir):
    from transformers import AutoTokenizer

    spec = ModelSpec.from_checkpoint(tiny_model_dir)
    conv = spec.conversation()
    assert spec.system_message and conv.system_message == spec.system_message
    conv.append_message(conv.roles[0], "菜?")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt().startswith(f"<|im_start|>system\n{spec.system_message}<|im_end|>")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, trust_remote_code=True)
    assert tokenizer.convert_tokens_to_ids(IMG_CONTEXT) != tokenizer.unk_token_id  # the marker is one token


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_shapes(tmp_path, name):
    spec = ModelSpec.from_checkpoint(folder(tmp_path / name, RELEASED[name]))
    assert (spec.tile_size, spec.tokens_per_tile, spec.max_tiles) == (448, 256, 12)
    assert spec.lmdeploy_template == "internvl2-internlm2"
    assert spec.tiles(1600, 1200) == 13  # 4x3 grid + thumbnail


def test_the_tile_budget_is_what_config_json_says(tmp_path):
    merged = folder(tmp_path / "merged", dict(RELEASED["InternVL2-2B"], max_dynamic_patch=1))
    assert ModelSpec.from_checkpoint(merged).max_tiles == 1
    fixed = folder(tmp_path / "fixed", dict(RELEASED["InternVL2-2B"], dynamic_image_size=False))
    assert ModelSpec.from_checkpoint(fixed).max_tiles == 1
    no_force = dict(RELEASED["InternVL2-2B"], force_image_size=None, vision_config=dict(image_size=224, patch_size=14))
    assert ModelSpec.from_checkpoint(folder(tmp_path / "vit", no_force)).tile_size == 224


def test_base_model_of_a_merged_8b_is_8b_not_2b(tmp_path):
    """The trap: a card for an 8B run claimed the 2B base whenever provenance held a local path."""
    cache = folder(tmp_path / "hub" / "models--OpenGVLab--InternVL2-8B" / "snapshots" / "abc123",
                   RELEASED["InternVL2-8B"])
    assert ModelSpec.from_checkpoint(cache).base_model == "OpenGVLab/InternVL2-8B"
    merged = folder(tmp_path / "merged", RELEASED["InternVL2-8B"], {"base_model": str(cache)})
    assert ModelSpec.from_checkpoint(merged).base_model == "OpenGVLab/InternVL2-8B"
    by_id = folder(tmp_path / "by-id", RELEASED["InternVL2-8B"], {"base_model": "OpenGVLab/InternVL2-8B"})
    assert ModelSpec.from_checkpoint(by_id).base_model == "OpenGVLab/InternVL2-8B"
    named = folder(tmp_path / "local" / "InternVL2-8B",
                   dict(RELEASED["InternVL2-8B"], _name_or_path="OpenGVLab/InternVL2-8B"))
    merged_named = folder(tmp_path / "merged-named", RELEASED["InternVL2-8B"], {"base_model": str(named)})
    assert ModelSpec.from_checkpoint(merged_named).base_model == "OpenGVLab/InternVL2-8B"
    unknown = folder(tmp_path / "unknown", RELEASED["InternVL2-8B"], {"base_model": str(tmp_path / "gone")})
    assert ModelSpec.from_checkpoint(unknown).base_model is None  # unknown, never a guess


def test_bad_folders_name_the_file(tmp_path):
    with pytest.raises(SpecError, match=r"config.json: not found"):
        ModelSpec.from_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SpecError, match=r"config.json: not readable JSON"):
        ModelSpec.from_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"template": "internlm2-chat"}))
    with pytest.raises(SpecError, match=r"config.json: cannot read 'vision_config'"):
        ModelSpec.from_checkpoint(tmp_path)
    other = folder(tmp_path / "other", dict(RELEASED["InternVL2-2B"], template="vicuna_v1.1"))
    with pytest.raises(SpecError, match="no InternVL2 chat template for template 'vicuna_v1.1'"):
        ModelSpec.from_checkpoint(other).lmdeploy_template
