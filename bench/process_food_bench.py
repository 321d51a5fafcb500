"""How long does tools/process_food.py take on a FoodieQA-sized folder?

    python bench/process_food_bench.py [--repeats 3] [--keep DIR]

Builds a synthetic FoodieQA shaped like the real one (256 single-image + ~400 multi-image questions,
~390 images) and times the command end to end (Python start-up, reading, validating and decoding
every image, split, collages, writing), for the default (single-image questions) and for everything
(single + multi-image questions, zh and en). The issue's budget: under 10 s on 2 cores.

Note: real FoodieQA photos are phone pictures (often 3000-4000 px) and take longer to decode than
the synthetic drawings (300-1200 px when measured; 224-640 px since session 11); image checks decode JPEGs at 1/8 scale, which keeps that cheap.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from foodie.synthetic_data import make_demo_data  # noqa: E402


def foodieqa_sized(root: Path) -> dict:
    """~390 images, 256 single-image and ~400 multi-image questions (the published FoodieQA counts)."""
    make_demo_data(root, seed=0, photos_per_dish=25, mivqa_per_dish=25, textqa=False)  # 400 images
    sivqa = json.loads((root / "sivqa_tidy.json").read_text(encoding="utf-8"))
    mivqa = json.loads((root / "mivqa_tidy.json").read_text(encoding="utf-8"))
    # keep 256 single-image questions spread over the dishes, 403 multi-image ones
    sivqa = sivqa[:: max(1, len(sivqa) // 256)][:256]
    mivqa = mivqa[:403]
    (root / "sivqa_tidy.json").write_text(json.dumps(sivqa, ensure_ascii=False), encoding="utf-8")
    (root / "mivqa_tidy.json").write_text(json.dumps(mivqa, ensure_ascii=False), encoding="utf-8")
    images = {q["food_meta"]["food_file"] for q in sivqa} | {p for q in mivqa for p in q["images"]}
    return {"sivqa": len(sivqa), "mivqa": len(mivqa), "images": len(images)}


def time_cli(args: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds (user + system, all threads) of each run."""
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        r = subprocess.run([sys.executable, str(REPO / "tools/process_food.py"), *args], capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if r.returncode != 0:
            raise SystemExit(f"process_food failed:\n{r.stderr}")
    return walls, cpus


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="build the input here (kept) instead of a temporary folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "foodieqa"
        if not (root / "sivqa_tidy.json").is_file():
            counts = foodieqa_sized(root)
        else:
            counts = {"note": "reused"}
        out = Path(tmp) / "out"
        print(f"input: {counts}; cores: {os.cpu_count()}")
        rows = []
        for label, extra in (("sivqa (default), zh", []),
                             ("sivqa+mivqa, zh+en", ["--tasks", "sivqa,mivqa", "--lang", "both"])):
            walls, cpus = time_cli(["--data-root", str(root), "--out", str(out), *extra], args.repeats)
            summary = json.loads((out / "summary.json").read_text())
            rows.append((label, statistics.median(walls), min(walls), statistics.median(cpus), summary["train_samples"]))
        print(f"\nload average (1 min) after the runs: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print("| run | wall s, median | wall s, best | CPU s (all threads), median | training samples |")
        print("|---|---:|---:|---:|---:|")
        for label, med, best, cpu, n in rows:
            print(f"| {label} | {med:.2f} | {best:.2f} | {cpu:.2f} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
