"""Time to first token of the demo: how long after "Send" the first answer text appears.

    python bench/demo_ttft.py                       # embedded tiny model on this machine's CPU
    python bench/demo_ttft.py --model DIR --backend lmdeploy --runs 20

Two levels, each with a text-only question and a question about one dish photo (synthetic FoodieQA):

* ``backend``: ``foodie.inference`` ``stream()`` -> first non-empty text delta;
* ``demo``: the demo's own handlers (``add_question`` then the ``answer`` generator, with its
  per-session state, worker thread and queue) -> first chat update holding answer text. This
  is what a browser sees, less the websocket hop.

Prints a table and writes ``work/bench/demo_ttft.json``. ``--limit 1.0`` exits non-zero when a
median is over the limit (the demo's target on CPU with the tiny model is < 1 s).
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from foodie import paths  # noqa: E402
from foodie.atomic import write_json  # noqa: E402


def load_demo_module():
    spec = importlib.util.spec_from_file_location("foodie_demo_app", REPO / "demo/app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def wait_idle() -> None:
    """Let the generation threads of the last run end, so runs never overlap (and exit is clean)."""
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.name.startswith(("foodie-generate", "answer-")):
            t.join()


def first_delta_seconds(backend, request, params) -> float:
    t0 = time.perf_counter()
    stream = backend.stream(request, params)
    try:
        for delta in stream:
            if delta:
                return time.perf_counter() - t0
    finally:
        stream.close()
    raise RuntimeError("the model produced no text at all; try a different question or more max new tokens")


def demo_first_update_seconds(app, handlers, question, image, max_new_tokens) -> float:
    state = app.ChatState(("model",))
    try:
        if image is not None:
            state.attach(image)
        t0 = time.perf_counter()
        handlers["add_question"]({"text": question, "files": []}, state)
        updates = handlers["answer"](state, 0.0, 1.0, max_new_tokens)
        try:
            for update in updates:
                if state.turns[-1].answers.get("model"):
                    return time.perf_counter() - t0
        finally:
            updates.close()
            state.stop()
    finally:
        state.close()
    raise RuntimeError("the model produced no text at all")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint folder (default: the embedded tiny model, built if missing)")
    ap.add_argument("--data-root", help="FoodieQA folder for the dish photo (default: the synthetic set)")
    ap.add_argument("--backend", default="auto", choices=["auto", "transformers", "lmdeploy"])
    ap.add_argument("--runs", type=int, default=10, help="timed runs per case, after one warm-up (default 10)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--limit", type=float, default=None, help="fail when a median TTFT exceeds this many seconds")
    args = ap.parse_args(argv)

    app = load_demo_module()
    model_dir, data_dir = app.ensure_embedded_default(args.model, args.data_root)
    from rich.console import Console
    from rich.table import Table

    from foodie.foodieqa import load_foodieqa
    from foodie.inference import GenerationParams, Message, load_backend

    t0 = time.perf_counter()
    backend = load_backend(model_dir, backend=args.backend)
    load_s = time.perf_counter() - t0
    data = load_foodieqa(data_dir, tasks=["sivqa"], skip_bad=True)
    photo = data.path(data.sivqa[0].image)
    handlers = app.make_handlers([app.ModelSlot("model", model_dir.name, backend)], {}, 20 * 2**20)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)

    cases = [("text only", "这道菜叫什么名字？", None), ("one dish photo", "这道菜叫什么名字？", photo)]
    rows = []
    from tqdm import tqdm
    with tqdm(total=len(cases) * 2 * (args.runs + 1), desc="TTFT runs", unit="run") as bar:
        for name, question, image in cases:
            request = [Message("user", question, images=[image] if image else [])]
            for level in ("backend", "demo"):
                times = []
                for i in range(args.runs + 1):
                    if level == "backend":
                        s = first_delta_seconds(backend, request, params)
                    else:
                        s = demo_first_update_seconds(app, handlers, question, image, args.max_new_tokens)
                    wait_idle()
                    if i:  # the first run is a warm-up
                        times.append(s)
                    bar.update()
                rows.append(dict(case=name, level=level, runs=len(times), median_s=statistics.median(times),
                                 p90_s=sorted(times)[max(0, int(round(0.9 * len(times))) - 1)],
                                 min_s=min(times), max_s=max(times)))

    import torch
    machine = dict(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                   cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                   python=platform.python_version(), torch=torch.__version__)
    device = f"GPU {machine['cuda']}" if machine["cuda"] else f"CPU, {machine['threads']} threads"
    table = Table(title=f"Time to first token: {model_dir.name}, backend {backend.name}, {device}")
    for col in ("case", "level", "runs", "median s", "p90 s", "min s", "max s"):
        table.add_column(col, justify="left" if col in ("case", "level") else "right")
    for r in rows:
        table.add_row(r["case"], r["level"], str(r["runs"]), f"{r['median_s']:.3f}", f"{r['p90_s']:.3f}",
                      f"{r['min_s']:.3f}", f"{r['max_s']:.3f}")
    Console().print(table)
    print(f"model load {load_s:.1f} s; photo {photo.name}; max_new_tokens {args.max_new_tokens}")
    out = paths.work_dir() / "bench" / "demo_ttft.json"
    write_json(out, dict(model=str(model_dir), backend=backend.name, machine=machine, load_s=load_s, rows=rows))
    print(f"wrote {out}")
    if args.limit is not None:
        over = [r for r in rows if r["median_s"] > args.limit]
        if over:
            print(f"FAIL: median TTFT over {args.limit} s for " + ", ".join(f"{r['case']}/{r['level']}" for r in over))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
