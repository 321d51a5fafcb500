"""How long and how much memory does tools/convert_to_official.py need for a full-size InternVL2-2B?

    python bench/convert_bench.py [--dir work/bench/convert] [--runs merge,verify] [--keep]

1. builds the full-size random-weight InternVL2-2B (`tools/make_tiny_model.py --full-size`, 2.2 B parameters,
   bf16 safetensors) unless DIR/base already holds it;
2. writes a training checkpoint DIR/work/iter_100.pth with the key names and shapes XTuner saves for the
   real config (xtuner_configs/internvl_v2_internlm2_2b_lora_finetune_food.py: LoRA r=128 / alpha 256 on every
   LLM linear layer incl. the output head, the projector mlp1), random values of a trained run's size;
3. runs the command as a child process on it, without verification (`merge`) and with it (`verify`), and
   records wall time, CPU time, the tool's own phase times and the child's peak RSS (anonymous and file-backed).

The issue's budget: a machine with 24 GiB RAM and no GPU merges in under 3 minutes. Results go to
DIR/convert_bench.json and are printed as a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

REAL_CONFIG = REPO / "xtuner_configs" / "internvl_v2_internlm2_2b_lora_finetune_food.py"


def build_base(base: Path) -> float:
    if (base / "config.json").is_file():
        print(f"[bench] reusing the full-size model in {base}", flush=True)
        return 0.0
    t = time.time()
    subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_model.py"), "--full-size", "--out", str(base)],
                   check=True, cwd=REPO)
    return time.time() - t


def fake_checkpoint(base: Path, ckpt: Path, env: dict, seed: int = 0) -> dict:
    """An mmengine checkpoint with XTuner's key names for the real config's LoRA + projector."""
    import torch

    from foodie.merge import build_model, read_run

    os.environ.update(env)  # the config reads FOODIE_MODEL / FOODIE_WORK_DIR
    model = build_model(base, read_run(REAL_CONFIG), torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.named_parameters():
        if ".lora_A." in name:  # PEFT's init (kaiming uniform, fan_in) scale
            state[f"model.{name}"] = (torch.rand(p.shape, generator=g) * 2 - 1) / p.shape[1] ** 0.5
        elif ".lora_B." in name:  # B moves away from zero during training
            state[f"model.{name}"] = torch.randn(p.shape, generator=g) * 2e-3
        elif name.startswith("mlp1."):
            state[f"model.{name}"] = p.detach().float() + torch.randn(p.shape, generator=g) * 1e-3
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": {"iter": 100, "note": "bench/convert_bench.py: random LoRA of the real config's shape"},
                "state_dict": state}, ckpt)
    n = sum(v.numel() for v in state.values())
    return {"tensors": len(state), "parameters": n, "bytes": ckpt.stat().st_size}


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS / RssAnon / RssFile of a process, in KiB (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|RssAnon|RssFile):\s+(.+)$", text, re.M)}


def run_convert(ckpt: Path, out: Path, env: dict, verify: bool) -> dict:
    """Run the command; peak RSS, anonymous and file-backed, polled every 0.2 s from /proc (file-backed pages
    are the memory-mapped safetensors: page cache the kernel can drop under pressure)."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, str(REPO / "tools" / "convert_to_official.py"), str(REAL_CONFIG), str(ckpt), str(out),
           "--no-progress"]
    if not verify:
        cmd.append("--no-verify")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        for k, v in _status_kib(proc.pid).items():
            peaks[k] = max(peaks[k], v)
        time.sleep(0.2)
    reader.join()
    wall = time.time() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = "".join(lines)
    if proc.returncode != 0:
        print(text[-4000:])
        raise SystemExit(f"convert failed (exit {proc.returncode})")
    phases = dict(re.findall(r"(\w+) ([\d.]+)s", text.split("[convert] time:")[-1].splitlines()[0]))
    verify_line = next((ln for ln in text.splitlines() if ln.startswith("[verify] max")), "")
    return {"verify": verify, "wall_s": round(wall, 1),
            "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
            "peak_rss_gib": round(peaks["VmRSS"] / 2 ** 20, 2),
            "peak_rss_anon_gib": round(peaks["RssAnon"] / 2 ** 20, 2),
            "peak_rss_file_gib": round(peaks["RssFile"] / 2 ** 20, 2),
            "phases_s": {k: float(v) for k, v in phases.items()}, "verify_line": verify_line,
            "output_gb": round(sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e9, 2),
            "shards": len(list(out.glob("*.safetensors")))}


