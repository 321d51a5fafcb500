#!/usr/bin/env python
"""Serving speed on a GPU: the single-image FoodieQA evaluation through foodie.inference, LMDeploy
variants against the transformers backend; questions/s, where the time goes, answers that agree.

    # on the GPU machine (see docs/guide_gpu.md for the wheels); builds what is missing:
    python3 bench/eval_throughput.py --make-model /tmp/internvl2-2b-random --make-data /tmp/foodie-photos
    python3 bench/eval_throughput.py --model DIR --data-root DIR --variants lmdeploy,lmdeploy-stock,transformers
    python3 bench/eval_throughput.py ... --variants "lmdeploy:batch=64:prefill=16384,lmdeploy:workers=12"

Workload: the authors' single-image prompt (zh) for each question, greedy decoding, --max-new-tokens
new tokens (a random-weight model never stops early, so every answer is that long). The photos are
the synthetic FoodieQA drawings resized to --photo-size (default 1600x1200, a 4:3 phone photo: 12 tiles
+ thumbnail = 13 tiles = 3,328 image tokens, as real FoodieQA photos give).

Variants (each in its own process: clean GPU memory, no engine threads left behind):

* ``lmdeploy``: the backend as shipped (``foodie.inference.answer_all``): our image workers prepare
  pixel values ahead of the engine, large engine batches; ``:batch=N``, ``:prefill=TOKENS`` and
  ``:workers=N`` override its settings, ``:cache=PCT`` its KV-cache share of GPU memory, ``:gpus=N`` one
  replica per GPU (data parallel, ``foodie.inference.Replicas``), ``:replicas=N`` N replicas on the first
  GPU, with ``:gpus=N`` on each (any variant: ``:questions=N`` asks fewer, ``:engine=0`` skips the engine-only
  rerun, ``:dtype=16`` runs float16 instead of bfloat16, ``:cudnn=0`` keeps torch's SDPA off cuDNN in the variant's
  process, ``:profile=N`` adds a kernel profile of the engine alone on N questions, ``:compile=1`` switches on
  LMDeploy's own compiled vision encoder, ``:pin=1`` hands the engine pinned pixel values, ``:cudnnbench=1`` lets
  cuDNN pick its fastest convolution, ``:gpunorm=0`` normalises the
  tiles in the image workers on the CPU, as before 2026-12-01 (default: they only tile, the GPU normalises),
  ``:fusevit=1`` runs ``foodie.lmdeploy_fused_vit`` (layer scales folded, GELU in the fc1 product));
* ``lmdeploy-stock``: LMDeploy's own image preprocessing (one thread) and the engine settings of
  before (batch 16, LMDeploy's 4,096 prefill tokens): the "before" row;
* ``transformers``: ``answer_all`` in batches of --batch-size on the first --compare-questions
  questions, the reference the LMDeploy answers are compared with (greedy, same bf16 weights).

Where the time goes, per LMDeploy variant: the same questions once more with every image prepared
beforehand (``engine only``: what the engine alone sustains), the image path alone on this machine's
CPU (``images``: decode, tiling and normalisation over the image workers, no GPU), the GPU's busy share
(``nvidia-smi``'s utilisation, sampled every 0.2 s), and the share of the card's bf16 peak the
questions' FLOPs reach (peak measured in the same command, an 8192^3 bf16 matrix product). Time to first
token: --ttft-runs single questions through ``stream`` one after another.

Prints a Markdown table and writes --out (JSON).

A random-weight full-size model made by tools/make_tiny_model.py --full-size carries the small test
tokenizer (2,048 tokens) beside a 92,553-row vocabulary; --make-model pads that tokenizer with plain
vocabulary entries up to the vocabulary size, as a real checkpoint has one token per row (LMDeploy
detokenises inside its engine and cannot skip ids its tokenizer lacks).
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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

        def enlarge(p):
            with Image.open(p) as im:
                big = im.convert("RGB").resize(photo_size, Image.Resampling.BICUBIC)
            big.save(p, quality=90)
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            list(pool.map(enlarge, sorted((out / "images").rglob("*.jpg"))))
    return out


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# What a question costs
# ---------------------------------------------------------------------------------------------

def question_flops(model_dir: Path, tiles: int, prompt_tokens: int, new_tokens: int) -> float:
    """Forward FLOPs of one question: InternViT over its tiles, the projector, the LLM over the prompt
    (prefill, causal attention) and the new tokens (weights only). 2 FLOPs per multiply-add."""
    cfg = json.loads((model_dir / "config.json").read_text())
    v, m = cfg["vision_config"], cfg["llm_config"]
    n = (v["image_size"] // v["patch_size"]) ** 2 + 1  # patches + class token
    d, f = v["hidden_size"], v["intermediate_size"]
    vit = tiles * v["num_hidden_layers"] * (2 * n * (4 * d * d + 2 * d * f) + 4 * n * n * d)
    shuffled = d * 4
    h, fi = m["hidden_size"], m["intermediate_size"]
    kv = m["num_key_value_heads"] * h // m["num_attention_heads"]  # width of K (and of V)
    proj = 2 * tiles * (n - 1) // 4 * (shuffled * h + h * h)
    per_token = m["num_hidden_layers"] * 2 * (h * h * 2 + 2 * h * kv + 3 * h * fi) + 2 * h * m["vocab_size"]
    t = prompt_tokens
    llm = t * (per_token - 2 * h * m["vocab_size"]) + m["num_hidden_layers"] * 2 * t * t * h  # causal: half of 4*t^2*h
    decode = new_tokens * per_token + 2 * h * m["vocab_size"]
    return vit + proj + llm + decode


def bf16_peak_tflops() -> float:
    """Median of 10 timed 8192^3 bf16 matrix products on random data (after 3 warm-ups)."""
    import torch
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1000)
    return 2 * 8192 ** 3 / statistics.median(times) / 1e12


class GpuBusy:
    """Samples nvidia-smi's GPU utilisation (share of time a kernel ran) every 0.2 s in a thread."""

    def __init__(self, gpus: int = 1):
        self.samples: list[float] = []
        self.gpus = gpus
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.2):
            try:
                ids = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(8)))).split(",")[: self.gpus]
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", ",".join(ids)], capture_output=True, text=True, timeout=5).stdout.split()
                self.samples.append(statistics.mean(float(x) for x in out))  # mean over the GPUs in use
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(statistics.mean(self.samples), 1) if self.samples else None


