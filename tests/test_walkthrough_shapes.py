"""docs/examples/walkthrough_shapes.py prints the tensor shapes the model really computes (ViT -> pixel shuffle -> mlp1 ->
LLM input), consistent with the checkpoint's config, and refuses a folder that is not a checkpoint."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def load_tool():
    spec = importlib.util.spec_from_file_location("walkthrough_shapes", REPO / "docs" / "examples" / "walkthrough_shapes.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["walkthrough_shapes"] = mod
    spec.loader.exec_module(mod)
    return mod


walk = load_tool()


def shapes(out: str) -> dict[str, list[int]]:
    return {m.group(1).strip(): [int(v) for v in m.group(2).split(",")]
            for m in re.finditer(r"^([\w \[\]]+?)\s+\[([\d, ]+)\]", out, re.M)}


def test_shapes_follow_the_config(tiny_model_dir, tmp_path, capsys):
    cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    vit, llm = cfg["vision_config"]["hidden_size"], cfg["llm_config"]["hidden_size"]
    tile = cfg["force_image_size"]
    side = tile // cfg["vision_config"]["patch_size"]  # patches per tile side (InternVL2-2B: 448 / 14 = 32)
    tokens = (side // 2) ** 2  # after the 0.5 pixel shuffle (InternVL2-2B: 256)
    img = tmp_path / "wide.png"
    Image.new("RGB", (1600, 400), (200, 120, 40)).save(img)  # aspect 4 -> 4x1 grid + thumbnail with 4 tiles max
    assert walk.main(["--model", str(tiny_model_dir), "--image", str(img), "--max-tiles", "4"]) == 0
    out = capsys.readouterr().out
    s = shapes(out)
    assert s["pixel_values"] == [5, 3, tile, tile]
    assert s["InternViT output"] == [5, 1 + side * side, vit]
    assert s["as a grid"] == [5, side, side, vit]
    assert s["pixel_shuffle"] == [5, side // 2, side // 2, 4 * vit]
    assert s["flatten"] == [5, tokens, 4 * vit]
    assert s["mlp1"] == [5, tokens, llm]
    n_prompt = s["input_ids"][1]
    assert s["inputs_embeds"] == [1, n_prompt, llm]
    assert s["logits"] == [1, n_prompt, cfg["llm_config"]["vocab_size"]]
    assert f"{5 * tokens} of them are <IMG_CONTEXT>" in out
    assert "gives the same tensor as the steps above: True" in out


def test_refuses_a_folder_without_config(tmp_path):
    with pytest.raises(SystemExit) as e:
        walk.main(["--model", str(tmp_path)])
    assert "no config.json" in str(e.value)
