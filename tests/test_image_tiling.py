"""foodie.image_tiling must give the model exactly what the official InternVL2 preprocessing gives,
and must take any image a user may upload (odd modes, EXIF rotation, extreme shapes) or refuse it clearly."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from foodie import image_tiling as it

xtuner_internvl = pytest.importorskip("xtuner.dataset.internvl_dataset")
T = pytest.importorskip("torchvision.transforms")


def reference_transform():
    """The official build_transform (InternVL2 model card), as used in XTuner's dataset."""
    from torchvision.transforms.functional import InterpolationMode
    return T.Compose([
        T.Resize((448, 448), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])


def xtuner_pixel_values(path, max_num=12, min_num=1):
    image = Image.open(path).convert("RGB")
    tiles = xtuner_internvl.dynamic_preprocess(image, min_num, max_num, 448, True)
    tf = reference_transform()
    return torch.stack([tf(t) for t in tiles])


class _SizeOnly:
    """Stands in for a PIL image: records the size xtuner's dynamic_preprocess resizes to."""

    def __init__(self, w, h):
        self.size = (w, h)
        self.resized_to = None

    def resize(self, size):
        self.resized_to = size
        return self

    def crop(self, box):
        return box


def xtuner_grid(w, h, min_num=1, max_num=12):
    img = _SizeOnly(w, h)
    xtuner_internvl.dynamic_preprocess(img, min_num, max_num, 448, False)
    tw, th = img.resized_to
    return tw // 448, th // 448


def noise_image(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    # smooth structure too, so resampling differences would show
    arr[..., 0] = (np.arange(w)[None, :] * 255 // max(w - 1, 1)).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


# --- grid choice ------------------------------------------------------------------------------

def test_grid_choice_matches_xtuner_on_many_sizes():
    rng = np.random.default_rng(1)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 4000, size=(400, 2))]
    # exact ties between two grids, on both sides of the area threshold
    sizes += [(672, 448), (150, 100), (600, 400), (1344, 896), (300, 200), (896, 448), (447, 298),
              (1, 1), (10000, 100), (100, 10000), (448, 448), (896, 896), (1000, 1500), (2240, 448)]
    for w, h in sizes:
        for min_num, max_num in [(1, 12), (1, 6), (2, 12), (1, 40), (1, 2)]:  # (1, 2): 1.5 is an exact tie
            assert it.target_grid(w, h, min_num=min_num, max_num=max_num) == xtuner_grid(w, h, min_num, max_num), (w, h, max_num)


def test_tie_rule_prefers_larger_grid_only_for_large_images():
    # with at most 2 tiles, aspect 1.5 lies exactly between 1x1 (1.0) and 2x1 (2.0)
    assert it.target_grid(672, 448, max_num=2) == (2, 1)  # 301056 px > 0.5 * 448^2 * 2
    assert it.target_grid(600, 400, max_num=2) == (2, 1)  # 240000 > 200704
    assert it.target_grid(540, 360, max_num=2) == (1, 1)  # 194400 < 200704: small, not blown up
    assert it.target_grid(150, 100, max_num=2) == (1, 1)
    # with 12 tiles 3x2 exists: an exact aspect match wins, even for a tiny image
    assert it.target_grid(672, 448) == (3, 2)
    assert it.target_grid(150, 100) == (3, 2)  # an exact match beats the area rule
    assert it.target_grid(1250, 1000) == (4, 3)  # 1.25: 4:3 is closer than 1:1; 5:4 needs 20 tiles
    assert it.target_grid(1250, 1000, max_num=20) == (5, 4)
    assert it.target_grid(10000, 100) == (12, 1)
    assert it.target_grid(100, 10000) == (1, 12)
    assert it.target_grid(1, 1) == (1, 1)


def test_grids_respect_tile_bounds():
    for w, h in [(5000, 300), (300, 300), (1920, 1080)]:
        for lo, hi in [(1, 1), (1, 6), (4, 12)]:
            c, r = it.target_grid(w, h, min_num=lo, max_num=hi)
            assert lo <= c * r <= hi
    with pytest.raises(ValueError):
        it.candidate_grids(3, 2)


# --- pixels: same tensors as the official algorithm ------------------------------------------

@pytest.mark.parametrize("size", [(448, 448), (672, 448), (150, 100), (1000, 700), (333, 1201), (10000, 100), (1, 1)])
def test_load_image_equals_official_tensors(tmp_path, size):
    path = tmp_path / "photo.png"
    noise_image(*size, seed=size[0]).save(path)
    ours = it.load_image(path)
    ref = xtuner_pixel_values(path)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    assert ours.shape[1:] == (3, 448, 448)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("size", [(672, 448), (540, 360)])  # exact ties of 1x1 and 2x1, each side of the area rule
def test_tie_cases_equal_official_tensors(tmp_path, size):
    path = tmp_path / "tie.png"
    noise_image(*size, seed=7).save(path)
    ours = it.load_image(path, max_num=2)
    assert ours.shape[0] == (3 if size == (672, 448) else 1)
    assert torch.equal(ours, xtuner_pixel_values(path, max_num=2))


def test_dynamic_preprocess_tiles_equal_xtuner_tiles():
    img = noise_image(1100, 500, seed=3)
    ours = it.dynamic_preprocess(img, 1, 12, 448, True)
    ref = xtuner_internvl.dynamic_preprocess(img, 1, 12, 448, True)
    assert len(ours) == len(ref) == it.num_tiles(1100, 500)
    for a, b in zip(ours, ref):
        assert a.size == (448, 448)
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_tiles_are_row_major_and_thumbnail_last():
    # four flat quadrants of a 896x896 image -> 2x2 grid; each tile is one colour
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    img = Image.new("RGB", (896, 896))
    for k, col in enumerate(colours):
        img.paste(col, ((k % 2) * 448, (k // 2) * 448, (k % 2 + 1) * 448, (k // 2 + 1) * 448))
    tiles = it.dynamic_preprocess(img)
    assert len(tiles) == 5
    for tile, col in zip(tiles, colours):
        assert tile.getpixel((224, 224)) == col
    thumb = tiles[-1]
    assert thumb.getpixel((112, 112)) == colours[0] and thumb.getpixel((336, 336)) == colours[3]
    assert len(it.dynamic_preprocess(img, use_thumbnail=False)) == 4
    assert len(it.dynamic_preprocess(Image.new("RGB", (448, 448)))) == 1  # no thumbnail for one tile


def test_normalisation_values():
    x = it.to_tensor(Image.new("RGB", (448, 448), (255, 0, 128)))
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    for ch, value in enumerate(expected):
        assert torch.allclose(x[ch], torch.full((448, 448), value), atol=1e-6)



@pytest.mark.parametrize("size", [(448, 448), (1000, 700), (333, 1201)])
def test_tiles_normalised_elsewhere_equal_load_image_bitwise(tmp_path, size):
    """The GPU image path (uint8 tiles, normalised where the model runs) gives the official tensors: here
    normalised on the CPU, float32 and after the cast to bfloat16, every value equal; a quarter of the bytes."""
    path = tmp_path / "photo.png"
    noise_image(*size, seed=size[1]).save(path)
    tiles = it.load_tiles(path)
    ref = it.load_image(path)
    assert tiles.dtype == torch.uint8 and tiles.shape == (ref.shape[0], 448, 448, 3)
    assert torch.equal(it.normalise(tiles), ref) and it.normalise(tiles).is_contiguous()  # layout too: cuDNN
    assert torch.equal(it.normalise(tiles, torch.bfloat16, "cpu"), ref.to(torch.bfloat16))
    assert tiles.nbytes * 4 == ref.nbytes

# --- odd images --------------------------------------------------------------------------------

def test_grayscale_palette_cmyk_become_rgb(tmp_path):
    cases = {
        "grey.png": noise_image(300, 200, mode="L"),
        "palette.gif": noise_image(300, 200).convert("P"),
        "cmyk.jpg": noise_image(300, 200).convert("CMYK"),
        "bw.png": noise_image(300, 200, mode="L").convert("1"),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        out = it.open_image(tmp_path / name)
        assert out.mode == "RGB" and out.size == (300, 200), name
        assert it.load_image(tmp_path / name).shape == (it.num_tiles(300, 200), 3, 448, 448)
    grey = np.asarray(it.open_image(tmp_path / "grey.png"))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])


def test_transparency_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # fully transparent black
    rgba.paste((200, 10, 10, 255), (0, 0, 20, 30))  # opaque red left half
    rgba.save(tmp_path / "a.png")
    out = it.open_image(tmp_path / "a.png")
    assert out.getpixel((30, 15)) == (255, 255, 255)
    assert out.getpixel((5, 15)) == (200, 10, 10)
    la = Image.new("LA", (10, 10), (0, 0))
    assert it.open_image(la).getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    assert it.open_image(tmp_path / "p.png").getpixel((3, 3)) == (255, 255, 255)


def test_sixteen_bit_scaled_to_eight_bit(tmp_path):
    arr = np.full((20, 30), 65535, dtype=np.uint16)
    arr[:, :15] = 0
    Image.fromarray(arr).save(tmp_path / "deep.png")
    out = it.open_image(tmp_path / "deep.png")
    assert out.mode == "RGB"
    assert out.getpixel((25, 5)) == (255, 255, 255) and out.getpixel((2, 5)) == (0, 0, 0)


def test_exif_rotation_applied(tmp_path):
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 30, 30))  # red marker top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = it.open_image(tmp_path / "rot.jpg")
    assert out.size == (100, 300)
    r, g, b = out.getpixel((85, 10))  # the marker is now top-right
    assert r > 200 and b < 60
    assert it.image_size_of(tmp_path / "rot.jpg") == (100, 300)
    assert it.load_image(tmp_path / "rot.jpg").shape[0] == it.num_tiles(100, 300)


def test_accepts_path_str_file_bytes_and_pil(tmp_path):
    img = noise_image(500, 300)
    img.save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    ref = it.load_image(tmp_path / "x.png")
    with open(tmp_path / "x.png", "rb") as f:
        assert torch.equal(it.load_image(f), ref)
    assert torch.equal(it.load_image(str(tmp_path / "x.png")), ref)
    assert torch.equal(it.load_image(io.BytesIO(data)), ref)
    assert torch.equal(it.load_image(data), ref)
    assert torch.equal(it.load_image(img), ref)


# --- refusals ----------------------------------------------------------------------------------

def png_header_only(width, height) -> bytes:
    """A PNG whose header claims width x height (no real pixel data needed to refuse it)."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 30_000])  # above our limit; above 2x Pillow's limit
def test_decompression_bomb_refused_naming_file(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(side, side))
    with pytest.raises(it.ImageError, match="bomb.png") as e:
        it.open_image(path)
    assert "refused" in str(e.value) and "pixels" in str(e.value)
    with pytest.raises(it.ImageError, match="bomb.png"):
        it.image_size_of(path)


def test_pixel_limit_is_configurable(tmp_path):
    noise_image(100, 100).save(tmp_path / "big.png")
    with pytest.raises(it.ImageError, match="big.png.*10,000 pixels exceeds the limit of 5,000"):
        it.open_image(tmp_path / "big.png", max_pixels=5000)
    assert it.open_image(tmp_path / "big.png", max_pixels=None).size == (100, 100)
    with pytest.raises(it.ImageError, match="exceeds"):
        it.open_image(noise_image(100, 100), max_pixels=5000)


def test_undecodable_missing_and_truncated_files_name_the_file(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a photo")
    with pytest.raises(it.ImageError, match="notes.jpg.*not a decodable image"):
        it.open_image(tmp_path / "notes.jpg")
    with pytest.raises(it.ImageError, match="missing.jpg.*not found"):
        it.load_image(tmp_path / "missing.jpg")
    buf = io.BytesIO()
    noise_image(400, 300).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(it.ImageError, match="cut.jpg.*truncated"):
        it.open_image(tmp_path / "cut.jpg")


# --- token counts ------------------------------------------------------------------------------

def test_token_counts():
    assert it.tokens_per_tile() == 256  # (448/14)^2 * 0.5^2
    assert it.tokens_per_tile(448, 14, 0.25) == 64
    assert it.tokens_per_tile(224, 14, 0.5) == 64
    assert it.image_token_count(448, 448) == 256  # one tile, no thumbnail
    assert it.image_token_count(896, 896) == 5 * 256  # 2x2 + thumbnail
    assert it.image_token_count(10000, 100) == 13 * 256
    assert it.image_token_count(896, 896, use_thumbnail=False) == 4 * 256
    assert it.image_token_count(1920, 1080, max_num=6) == (it.num_tiles(1920, 1080, max_num=6)) * 256


def test_token_count_matches_tensor_rows_and_xtuner(tmp_path):
    for w, h in [(1600, 1200), (1920, 1080), (500, 500), (300, 900)]:
        n = it.num_tiles(w, h)
        # XTuner's length estimate counts the thumbnail even for one tile; ours counts what is fed
        assert n == xtuner_internvl.total_image_token((w, h), 1, 12, 448, True) - (1 if n == 1 else 0)
        plan = it.TilingPlan.for_size(w, h)
        assert plan.tiles == n and plan.tokens == n * 256 and plan.cols * plan.rows == (n - 1 if n > 1 else 1)
    noise_image(1000, 300).save(tmp_path / "w.png")
    assert it.load_image(tmp_path / "w.png").shape[0] == it.num_tiles(1000, 300)


def test_verify_image_checks_whole_file_and_reports_upright_size(tmp_path):
    buf = io.BytesIO()
    noise_image(800, 600).save(buf, "JPEG")
    (tmp_path / "ok.jpg").write_bytes(buf.getvalue())
    assert it.verify_image(tmp_path / "ok.jpg") == (800, 600)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    with pytest.raises(it.ImageError, match="cut.jpg"):
        it.verify_image(tmp_path / "cut.jpg")
    (tmp_path / "bomb.png").write_bytes(png_header_only(10_000, 10_000))
    with pytest.raises(it.ImageError, match="bomb.png.*exceeds"):
        it.verify_image(tmp_path / "bomb.png")
    with pytest.raises(it.ImageError, match="nope.jpg.*not found"):
        it.verify_image(tmp_path / "nope.jpg")