# ---------------------------------------------------------------------------------------------
# One variant (in its own process)
# ---------------------------------------------------------------------------------------------

def parse_variant(spec: str) -> tuple[str, dict]:
    """'lmdeploy:batch=64:prefill=16384' -> ('lmdeploy', {'batch': 64, 'prefill': 16384})."""
    name, *opts = spec.split(":")
    keys = ("batch", "prefill", "workers", "cache", "gpus", "replicas", "questions", "engine", "dtype", "cudnn",
            "profile", "compile", "pin", "cudnnbench", "gpunorm", "fusevit")
    if name not in ("lmdeploy", "lmdeploy-stock", "transformers"):
        raise SystemExit(f"unknown variant {spec!r}: lmdeploy[:OPTION=N...], lmdeploy-stock, transformers; "
                         f"options: {', '.join(keys)}")
    settings = {}
    for o in opts:
        k, _, v = o.partition("=")
        if k not in keys or not v.isdigit():
            raise SystemExit(f"variant {spec!r}: options are {', '.join(k + '=N' for k in keys)}")
        settings[k] = int(v)
    if settings.get("dtype", 16) != 16:
        raise SystemExit(f"variant {spec!r}: dtype=16 runs float16; leave it out for bfloat16")
    if settings.get("profile") and not settings.get("engine", 1):
        raise SystemExit(f"variant {spec!r}: profile=N profiles the engine-only rerun, which engine=0 skips")
    return name, settings


