"""InternVL2 image preprocessing, in one place: safe opening, dynamic tiling, normalisation.

InternVL2 sees an image as a grid of tiles ("dynamic high resolution"; 448 px for InternVL2-2B):

1. choose the grid of ``cols x rows`` tiles (``min_num <= cols*rows <= max_num``) whose aspect ratio is closest to
   the image's; on a tie the larger grid wins when the image has more than half the pixels of that grid
   (``w*h > 0.5 * 448**2 * cols*rows``);
2. resize the image (bicubic) to ``(448*cols, 448*rows)`` and cut it into tiles, row-major;
3. append a 448x448 thumbnail of the whole image when there is more than one tile;
4. scale to [0, 1] and normalise with the ImageNet mean and std.

Each tile becomes ``(448/14)**2 * 0.5**2 = 256`` tokens after the vision encoder's pixel shuffle. The arithmetic
(float aspect ratios, the tie rule, the tile order) is the official one: tensors match the reference ``load_image``
of the InternVL2 model card and XTuner's dataset. ``open_image`` is the one door images come in by: EXIF orientation
applied, every mode (grey, palette, RGBA on white, CMYK, 16-bit) made RGB, bombs and undecodable files refused
naming the file (the reference's ``Image.open(path).convert("RGB")`` agrees on upright 8-bit RGB photos).
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator, Union

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 448  # InternVL2 tile side (config.force_image_size)
PATCH_SIZE = 14  # InternViT patch side (vision_config.patch_size)
DOWNSAMPLE_RATIO = 0.5  # pixel shuffle (config.downsample_ratio)
MIN_TILES = 1  # config.min_dynamic_patch
MAX_TILES = 12  # config.max_dynamic_patch
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MAX_IMAGE_PIXELS = 89_478_485  # Pillow's bound (1024**3 / 4 / 3 bytes of RGB): Pillow only warns above it, we refuse

ImageLike = Union[str, os.PathLike, BinaryIO, bytes, Image.Image]


class ImageError(ValueError):
    """An image could not be used; the message names the file and says what to do."""


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike, bytes)):
        return "<image bytes>" if isinstance(source, bytes) else str(source)
    name = getattr(source, "filename", None) or getattr(source, "name", None)
    return str(name) if name else f"<{type(source).__name__}>"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Transparent pixels are composited onto white."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        elif img.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0  # 16-bit range 0..65535 -> 0..255
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, ...


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int | None) -> None:
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(f"{name}: refused, {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} (a possible "
                         f"decompression bomb). Downscale the image, or raise max_pixels if you trust it.")


@contextlib.contextmanager
def _opened(source, max_pixels: int | None) -> Iterator[Image.Image]:
    """``Image.open`` that refuses (ImageError naming the file) a missing, undecodable, truncated or too large image."""
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise ImageError(f"{name}: image file not found. Check the path (relative paths are resolved against the "
                         f"data root).")
    try:
        with warnings.catch_warnings():  # Pillow only warns up to 2x its bound; we apply our own below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused, {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise ImageError(f"{name}: not a decodable image ({e}). Replace or remove this file.") from None
    _check_pixels(name, img.size, max_pixels)
    try:
        yield img
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: image data is corrupt or truncated ({e}). Replace or remove this file.") from None


def _upright(img: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation (a malformed EXIF block counts as upright)."""
    try:
        turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001
        turned = False
    return (img.height, img.width) if turned else img.size


def open_image(source: ImageLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS,
               draft_size: tuple[int, int] | None = None) -> Image.Image:
    """A path, file object, raw bytes or PIL image as an upright 8-bit RGB PIL image; ``ImageError`` (naming the
    file) for a missing, undecodable, truncated or too large one (``max_pixels=None``: no limit). ``draft_size``:
    a JPEG may be decoded at a reduced scale no smaller than this (thumbnails, never model input)."""
    if isinstance(source, Image.Image):
        img = source
        _check_pixels(_describe(source), img.size, max_pixels)
    else:
        with _opened(source, max_pixels) as img:
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", draft_size)
            img.load()
    if img.width < 1 or img.height < 1:
        raise ImageError(f"{_describe(source)}: image has no pixels ({img.width}x{img.height}).")
    try:
        if img.getexif().get(0x0112, 1) not in (1, None):  # exif_transpose would copy even upright images
            img = ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not make a good image unusable
        pass
    return _to_rgb(img)


def image_size_of(source: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS,
                  decode: bool = False) -> tuple[int, int]:
    """(width, height) as the model will see it (after EXIF orientation) from the header alone; ``decode``: also
    decode every byte (JPEGs at 1/8 scale), so truncation and corruption are caught."""
    with _opened(source, max_pixels) as img, img:
        size = _upright(img)
        if decode:
            if img.format == "JPEG":
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
        return size


