"""InternVL2's image preprocessing: safe opening, dynamic tiling, normalisation (docs/internvl2.md §2 explains it).

The arithmetic (float aspect ratios, the tie rule, the tile order) is the official one: tensors equal the reference
``load_image`` of the InternVL2 model card and XTuner's dataset. ``open_image`` is the one door images come in by:
EXIF orientation applied, every mode made 8-bit RGB, bombs and undecodable files refused naming the file.
"""
from __future__ import annotations

import io
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
MIN_TILES, MAX_TILES = 1, 12  # config.min_dynamic_patch, config.max_dynamic_patch
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's bound (1024**3 / 4 / 3 bytes of RGB): Pillow only warns above it, we refuse

ImageLike = Union[str, os.PathLike, BinaryIO, bytes, Image.Image]


class ImageError(ValueError):
    """An image could not be used; the message names the file and says what to do."""


def open_image(source: ImageLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS,
               draft_size: tuple[int, int] | None = None) -> Image.Image:
    """A path, file object, raw bytes or PIL image as an upright 8-bit RGB image (``max_pixels=None``: no limit).
    ``draft_size``: a JPEG may be decoded at a reduced scale no smaller than this (thumbnails, never model input)."""
    img = _opened(source, max_pixels)
    if img is not source:
        _decode(img, _name(source), draft_size)
    if img.width < 1 or img.height < 1:
        raise ImageError(f"{_name(source)}: image has no pixels ({img.width}x{img.height}).")
    if _orientation(img) not in (1, None):  # exif_transpose would copy even upright images
        img = ImageOps.exif_transpose(img) or img
    return _to_rgb(img)


