"""Show what InternVL2 sees of one image: the grid it is cut into, the tiles, the thumbnail.

    python tools/explain_image.py IMAGE [--max-tiles N] [--min-tiles N] [--no-thumbnail] [--out PNG]
    python tools/explain_image.py --list-grids [--max-tiles N]

Writes a PNG contact sheet (default: work/explain/<image name>_tiles.png) with
  1. the original image with the chosen grid drawn over it,
  2. the 448x448 tiles in their grid positions (row-major numbering, as the model reads them),
  3. the 448x448 thumbnail of the whole image (only when there is more than one tile),
and prints the tile count and the image-token budget (256 <IMG_CONTEXT> tokens per tile).

Everything comes from foodie.image_tiling, the code the model uses in training, evaluation and the demo;
images are opened through its safe door (any mode -> RGB, decompression bombs refused).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from foodie import image_tiling as it  # noqa: E402
from foodie.atomic import atomic_path  # noqa: E402
from foodie.paths import work_dir  # noqa: E402

SHEET_WIDTH = 1400  # target width of the contact sheet, pixels
MARGIN = 16
GAP = 6
GRID_COLOUR = (230, 30, 30)
BACKGROUND = (250, 250, 250)
INK = (20, 20, 20)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def fit(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """Largest (w, h) with the image's aspect ratio inside box_w x box_h (at least 1x1)."""
    scale = min(box_w / width, box_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def original_with_grid(image: Image.Image, cols: int, rows: int, box_w: int, box_h: int) -> Image.Image:
    """The image scaled into the box, with the cols x rows tile boundaries drawn on top."""
    w, h = fit(image.width, image.height, box_w, box_h)
    # Tiny images are enlarged with NEAREST so their pixels stay visible; others with BICUBIC.
    resample = Image.Resampling.NEAREST if w > image.width * 4 else Image.Resampling.BICUBIC
    shown = image.resize((w, h), resample)
    draw = ImageDraw.Draw(shown)
    line = max(1, min(w, h) // 150)
    for c in range(1, cols):
        x = round(c * w / cols)
        draw.line([(x, 0), (x, h)], fill=GRID_COLOUR, width=line)
    for r in range(1, rows):
        y = round(r * h / rows)
        draw.line([(0, y), (w, y)], fill=GRID_COLOUR, width=line)
    draw.rectangle([0, 0, w - 1, h - 1], outline=GRID_COLOUR, width=line)
    return shown


def contact_sheet(image: Image.Image, plan: it.TilingPlan, tiles: list[Image.Image], title: str) -> Image.Image:
    """Compose original-with-grid, the tiles in grid layout, and the thumbnail into one picture."""
    cols, rows = plan.cols, plan.rows
    grid_tiles, thumbnail = tiles[: cols * rows], tiles[cols * rows:]
    has_thumb = bool(thumbnail)
    head, label = font(22), font(14)
    line_h = 20
    caption = f"{cols * rows} tile(s) of {it.IMAGE_SIZE}x{it.IMAGE_SIZE}, numbered in row-major order"
    caption += ", then the thumbnail (right)" if has_thumb else ""

    # Tile cells: the grid plus (when present) one thumbnail cell to its right fit the width,
    # and tall grids stay under ~900 px.
    usable = SHEET_WIDTH - 2 * MARGIN
    n_cells = cols + (1 if has_thumb else 0)
    cell = min(200, (usable - GAP * n_cells - (MARGIN if has_thumb else 0)) // n_cells,
               900 // rows - line_h - GAP)
    cell = max(24, cell)
    grid_w = cols * cell + (cols - 1) * GAP
    grid_h = rows * (cell + line_h) + (rows - 1) * GAP
    top = original_with_grid(image, cols, rows, usable, 520)

    content_w = max(top.width, grid_w + (MARGIN + cell if has_thumb else 0),
                    8 + int(head.getlength(title)), 8 + int(label.getlength(caption)))
    height = MARGIN + 34 + top.height + MARGIN + line_h + grid_h + MARGIN
    sheet = Image.new("RGB", (min(SHEET_WIDTH, content_w + 2 * MARGIN), height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, MARGIN), title, fill=INK, font=head)
    y = MARGIN + 34
    sheet.paste(top, (MARGIN, y))
    y += top.height + MARGIN
    draw.text((MARGIN, y), caption, fill=INK, font=label)
    y += line_h
    for i, tile in enumerate(grid_tiles):
        r, c = divmod(i, cols)
        x0, y0 = MARGIN + c * (cell + GAP), y + r * (cell + line_h + GAP)
        draw.text((x0, y0 + 2), f"#{i}", fill=INK, font=label)
        sheet.paste(tile.resize((cell, cell), Image.Resampling.BICUBIC), (x0, y0 + line_h))
    if has_thumb:
        x0 = MARGIN + grid_w + MARGIN
        draw.text((x0, y + 2), f"#{cols * rows} thumbnail", fill=INK, font=label)
        sheet.paste(thumbnail[0].resize((cell, cell), Image.Resampling.BICUBIC), (x0, y + line_h))
    return sheet


def describe(plan: it.TilingPlan, use_thumbnail: bool) -> str:
    per_tile = it.tokens_per_tile()
    grid = f"grid {plan.cols}x{plan.rows} (cols x rows) = {plan.cols * plan.rows} tile(s)"
    thumb = " + 1 thumbnail" if plan.tiles > plan.cols * plan.rows else ""
    return (f"image {plan.width}x{plan.height} -> {grid}{thumb}\n"
            f"tiles: {plan.tiles}\n"
            f"image tokens: {plan.tiles} x {per_tile} = {plan.tokens} <IMG_CONTEXT> "
            f"(+2 for <img> </img> = {plan.tokens + 2} in the prompt)")


def list_grids(min_tiles: int, max_tiles: int) -> None:
    grids = it.candidate_grids(min_tiles, max_tiles)
    print(f"{len(grids)} candidate grids for {min_tiles}..{max_tiles} tiles (cols x rows, aspect = cols/rows):")
    for n in sorted({c * r for c, r in grids}):
        row = [f"{c}x{r} ({c / r:.3g})" for c, r in grids if c * r == n]
        print(f"  {n:2d} tiles: " + ", ".join(row))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", nargs="?", help="image file (any format Pillow reads)")
    ap.add_argument("--max-tiles", type=int, default=it.MAX_TILES,
                    help=f"max_dynamic_patch: most tiles before the thumbnail (default {it.MAX_TILES})")
    ap.add_argument("--min-tiles", type=int, default=it.MIN_TILES,
                    help=f"min_dynamic_patch (default {it.MIN_TILES})")
    ap.add_argument("--no-thumbnail", action="store_true", help="as with use_thumbnail=false")
    ap.add_argument("--out", type=Path, help="PNG to write (default: work/explain/<image name>_tiles.png)")
    ap.add_argument("--list-grids", action="store_true", help="print every candidate grid and exit")
    args = ap.parse_args(argv)

    if not 1 <= args.min_tiles <= args.max_tiles:
        ap.error(f"need 1 <= --min-tiles <= --max-tiles, got {args.min_tiles} and {args.max_tiles}")
    if args.list_grids:
        list_grids(args.min_tiles, args.max_tiles)
        return 0
    if not args.image:
        ap.error("give an IMAGE (or --list-grids)")

    try:
        image = it.open_image(args.image)
    except it.ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    use_thumbnail = not args.no_thumbnail
    plan = it.TilingPlan.for_size(image.width, image.height, min_num=args.min_tiles, max_num=args.max_tiles,
                                  use_thumbnail=use_thumbnail)
    tiles = it.dynamic_preprocess(image, min_num=args.min_tiles, max_num=args.max_tiles,
                                  use_thumbnail=use_thumbnail)
    assert len(tiles) == plan.tiles, (len(tiles), plan)

    out = args.out or work_dir() / "explain" / f"{Path(args.image).stem}_tiles.png"
    if out.suffix.lower() != ".png":
        ap.error(f"--out must end in .png, got {out}")
    title = (f"{Path(args.image).name}: {plan.width}x{plan.height} -> {plan.cols}x{plan.rows} grid, "
             f"{plan.tiles} tiles, {plan.tokens} image tokens")
    sheet = contact_sheet(image, plan, tiles, title)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    print(describe(plan, use_thumbnail))
    print(f"contact sheet: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
