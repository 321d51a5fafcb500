"""docs/examples/make_figures.py: the docs' figures are drawn by our code, regenerate with the documented command,
stay small, and show what the code computes (the Q-Former masks, the tile budget, the pixel shuffle)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "docs" / "images"


def load_tool():
    spec = importlib.util.spec_from_file_location("make_figures", REPO / "docs" / "examples" / "make_figures.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_figures"] = mod
    spec.loader.exec_module(mod)
    return mod


figures = load_tool()


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    assert figures.main(["--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_committed_figure_is_what_the_command_draws(regenerated, name):
    made, committed = regenerated / f"{name}.png", IMAGES / f"{name}.png"
    assert committed.is_file(), f"{committed} missing: run python docs/examples/make_figures.py --out docs/images"
    assert made.stat().st_size < 200_000 and committed.stat().st_size < 200_000
    a = np.asarray(Image.open(made).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(committed).convert("RGB"), dtype=np.int16)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 2.0, f"{name}.png is stale: run python docs/examples/make_figures.py --out docs/images"


@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_docs_show_each_figure_and_the_command(name):
    text = "".join((REPO / "docs" / d).read_text(encoding="utf-8") for d in ("multimodal_llm.md", "internvl2.md"))
    assert f"](images/{name}.png)" in text
    assert "python docs/examples/make_figures.py --out docs/images" in text


def test_qformer_masks_follow_blip2():
    """BLIP-2 section 3.2: ITM lets everything see everything; ITG lets text see all queries and earlier text,
    queries never see text; ITC keeps queries and text apart."""
    q, n = figures.N_QUERIES, figures.N_QUERIES + figures.N_TEXT
    itm, itg, itc = (figures.qformer_mask(k) for k in ("ITM", "ITG", "ITC"))
    assert all(all(row) for row in itm)
    for i in range(n):
        for j in range(n):
            query_i, query_j = i < q, j < q
            assert itg[i][j] == (query_j or (not query_i and j <= i))
            assert itc[i][j] == (query_i == query_j)
    with pytest.raises(ValueError):
        figures.qformer_mask("ITX")


def test_only_one_figure(tmp_path):
    assert figures.main(["--out", str(tmp_path), "--only", "pixel_shuffle"]) == 0
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["pixel_shuffle.png"]