def image_size_of(source: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS,
                  decode: bool = False) -> tuple[int, int]:
    """(width, height) as the model will see it (after EXIF orientation) from the header alone; ``decode``: also
    decode every byte (JPEGs at 1/8 scale), so truncation and corruption are caught."""
    with _opened(source, max_pixels) as img:
        size = (img.height, img.width) if _orientation(img) in (5, 6, 7, 8) else img.size
        if decode:
            _decode(img, _name(source), (max(1, img.width // 8), max(1, img.height // 8)))
        return size


def verify_image(source: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    return image_size_of(source, max_pixels=max_pixels, decode=True)


def _name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return "<image bytes>"
    name = getattr(source, "filename", None) or getattr(source, "name", None)
    return str(name) if name else f"<{type(source).__name__}>"


def _opened(source: ImageLike, max_pixels: int | None) -> Image.Image:
    """``source`` as a PIL image (opened lazily: header only); ImageError if missing, undecodable or too large."""
    name = _name(source)
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise ImageError(f"{name}: image file not found. Check the path (relative paths are resolved against the "
                         f"data root).")
    source = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():  # Pillow only warns up to 2x its bound; ours is applied below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = source if isinstance(source, Image.Image) else Image.open(source)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused, {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise ImageError(f"{name}: not a decodable image ({e}). Replace or remove this file.") from None
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ImageError(f"{name}: refused, {img.width}x{img.height} = {img.width * img.height:,} pixels exceeds the "
                         f"limit of {max_pixels:,} (a possible decompression bomb). Downscale the image, or raise "
                         f"max_pixels if you trust it.")
    return img


def _decode(img: Image.Image, name: str, draft_size: tuple[int, int] | None) -> None:
    try:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size)
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: image data is corrupt or truncated ({e}). Replace or remove this file.") from None


def _orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block counts as upright: it must not refuse a good image
        return 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: transparency composited on white, 16-bit and float scaled to 0..255."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA")).convert("RGB")
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        elif img.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def candidate_grids(min_num: int = MIN_TILES, max_num: int = MAX_TILES) -> list[tuple[int, int]]:
    if not 1 <= min_num <= max_num:
        raise ValueError(f"need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}")
    grids = [(c, r) for c in range(1, max_num + 1) for r in range(1, max_num // c + 1) if c * r >= min_num]
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
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return find_closest_aspect_ratio(width / height, candidate_grids(min_num, max_num), width, height, image_size)


def tokens_per_tile(image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE,
                    downsample_ratio: float = DOWNSAMPLE_RATIO) -> int:
    return int((image_size // patch_size) ** 2 * downsample_ratio ** 2)


@dataclass(frozen=True)
class TilingPlan:
    """What the model sees of one width x height image."""
    width: int
    height: int
    cols: int
    rows: int
    tiles: int  # thumbnail included
    tokens: int  # <IMG_CONTEXT> tokens (<img> and </img> not included)

    @classmethod
    def for_size(cls, width: int, height: int, *, min_num: int = MIN_TILES, max_num: int = MAX_TILES,
                 image_size: int = IMAGE_SIZE, use_thumbnail: bool = True) -> TilingPlan:
        cols, rows = target_grid(width, height, min_num=min_num, max_num=max_num, image_size=image_size)
        tiles = cols * rows + (1 if use_thumbnail and cols * rows > 1 else 0)
        return cls(width, height, cols, rows, tiles, tiles * tokens_per_tile(image_size))


def num_tiles(width: int, height: int, **grid) -> int:
    return TilingPlan.for_size(width, height, **grid).tiles


def image_token_count(width: int, height: int, **grid) -> int:
    return TilingPlan.for_size(width, height, **grid).tokens


def dynamic_preprocess(image: Image.Image, min_num: int = MIN_TILES, max_num: int = MAX_TILES,
                       image_size: int = IMAGE_SIZE, use_thumbnail: bool = True) -> list[Image.Image]:
    """Cut an image into its grid of image_size tiles (row-major), then the thumbnail when there are several."""
    image = _to_rgb(image)
    cols, rows = target_grid(*image.size, min_num=min_num, max_num=max_num, image_size=image_size)
    resized = image.resize((image_size * cols, image_size * rows), Image.Resampling.BICUBIC)
    tiles = [resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((image_size, image_size), Image.Resampling.BICUBIC))
    return tiles


def to_tensor(tile: Image.Image, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """One tile -> float32 [3, image_size, image_size] by the official build_transform."""
    from torchvision import transforms as T  # here: checking and tiling images must not pay for importing torch

    return T.Compose([T.Resize((image_size, image_size), T.InterpolationMode.BICUBIC), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(_to_rgb(tile))


def load_image(image: ImageLike, input_size: int = IMAGE_SIZE, max_num: int = MAX_TILES, min_num: int = MIN_TILES,
               use_thumbnail: bool = True, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Open (safely), tile and normalise an image: float32 tensor [tiles, 3, input_size, input_size]."""
    import torch

    tiles = dynamic_preprocess(open_image(image, max_pixels=max_pixels), min_num, max_num, input_size, use_thumbnail)
    return torch.stack([to_tensor(t, input_size) for t in tiles])


def load_tiles(image: ImageLike, input_size: int = IMAGE_SIZE, max_num: int = MAX_TILES, min_num: int = MIN_TILES,
               use_thumbnail: bool = True, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """``load_image`` before its normalising: uint8 tensor [tiles, input_size, input_size, 3] (RGB), a quarter
    of the bytes, for ``normalise`` on the device that runs the model."""
    import torch

    tiles = dynamic_preprocess(open_image(image, max_pixels=max_pixels), min_num, max_num, input_size, use_thumbnail)
    return torch.from_numpy(np.stack([np.asarray(_to_rgb(t)) for t in tiles]))


def normalise(tiles: torch.Tensor, dtype=None, device=None) -> torch.Tensor:
    """uint8 [tiles, H, W, 3] -> [tiles, 3, H, W] by the official ``build_transform``'s arithmetic (ToTensor's
    /255, then Normalize's -mean, /std, in float32), on ``device``: bitwise ``load_image`` wherever float32
    division rounds correctly (CPUs; CUDA without fast-math, as PyTorch builds it), then cast to ``dtype``.
    Contiguous, as ToTensor leaves it: a channels-last tensor, equal in value, made cuDNN's patch convolution
    round differently (LMDeploy's answers changed on 38% of 32-token answers; docs/PERFORMANCE.md, session 9)."""
    import torch

    x = tiles.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous().float().div(255)
    mean, std = (torch.tensor(v, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
                 for v in (IMAGENET_MEAN, IMAGENET_STD))
    x = x.sub(mean).div(std)
    return x if dtype is None else x.to(dtype)

