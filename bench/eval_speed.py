#!/usr/bin/env python
"""Time tools/eval_food.py on the embedded default: 100 questions with the tiny model on CPU.

Budget (Evaluate issue): 100 questions in under 30 s on 2 cores. The run is the real evaluation
(`foodie.evaluation.evaluate`): model load, FoodieQA validation, image tiling, batched generation,
predictions, metrics, report and chart; a fresh output folder so nothing is reused. Half the
questions are single-image, half multi-image (four photos each) unless --tasks says otherwise.

    python bench/eval_speed.py                       # builds work/tiny-internvl2 + synthetic data if missing
    python bench/eval_speed.py --repeat 3 --batch-size 8

Prints one Markdown table row per run (wall and CPU seconds, questions/s, load average), for
docs/PERFORMANCE.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path



def ensure_embedded(model: Path, data: Path) -> None:
    if not (model / "config.json").is_file():
        from foodie.tiny_model import write_checkpoint
        write_checkpoint(model, seed=0)
    if not (data / "sivqa_tidy.json").is_file():
        import subprocess
        subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "tools" / "make_demo_data.py"),
                        "--out", str(data)], check=True)


def workload_parser(description: str) -> argparse.ArgumentParser:
    """The evaluation workload both eval benches time (bench/eval_profile.py adds its stage profile on top)."""
    from foodie import paths

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", type=Path, default=paths.tiny_model_dir())
    p.add_argument("--data-root", type=Path, default=paths.demo_data_dir())
    p.add_argument("--questions", type=int, default=100)
    p.add_argument("--tasks", default="sivqa,mivqa")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", default="transformers")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="answer length cap (default 32, the workload the 100-question budget was set on; the "
                        "random-weight tiny model rarely ends its turn early, so answers run to the cap)")
    return p


def timed_evaluation(a: argparse.Namespace, tasks: tuple[str, ...]) -> tuple[int, float, float]:
    """One real evaluation into a fresh folder: (questions answered, wall s, CPU s of this process)."""
    from rich.console import Console

    from foodie.evaluation import eval_settings, evaluate

    with tempfile.TemporaryDirectory(prefix="eval-bench-") as out:
        cpu0, t0 = time.process_time(), time.perf_counter()
        metrics = evaluate(eval_settings(models=[str(a.model)], data_root=str(a.data_root), out=out, tasks=tasks,
                                         limit=-(-a.questions // len(tasks)), batch_size=a.batch_size,
                                         backend=a.backend, max_new_tokens=a.max_new_tokens),
                           console=Console(file=open(os.devnull, "w")))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return metrics["models"][0]["overall"]["n"], wall, cpu


def main() -> int:
    p = workload_parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    ensure_embedded(a.model, a.data_root)

    import torch

    tasks = tuple(t for t in a.tasks.split(",") if t)
    print(f"# {a.questions} questions ({', '.join(tasks)}), batch {a.batch_size}, backend {a.backend}, "
          f"{a.max_new_tokens} new tokens at most, "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print("| run | questions | wall s | CPU s | questions/s | load avg (1 min) at start |")
    print("|---|---:|---:|---:|---:|---:|")
    for i in range(a.repeat):
        load = os.getloadavg()[0]
        n, wall, cpu = timed_evaluation(a, tasks)
        print(f"| {i + 1} | {n} | {wall:.1f} | {cpu:.1f} | {n / wall:.2f} | {load:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
