"""Draw the docs' figures with our own code (counts from foodie.image_tiling, the model's own pixel_shuffle), so
they can be regenerated and checked (tests/test_figures.py).

    python docs/examples/make_figures.py --out docs/images [--only qformer_masks|internvl_architecture|pixel_shuffle]
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import torch
from matplotlib.patches import FancyArrowPatch, Rectangle

from foodie import cli
from foodie import image_tiling as it
from foodie.atomic import atomic_path
from foodie.paths import REPO_ROOT as REPO

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

DPI = 100
EXAMPLE = REPO / "docs" / "images" / "example_mapo_tofu.jpg"
QUERY, TEXT, IMAGE, MODULE, MASKED = "#f4a259", "#5b8e7d", "#bc4b51", "#e9ecef", "#f8f9fa"
ALLOWED = "#264653"


def main(argv: list[str] | None = None) -> int:
    ap = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="folder (default: %(default)s)")
    ap.add_argument("--only", choices=sorted(FIGURES), action="append", help="draw only this figure (repeatable)")
    args = ap.parse_args(argv)
    for name in args.only or FIGURES:
        path = args.out / f"{name}.png"
        FIGURES[name](path)
        print(f"{path}  ({path.stat().st_size // 1024} KB)")
    return 0


# 1. Q-Former and its three masks (BLIP-2, section 3.2 and Figure 2)

N_QUERIES, N_TEXT = 4, 4  # drawn sizes; BLIP-2 uses 32 queries
MASKS = {  # may position i (row) attend to position j (column)? qi, qj: is it a query (queries first, then text)
    "ITM": ("image-text matching\nbi-directional mask", lambda i, j, qi, qj: True),
    "ITG": ("image-grounded text generation\nmultimodal causal mask", lambda i, j, qi, qj: qj or (not qi and j <= i)),
    "ITC": ("image-text contrastive\nuni-modal mask", lambda i, j, qi, qj: qi == qj),
}


def qformer_mask(kind: str) -> list[list[bool]]:
    if kind not in MASKS:
        raise ValueError(f"no Q-Former mask {kind!r}: one of {', '.join(MASKS)}")
    n, rule = N_QUERIES + N_TEXT, MASKS[kind][1]
    return [[rule(i, j, i < N_QUERIES, j < N_QUERIES) for j in range(n)] for i in range(n)]


def draw_qformer(path: Path) -> None:
    fig, ax = figure(4.2, (0.0, 0.0, 0.36, 1.0), 10, 10)
    ax.text(5, 9.6, "Q-Former (BLIP-2, stage 1)", ha="center", fontsize=11, weight="bold")
    box(ax, 0.2, 0.3, 3.6, 1.0, "frozen image encoder", IMAGE, size=8)
    box(ax, 4.4, 1.8, 2.4, 0.8, "learned queries\n32 x 768", QUERY, size=8)
    box(ax, 7.2, 1.8, 2.6, 0.8, "text tokens", TEXT, size=8)
    ax.add_patch(Rectangle((0.9, 3.1), 9.0, 4.6, fill=False, linestyle="--", edgecolor="#6c757d"))
    ax.text(1.1, 3.3, "x N blocks", fontsize=7.5, color="#6c757d")
    box(ax, 4.4, 3.7, 5.4, 0.9, "self-attention, shared by both\nbranches; the mask decides\nwho sees whom", size=7.5)
    box(ax, 1.1, 5.1, 5.7, 0.9, "cross-attention to the image features\n(every other block, queries only)", size=8)
    box(ax, 4.4, 6.6, 2.4, 0.8, "feed forward", size=8)
    box(ax, 7.2, 6.6, 2.6, 0.8, "feed forward", size=8)
    for x, y0, y1 in ((5.6, 2.6, 3.7), (8.5, 2.6, 3.7), (5.6, 4.6, 5.1), (5.6, 6.0, 6.6), (8.5, 4.6, 6.6),
                      (2.0, 1.3, 5.1)):
        arrow(ax, (x, y0), (x, y1))
    ax.text(2.1, 2.2, "image\nfeatures", fontsize=7.5)
    ax.text(5.4, 8.2, "32 query outputs -> ITC, ITM (stage 2: the LLM's input)\ntext outputs -> ITC ([CLS]), ITG",
            ha="center", fontsize=7.5)
    ax.text(5.0, 0.55, "BERT-base initialised,\n188M parameters", fontsize=7.5, ha="left")
    labels = [f"Q{i + 1}" for i in range(N_QUERIES)] + [f"T{i + 1}" for i in range(N_TEXT)]
    n = len(labels)
    for k, (kind, (title, _)) in enumerate(MASKS.items()):
        mx = fig.add_axes([0.40 + k * 0.205, 0.12, 0.17, 0.62])
        allowed = qformer_mask(kind)
        for i in range(n):
            for j in range(n):
                box(mx, j, n - 1 - i, 1, 1, colour=ALLOWED if allowed[i][j] else MASKED, edge="white")
        mx.set(xlim=(0, n), ylim=(0, n))
        mx.set_xticks([i + 0.5 for i in range(n)], labels, fontsize=7)
        mx.set_yticks([n - 1 - i + 0.5 for i in range(n)], labels, fontsize=7)
        for t, lab in zip(mx.get_xticklabels() + mx.get_yticklabels(), labels + labels):
            t.set_color(QUERY if lab.startswith("Q") else TEXT)
            t.set_weight("bold")
        mx.tick_params(length=0)
        mx.set_title(f"{kind}: {title}", fontsize=8.5)
        mx.set_xlabel("attends to (keys)", fontsize=7.5)
        if k == 0:
            mx.set_ylabel("query position (row)", fontsize=7.5)
    fig.text(0.70, 0.90, "dark = may attend; Q = learned query, T = text token", ha="center", fontsize=9)
    save(fig, path)


# 2. InternVL 1.5 / 2: ViT-MLP-LLM with tiles and thumbnail

def draw_architecture(path: Path) -> None:
    image = it.open_image(EXAMPLE)
    plan = it.TilingPlan.for_size(image.width, image.height)
    tiles = it.dynamic_preprocess(image)
    per_tile = it.tokens_per_tile()
    fig, ax = figure(4.4)
    ax.text(55, 41.5, f"InternVL 1.5 / 2: ViT-MLP-LLM (InternVL2-2B sizes; our {image.width}x{image.height} example "
                      f"-> {plan.cols}x{plan.rows} grid + thumbnail)", ha="center", fontsize=11, weight="bold")
    # tiles, row-major, then the thumbnail (drawn small: the picture only has to show the layout)
    s, gap, x0, y0 = 5.2, 0.5, 1.0, 21.0
    for i, tile in enumerate(tiles[: plan.cols * plan.rows]):
        r, c = divmod(i, plan.cols)
        x, y = x0 + c * (s + gap), y0 + (plan.rows - 1 - r) * (s + gap)
        ax.imshow(tile.resize((48, 48)), extent=(x, x + s, y, y + s))
        ax.text(x + 0.4, y + s - 0.5, f"{i + 1}", color="white", fontsize=7, va="top", weight="bold")
    tx = x0 + plan.cols * (s + gap) + 1.5
    ax.imshow(tiles[-1].resize((48, 48)), extent=(tx, tx + s, y0, y0 + s))
    ax.text(tx + s / 2, y0 - 1.2, "thumbnail", ha="center", fontsize=7.5)
    ax.text(x0, y0 + plan.rows * (s + gap) + 0.8,
            f"{plan.cols * plan.rows} tiles of {it.IMAGE_SIZE}x{it.IMAGE_SIZE} + 1 thumbnail = {plan.tiles}",
            fontsize=8.5)

    steps = [(f"InternViT-300M\n{plan.tiles} x [1025, 1024]\n(32x32 patches\n+ [CLS])", IMAGE),
             ("pixel shuffle 0.5\n[32, 32, 1024] ->\n[16, 16, 4096]", MODULE),
             (f"mlp1: LayerNorm,\nLinear, GELU, Linear\n-> [{per_tile}, 2048] per tile", QUERY),
             ("InternLM2-1.8B\n(LLM)", TEXT)]
    x = 33.0
    for k, (label, colour) in enumerate(steps):
        box(ax, x, 21.5, 16, 9, label, colour, size=8.5)
        arrow(ax, (x - 3.2 if k else tx + s + 0.6, 26), (x, 26))
        x += 19.5
    # the prompt the LLM reads
    y = 6.0
    ax.text(1.0, y + 5.5, "the LLM's input sequence (image tokens replace the <IMG_CONTEXT> placeholders, in order):",
            fontsize=8.5)
    parts = [("<img>", 3.8, MODULE)] + [(f"tile {i + 1}\n{per_tile}", 6.6, QUERY) for i in range(plan.cols * plan.rows)]
    parts += [(f"thumb\n{per_tile}", 6.6, IMAGE), ("</img>", 4.2, MODULE), ("question ...", 9.0, TEXT)]
    px = 1.0
    for label, w, colour in parts:
        box(ax, px, y, w, 4.2, label, colour, size=7.5)
        px += w + 0.3
    ax.text(px + 1, y + 2.1, f"= {plan.tokens:,} image tokens + 2 markers\n({plan.tiles} x {per_tile})",
            fontsize=8.5, va="center")
    arrow(ax, (px - 0.3, y + 4.2), (99.5, 21.5), connectionstyle="arc3,rad=0.2")
    ax.text(1.0, 1.5, "InternVL 1.5 (InternViT-6B + InternLM2-20B) has the same layout; training uses 1..12 tiles, "
                      "testing up to 40 (4K).", fontsize=8)
    save(fig, path)


# 3. Pixel shuffle on a 4x4 grid

BLOCK_COLOURS = ("#f4a259", "#5b8e7d", "#8cb369", "#bc4b51")


def draw_pixel_shuffle(path: Path) -> None:
    from foodie.remote_code.modeling_internvl_chat import InternVLChatModel

    x = torch.arange(16).reshape(1, 4, 4, 1)
    y = InternVLChatModel.pixel_shuffle(SimpleNamespace(ps_version="v2"), x, scale_factor=0.5)  # the model's own
    side, out = x.shape[1], y.shape[1]
    fig, ax = figure(4.0)
    ax.text(55, 37, "pixel shuffle (ratio 0.5): every 2x2 block of patches becomes one token with 4x the channels",
            ha="center", fontsize=11, weight="bold")
    cell, gx, gy = 6.0, 4.0, 4.0
    for r in range(side):
        for c in range(side):
            box(ax, gx + c * cell, gy + (side - 1 - r) * cell, cell, cell, f"{int(x[0, r, c, 0])}",
                BLOCK_COLOURS[(r // 2) * (side // 2) + c // 2], 12, "white", 2, color="white", weight="bold")
    ax.text(gx, gy + side * cell + 1.5,
            f"input {list(x.shape)}: torch.arange({side * side}), 1 channel per patch", fontsize=9)
    arrow(ax, (gx + side * cell + 2, gy + side * cell / 2), (gx + side * cell + 12, gy + side * cell / 2))
    ax.text(gx + side * cell + 7, gy + side * cell / 2 + 1.5, "pixel_shuffle", ha="center", fontsize=9)
    ox, oy, ocell = 46.0, 4.0, 12.0
    for r in range(out):
        for c in range(out):
            bx, by = ox + c * ocell, oy + (out - 1 - r) * ocell
            for k, v in enumerate(y[0, r, c]):  # the token's 4 channels, drawn as a row of 4 small cells
                box(ax, bx + 1 + k * 2.5, by + 2, 2.5, 7, f"{int(v)}", BLOCK_COLOURS[r * out + c], 9, "white",
                    color="white", weight="bold")
            ax.text(bx + ocell / 2 - 0.5, by + 10.2, f"token ({r}, {c})", ha="center", fontsize=8)
    ax.text(ox + out * ocell / 2, oy + out * ocell + 1.5, f"output {list(y.shape)} (ps_version v2)",
            ha="center", fontsize=9)
    ax.text(75, 26, "InternVL2-2B, per 448-px tile:", fontsize=9.5, weight="bold")
    ax.text(75, 14.5, "[32, 32, 1024]  ViT patch features\n"
                      "        |  pixel shuffle\n"
                      "[16, 16, 4096]  = 256 tokens\n"
                      "        |  mlp1 (4096 -> 2048)\n"
                      "[256, 2048]  LLM width", fontsize=9, family="monospace")
    ax.text(75, 8.5, "nothing is dropped: the 4 patches'\nvalues sit side by side in one token", fontsize=8.5)
    save(fig, path)


# Drawing helpers

def box(ax, x, y, w, h, text="", colour=MODULE, size=9, edge="#343a40", width=1, **text_style):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=colour, edgecolor=edge, linewidth=width))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, wrap=True, **text_style)


def arrow(ax, a, b, **kw):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=10, linewidth=1, color="#343a40", **kw))


def figure(height: float, rect=(0, 0, 1, 1), xmax: float = 110, ymax: float = None):
    """An 11-inch-wide figure and its drawing area, axes off, (0, 0) at the bottom left."""
    fig = plt.figure(figsize=(11, height), dpi=DPI)
    ax = fig.add_axes(rect)
    ax.set(xlim=(0, xmax), ylim=(0, ymax or round(height * 10)))
    ax.axis("off")
    return fig, ax


def save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)


FIGURES = {"qformer_masks": draw_qformer, "internvl_architecture": draw_architecture,
           "pixel_shuffle": draw_pixel_shuffle}


if __name__ == "__main__":
    sys.exit(cli.run(main))