def load_variant(args, name: str, settings: dict):
    import torch

    from foodie.inference import LMDeployBackend, load_backend
    dtype = {16: "float16"}.get(settings.get("dtype"), "bfloat16")
    if not settings.get("cudnn", 1):  # this process only (an engine in a replica process keeps torch's choice)
        torch.backends.cuda.enable_cudnn_sdp(False)
    if name == "transformers":
        return load_backend(args.model, backend="transformers", dtype=dtype)
    if name == "lmdeploy-stock":  # LMDeploy's own image preprocessing, engine settings of 2026-11-26
        backend = LMDeployBackend(args.model, max_batch_size=16, max_prefill_tokens=4096)
        backend.prepares_images = False
        return backend
    return load_backend(args.model, backend="lmdeploy", devices=list(range(settings.get("gpus", 1))), dtype=dtype,
                        per_gpu=settings.get("replicas", 1), max_batch_size=settings.get("batch"),
                        max_prefill_tokens=settings.get("prefill"), image_workers=settings.get("workers"),
                        cache_max_entry_count=settings["cache"] / 100 if "cache" in settings else None,
                        compile_vision=bool(settings.get("compile")), pin_memory=bool(settings.get("pin")),
                        cudnn_benchmark=bool(settings.get("cudnnbench")),
                        gpu_normalise=bool(settings.get("gpunorm", 1)), fused_vit=bool(settings.get("fusevit")))


def timed_answers(backend, requests, params, batch_size, gpus=1) -> tuple[list[str], float, float | None]:
    """Answers in request order, seconds, mean GPU busy % (over the first `gpus` GPUs)."""
    import torch

    from foodie.inference import answer_all
    answers: list[str | None] = [None] * len(requests)
    with GpuBusy(gpus) as busy:
        t0 = time.perf_counter()
        for idx, got in answer_all(backend, requests, params, batch_size):
            for i, a in zip(idx, got):
                answers[i] = a
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return answers, seconds, busy.mean


