"""Show what InternVL2 sees of one image: the grid it is cut into, the tiles, the thumbnail.

    python docs/examples/explain_image.py IMAGE | --size WxH   # tiles, image tokens, stretch (+ a contact sheet)
    python docs/examples/explain_image.py --list-grids | --compare anyres | --pixel-shuffle | --connectors

The last modes print the answers of the docs' exercises; --help lists the options.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

from foodie import cli
from foodie import image_tiling as it
from foodie.atomic import atomic_path
from foodie.paths import work_dir

SHEET_WIDTH, MARGIN, GAP = 1400, 16, 6  # pixels
GRID_COLOUR, BACKGROUND, INK = (230, 30, 30), (250, 250, 250), (20, 20, 20)
# --compare: a small photo, one tile, the tie rule at work, photo and screen sizes, our example, a phone photo, a strip
COMPARE_SIZES = ((300, 200), (448, 448), (700, 700), (800, 600), (1141, 760), (1920, 1080), (4032, 3024),
                 (10000, 100))
# --connectors: (model, vision encoder and width, LLM and width), widths from the models' config.json files
CONNECTORS = (("InternVL2-2B", "InternViT-300M", 1024, "InternLM2-chat-1.8B", 2048),
              ("InternVL 1.5", "InternViT-6B", 3200, "InternLM2-chat-20B", 6144))
LLAVA15_PROJECTOR = ("LLaVA-1.5-7B", "CLIP ViT-L/14-336", 1024, "Vicuna-7B", 4096)  # mm_projector mlp2x_gelu
QFORMER_PARAMS = 188_000_000  # BLIP-2 paper, section 3.1 ("Q-Former ... contains 188M parameters")


def main(argv: list[str] | None = None) -> int:
    ap = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", nargs="?", help="image file (any format Pillow reads)")
    ap.add_argument("--max-tiles", type=int, default=it.MAX_TILES, help="max_dynamic_patch (default %(default)s)")
    ap.add_argument("--no-thumbnail", action="store_true", help="as with use_thumbnail=false")
    ap.add_argument("--out", type=Path, help="PNG to write (default: work/explain/<image name>_tiles.png)")
    ap.add_argument("--size", type=parse_size, action="append", metavar="WxH", help="an image size (repeatable)")
    ap.add_argument("--tile-size", type=int, default=it.IMAGE_SIZE, help="force_image_size (default %(default)s)")
    ap.add_argument("--list-grids", action="store_true", help="print every candidate grid")
    ap.add_argument("--compare", choices=["anyres"], help="compare InternVL2's tiling with LLaVA-NeXT's AnyRes")
    ap.add_argument("--pixel-shuffle", action="store_true", help="the model's pixel_shuffle on a 4x4 arange grid")
    ap.add_argument("--connectors", action="store_true", help="print the projector parameter counts")
    args = ap.parse_args(argv)
    if args.max_tiles < 1:
        ap.error(f"--max-tiles must be at least 1, got {args.max_tiles}")
    if args.tile_size < it.PATCH_SIZE or args.tile_size % it.PATCH_SIZE:
        ap.error(f"--tile-size must be a multiple of the {it.PATCH_SIZE}-pixel patch, got {args.tile_size}")
    grid = dict(max_num=args.max_tiles, image_size=args.tile_size, use_thumbnail=not args.no_thumbnail)
    if args.list_grids:
        list_grids(args.max_tiles)
    elif args.compare:
        compare_anyres(args.size or COMPARE_SIZES, args.max_tiles)
    elif args.pixel_shuffle or args.connectors:
        print(pixel_shuffle_exercise() if args.pixel_shuffle else connectors())
    elif bool(args.size) == bool(args.image):
        ap.error("give an IMAGE or --size WxH (or --list-grids, --compare, --pixel-shuffle, --connectors)")
    elif args.size:
        for w, h in args.size:
            print(describe(it.TilingPlan.for_size(w, h, **grid), args.tile_size))
    else:
        out = args.out or work_dir() / "explain" / f"{Path(args.image).stem}_tiles.png"
        if out.suffix.lower() != ".png":
            ap.error(f"--out must end in .png, got {out}")
        return explain(Path(args.image), out, grid)
    return 0


def parse_size(text: str) -> tuple[int, int]:
    size = re.fullmatch(r"0*([1-9]\d*)x0*([1-9]\d*)", text.strip().lower())
    if not size:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT in positive pixels, e.g. 1920x1080, got {text!r}")
    return int(size[1]), int(size[2])


# ---- IMAGE and --size: the plan, and a contact sheet of the tiles

def explain(path: Path, out: Path, grid: dict) -> int:
    try:
        image = it.open_image(path)
    except it.ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan = it.TilingPlan.for_size(image.width, image.height, **grid)
    title = (f"{path.name}: {plan.width}x{plan.height} -> {plan.cols}x{plan.rows} grid, {plan.tiles} tiles, "
             f"{plan.tokens} image tokens")
    with atomic_path(out) as tmp:
        contact_sheet(image, plan, it.dynamic_preprocess(image, **grid), title, grid["image_size"]).save(tmp, "PNG")
    print(describe(plan, grid["image_size"]))
    print(f"contact sheet: {out}")
    return 0


def describe(plan: it.TilingPlan, tile: int) -> str:
    thumb = " + 1 thumbnail" if plan.tiles > plan.cols * plan.rows else ""
    sx, sy = grid_scale(plan, tile)
    return (f"image {plan.width}x{plan.height} -> grid {plan.cols}x{plan.rows} (cols x rows) = "
            f"{plan.cols * plan.rows} tile(s){thumb}\ntiles: {plan.tiles}\n"
            f"image tokens: {plan.tiles} x {it.tokens_per_tile(tile)} = {plan.tokens} <IMG_CONTEXT> "
            f"(+2 for <img> </img> = {plan.tokens + 2} in the prompt)\n"
            f"resized to {tile * plan.cols}x{tile * plan.rows}: x{sx:.2f} wide, x{sy:.2f} high "
            f"(aspect ratio x{sx / sy:.2f})")


def grid_scale(plan: it.TilingPlan, tile: int = it.IMAGE_SIZE) -> tuple[float, float]:
    """(horizontal, vertical) resize factors of the image onto its grid of tiles."""
    return tile * plan.cols / plan.width, tile * plan.rows / plan.height


def contact_sheet(image: Image.Image, plan: it.TilingPlan, tiles: list[Image.Image], title: str,
                  tile: int) -> Image.Image:
    """The original with its grid on top; below, the tiles in grid layout and the thumbnail at the right."""
    cols, rows, n = plan.cols, plan.rows, plan.cols * plan.rows
    thumb = tiles[n:]  # none or one
    head, label, line_h = ImageFont.load_default(size=22), ImageFont.load_default(size=14), 20
    caption = f"{n} tile(s) of {tile}x{tile}, numbered in row-major order" + ", then the thumbnail (right)" * len(thumb)
    # Cells: the grid and the thumbnail cell to its right fit the width; tall grids stay under ~900 px.
    usable, cells = SHEET_WIDTH - 2 * MARGIN, cols + len(thumb)
    cell = max(24, min(200, (usable - GAP * cells - MARGIN * len(thumb)) // cells, 900 // rows - line_h - GAP))
    grid_w = cols * cell + (cols - 1) * GAP
    top = original_with_grid(image, cols, rows, usable, 520)
    width = max(top.width, grid_w + (MARGIN + cell) * len(thumb), 8 + int(head.getlength(title)),
                8 + int(label.getlength(caption)))
    y = MARGIN + 34 + top.height + MARGIN + line_h  # where the tiles start
    sheet = Image.new("RGB", (min(SHEET_WIDTH, width + 2 * MARGIN), y + rows * (cell + line_h + GAP) - GAP + MARGIN),
                      BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, MARGIN), title, fill=INK, font=head)
    sheet.paste(top, (MARGIN, MARGIN + 34))
    draw.text((MARGIN, y - line_h), caption, fill=INK, font=label)
    shown = [(f"#{i}", t, MARGIN + i % cols * (cell + GAP), y + i // cols * (cell + line_h + GAP))
             for i, t in enumerate(tiles[:n])] + [(f"#{n} thumbnail", t, MARGIN + grid_w + MARGIN, y) for t in thumb]
    for text, t, x0, y0 in shown:
        draw.text((x0, y0 + 2), text, fill=INK, font=label)
        sheet.paste(t.resize((cell, cell), Image.Resampling.BICUBIC), (x0, y0 + line_h))
    return sheet


def original_with_grid(image: Image.Image, cols: int, rows: int, box_w: int, box_h: int) -> Image.Image:
    scale = min(box_w / image.width, box_h / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    # tiny images are enlarged with NEAREST so their pixels stay visible
    shown = image.resize((w, h), Image.Resampling.NEAREST if w > image.width * 4 else Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(shown)
    line = max(1, min(w, h) // 150)
    for c in range(1, cols):
        draw.line([(round(c * w / cols), 0), (round(c * w / cols), h)], fill=GRID_COLOUR, width=line)
    for r in range(1, rows):
        draw.line([(0, round(r * h / rows)), (w, round(r * h / rows))], fill=GRID_COLOUR, width=line)
    draw.rectangle([0, 0, w - 1, h - 1], outline=GRID_COLOUR, width=line)
    return shown


# ---- --list-grids

def list_grids(max_tiles: int) -> None:
    grids = it.candidate_grids(it.MIN_TILES, max_tiles)
    print(f"{len(grids)} candidate grids for {it.MIN_TILES}..{max_tiles} tiles (cols x rows, aspect = cols/rows):")
    for n in sorted({c * r for c, r in grids}):
        print(f"  {n:2d} tiles: " + ", ".join(f"{c}x{r} ({c / r:.3g})" for c, r in grids if c * r == n))
    by_ratio: dict[Fraction, list[str]] = {}
    for c, r in grids:
        by_ratio.setdefault(Fraction(c, r), []).append(f"{c}x{r}")
    print(f"{len(by_ratio)} distinct aspect ratios: {len(grids) - len(by_ratio)} grids repeat the ratio of a "
          f"smaller grid, so the ratio alone cannot choose between them (the tie rule looks at the image's size):")
    for ratio, names in sorted(by_ratio.items()):
        if len(names) > 1:
            print(f"  {float(ratio):.3g}: " + ", ".join(names))


# ---- --compare anyres: LLaVA-NeXT's AnyRes as its released code computes it (haotian-liu/LLaVA at c121f04, read,
# not copied: llava/mm_utils.py select_best_resolution and resize_and_pad_image, llava/model/llava_arch.py
# unpad_image), with the canvases of llava-hf/llava-v1.6-vicuna-7b-hf's config.json (the blog's 1344 px is not there)

TILE = 336  # CLIP ViT-L/14-336 input side
FEATURES_PER_SIDE = TILE // 14  # 24
BASE_TOKENS = FEATURES_PER_SIDE ** 2  # 576, the base (overview) image
V16_CANVASES = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))  # (width, height)


def compare_anyres(sizes, max_tiles: int) -> None:
    canvases = " ".join(f"{w}x{h}" for w, h in V16_CANVASES)
    print(f"InternVL2: {it.IMAGE_SIZE}-px tiles, grid closest in aspect ratio among {it.MIN_TILES}..{max_tiles} "
          f"tiles, image stretched onto it, thumbnail last, {it.tokens_per_tile()} tokens per tile (+2 for <img> "
          f"</img>).")
    print(f"LLaVA-NeXT AnyRes: {TILE}-px tiles, canvas with the most effective pixels (then least waste) "
          f"among {canvases}, image fitted and padded, base image first ({BASE_TOKENS} tokens), "
          f"unpadded rows each followed by a newline token.")
    print("\n| image | InternVL2 grid | tiles | tokens | scale w, h | aspect | AnyRes canvas | crops | tokens "
          "| scale | padding |\n" + "|---" * 11 + "|")
    for w, h in sizes:
        plan, a = it.TilingPlan.for_size(w, h, max_num=max_tiles), AnyResPlan.for_size(w, h)
        sx, sy = grid_scale(plan)
        print(f"| {w}x{h} | {plan.cols}x{plan.rows} | {plan.tiles} | {plan.tokens:,} | x{sx:.2f}, x{sy:.2f} "
              f"| x{sx / sy:.2f} | {a.canvas_w}x{a.canvas_h} | {a.crops} | {a.tokens:,} | x{a.scale:.2f} "
              f"| {a.padding:.0%} |")
    print("\ntiles/crops count the thumbnail or base image; aspect = how much wider (x>1) or narrower the image "
          "is made; padding = share of the AnyRes canvas that is black padding.")
    # transformers' LLaVA-NeXT port reads image_grid_pinpoints as (height, width), the LLaVA code as (width, height)
    transposed = tuple((h, w) for w, h in V16_CANVASES)
    for w, h in sizes:
        ours, port = AnyResPlan.for_size(w, h), AnyResPlan.for_size(w, h, transposed)
        if (ours.canvas_w, ours.canvas_h) != (port.canvas_w, port.canvas_h):
            print(f"transformers' port reads the canvas list as (height, width); on a tie it picks another canvas: "
                  f"{w}x{h} -> {port.canvas_w}x{port.canvas_h}, {port.tokens:,} tokens there")
            break


class AnyResPlan(NamedTuple):
    """What LLaVA-NeXT sees of one image."""
    canvas_w: int
    canvas_h: int
    crops: int  # images through the ViT: the canvas tiles and the base image
    tokens: int  # visual tokens: the base image, then each unpadded feature row and its newline
    scale: float  # linear resize of the image into the canvas (>1: enlarged)
    padding: float  # share of the canvas that is padding

    @classmethod
    def for_size(cls, width: int, height: int, canvases=V16_CANVASES) -> AnyResPlan:
        cw, ch = best_canvas(width, height, canvases)
        # the image inside the canvas: aspect ratio kept, rounded up, never beyond the canvas
        if cw / width < ch / height:
            fitted_w, fitted_h = cw, min(math.ceil(height * cw / width), ch)
        else:
            fitted_w, fitted_h = min(math.ceil(width * ch / height), cw), ch
        feature_rows, feature_cols = unpadded_features(width, height, cw // TILE, ch // TILE)
        return cls(cw, ch, (cw // TILE) * (ch // TILE) + 1, BASE_TOKENS + feature_rows * (feature_cols + 1),
                   fitted_w / width, 1 - fitted_w * fitted_h / (cw * ch))


def best_canvas(width: int, height: int, canvases=V16_CANVASES) -> tuple[int, int]:
    """The (width, height) canvas AnyRes picks: most effective pixels, then least waste, then list order."""
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


# ---- --pixel-shuffle and --connectors

def pixel_shuffle(x, ps_version: str = "v2"):
    """The model's own ``InternVLChatModel.pixel_shuffle(x, 0.5)``, given the one attribute it reads."""
    from foodie.remote_code.modeling_internvl_chat import InternVLChatModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # v1's "transposed image" warning: showing it is the point
        return InternVLChatModel.pixel_shuffle(SimpleNamespace(ps_version=ps_version), x, scale_factor=0.5)