def verify_image(source: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """Check that an image file decodes completely; its (width, height) as the model sees it."""
    return image_size_of(source, max_pixels=max_pixels, decode=True)


def candidate_grids(min_num: int = MIN_TILES, max_num: int = MAX_TILES) -> list[tuple[int, int]]:
    """All (cols, rows) with min_num <= cols*rows <= max_num, fewest tiles first."""
    if not 1 <= min_num <= max_num:
        raise ValueError(f"need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}")
    grids = [(c, r) for c in range(1, max_num + 1) for r in range(1, max_num + 1) if min_num <= c * r <= max_num]
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


def find_closest_aspect_ratio(aspect_ratio: float, grids: list[tuple[int, int]], width: int, height: int,
                              image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """The grid (cols, rows) from ``grids`` (fewest tiles first) closest to ``aspect_ratio``. A later grid that
    ties an earlier one wins when the image has more than half its pixels: large images get more tiles, small
    ones are not blown up."""
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def target_grid(width: int, height: int, *, min_num: int = MIN_TILES, max_num: int = MAX_TILES,
                image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """(cols, rows) of the tiles a width x height image is cut into."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return find_closest_aspect_ratio(width / height, candidate_grids(min_num, max_num), width, height, image_size)


def num_tiles(width: int, height: int, **grid) -> int:
    """Tiles the model sees for a width x height image, thumbnail included (``grid``: ``TilingPlan.for_size``'s)."""
    return TilingPlan.for_size(width, height, **grid).tiles


def tokens_per_tile(image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE,
                    downsample_ratio: float = DOWNSAMPLE_RATIO) -> int:
    """Language-model tokens per tile: (448/14)**2 patches, pixel-shuffled by 0.5 -> 256."""
    return int((image_size // patch_size) ** 2 * downsample_ratio ** 2)


def image_token_count(width: int, height: int, *, patch_size: int = PATCH_SIZE,
                      downsample_ratio: float = DOWNSAMPLE_RATIO, **grid) -> int:
    """Number of ``<IMG_CONTEXT>`` tokens for one image (``<img>`` and ``</img>`` not included)."""
    return num_tiles(width, height, **grid) * tokens_per_tile(grid.get("image_size", IMAGE_SIZE), patch_size,
                                                              downsample_ratio)


def dynamic_preprocess(image: Image.Image, min_num: int = MIN_TILES, max_num: int = MAX_TILES,
                       image_size: int = IMAGE_SIZE, use_thumbnail: bool = True) -> list[Image.Image]:
    """Cut an RGB PIL image into its grid of image_size tiles (row-major) plus a thumbnail."""
    image = _to_rgb(image)
    cols, rows = target_grid(*image.size, min_num=min_num, max_num=max_num, image_size=image_size)
    resized = image.resize((image_size * cols, image_size * rows), Image.Resampling.BICUBIC)
    tiles = [resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((image_size, image_size), Image.Resampling.BICUBIC))
    return tiles


def to_tensor(tile: Image.Image, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """One tile -> float32 [3, image_size, image_size], scaled to [0, 1], ImageNet-normalised."""
    import torch  # imported here: checking and tiling images must not pay for importing torch
    tile = _to_rgb(tile)
    if tile.size != (image_size, image_size):
        tile = tile.resize((image_size, image_size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(tile, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    return x.sub(torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).div(torch.tensor(IMAGENET_STD).view(3, 1, 1))


def load_image(image: ImageLike, input_size: int = IMAGE_SIZE, max_num: int = MAX_TILES, min_num: int = MIN_TILES,
               use_thumbnail: bool = True, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Open (safely), tile and normalise an image: float32 tensor [num_tiles, 3, input_size, input_size]."""
    import torch
    tiles = dynamic_preprocess(open_image(image, max_pixels=max_pixels), min_num, max_num, input_size, use_thumbnail)
    return torch.stack([to_tensor(t, input_size) for t in tiles])


@dataclass(frozen=True)
class TilingPlan:
    """What the model will see for one image; handy for explaining and budgeting."""
    width: int
    height: int
    cols: int
    rows: int
    tiles: int  # thumbnail included
    tokens: int  # <IMG_CONTEXT> tokens

    @classmethod
    def for_size(cls, width: int, height: int, *, min_num: int = MIN_TILES, max_num: int = MAX_TILES,
                 image_size: int = IMAGE_SIZE, use_thumbnail: bool = True) -> "TilingPlan":
        cols, rows = target_grid(width, height, min_num=min_num, max_num=max_num, image_size=image_size)
        tiles = cols * rows + (1 if use_thumbnail and cols * rows > 1 else 0)
        return cls(width, height, cols, rows, tiles, tiles * tokens_per_tile(image_size))


def model_pixel_shuffle(x: torch.Tensor, ps_version: str = "v2") -> torch.Tensor:
    """The model's own ``InternVLChatModel.pixel_shuffle(x, 0.5)`` on [tiles, h, w, C] (given the one attribute it
    reads): each 2x2 block of patches becomes one token with 4x the channels."""
    from types import SimpleNamespace

    from foodie.remote_code.modeling_internvl_chat import InternVLChatModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # v1's "transposed image" warning: showing it is the point
        return InternVLChatModel.pixel_shuffle(SimpleNamespace(ps_version=ps_version), x, scale_factor=0.5)