def run_variant(args) -> dict:
    import torch

    from foodie.evaluation import build_questions
    from foodie.inference import GenerationParams, Message, answer_all, pixel_values
    from foodie.scoring import authors_letter

    name, settings = parse_variant(args.only)
    # Every variant draws the same questions (the first n of one list), so answers compare one to one.
    questions, root = build_questions(args.data_root, ("sivqa",), "zh", limit=args.questions + args.warmup)
    n = min(args.questions, args.compare_questions) if name == "transformers" else args.questions
    n = min(n, settings.get("questions", n))
    requests = [[Message("user", q.prompt, images=[root / p for p in q.images])] for q in questions]
    warm = requests[args.questions:]  # warm-up on other photos
    requests, questions = requests[:n], questions[:n]
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    t0 = time.perf_counter()
    backend = load_variant(args, name, settings)
    list(answer_all(backend, warm, params, len(warm)))  # kernels, allocator, engine graphs (replicas load here)
    load_s = time.perf_counter() - t0
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    batch = args.batch_size if name == "transformers" else len(requests)
    answers, total_s, busy = timed_answers(backend, requests, params, batch, settings.get("gpus", 1))
    result = dict(variant=args.only, backend=backend.name, questions=len(requests), load_s=round(load_s, 2),
                  total_s=round(total_s, 2), questions_per_s=round(len(requests) / total_s, 3), gpu_busy_pct=busy,
                  settings=dict(batch=getattr(getattr(backend, "engine_config", None), "max_batch_size", batch),
                                devices=getattr(backend, "devices", None),
                                prefill_tokens=getattr(getattr(backend, "engine_config", None),
                                                       "max_prefill_token_num", None),
                                image_workers=getattr(backend, "image_workers", None),
                                our_image_path=getattr(backend, "prepares_images", True)))

    if name == "lmdeploy" and hasattr(backend, "_pixels") and settings.get("engine", int(args.engine_only)):
        # The same questions with every image prepared beforehand: what the engine alone sustains.
        with ThreadPoolExecutor(8) as pool:
            ready = dict(zip(map(id, requests), pool.map(
                lambda r: pixel_values(backend.spec, [r], 1, backend._dtype)[0], requests)))

        async def prepared(request, spec):
            return ready[id(request)]
        backend._pixels = prepared
        _, engine_s, engine_busy = timed_answers(backend, requests, params, batch)
        del backend._pixels
        result.update(engine_only_questions_per_s=round(len(requests) / engine_s, 3), engine_only_gpu_busy_pct=engine_busy)
        if settings.get("profile"):  # the engine alone once more, on the first N questions, under torch.profiler
            backend._pixels = prepared
            result["kernel_profile"] = kernel_profile(backend, requests[: settings["profile"]], params)
            del backend._pixels
        del ready

    ttft, full = [], []
    for r in requests[: args.ttft_runs if hasattr(backend, "stream") else 0]:
        t0 = time.perf_counter()
        first = None
        for delta in backend.stream(r, params):
            if first is None and delta:
                first = time.perf_counter() - t0
        full.append(time.perf_counter() - t0)
        ttft.append(first if first is not None else float("nan"))

    free, total = torch.cuda.mem_get_info() if torch.cuda.is_available() else (0, 0)
    result.update(
        ttft_median_s=round(statistics.median(ttft), 4) if ttft else None,
        ttft_p90_s=round(sorted(ttft)[int(0.9 * (len(ttft) - 1))], 4) if ttft else None,
        stream_answer_median_s=round(statistics.median(full), 4) if full else None,
        parsed=[authors_letter(a) for a in answers],  # the letter by the FoodieQA authors' rule, or None
        answers=answers,
        max_allocated_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if torch.cuda.is_available() else 0,
        device_used_gib=round((total - free) / 2 ** 30, 2),
    )
    print("RESULT " + json.dumps(result), flush=True)  # before closing: a hung shutdown loses nothing
    backend.close()
    gc.collect()
    return result


