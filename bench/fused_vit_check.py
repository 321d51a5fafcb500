#!/usr/bin/env python
"""LMDeploy's InternViT-300M encoder (24 layers) against foodie.lmdeploy_fused_vit's, on one GPU: kernel time for one
13-tile question and how far each lands from a float32 run of the same weights.

    source bench/gpu_env.sh && python3 bench/fused_vit_check.py     # ~20 s on an H200

Random weights at InternViT-300M's shapes (hidden 1,024, 16 heads, MLP 4,096, LayerNorm, exact GELU), layer
scales drawn from 0.05-1; inputs: 13 tiles x 1,025 tokens. Prints a Markdown table; --out writes JSON.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import PretrainedConfig

from foodie.atomic import write_json
from foodie.lmdeploy_fused_vit import fused_copy
from lmdeploy.pytorch.models.internvl import InternVisionEncoderLayer

VIT_300M = dict(hidden_size=1024, num_attention_heads=16, intermediate_size=4096, qkv_bias=True,
                qk_normalization=False, layer_norm_eps=1e-6, norm_type="layer_norm", hidden_act="gelu")


def encoders(layers: int, dtype: torch.dtype, device: str):
    torch.manual_seed(0)
    stock = torch.nn.Sequential(*[InternVisionEncoderLayer(PretrainedConfig(**VIT_300M), dtype=torch.float32,
                                                           device=device) for _ in range(layers)])
    with torch.no_grad():
        for name, p in stock.named_parameters():
            if name.endswith(("ls1", "ls2")):
                p.uniform_(0.05, 1.0)
            elif name.endswith("weight") and p.dim() == 1:  # norms
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0, 0.02)
    reference = stock
    stock = copy.deepcopy(reference).to(dtype)
    return reference, stock, fused_copy(stock)


def kernel_ms(model, x, reps: int) -> float:
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        if x.device.type != "cuda":  # a smoke run: wall time
            t0 = time.perf_counter()
            for _ in range(reps):
                model(x)
            return 1e3 * (time.perf_counter() - t0) / reps
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            model(x)
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=int, default=13)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default=None)
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the script (exact GELU there)")
    args = p.parse_args()
    rows = []
    torch.manual_seed(1)
    x32 = torch.randn(args.tiles, 1025, VIT_300M["hidden_size"], device=args.device)
    for dtype in (torch.bfloat16, torch.float16):
        reference, stock, fused = encoders(args.layers, dtype, args.device)
        x = x32.to(dtype)
        with torch.inference_mode():
            want = reference(x.float())
            scale = want.abs().mean().item()
            err = {name: ((m(x).float() - want).abs().mean().item() / scale) for name, m in
                   (("stock", stock), ("fused", fused))}
            top1 = (stock(x).float().argmax(-1) == fused(x).float().argmax(-1)).float().mean().item()
        ms = {name: kernel_ms(m, x, args.reps) for name, m in (("stock", stock), ("fused", fused))}
        rows.append(dict(dtype=str(dtype).split(".")[-1], stock_ms=round(ms["stock"], 2), fused_ms=round(ms["fused"], 2),
                         saved_pct=round(100 * (1 - ms["fused"] / ms["stock"]), 1),
                         stock_rel_err=round(err["stock"], 5), fused_rel_err=round(err["fused"], 5),
                         same_argmax_pct=round(100 * top1, 2)))
        del reference, stock, fused
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{args.tiles} tiles x 1,025 tokens, {args.layers} InternViT-300M layers, {device}, "
          f"torch {torch.__version__}")
    print("| dtype | LMDeploy's layers, ms | fused, ms | saved | mean error vs float32, LMDeploy's | fused | "
          "same argmax per token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dtype']} | {r['stock_ms']} | {r['fused_ms']} | {r['saved_pct']}% | {r['stock_rel_err']} | "
              f"{r['fused_rel_err']} | {r['same_argmax_pct']}% |")
    if args.out:
        write_json(args.out, dict(tiles=args.tiles, layers=args.layers, device=device, rows=rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