def pixel_shuffle_exercise() -> str:
    import torch

    x = torch.arange(16).reshape(1, 4, 4, 1)
    y, t, real = pixel_shuffle(x), pixel_shuffle(x, "v1"), pixel_shuffle(torch.zeros(1, 32, 32, 1024))
    return "\n".join([f"input  {list(x.shape)}  = torch.arange(16).reshape(1, 4, 4, 1): [tiles, rows, cols, channels], "
                      f"patch (r, c) holds 4*r + c"]
                     + ["  " + " ".join(f"{int(v):2d}" for v in row) for row in x[0, :, :, 0]]
                     + [f"output {list(y.shape)}  pixel_shuffle(x, 0.5) with ps_version v2 (InternVL2's config): "
                        f"each token stacks a 2x2 block of patches into its channels"]
                     + [f"  token ({r}, {c}) <- {[int(v) for v in y[0, r, c]]}" for r in range(2) for c in range(2)]
                     + [f"with ps_version v1 the grid stays transposed: token (0, 1) <- {[int(v) for v in t[0, 0, 1]]}",
                        f"InternVL2-2B, one 448-px tile: [1, 32, 32, 1024] -> {list(real.shape)} -> "
                        f"{real.shape[1] * real.shape[2]} tokens of width {real.shape[3]}"])


