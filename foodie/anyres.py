"""LLaVA-NeXT's AnyRes, computed as its released code computes it, to compare with InternVL's tiling: pick a canvas
among the released v1.6 ``image_grid_pinpoints``, fit the image and pad it, cut 336-px tiles, encode them and a
336x336 base image with CLIP ViT-L/14-336 (24x24 features each), cut the feature rows that only saw padding and end
each row with a newline embedding: ``576 + rows * (cols + 1)`` visual tokens.

Read (not copied) from haotian-liu/LLaVA at c121f04: ``llava/mm_utils.py`` (``select_best_resolution``,
``resize_and_pad_image``), ``llava/model/llava_arch.py`` (``unpad_image``); the canvases are those of
llava-hf/llava-v1.6-vicuna-7b-hf's config.json (the blog's "up to 1344 px" stops at 1008 px there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

TILE = 336  # CLIP ViT-L/14-336 input side
FEATURES_PER_SIDE = TILE // 14  # 24
BASE_TOKENS = FEATURES_PER_SIDE ** 2  # 576, the base (overview) image
V16_CANVASES = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))  # (width, height)


def best_canvas(width: int, height: int, canvases=V16_CANVASES) -> tuple[int, int]:
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


def unpadded_features(width: int, height: int, cols: int, rows: int) -> tuple[int, int]:
    """(feature rows, feature columns) left of the cols x rows tile grid once the padding is cut away."""
    cur_h, cur_w = rows * FEATURES_PER_SIDE, cols * FEATURES_PER_SIDE
    if width / height > cur_w / cur_h:  # wider than the canvas: padding above and below
        return cur_h - 2 * ((cur_h - int(height * (cur_w / width))) // 2), cur_w
    return cur_h, cur_w - 2 * ((cur_w - int(width * (cur_h / height))) // 2)


@dataclass(frozen=True)
class AnyResPlan:
    """What LLaVA-NeXT sees of one image."""
    canvas_w: int
    canvas_h: int
    crops: int  # images through the ViT: the canvas tiles and the base image
    tokens: int  # visual tokens: the base image, then each unpadded feature row and its newline
    scale: float  # linear resize of the image into the canvas (>1: enlarged)
    padding: float  # share of the canvas that is padding

    @classmethod
    def for_size(cls, width: int, height: int, canvases=V16_CANVASES) -> "AnyResPlan":
        cw, ch = best_canvas(width, height, canvases)
        # the image inside the canvas: aspect ratio kept, rounded up, never beyond the canvas
        scale_w, scale_h = cw / width, ch / height
        if scale_w < scale_h:
            fitted_w, fitted_h = cw, min(math.ceil(height * scale_w), ch)
        else:
            fitted_w, fitted_h = min(math.ceil(width * scale_h), cw), ch
        feature_rows, feature_cols = unpadded_features(width, height, cw // TILE, ch // TILE)
        return cls(cw, ch, (cw // TILE) * (ch // TILE) + 1, BASE_TOKENS + feature_rows * (feature_cols + 1),
                   fitted_w / width, 1 - fitted_w * fitted_h / (cw * ch))
