#!/usr/bin/env python
"""Serving speed on a GPU: the 256-question single-image FoodieQA evaluation through foodie.inference,
LMDeploy backend against transformers backend, batched; questions/s and time to first token.

    # on the GPU machine (see docs/guide_gpu.md for the wheels); builds what is missing:
    python3 bench/eval_throughput.py --make-model /tmp/internvl2-2b-random --make-data /tmp/foodie-photos
    python3 bench/eval_throughput.py --model DIR --data-root DIR --backends lmdeploy,transformers

Workload: the authors' single-image prompt (zh) for each question, greedy decoding, --max-new-tokens
new tokens (a random-weight model never stops early, so every answer is that long). The photos are
the synthetic FoodieQA drawings resized to --photo-size (default 1600x1200, a 4:3 phone photo: 12 tiles
+ thumbnail = 13 tiles = 3,328 image tokens, as real FoodieQA photos give).

* transformers: ``generate`` on chunks of --batch-size questions (true batching, left padding);
* lmdeploy: ``generate`` on all questions at once; the PyTorch engine batches up to --lmdeploy-batch.

Each backend runs in its own process (clean GPU memory, no engine threads left behind). Time to first
token: --ttft-runs single questions through ``stream`` one after another, time to the first non-empty
text. Prints a Markdown table and writes --out (JSON).

A random-weight full-size model made by tools/make_tiny_model.py --full-size carries the small test
tokenizer (2,048 tokens) beside a 92,553-row vocabulary; --make-model pads that tokenizer with plain
vocabulary entries up to the vocabulary size, as a real checkpoint has one token per row (LMDeploy
detokenises inside its engine and cannot skip ids its tokenizer lacks).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def make_model(out: Path) -> Path:
    """A full-size random-weight InternVL2-2B (GPU, ~11 s), tokenizer padded to the vocabulary."""
    if not (out / "config.json").is_file():
        from foodie.tiny_model import write_checkpoint
        write_checkpoint(out, seed=0, full_size=True, device="cuda" if _cuda() else "cpu", force=True)
    pad_tokenizer_to_vocab(out)
    return out


def pad_tokenizer_to_vocab(model_dir: Path) -> int:
    """Give every row of the LLM's vocabulary a token: plain BPE entries ``xunusedNx`` (never produced
    by encoding, decoded as that text) until len(tokenizer) == vocab_size. Returns how many were added."""
    from transformers import AutoTokenizer
    vocab = json.loads((model_dir / "config.json").read_text())["llm_config"]["vocab_size"]
    have = len(AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True))
    if have >= vocab:
        return 0
    path = model_dir / "tokenizer.json"
    tj = json.loads(path.read_text(encoding="utf-8"))
    if tj["model"]["type"] != "BPE":
        raise SystemExit(f"{path}: cannot pad a {tj['model']['type']} tokenizer; use a checkpoint whose tokenizer "
                         f"covers its vocabulary")
    for i in range(have, vocab):
        tj["model"]["vocab"][f"xunused{i}x"] = i
    path.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    assert len(AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)) == vocab
    return vocab - have


def make_data(out: Path, photo_size: tuple[int, int], questions: int) -> Path:
    """Synthetic FoodieQA with `questions` single-image questions, photos resized to photo_size."""
    from PIL import Image

    from foodie.synthetic_data import make_demo_data
    if not (out / "sivqa_tidy.json").is_file():
        make_demo_data(out, seed=0, photos_per_dish=-(-questions // 16), mivqa_per_dish=1, textqa=False)
        for p in (out / "images").rglob("*.jpg"):
            with Image.open(p) as im:
                big = im.convert("RGB").resize(photo_size, Image.Resampling.BICUBIC)
            big.save(p, quality=90)
    return out


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# One backend (in its own process)
# ---------------------------------------------------------------------------------------------

def run_backend(args) -> dict:
    import torch

    from foodie.evaluation import build_questions, parse_choice
    from foodie.inference import GenerationParams, Message, load_backend

    questions, root = build_questions(args.data_root, ("sivqa",), "zh", limit=args.questions)
    requests = [[Message("user", q.prompt, images=[root / p for p in q.images])] for q in questions]
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    t0 = time.perf_counter()
    backend = load_backend(args.model, backend=args.only, max_batch_size=args.lmdeploy_batch)
    load_s = time.perf_counter() - t0
    backend.generate(requests[:2], params)  # warm-up (kernels, allocator, engine graphs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    t0 = time.perf_counter()
    answers: list[str] = []
    chunk = len(requests) if args.only == "lmdeploy" else args.batch_size
    for i in range(0, len(requests), chunk):
        answers += backend.generate(requests[i:i + chunk], params)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    total_s = time.perf_counter() - t0

    ttft, full = [], []
    for r in requests[: args.ttft_runs]:
        t0 = time.perf_counter()
        first = None
        for delta in backend.stream(r, params):
            if first is None and delta:
                first = time.perf_counter() - t0
        full.append(time.perf_counter() - t0)
        ttft.append(first if first is not None else float("nan"))

    free, total = torch.cuda.mem_get_info() if torch.cuda.is_available() else (0, 0)
    result = dict(
        backend=args.only, questions=len(requests), batch=chunk if args.only != "lmdeploy" else args.lmdeploy_batch,
        load_s=round(load_s, 2), total_s=round(total_s, 2), questions_per_s=round(len(requests) / total_s, 3),
        ttft_median_s=round(statistics.median(ttft), 4), ttft_p90_s=round(sorted(ttft)[int(0.9 * (len(ttft) - 1))], 4),
        stream_answer_median_s=round(statistics.median(full), 4),
        parsed=[None if (p := parse_choice(a, q.choices)) is None else int(p) for a, q in zip(answers, questions)],
        answers=answers,
        max_allocated_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if torch.cuda.is_available() else 0,
        device_used_gib=round((total - free) / 2 ** 30, 2),
    )
    backend.close()
    gc.collect()
    return result


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def environment() -> dict:
    import torch
    env = dict(python=platform.python_version(), torch=torch.__version__, cpu_cores=os.cpu_count())
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    for pkg in ("transformers", "lmdeploy"):
        try:
            env[pkg] = __import__(pkg).__version__
        except Exception as e:  # noqa: BLE001 - report why it is missing
            env[pkg] = f"unavailable ({type(e).__name__}: {e})"[:200]
    return env


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="InternVL2 checkpoint folder (official format)")
    p.add_argument("--data-root", type=Path, help="FoodieQA folder")
    p.add_argument("--make-model", type=Path, help="build a full-size random-weight InternVL2-2B here if missing")
    p.add_argument("--make-data", type=Path, help="build synthetic FoodieQA with large photos here if missing")
    p.add_argument("--photo-size", default="1600x1200", help="WxH of the photos --make-data writes")
    p.add_argument("--backends", default="lmdeploy,transformers")
    p.add_argument("--questions", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="transformers: questions per generate call")
    p.add_argument("--lmdeploy-batch", type=int, default=16, help="LMDeploy engine max_batch_size")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--ttft-runs", type=int, default=10)
    p.add_argument("--out", type=Path, default=REPO / "work" / "bench" / "eval_throughput.json")
    p.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one backend, print its JSON
    args = p.parse_args()

    if args.only:
        print("RESULT " + json.dumps(run_backend(args)), flush=True)
        return 0

    if args.make_model:
        args.model = make_model(args.make_model)
    if args.make_data:
        w, h = (int(x) for x in args.photo_size.lower().split("x"))
        args.data_root = make_data(args.make_data, (w, h), args.questions)
    if not args.model or not args.data_root:
        p.error("give --model and --data-root (or --make-model / --make-data)")

    env = environment()
    print(f"# eval throughput: {json.dumps(env)}", flush=True)
    results, failures = [], {}
    for name in [b for b in args.backends.split(",") if b]:
        cmd = [sys.executable, __file__, "--only", name, "--model", str(args.model), "--data-root", str(args.data_root),
               "--questions", str(args.questions), "--batch-size", str(args.batch_size),
               "--lmdeploy-batch", str(args.lmdeploy_batch), "--max-new-tokens", str(args.max_new_tokens),
               "--ttft-runs", str(args.ttft_runs)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            failures[name] = (proc.stderr or proc.stdout)[-3000:]
            print(f"## {name} FAILED (exit {proc.returncode}) after {time.perf_counter() - t0:.0f} s:\n{failures[name]}",
                  flush=True)
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(f"## {name} done in {time.perf_counter() - t0:.0f} s", flush=True)

    if len(results) == 2:
        a, b = results[0]["parsed"], results[1]["parsed"]
        agree = sum(x == y for x, y in zip(a, b)) / max(1, len(a))
        same = sum(x == y for x, y in zip(results[0]["answers"], results[1]["answers"])) / max(1, len(a))
        for r in results:
            r["same_parsed_answer_as_other_backend"] = round(agree, 3)
            r["same_answer_text_as_other_backend"] = round(same, 3)
    print()
    print("| backend | questions | batch | questions/s | TTFT median / p90 s | streamed answer median s | "
          "load s | max allocated GiB | GPU used GiB | parsed answers | same text as the other |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        parsed = sum(x is not None for x in r["parsed"])
        print(f"| {r['backend']} | {r['questions']} | {r['batch']} | {r['questions_per_s']:.2f} | "
              f"{r['ttft_median_s']:.3f} / {r['ttft_p90_s']:.3f} | {r['stream_answer_median_s']:.3f} | {r['load_s']:.1f} | "
              f"{r['max_allocated_gib']:.1f} | {r['device_used_gib']:.1f} | {parsed}/{r['questions']} | "
              f"{100 * r.get('same_answer_text_as_other_backend', float('nan')):.0f}% |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from foodie.atomic import write_json
    write_json(args.out, dict(environment=env, settings={k: str(v) for k, v in vars(args).items()},
                              results=results, failures=failures))
    print(f"\nwrote {args.out}")
    return 0 if results and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
