"""InternVL2 image preprocessing, in one place: safe opening, dynamic tiling, normalisation.

InternVL2 sees an image as a grid of 448x448 tiles ("dynamic high resolution"):

1. choose the grid of ``cols x rows`` tiles (``min_num <= cols*rows <= max_num``) whose aspect
   ratio is closest to the image's; on a tie the larger grid wins when the image has more
   than half the pixels of that grid (``w*h > 0.5 * 448**2 * cols*rows``);
2. resize the image (bicubic) to ``(448*cols, 448*rows)`` and cut it into tiles, row-major;
3. append a 448x448 thumbnail of the whole image when there is more than one tile;
4. scale to [0, 1] and normalise with the ImageNet mean and std.

Each tile becomes ``(448/14)**2 * 0.5**2 = 256`` tokens after the vision encoder's pixel shuffle.
The arithmetic here (float aspect ratios, the tie rule, the tile order) is the official one, so
tensors match the reference ``load_image`` of the InternVL2 model card and XTuner's dataset.

``open_image`` is the one door through which images come in: it applies the EXIF orientation,
turns every mode (grey, palette, RGBA on white, CMYK, 16-bit) into RGB, and refuses decompression
bombs and undecodable files with an error that names the file. (The official reference and
XTuner's dataset just call ``Image.open(path).convert("RGB")``; for upright 8-bit RGB photos --
nearly all photos -- the two agree exactly.)
"""
from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Union

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

# Same bound as Pillow's own default (about 89.5 megapixels, a 1024**3 / 4 / 3 bytes RGB image);
# Pillow only *warns* above it, we refuse.
MAX_IMAGE_PIXELS = 89_478_485

ImageLike = Union[str, os.PathLike, BinaryIO, bytes, Image.Image]


class ImageError(ValueError):
    """An image could not be used; the message names the file and says what to do."""


# ---------------------------------------------------------------------------------------------
# Safe opening
# ---------------------------------------------------------------------------------------------

def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return "<image bytes>"
    name = getattr(source, "filename", None) or getattr(source, "name", None)
    return str(name) if name else f"<{type(source).__name__}>"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Transparent pixels are composited onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        elif mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0  # 16-bit range 0..65535 -> 0..255
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, ...


def open_image(source: ImageLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS,
               draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open a path, a file object, raw bytes or a PIL image as an upright 8-bit RGB PIL image.

    Raises ``ImageError`` (naming the file) for a missing file, an undecodable or truncated file,
    or an image with more than ``max_pixels`` pixels (a decompression bomb); ``max_pixels=None``
    disables that check. ``draft_size``: a JPEG may be decoded at a reduced scale no smaller than
    this (fast thumbnails; not for model input, which must match the reference decoding).
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        img = source
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageError(_bomb_message(name, img.size, max_pixels))
    else:
        if isinstance(source, bytes):
            source = io.BytesIO(source)
        if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
            raise ImageError(f"{name}: image file not found. Check the path (relative paths are "
                             f"resolved against the data root).")
        try:
            with warnings.catch_warnings():
                # We apply our own pixel bound below; Pillow would only warn up to 2x its bound.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(source)
        except Image.DecompressionBombError as e:
            raise ImageError(f"{name}: refused, {e}") from None
        except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
            raise ImageError(f"{name}: not a decodable image ({e}). Replace or remove this file.") from None
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageError(_bomb_message(name, img.size, max_pixels))
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{name}: image data is corrupt or truncated ({e}). "
                             f"Replace or remove this file.") from None
    if img.width < 1 or img.height < 1:
        raise ImageError(f"{name}: image has no pixels ({img.width}x{img.height}).")
    try:
        if img.getexif().get(0x0112, 1) not in (1, None):  # exif_transpose would copy even upright images
            img = ImageOps.exif_transpose(img) or img
    except Exception:  # a malformed EXIF block must not make a good image unusable
        pass
    return _to_rgb(img)


def _bomb_message(name: str, size: tuple[int, int], max_pixels: int) -> str:
    w, h = size
    return (f"{name}: refused, {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
            f"(a possible decompression bomb). Downscale the image, or raise max_pixels if you "
            f"trust it.")


