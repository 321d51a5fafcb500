"""tools/explain_image.py: a contact sheet of what InternVL2 sees, for any image a user may try,
with the tile count and token budget the model really uses; bombs and non-images refused clearly."""
from __future__ import annotations

import importlib.util
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foodie import image_tiling as it

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "explain_image.py"


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


def odd_images(tmp_path: Path) -> dict[str, Path]:
    p = {}
    Image.new("L", (300, 200), 90).save(p.setdefault("grey", tmp_path / "grey.png"))
    Image.new("RGBA", (500, 300), (255, 0, 0, 0)).save(p.setdefault("rgba", tmp_path / "rgba.png"))
    Image.new("P", (64, 640), 3).save(p.setdefault("palette", tmp_path / "palette.png"))
    Image.new("RGB", (1, 1), (9, 9, 9)).save(p.setdefault("one_pixel", tmp_path / "one.png"))
    Image.new("RGB", (10000, 100), (0, 90, 0)).save(p.setdefault("strip", tmp_path / "strip.png"))
    Image.new("CMYK", (120, 90)).save(p.setdefault("cmyk", tmp_path / "cmyk.jpg"))
    Image.fromarray(np.full((50, 70), 40000, dtype=np.uint16)).save(p.setdefault("16bit", tmp_path / "i16.png"))
    return p


@pytest.mark.parametrize("kind", ["grey", "rgba", "palette", "one_pixel", "strip", "cmyk", "16bit"])
def test_odd_images(tmp_path, capsys, kind):
    img = odd_images(tmp_path)[kind]
    out_png = tmp_path / f"{kind}_sheet.png"
    rc, out, err = run(capsys, img, "--out", out_png)
    assert rc == 0, err
    with Image.open(img) as src:
        w, h = src.size
    tiles, tokens = printed(out)
    assert tiles == len(it.load_image(img)) == it.num_tiles(w, h)
    assert tokens == it.image_token_count(w, h)
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


def test_bad_arguments(tmp_path):
    img = photo(tmp_path / "x.png", 20, 20)
    for argv in ([str(img), "--out", str(tmp_path / "x.jpg")], [str(img), "--max-tiles", "0"], []):
        r = subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 2 and "error" in r.stderr, argv
