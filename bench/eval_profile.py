#!/usr/bin/env python
"""Where an evaluation question's time goes: the real evaluation, with timers around each stage.

    python bench/eval_profile.py                          # embedded default, 100 questions, this CPU
    python bench/eval_profile.py --questions 40 --backend transformers --batch-size 8

Runs ``foodie.evaluation.evaluate`` (transformers backend) on the embedded tiny model and synthetic
FoodieQA with wrappers (in this process only) around the stages of a question:

* ``decode``: JPEG/PNG decode to RGB (``foodie.image_tiling.open_image``);
* ``resize + tiles``: choosing the grid, bicubic resize, crops, thumbnail (``dynamic_preprocess``);
* ``normalise``: tiles -> float tensors (``to_tensor``);
* ``vision encoder``: ``model.extract_feature`` (InternViT + pixel shuffle + projector);
* ``LLM prefill`` / ``LLM decode``: the first / later ``language_model.forward`` call of each generate;
* ``rest``: the wall time not inside any of these on the main thread (tokenising, padding, sampling,
  ``generate``'s Python, predictions file, metrics, report, chart).

Image stages run in worker threads (they overlap with each other and, with prefetching, with the
model), so they are reported as CPU seconds of the threads that ran them (``time.thread_time``); model
stages as wall seconds of the main thread. Prints a Markdown table for docs/PERFORMANCE.md.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections import defaultdict


from eval_speed import ensure_embedded, timed_evaluation, workload_parser  # noqa: E402

CPU = defaultdict(float)  # stage -> thread CPU seconds
WALL = defaultdict(float)  # stage -> wall seconds
CALLS = defaultdict(int)
_lock = threading.Lock()


def timed(stage_of, fn):
    """Wrap fn so each call adds its thread CPU and wall time to a stage (``stage_of(args)`` names it)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stage = stage_of(args, kwargs)
            with _lock:
                CPU[stage] += time.thread_time() - c0
                WALL[stage] += time.perf_counter() - w0
                CALLS[stage] += 1
    return wrapper


def instrument() -> None:
    from foodie import evaluation, image_tiling, inference, report

    image_tiling.open_image = timed(lambda a, k: "decode", image_tiling.open_image)
    image_tiling.dynamic_preprocess = timed(lambda a, k: "resize + tiles", image_tiling.dynamic_preprocess)
    image_tiling.to_tensor = timed(lambda a, k: "normalise", image_tiling.to_tensor)

    original_init = inference.TransformersBackend.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        model = self.model
        model.extract_feature = timed(lambda a, k: "vision encoder", model.extract_feature)
        lm = model.language_model
        forward = lm.forward

        def stage(a, k):  # the prefill sees the whole prompt, later steps one token per row
            x = k.get("inputs_embeds")
            x = k.get("input_ids") if x is None else x
            return "LLM prefill" if x is not None and x.shape[1] > 1 else "LLM decode"
        lm.forward = timed(stage, forward)

    inference.TransformersBackend.__init__ = init
    inference.load_backend = timed(lambda a, k: "model load", inference.load_backend)
    report.render_chart = timed(lambda a, k: "report + chart", report.render_chart)
    evaluation.model_fingerprint = timed(lambda a, k: "fingerprint + tile estimates", evaluation.model_fingerprint)
    evaluation.estimated_tiles = timed(lambda a, k: "fingerprint + tile estimates", evaluation.estimated_tiles)


def main() -> int:
    a = workload_parser(__doc__.split("\n\n")[0]).parse_args()
    ensure_embedded(a.model, a.data_root)
    instrument()

    import torch

    tasks = tuple(t for t in a.tasks.split(",") if t)
    load = os.getloadavg()[0]
    n, wall, cpu = timed_evaluation(a, tasks)
    main_wall = sum(WALL[s] for s in ("vision encoder", "LLM prefill", "LLM decode", "model load",
                                      "fingerprint + tile estimates", "report + chart"))
    print(f"# {n} questions ({', '.join(tasks)}), batch {a.batch_size}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, load avg (1 min) {load:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(f"# whole run: {wall:.1f} s wall, {cpu:.1f} s CPU (all threads), {n / wall:.2f} questions/s")
    print("| stage | calls | CPU s (its threads) | wall s | ms per question (wall) | share of run wall |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in ("decode", "resize + tiles", "normalise", "vision encoder", "LLM prefill", "LLM decode", "model load",
              "fingerprint + tile estimates", "report + chart"):
        print(f"| {s} | {CALLS[s]} | {CPU[s]:.2f} | {WALL[s]:.2f} | {1000 * WALL[s] / n:.0f} | "
              f"{100 * WALL[s] / wall:.0f}% |")
    rest = wall - main_wall
    print(f"| rest (main thread: waiting for images, tokenising, generate's Python, metrics) | | | {rest:.2f} | "
          f"{1000 * rest / n:.0f} | {100 * rest / wall:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