def image_size_of(source: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) as the model will see it (after EXIF orientation), reading only the header."""
    name = _describe(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                orientation = img.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise ImageError(f"{name}: image file not found. Check the path.") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused, {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: not a decodable image ({e}). Replace or remove this file.") from None
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(_bomb_message(name, (w, h), max_pixels))
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def verify_image(source: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """Check that an image file decodes completely; return its (width, height) as the model sees it.

    Faster than ``open_image`` for checking many photos: JPEGs are decoded at reduced scale (every
    byte of the file is still read and decoded, so truncation and corruption are caught).
    """
    name = _describe(source)
    if not Path(source).is_file():
        raise ImageError(f"{name}: image file not found. Check the path.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageError(_bomb_message(name, (w, h), max_pixels))
                try:
                    orientation = img.getexif().get(0x0112, 1)
                except Exception:
                    orientation = 1
                if img.format == "JPEG":
                    img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused, {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: not a decodable image or truncated ({e}). Replace or remove this file.") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


# ---------------------------------------------------------------------------------------------
# Dynamic tiling
# ---------------------------------------------------------------------------------------------

def candidate_grids(min_num: int = MIN_TILES, max_num: int = MAX_TILES) -> list[tuple[int, int]]:
    """All (cols, rows) with min_num <= cols*rows <= max_num, fewest tiles first."""
    if not 1 <= min_num <= max_num:
        raise ValueError(f"need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}")
    grids = [(c, r) for c in range(1, max_num + 1) for r in range(1, max_num + 1)
             if min_num <= c * r <= max_num]
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


def find_closest_aspect_ratio(aspect_ratio: float, grids: list[tuple[int, int]], width: int, height: int,
                              image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """The grid (cols, rows) from ``grids`` (fewest tiles first) closest to ``aspect_ratio``.

    A later grid that ties an earlier one wins when the image has more than half the grid's
    pixels, i.e. large images get more tiles, small ones are not blown up.
    """
    best, best_diff = (1, 1), float("inf")
    pixels = width * height
    for cols, rows in grids:
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and pixels > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def target_grid(width: int, height: int, *, min_num: int = MIN_TILES, max_num: int = MAX_TILES,
                image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """(cols, rows) of 448-tiles that a width x height image is cut into."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return find_closest_aspect_ratio(width / height, candidate_grids(min_num, max_num), width, height, image_size)


def num_tiles(width: int, height: int, *, min_num: int = MIN_TILES, max_num: int = MAX_TILES,
              image_size: int = IMAGE_SIZE, use_thumbnail: bool = True) -> int:
    """How many 448x448 tiles the model sees for a width x height image (thumbnail included)."""
    cols, rows = target_grid(width, height, min_num=min_num, max_num=max_num, image_size=image_size)
    n = cols * rows
    return n + 1 if use_thumbnail and n > 1 else n


def tiling_of(model_dir: str | os.PathLike) -> tuple[int, int]:
    """(tile side in pixels, LLM tokens per tile) of an InternVL2 checkpoint folder, from its config.json,
    read as the model code reads it (no force_image_size: the ViT's image_size; downsample_ratio default 0.5)."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        vision = config["vision_config"]
        size = int(config.get("force_image_size") or vision["image_size"])
        return size, tokens_per_tile(size, int(vision["patch_size"]),
                                     float(config.get("downsample_ratio", DOWNSAMPLE_RATIO)))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cannot read the tile geometry (force_image_size or vision_config.image_size, "
                         f"vision_config.patch_size): {e}. Point at an InternVL2 checkpoint folder") from None


def tokens_per_tile(image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE,
                    downsample_ratio: float = DOWNSAMPLE_RATIO) -> int:
    """Language-model tokens per tile: (448/14)**2 patches, pixel-shuffled by 0.5 -> 256."""
    return int((image_size // patch_size) ** 2 * downsample_ratio ** 2)


def image_token_count(width: int, height: int, *, min_num: int = MIN_TILES, max_num: int = MAX_TILES,
                      image_size: int = IMAGE_SIZE, use_thumbnail: bool = True, patch_size: int = PATCH_SIZE,
                      downsample_ratio: float = DOWNSAMPLE_RATIO) -> int:
    """Number of ``<IMG_CONTEXT>`` tokens for one image (``<img>`` and ``</img>`` not included)."""
    tiles = num_tiles(width, height, min_num=min_num, max_num=max_num, image_size=image_size,
                      use_thumbnail=use_thumbnail)
    return tiles * tokens_per_tile(image_size, patch_size, downsample_ratio)


def dynamic_preprocess(image: Image.Image, min_num: int = MIN_TILES, max_num: int = MAX_TILES,
                       image_size: int = IMAGE_SIZE, use_thumbnail: bool = True) -> list[Image.Image]:
    """Cut an RGB PIL image into its grid of image_size tiles (row-major) plus a thumbnail."""
    if image.mode != "RGB":
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
    if tile.mode != "RGB":
        tile = _to_rgb(tile)
    if tile.size != (image_size, image_size):
        tile = tile.resize((image_size, image_size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(tile, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
    return x.sub(mean).div(std)


def load_image(image: ImageLike, input_size: int = IMAGE_SIZE, max_num: int = MAX_TILES, min_num: int = MIN_TILES,
               use_thumbnail: bool = True, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Open (safely), tile and normalise an image: float32 tensor [num_tiles, 3, input_size, input_size]."""
    import torch
    rgb = open_image(image, max_pixels=max_pixels)
    tiles = dynamic_preprocess(rgb, min_num=min_num, max_num=max_num, image_size=input_size,
                               use_thumbnail=use_thumbnail)
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
        tiles = num_tiles(width, height, min_num=min_num, max_num=max_num, image_size=image_size,
                          use_thumbnail=use_thumbnail)
        return cls(width, height, cols, rows, tiles, tiles * tokens_per_tile(image_size))