KERNEL_KINDS = (  # by kernel name: torch's SDPA (the vision encoder), LMDeploy's Triton kernels (the LLM), ...
    ("vision attention (torch SDPA: flash / cuDNN / efficient)", ("pytorch_flash", "flash_fwd", "cudnn", "fmha",
                                                                  "efficient_attention", "sdpa")),
    ("LLM attention and cache (LMDeploy Triton)", ("_fwd_kernel", "paged", "flash_prefill", "fill_kv", "decode")),
    ("matrix products (cuBLAS / CUTLASS)", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_")),
    ("copies", ("memcpy", "copy")),
)


def kernel_profile(backend, requests, params) -> dict:
    """GPU time by kernel over one pass of `requests` (every kernel of the process, all threads)."""
    from torch.profiler import ProfilerActivity, profile

    from foodie.inference import answer_all
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in answer_all(backend, requests, params, len(requests)):
            pass
    wall_ms = 1e3 * (time.perf_counter() - t0)
    events = [(e.key, e.self_device_time_total / 1e3, e.count) for e in prof.key_averages()
              if e.self_device_time_total > 0]
    total = sum(ms for _, ms, _ in events)
    kinds = dict.fromkeys([k for k, _ in KERNEL_KINDS] + ["other (norms, activations, elementwise)"], 0.0)
    for key, ms, _ in events:
        kind = next((k for k, marks in KERNEL_KINDS if any(m in key.lower() for m in marks)), None)
        kinds[kind or "other (norms, activations, elementwise)"] += ms
    top = sorted(events, key=lambda e: -e[1])[:25]
    return dict(questions=len(requests), wall_ms=round(wall_ms, 1), kernel_ms=round(total, 1),
                kinds_ms={k: round(v, 1) for k, v in kinds.items()},
                top=[dict(kernel=k[:160], ms=round(ms, 2), calls=n) for k, ms, n in top])


# ---------------------------------------------------------------------------------------------
# The image path alone (CPU) and the driver
# ---------------------------------------------------------------------------------------------

def image_path_profile(data_root: Path, model_dir: Path, n: int, workers: int) -> dict:
    """ms per question for each image stage on one thread, and questions/s over `workers` threads."""
    from foodie import image_tiling as it
    from foodie.evaluation import build_questions
    from foodie.inference import Message, pixel_values

    questions, root = build_questions(data_root, ("sivqa",), "zh", limit=n)
    from foodie.model_spec import ModelSpec
    spec = ModelSpec.from_checkpoint(model_dir)
    size = spec.tile_size
    stages = dict(decode=0.0, tiles=0.0, normalise=0.0)
    tiles = 0
    for q in questions[: min(n, 32)]:
        t0 = time.perf_counter()
        rgb = it.open_image(root / q.images[0])
        t1 = time.perf_counter()
        parts = it.dynamic_preprocess(rgb, max_num=spec.max_tiles, image_size=size)
        t2 = time.perf_counter()
        import torch
        torch.stack([it.to_tensor(t, size) for t in parts]).to(torch.bfloat16)
        t3 = time.perf_counter()
        stages["decode"] += t1 - t0
        stages["tiles"] += t2 - t1
        stages["normalise"] += t3 - t2
        tiles += len(parts)
    k = min(n, 32)
    requests = [[Message("user", q.prompt, images=[root / p for p in q.images])] for q in questions]
    import torch
    t0 = time.perf_counter()
    pixel_values(spec, requests, workers, torch.bfloat16)
    pool_s = time.perf_counter() - t0
    return dict(ms_per_question={s: round(1000 * v / k, 1) for s, v in stages.items()}, tiles_per_question=tiles / k,
                workers=workers, questions=len(requests), questions_per_s=round(len(requests) / pool_s, 1))


PADDED = re.compile(r"xunused\d+x|.", re.S)  # a padding entry of pad_tokenizer_to_vocab is one generated token


def agreement(ours: list[str], theirs: list[str]) -> dict:
    """Share of the common questions with the same whole answer, the same first generated token, and the mean
    number of leading tokens in common. Tokens: the padding entries (re-encoding them would split them into
    characters: they have no BPE merges) and otherwise single characters."""
    pairs = list(zip(ours, theirs))
    ids = [(PADDED.findall(a), PADDED.findall(b)) for a, b in pairs]
    prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in ids]
    k = max(1, len(pairs))
    from foodie.scoring import authors_letter  # what the evaluation scores: the first A-D, or none
    letters = [(authors_letter(a), authors_letter(b)) for a, b in pairs]
    return dict(questions=len(pairs), same_answer_pct=round(100 * sum(a == b for a, b in pairs) / k, 1),
                same_scored_letter_pct=round(100 * sum(a == b for a, b in letters) / k, 1),
                with_letter_pct=round(100 * sum(a is not None for a, _ in letters) / k, 1),
                same_first_token_pct=round(100 * sum(a[:1] == b[:1] for a, b in ids) / k, 1),
                mean_common_prefix_tokens=round(statistics.mean(prefix), 1) if prefix else None)