# InternVL2 sizes as their config.json gives them: InternViT-300M + MLP projector + InternLM2 language model.
SIZES = {"2B": dict(hidden=2048, layers=24, kv_width=1024, inter=8192), "8B": dict(hidden=4096, layers=32,
                                                                                    kv_width=1024, inter=14336)}
VOCAB, VIT_PARAMS, VIT_OUT, LORA_R = 92553, 304_012_288, 4096, 128  # ViT: 24 layers of width 1024 (+ embeddings)


def shapes_estimate(size: str) -> dict:
    """Parameters and the memory the two ways of merging need, worked out from the shapes alone (8B cannot be
    built on this machine). LoRA as the real config: r=128 on every LLM linear layer incl. the output head."""
    d = SIZES[size]
    h, layers, inter = d["hidden"], d["layers"], d["inter"]
    linears = [(h, h + 2 * d["kv_width"]), (h, h), (h, inter), (h, inter), (inter, h)]  # wqkv, wo, w1, w3, w2
    llm = 2 * VOCAB * h + layers * (sum(i * o for i, o in linears) + 2 * h) + h
    mlp1 = 2 * VIT_OUT + VIT_OUT * h + h + h * h + h
    lora = LORA_R * (layers * sum(i + o for i, o in linears) + h + VOCAB)
    gib = 2 ** 30
    return {"size": size, "parameters": VIT_PARAMS + mlp1 + llm, "lora_parameters": lora,
            "bf16_gib": round(2 * (VIT_PARAMS + mlp1 + llm) / gib, 1), "fp32_gib": round(4 * (VIT_PARAMS + mlp1 + llm) / gib, 1),
            "largest_tensor_fp32_gib": round(4 * VOCAB * h / gib, 2), "lora_fp32_gib": round(4 * lora / gib, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=REPO / "work" / "bench" / "convert")
    ap.add_argument("--runs", default="merge,verify", help="merge (--no-verify) and/or verify")
    ap.add_argument("--keep", action="store_true", help="keep the merged folders")
    args = ap.parse_args(argv)
    base, work, out = args.dir / "base", args.dir / "work", args.dir / "merged"
    env = {"FOODIE_MODEL": str(base), "FOODIE_WORK_DIR": str(work), "OMP_NUM_THREADS": str(os.cpu_count())}

    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                         f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30:.0f} GiB RAM, "
                         f"python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d"), "load_before": os.getloadavg()[0]}
    result["build_base_s"] = round(build_base(base), 1)
    ckpt = work / "iter_100.pth"
    if not ckpt.is_file():
        t = time.time()
        result["checkpoint"] = fake_checkpoint(base, ckpt, env)
        result["checkpoint"]["write_s"] = round(time.time() - t, 1)
    runs = []
    for kind in args.runs.split(","):
        print(f"[bench] convert ({kind}) ...", flush=True)
        runs.append(run_convert(ckpt, out, env, verify=kind == "verify"))
        print(json.dumps(runs[-1]), flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    result["runs"] = runs
    result["load_after"] = os.getloadavg()[0]
    (args.dir / "convert_bench.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print(f"\n{result['machine']}, {result['date']}, 1-min load {result['load_before']:.1f} -> {result['load_after']:.1f}\n")
    print("| run | wall s | CPU s | prepare s | merge s | verify s | peak RSS GiB (anon / file-backed) | output |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        p = r["phases_s"]
        print(f"| {'merge + verify' if r['verify'] else 'merge (--no-verify)'} | {r['wall_s']} | {r['cpu_s']} | "
              f"{p.get('prepare', '')} | {p.get('merge', '')} | {p.get('verify', '-')} | {r['peak_rss_gib']} "
              f"({r['peak_rss_anon_gib']} / {r['peak_rss_file_gib']}) | "
              f"{r['output_gb']} GB in {r['shards']} shards |")
    for r in runs:
        if r["verify_line"]:
            print(f"\n{r['verify_line']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
