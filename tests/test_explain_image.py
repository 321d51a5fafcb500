"""docs/examples/explain_image.py: a contact sheet of what InternVL2 sees, for any image a user may try,
with the tile count and token budget the model really uses; bombs and non-images refused clearly."""
from __future__ import annotations

import importlib.util
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foodie import image_tiling as it

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "docs" / "examples" / "explain_image.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("explain_image", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


explain = load_tool()


def run(capsys, *argv):
    rc = explain.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def printed(out: str) -> tuple[int, int]:
    tiles = int(re.search(r"^tiles: (\d+)$", out, re.M).group(1))
    tokens = int(re.search(r"^image tokens: \d+ x \d+ = (\d+) <IMG_CONTEXT>", out, re.M).group(1))
    return tiles, tokens


def photo(path: Path, w: int, h: int) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A tiny file that declares a huge 1-bit image (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_landscape_photo_sheet_and_budget(tmp_path, capsys):
    img = photo(tmp_path / "dish.jpg", 1200, 800)
    out_png = tmp_path / "sheet.png"
    rc, out, _ = run(capsys, img, "--out", out_png)
    assert rc == 0
    # 1200x800 has aspect 1.5: the 3x2 grid, plus the thumbnail = 7 tiles of 256 tokens.
    assert "grid 3x2" in out
    assert printed(out) == (7, 7 * 256)
    assert printed(out)[0] == len(it.load_image(img))
    sheet = Image.open(out_png)
    assert sheet.format == "PNG" and sheet.width >= 3 * 24 and sheet.height > 100
    # The grid lines are drawn in the grid colour on the original.
    assert np.all(np.asarray(sheet.convert("RGB")) == explain.GRID_COLOUR, axis=-1).sum() > 100


def test_max_tiles_changes_grid_and_budget(tmp_path, capsys):
    img = photo(tmp_path / "wide.png", 1600, 400)
    rc, out, _ = run(capsys, img, "--max-tiles", "4", "--out", tmp_path / "a.png")
    assert rc == 0 and "grid 4x1" in out and printed(out) == (5, 5 * 256)
    rc, out, _ = run(capsys, img, "--max-tiles", "1", "--out", tmp_path / "b.png")
    assert rc == 0 and "grid 1x1" in out and printed(out) == (1, 256)  # one tile: no thumbnail
    rc, out, _ = run(capsys, img, "--max-tiles", "4", "--no-thumbnail", "--out", tmp_path / "c.png")
    assert rc == 0 and printed(out) == (4, 4 * 256)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    tmp_path, p = tmp_path_factory.mktemp("odd"), {}
    Image.new("L", (300, 200), 90).save(p.setdefault("grey", tmp_path / "grey.png"))
    Image.new("RGBA", (500, 300), (255, 0, 0, 0)).save(p.setdefault("rgba", tmp_path / "rgba.png"))
    Image.new("P", (64, 640), 3).save(p.setdefault("palette", tmp_path / "palette.png"))
    Image.new("RGB", (1, 1), (9, 9, 9)).save(p.setdefault("one_pixel", tmp_path / "one.png"))
    Image.new("RGB", (10000, 100), (0, 90, 0)).save(p.setdefault("strip", tmp_path / "strip.png"))
    Image.new("CMYK", (120, 90)).save(p.setdefault("cmyk", tmp_path / "cmyk.jpg"))
    Image.fromarray(np.full((50, 70), 40000, dtype=np.uint16)).save(p.setdefault("16bit", tmp_path / "i16.png"))
    return p


@pytest.mark.parametrize("kind", ["grey", "rgba", "palette", "one_pixel", "strip", "cmyk", "16bit"])
def test_odd_images(tmp_path, capsys, odd_images, kind):
    img = odd_images[kind]
    out_png = tmp_path / f"{kind}_sheet.png"
    rc, out, err = run(capsys, img, "--out", out_png)
    assert rc == 0, err
    with Image.open(img) as src:
        w, h = src.size
    assert printed(out) == (it.num_tiles(w, h), it.image_token_count(w, h))  # load_image's rows: test_image_tiling
    assert Image.open(out_png).size[0] > 0


def test_default_output_under_work_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FOODIE_WORK", str(tmp_path / "work"))
    img = photo(tmp_path / "soup.png", 448, 448)
    rc, out, _ = run(capsys, img)
    assert rc == 0
    assert (tmp_path / "work" / "explain" / "soup_tiles.png").is_file()
    assert printed(out) == (1, 256)


def test_refuses_bomb_and_non_image(tmp_path, capsys):
    bomb = png_header_only(tmp_path / "bomb.png", 30000, 30000)
    out_png = tmp_path / "bomb_sheet.png"
    rc, _, err = run(capsys, bomb, "--out", out_png)
    assert rc == 2 and "bomb.png" in err and "decompression bomb" in err
    assert not out_png.exists()

    junk = tmp_path / "notes.jpg"
    junk.write_text("not an image")
    rc, _, err = run(capsys, junk, "--out", tmp_path / "j.png")
    assert rc == 2 and "notes.jpg" in err and "not a decodable image" in err

    rc, _, err = run(capsys, tmp_path / "missing.jpg", "--out", tmp_path / "m.png")
    assert rc == 2 and "missing.jpg" in err and "not found" in err


def test_list_grids_counts(capsys):
    rc, out, _ = run(capsys, "--list-grids")
    assert rc == 0 and out.startswith("35 candidate grids for 1..12 tiles")
    assert "3x4 (0.75)" in out and "12x1 (12)" in out
    rc, out, _ = run(capsys, "--list-grids", "--max-tiles", "6")
    n = int(out.split()[0])
    assert rc == 0 and n == len(it.candidate_grids(1, 6)) == 14


def refused(capsys, argv) -> bool:
    """A usage error: exit 2 and one `error:` line (argparse's SystemExit, as from the command line)."""
    with pytest.raises(SystemExit) as e:
        explain.main([str(a) for a in argv])
    return e.value.code == 2 and "error: " in capsys.readouterr().err


def test_bad_arguments(tmp_path, capsys):
    img = photo(tmp_path / "x.png", 20, 20)
    for argv in ([img, "--out", tmp_path / "x.jpg"], [img, "--max-tiles", "0"], []):
        assert refused(capsys, argv), argv


# ------------------------------------------------------------------------------------------------
# The teaching modes: their printed numbers are the answers of the docs' exercises
# ------------------------------------------------------------------------------------------------

def test_list_grids_counts_distinct_ratios(capsys):
    """35 grids, 29 ratios: the six repeats are why find_closest_aspect_ratio needs its tie rule."""
    from fractions import Fraction

    rc, out, _ = run(capsys, "--list-grids")
    grids = it.candidate_grids(1, 12)
    ratios = {Fraction(c, r) for c, r in grids}
    assert rc == 0 and len(ratios) == 29
    assert f"{len(ratios)} distinct aspect ratios: {len(grids) - len(ratios)} grids repeat" in out
    assert "  1: 1x1, 2x2, 3x3" in out and "  0.5: 1x2, 2x4" in out and "  3: 3x1, 6x2" in out


def test_size_mode_prints_plan_and_resize_factors(capsys):
    rc, out, _ = run(capsys, "--size", "1920x1080", "--size", "600x600", "--size", "700x700")
    assert rc == 0
    # 16:9 is closest to 4x2 (ratio 2): the image is stretched 1.125x wider than it is
    assert "image 1920x1080 -> grid 4x2" in out and "x0.93 wide, x0.83 high (aspect ratio x1.12)" in out
    # ratio 1 ties 1x1, 2x2 and 3x3: 600x600 has less than half of 2x2's pixels, 700x700 more
    assert "image 600x600 -> grid 1x1" in out and "image 700x700 -> grid 2x2" in out
    assert it.num_tiles(600, 600) == 1 and it.num_tiles(700, 700) == 5


def test_tile_size_explains_the_tiny_model(capsys):
    """With the tiny model's 224-px tiles a 448x448 image is 2x2 + thumbnail; with 448-px tiles it is one tile."""
    rc, out, _ = run(capsys, "--size", "448x448", "--tile-size", "224")
    assert rc == 0 and "grid 2x2" in out and printed(out) == (5, 5 * 64)
    assert it.num_tiles(448, 448, image_size=224) == 5 and it.num_tiles(448, 448) == 1


def test_forty_tiles_give_the_papers_token_count(capsys):
    """InternVL 1.5's test-time maximum: 40 tiles + thumbnail = 10,496 tokens (report, section 3.2)."""
    rc, out, _ = run(capsys, "--size", "3584x2240", "--max-tiles", "40")
    assert rc == 0 and "grid 8x5" in out and printed(out) == (41, 10496)


def compare_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 11 and re.match(r"^\d+x\d+$", cells[0]):
            rows[cells[0]] = cells[1:]
    return rows


def test_compare_anyres_table(capsys):
    rc, out, _ = run(capsys, "--compare", "anyres")
    assert rc == 0
    rows = compare_rows(out)
    assert set(rows) == {f"{w}x{h}" for w, h in explain.COMPARE_SIZES}
    for (w, h) in explain.COMPARE_SIZES:
        grid, tiles, tokens, _, _, canvas, crops, a_tokens, _, _ = rows[f"{w}x{h}"]
        plan, a = it.TilingPlan.for_size(w, h), explain.AnyResPlan.for_size(w, h)
        assert (grid, int(tiles), int(tokens.replace(",", ""))) == (f"{plan.cols}x{plan.rows}", plan.tiles, plan.tokens)
        assert (canvas, int(crops), int(a_tokens.replace(",", ""))) == \
            (f"{a.canvas_w}x{a.canvas_h}", a.crops, a.tokens)
    # worked by hand from the LLaVA code: a square image fills the 672x672 canvas, no padding to cut,
    # 48 rows of 48 features + a newline each, after the 576 base tokens
    assert rows["448x448"][5:8] == ["672x672", "5", "2,928"]
    # a small image ties on effective pixels everywhere; least waste, then list order: the portrait 336x672
    # canvas (224 of its 672 rows are image), 16 feature rows of 24 + newline after the base image
    assert rows["300x200"][5:] == ["336x672", "3", "976", "x1.12", "67%"]
    assert rows["300x200"][:5] == ["3x2", "7", "1,792", "x4.48, x4.48", "x1.00"]  # InternVL blows it up 4.48x
    assert rows["1920x1080"][4] == "x1.12"
    # transformers reads the same list transposed (see the next test): only ties differ, the small image first
    assert "300x200 -> 672x336, 1,464 tokens there" in out


def test_anyres_custom_sizes(capsys):
    rc, out, _ = run(capsys, "--compare", "anyres", "--size", "1000x500")
    assert rc == 0 and list(compare_rows(out)) == ["1000x500"]


def test_anyres_agrees_with_transformers_port():
    """transformers' LLaVA-NeXT code is an independent implementation of the same rule. It reads the canvas list
    as (height, width) where the LLaVA code reads (width, height), so it gets the canvases transposed; it also
    rounds before truncating when unpadding. Given the transposed list, canvases and unpadded shapes agree,
    except where the LLaVA code's int() meets a float a hair below an integer."""
    import torch
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    transposed = [(h, w) for w, h in explain.V16_CANVASES]  # what transformers reads as (height, width)
    for w in range(17, 3000, 71):
        for h in range(13, 3000, 83):
            cw, ch = explain.best_canvas(w, h)
            assert select_best_resolution((h, w), transposed) == (ch, cw), (w, h)
            cols, rows = cw // explain.TILE, ch // explain.TILE
            ours = explain.unpadded_features(w, h, cols, rows)
            theirs = tuple(unpad_image(torch.zeros(1, rows * 24, cols * 24), (h, w)).shape[1:])
            if ours != theirs:
                cur_w, cur_h = cols * 24, rows * 24
                exact = h * (cur_w / w) if w / h > cur_w / cur_h else w * (cur_h / h)
                assert abs(exact - round(exact)) < 1e-6, (w, h, ours, theirs)


def test_pixel_shuffle_exercise(capsys):
    """The printed tokens are the 2x2 blocks of the arange grid, read row by row (ps_version v2)."""
    rc, out, _ = run(capsys, "--pixel-shuffle")
    assert rc == 0
    grid = np.arange(16).reshape(4, 4)
    for i in range(2):
        for j in range(2):
            block = [int(v) for v in grid[2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(-1)]
            assert f"token ({i}, {j}) <- {block}" in out
    assert "output [1, 2, 2, 4]" in out
    assert "token (0, 1) <- [8, 9, 12, 13]" in out  # v1: transposed
    assert "[1, 32, 32, 1024] -> [1, 16, 16, 4096] -> 256 tokens" in out


def test_connector_parameter_counts(capsys):
    """The formula matches the real mlp1 layout (built on the meta device: no memory)."""
    import torch
    from torch import nn

    rc, out, _ = run(capsys, "--connectors")
    assert rc == 0
    with torch.device("meta"):
        for name, _, c, _, d in explain.CONNECTORS:
            mlp = nn.Sequential(nn.LayerNorm(4 * c), nn.Linear(4 * c, d), nn.GELU(), nn.Linear(d, d))
            n = sum(p.numel() for p in mlp.parameters())
            assert n == explain.mlp1_parameters(c, d) and f"{n:,} parameters" in out
        _, _, c, _, d = explain.LLAVA15_PROJECTOR
        llava = nn.Sequential(nn.Linear(c, d), nn.GELU(), nn.Linear(d, d))
    assert sum(p.numel() for p in llava.parameters()) == explain.llava_projector_parameters(c, d)
    assert "12,595,200" in out and "116,429,824" in out and "20,979,712" in out and "188,000,000" in out


@pytest.mark.parametrize("argv", [["--size", "12"], ["--size", "0x5"], ["--tile-size", "100", "--size", "9x9"],
                                  ["x.png", "--size", "9x9"]])
def test_bad_teaching_arguments(capsys, argv):
    assert refused(capsys, argv)