def environment() -> dict:
    import torch
    env = dict(python=platform.python_version(), torch=torch.__version__, cpu_cores=os.cpu_count())
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    for pkg in ("transformers", "lmdeploy", "PIL"):
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
    p.add_argument("--variants", default="lmdeploy,transformers,lmdeploy-stock",
                   help="comma-separated, run in this order (see the module doc); the first lmdeploy one is "
                        "compared with transformers")
    p.add_argument("--questions", type=int, default=256)
    p.add_argument("--compare-questions", type=int, default=128, help="questions the transformers variant answers")
    p.add_argument("--warmup", type=int, default=4, help="warm-up questions (other photos), not timed")
    p.add_argument("--batch-size", type=int, default=8, help="transformers: questions per generate call")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--ttft-runs", type=int, default=5)
    p.add_argument("--no-engine-only", dest="engine_only", action="store_false",
                   help="skip the engine-only rerun of each LMDeploy variant")
    p.add_argument("--variant-timeout", type=float, default=300, help="seconds one variant may take")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: start no further variant after this much time (the rest are listed as skipped)")
    p.add_argument("--out", type=Path, default=REPO / "work" / "bench" / "eval_throughput.json")
    p.add_argument("--agreement", nargs="+", type=Path, metavar="JSON",
                   help="only print how the answers of every two variants in these --out files agree (no GPU)")
    p.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    args = p.parse_args()

    if args.agreement:  # the same model and photos are assumed (e.g. two commands on one warm machine)
        rows = [(f"{path.name}: {r['variant']}", r["answers"]) for path in args.agreement
                for r in json.loads(path.read_text())["results"]]
        print("| variant | variant | questions | same answer | same first token | mean common leading tokens |")
        print("|---|---|---:|---:|---:|---:|")
        for (a, x), (b, y) in itertools.combinations(rows, 2):
            g = agreement(x, y)
            print(f"| {a} | {b} | {g['questions']} | {g['same_answer_pct']}% | {g['same_first_token_pct']}% | "
                  f"{g['mean_common_prefix_tokens']} |")
        return 0

    if args.only:
        run_variant(args)
        return 0

    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        parse_variant(v)
    t_start = time.perf_counter()
    if args.make_model:
        args.model = make_model(args.make_model)
    if args.make_data:
        w, h = (int(x) for x in args.photo_size.lower().split("x"))
        args.data_root = make_data(args.make_data, (w, h), args.questions + args.warmup)
    if not args.model or not args.data_root:
        p.error("give --model and --data-root (or --make-model / --make-data)")

    from foodie.evaluation import build_questions
    from foodie.image_tiling import image_size_of, num_tiles
    from foodie.inference import image_workers_for

    env = environment()
    print(f"# eval throughput: {json.dumps(env)}", flush=True)
    if _cuda():
        env["bf16_peak_tflops"] = round(bf16_peak_tflops(), 1)
    cfg = json.loads((args.model / "config.json").read_text())
    q0, root = build_questions(args.data_root, ("sivqa",), "zh", limit=1)
    tiles = num_tiles(*image_size_of(root / q0[0].images[0]), max_num=cfg.get("max_dynamic_patch", 12))
    from foodie.model_spec import ModelSpec
    prompt_tokens = tiles * ModelSpec.from_checkpoint(args.model).tokens_per_tile + 80  # image tokens + template and question (~80)
    flops = question_flops(args.model, tiles, prompt_tokens, args.max_new_tokens)
    env.update(tiles_per_question=tiles, prompt_tokens_about=prompt_tokens, tflop_per_question=round(flops / 1e12, 2))
    images = image_path_profile(args.data_root, args.model, min(64, args.questions), image_workers_for("cuda"))
    print(f"# {tiles} tiles, ~{prompt_tokens} prompt tokens, {flops / 1e12:.1f} TFLOP a question; bf16 peak "
          f"{env.get('bf16_peak_tflops')} TFLOP/s; image path on the CPU: {json.dumps(images)}", flush=True)

    results, failures, skipped = [], {}, []
    for spec in variants:
        if args.time_budget and time.perf_counter() - t_start > args.time_budget:
            skipped.append(spec)
            continue
        cmd = [sys.executable, __file__, "--only", spec, "--model", str(args.model), "--data-root", str(args.data_root),
               "--questions", str(args.questions), "--compare-questions", str(args.compare_questions),
               "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
               "--max-new-tokens", str(args.max_new_tokens), "--ttft-runs", str(args.ttft_runs)]
        if not args.engine_only:
            cmd.append("--no-engine-only")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.variant_timeout)
            out, err, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:  # its output so far comes with it (bytes, even with text=True)
            out, err = (x.decode() if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr))
            code = f"timeout {args.variant_timeout} s"
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            failures[spec] = (err or out)[-3000:]
            print(f"## {spec} FAILED (exit {code}) after {time.perf_counter() - t0:.0f} s:\n{failures[spec]}",
                  flush=True)
            continue
        r = json.loads(lines[-1][len("RESULT "):])
        if env.get("bf16_peak_tflops"):
            gpus = parse_variant(spec)[1].get("gpus", 1)  # the share of the peak of the GPUs it ran on
            r["share_of_bf16_peak_pct"] = round(100 * r["questions_per_s"] * flops / 1e12 / env["bf16_peak_tflops"]
                                                / gpus, 1)
        results.append(r)
        print(f"## {spec}: {r['questions_per_s']:.2f} questions/s, done in {time.perf_counter() - t0:.0f} s "
              f"({time.perf_counter() - t_start:.0f} s in all)", flush=True)

    # Agreement. Greedy answers of a random-weight model sit on near-ties: one bf16 rounding difference (another
    # kernel, another batch composition) flips a token and the rest of the answer with it. So besides whole
    # answers we compare the first generated token (it follows the whole prompt, image tokens and prefill: a
    # different prompt or different pixels would change it), and we measure the floor: the first LMDeploy
    # variant against every other LMDeploy variant (same engine and weights, other batch compositions).
    def dtype(r):
        return parse_variant(r["variant"])[1].get("dtype")
    first_lmdeploy = next((r for r in results if r["backend"] == "lmdeploy"), None)
    for r in results:  # the reference: the transformers row of the same dtype
        reference = next((t for t in results if t["backend"] == "transformers" and dtype(t) == dtype(r)), None)
        for other, key in ((reference, "transformers"), (first_lmdeploy, "first_lmdeploy")):
            if other is not None and r is not other:
                r[f"vs_{key}"] = agreement(r["answers"], other["answers"])

    print()
    print("| variant | questions | questions/s | engine only q/s | GPU busy % | q/s per busy second | share of bf16 peak "
          "| TTFT median / p90 s | load s | max alloc GiB | vs transformers (same dtype): same answer / first token / "
          "scored letter | vs first LMDeploy row |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def agree(a):
        return (f"{a['same_answer_pct']}% / {a['same_first_token_pct']}% / {a['same_scored_letter_pct']}% "
                f"({a['with_letter_pct']}% with a letter) of {a['questions']}") if a else "-"
    for r in results:
        same = f"{agree(r.get('vs_transformers'))} | {agree(r.get('vs_first_lmdeploy'))}"
        ttft = f"{r['ttft_median_s']:.3f} / {r['ttft_p90_s']:.3f}" if r.get("ttft_median_s") is not None else "-"
        # what the setting answers while the card is busy: runs of one setting differ mostly in the busy share
        per_busy = f"{100 * r['questions_per_s'] / r['gpu_busy_pct']:.1f}" if r.get("gpu_busy_pct") else "-"
        print(f"| {r['variant']} | {r['questions']} | {r['questions_per_s']:.2f} | "
              f"{r.get('engine_only_questions_per_s', '-')} | {r.get('gpu_busy_pct', '-')} | {per_busy} | "
              f"{r.get('share_of_bf16_peak_pct', '-')}% | {ttft} | {r['load_s']:.1f} | {r['max_allocated_gib']:.1f} | "
              f"{same} |")
    if skipped:
        print(f"\nskipped (time budget): {', '.join(skipped)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from foodie.atomic import write_json
    write_json(args.out, dict(environment=env, image_path=images, settings={k: str(v) for k, v in vars(args).items()},
                              results=results, failures=failures, skipped=skipped))
    print(f"\nwrote {args.out}")
    return 0 if results and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