def connectors() -> str:
    name, vit, c, llm, d = LLAVA15_PROJECTOR
    return "\n".join(["mlp1 = LayerNorm(4C) -> Linear(4C, D) -> GELU -> Linear(D, D), C = ViT width, D = LLM width:"]
                     + [f"  {n:13s} {v} C={vc}, {m} D={md}: {mlp1_parameters(vc, md):,} parameters"
                        for n, v, vc, m, md in CONNECTORS]
                     + ["mm_projector (mlp2x_gelu) = Linear(C, D) -> GELU -> Linear(D, D), no pixel shuffle:",
                        f"  {name:13s} {vit} C={c}, {llm} D={d}: {llava_projector_parameters(c, d):,} parameters",
                        f"  BLIP-2 Q-Former (32 queries of width 768, from BERT-base): about {QFORMER_PARAMS:,} "
                        f"parameters"])


def mlp1_parameters(vit_hidden: int, llm_hidden: int, downsample_ratio: float = it.DOWNSAMPLE_RATIO) -> int:
    """InternVL's mlp1: LayerNorm(d) -> Linear(d, llm) -> GELU -> Linear(llm, llm), d = vit * 4."""
    d = vit_hidden * int(1 / downsample_ratio) ** 2
    return 2 * d + llava_projector_parameters(d, llm_hidden)


def llava_projector_parameters(vit_hidden: int, llm_hidden: int) -> int:
    """LLaVA-1.5's mm_projector: Linear(vit, llm) -> GELU -> Linear(llm, llm)."""
    return (vit_hidden * llm_hidden + llm_hidden) + (llm_hidden * llm_hidden + llm_hidden)


if __name__ == "__main__":
    sys.exit(cli.run(main))
