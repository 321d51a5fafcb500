"""Follow one image through InternVL2 and print every tensor shape on the way, computed by hand with the model's
own modules and checked against its extract_feature.

    python docs/examples/walkthrough_shapes.py [--model DIR] [--image IMAGE] [--max-tiles N] [--device cpu|cuda]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from foodie import cli
from foodie.image_tiling import load_image
from foodie.inference import Message, TransformersBackend
from foodie.model_spec import IMG_CONTEXT
from foodie.paths import REPO_ROOT as REPO
from foodie.tiny_model import ensure_embedded_default

DEFAULT_IMAGE = REPO / "docs" / "images" / "example_mapo_tofu.jpg"
QUESTION = "这是什么菜？"


def main(argv: list[str] | None = None) -> int:
    ap = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="InternVL2 checkpoint folder (default: the embedded tiny model)")
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image (default: %(default)s)")
    ap.add_argument("--max-tiles", type=int, help="max_dynamic_patch (default: the model's config)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = ap.parse_args(argv)

    backend = TransformersBackend(ensure_model(args.model), device=args.device, dtype="float32",
                                  max_tiles=args.max_tiles)
    model, tok, cfg = backend.model, backend.tokenizer, backend.model.config
    vcfg, lcfg = cfg.vision_config, cfg.llm_config

    print(f"model: {backend.model_dir}")
    print(f"  InternViT: image {backend.image_size}, patch {vcfg.patch_size}, hidden {vcfg.hidden_size}, "
          f"{vcfg.num_hidden_layers} layers, select_layer {cfg.select_layer}")
    print(f"  pixel shuffle: downsample_ratio {cfg.downsample_ratio} -> {model.num_image_token} tokens per tile")
    print(f"  LLM: hidden {lcfg.hidden_size}, {lcfg.num_hidden_layers} layers, vocabulary {lcfg.vocab_size}")
    for name, part in (("vision_model", model.vision_model), ("mlp1", model.mlp1),
                       ("language_model", model.language_model)):
        print(f"  {name:15s} {sum(p.numel() for p in part.parameters()):>14,} parameters")
    print()

    def step(name: str, t: torch.Tensor, note: str = "") -> torch.Tensor:
        print(f"{name:<16}  {str(list(t.shape)):<22}  {note}".rstrip())
        return t

    with torch.no_grad():
        pv = load_image(args.image, input_size=backend.image_size, max_num=backend.max_tiles,
                        min_num=backend.spec.min_tiles, use_thumbnail=backend.spec.use_thumbnail).to(args.device)
        tiles = pv.shape[0]
        step("pixel_values", pv, f"{tiles} tile(s) of 3x{backend.image_size}x{backend.image_size}"
                 + (" (thumbnail incl.)" if tiles > 1 else ""))

        vit = model.vision_model(pixel_values=pv, output_hidden_states=cfg.select_layer != -1, return_dict=True)
        x = vit.last_hidden_state if cfg.select_layer == -1 else vit.hidden_states[cfg.select_layer]
        side = backend.image_size // vcfg.patch_size
        step("InternViT output", x, f"1 [CLS] + {side}x{side} patch tokens, width {vcfg.hidden_size}")
        x = step("drop [CLS]", x[:, 1:, :])
        x = step("as a grid", x.reshape(tiles, side, side, -1), "[tiles, h, w, C]")
        x = step("pixel_shuffle", model.pixel_shuffle(x, scale_factor=cfg.downsample_ratio),
                 f"2x2 neighbours -> channels: C x {int(1 / cfg.downsample_ratio) ** 2}")
        x = step("flatten", x.reshape(tiles, -1, x.shape[-1]), f"{model.num_image_token} tokens per tile")
        x = step("mlp1", model.mlp1(x), f"LayerNorm, Linear, GELU, Linear -> LLM width {lcfg.hidden_size}")
        same = torch.allclose(x, model.extract_feature(pv), atol=1e-5, rtol=1e-4)

        prompt = backend.render([Message("user", QUESTION, images=[args.image])], num_tiles=[tiles])
        ids = tok(prompt, return_tensors="pt").input_ids.to(args.device)
        ctx = ids[0] == backend.img_context_token_id
        step("input_ids", ids, f"{int(ctx.sum())} of them are {IMG_CONTEXT} (= {tiles} x {model.num_image_token})")
        emb = model.language_model.get_input_embeddings()(ids)
        emb[0, ctx] = x.reshape(-1, x.shape[-1]).to(emb.dtype)
        step("inputs_embeds", emb, f"{IMG_CONTEXT} positions overwritten by the mlp1 outputs")
        logits = model.language_model(inputs_embeds=emb, return_dict=True).logits
        step("logits", logits, "next-token scores at every position")

    print()
    print(f"extract_feature(pixel_values) gives the same tensor as the steps above: {same}")
    if int(ctx.sum()) != x.shape[0] * x.shape[1] or not same:
        print("error: the walk-through disagrees with the model", file=sys.stderr)
        return 1
    return 0


def ensure_model(model: Path | None) -> Path:
    if model is None:
        return ensure_embedded_default(log=lambda line: print(f"[walkthrough] {line}", flush=True))[0]
    if not (model / "config.json").is_file():
        sys.exit(f"error: {model} is not a checkpoint folder (no config.json). Give an InternVL2 folder "
                 f"in the official format, or leave --model out for the embedded tiny model.")
    return model


if __name__ == "__main__":
    sys.exit(cli.run(main))
