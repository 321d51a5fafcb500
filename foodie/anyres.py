"""LLaVA-NeXT's AnyRes, computed as its released code computes it, to compare with InternVL's tiling.

1. choose a canvas among ``image_grid_pinpoints`` ((width, height) px): the one keeping most of the image's pixels
   once fitted inside (never more than the image has), then the one wasting the fewest canvas pixels;
2. resize the image keeping its aspect ratio, pad the rest (black), cut the canvas into 336x336 tiles;
3. encode the tiles and a base image (the whole image at 336x336) with CLIP ViT-L/14-336: 24x24 = 576 features each;
4. regrid the tiles' features, cut the rows (or columns) that only saw padding, append a newline embedding after
   every row, base image first: ``576 + rows * (cols + 1)`` visual tokens.

Read (not copied) from haotian-liu/LLaVA at c121f04: ``llava/mm_utils.py`` (``select_best_resolution``,
``resize_and_pad_image``, ``process_anyres_image``), ``llava/model/llava_arch.py`` (``unpad_image``, the
``spatial_unpad`` branch); the canvases of the released v1.6 checkpoints' config.json (llava-hf/llava-v1.6-vicuna-7b-hf;
the blog's "up to 672x672, 336x1344, 1344x336" stops at 1008 px in the released configs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

TILE = 336  # CLIP ViT-L/14-336 input side
PATCH = 14
FEATURES_PER_SIDE = TILE // PATCH  # 24
BASE_TOKENS = FEATURES_PER_SIDE ** 2  # 576, the base (overview) image
# (width, height) canvases of the released LLaVA-NeXT v1.6 checkpoints (config.json image_grid_pinpoints)
V16_CANVASES: tuple[tuple[int, int], ...] = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def best_canvas(width: int, height: int,
                canvases: tuple[tuple[int, int], ...] = V16_CANVASES) -> tuple[int, int]:
    """The (width, height) canvas AnyRes picks: most effective pixels, then least waste, then list order."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    best, best_effective, best_waste = None, 0, float("inf")
    for cw, ch in canvases:
        scale = min(cw / width, ch / height)
        # int() truncation and the cap at the image's own pixel count are the released code's arithmetic
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cw * ch - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (cw, ch), effective, waste
    return best


def fitted_size(width: int, height: int, canvas_w: int, canvas_h: int) -> tuple[int, int]:
    """Size of the image inside the canvas (aspect ratio kept, rounded up, never beyond the canvas)."""
    scale_w, scale_h = canvas_w / width, canvas_h / height
    if scale_w < scale_h:
        return canvas_w, min(math.ceil(height * scale_w), canvas_h)
    return min(math.ceil(width * scale_h), canvas_w), canvas_h


def unpadded_features(width: int, height: int, cols: int, rows: int,
                      side: int = FEATURES_PER_SIDE) -> tuple[int, int]:
    """(feature rows, feature columns) left of the cols x rows tile grid once the padding is cut away."""
    cur_h, cur_w = rows * side, cols * side
    if width / height > cur_w / cur_h:  # wider than the canvas: padding above and below
        new_h = int(height * (cur_w / width))
        pad = (cur_h - new_h) // 2
        return cur_h - 2 * pad, cur_w
    new_w = int(width * (cur_h / height))
    pad = (cur_w - new_w) // 2
    return cur_h, cur_w - 2 * pad


@dataclass(frozen=True)
class AnyResPlan:
    """What LLaVA-NeXT sees of one image."""
    width: int
    height: int
    canvas_w: int
    canvas_h: int
    fitted_w: int  # the image inside the canvas; the rest is padding
    fitted_h: int
    cols: int  # 336-px tiles of the canvas
    rows: int
    feature_rows: int  # after unpadding
    feature_cols: int

    @classmethod
    def for_size(cls, width: int, height: int,
                 canvases: tuple[tuple[int, int], ...] = V16_CANVASES) -> "AnyResPlan":
        cw, ch = best_canvas(width, height, canvases)
        fw, fh = fitted_size(width, height, cw, ch)
        cols, rows = cw // TILE, ch // TILE
        fr, fc = unpadded_features(width, height, cols, rows)
        return cls(width, height, cw, ch, fw, fh, cols, rows, fr, fc)

    @property
    def crops(self) -> int:
        """Images through the ViT: the canvas tiles plus the base image."""
        return self.cols * self.rows + 1

    @property
    def tokens(self) -> int:
        """Visual tokens in the LLM's input: base image, then each unpadded row followed by a newline."""
        return BASE_TOKENS + self.feature_rows * (self.feature_cols + 1)

    @property
    def scale(self) -> float:
        """Linear resize factor of the image into the canvas (>1: enlarged)."""
        return self.fitted_w / self.width

    @property
    def padding(self) -> float:
        """Share of the canvas that is padding."""
        return 1 - (self.fitted_w * self.fitted_h) / (self.canvas_w * self.canvas_h)
