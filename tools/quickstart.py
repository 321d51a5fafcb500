"""The whole course in one command: data -> baseline accuracy -> LoRA fine-tune -> merge -> tuned accuracy.

    make quickstart                                           # embedded tiny model + synthetic FoodieQA (CPU)
    make quickstart MODEL=/models/InternVL2-2B DATA=/data/FoodieQA   # the real job (GPU profile)
    make quickstart MODEL=/models/InternVL2-2B TRAIN_DATA=work/my-photos DATA=/data/FoodieQA   # your own photos

DATA is evaluated: its held-out split, or all of it when TRAIN_DATA (a FoodieQA-schema data set or a folder of dish
photos) is the training source. FoodieQA's terms allow evaluation only: training on the real FoodieQA needs
--accept-foodieqa-terms (ACCEPT_FOODIEQA_TERMS=1). Each stage is one of the project's own commands, printed before
it runs; a re-run skips every stage whose inputs are unchanged (work/quickstart.json), and interrupted training
continues from its last complete checkpoint.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from foodie import cli, paths
from foodie.atomic import write_json, write_text
from foodie.tiny_model import ensure_embedded_default

REPO_ROOT = paths.REPO_ROOT
CPU_CONFIG = REPO_ROOT / "xtuner_configs" / "internvl_v2_tiny_lora_cpu.py"
REAL_CONFIG = REPO_ROOT / "xtuner_configs" / "internvl_v2_internlm2_2b_lora_finetune_food.py"
PY = sys.executable


TRAIN_INPUTS_FILE = "quickstart-inputs.txt"  # in the train dir: the fingerprint of the inputs it was trained on


class StageFailed(RuntimeError):
    pass


def fingerprint(*parts) -> str:
    """Hash of the stage's inputs: strings as given, files by content, folders by their files' size+mtime."""
    h = hashlib.sha256()
    for part in parts:
        p = Path(part) if isinstance(part, Path) else None
        if p is not None and p.is_file():
            h.update(p.read_bytes())
        elif p is not None and p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file() and "__pycache__" not in q.parts):
                st = f.stat()
                h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class Pipeline:
    def __init__(self, args: argparse.Namespace):
        from rich.console import Console

        self.console = Console()
        self.work = paths.work_dir()
        self.state_file = self.work / "quickstart.json"  # stage name -> fingerprint of the inputs it was done with
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        self.model = Path(args.model).resolve() if args.model else paths.tiny_model_dir()
        self.data_root = Path(args.data_root).resolve() if args.data_root else paths.demo_data_dir()
        train_data = getattr(args, "train_data", None)
        self.train_root = Path(train_data).resolve() if train_data else self.data_root
        self.accept_terms = bool(getattr(args, "accept_foodieqa_terms", False))
        self.embedded = args.model is None
        # The embedded tiny model trains with the CPU variant; a real checkpoint with the real run's config.
        self.config = Path(args.config).resolve() if args.config else (CPU_CONFIG if self.embedded else REAL_CONFIG)
        name = self.config.stem
        self.xtuner_data, self.train_dir = self.work / f"{name}-data", self.work / "train" / name
        self.merged, self.eval_dir = self.work / f"{name}-merged", self.work / f"{name}-eval"
        self.lang, self.tasks, self.deepspeed = args.lang, args.tasks, args.deepspeed
        self.max_new_tokens = getattr(args, "max_new_tokens", None)  # None: eval_food's default (the authors' 512)
        # The configs read their paths from these variables, in this process and in every stage's.
        os.environ.update(FOODIE_MODEL=str(self.model), FOODIE_DATA=str(self.xtuner_data),
                          FOODIE_WORK_DIR=str(self.train_dir), PYTHONUNBUFFERED="1")
        self.env = dict(os.environ)
        # Evaluate at the tile budget the config trains with (what the tuned model learned to read); None: the
        # checkpoint's own, as evaluation does by default.
        from mmengine.config import Config

        tiles = Config.fromfile(str(self.config)).get("max_dynamic_patch") if self.config.is_file() else None
        self.max_tiles = None if tiles is None else int(tiles)
        self.started = time.time()

    def run(self, stage: str, cmd: list[str]) -> None:
        env_shown = " ".join(f"{k}={shlex.quote(self.env[k])}" for k in ("FOODIE_MODEL", "FOODIE_DATA", "FOODIE_WORK_DIR")
                             if "train" in stage or "merge" in stage)
        self.console.print(f"[dim]$ {env_shown + ' ' if env_shown else ''}{shlex.join(cmd)}[/dim]", highlight=False)
        done = subprocess.run(cmd, cwd=REPO_ROOT, env=self.env)
        if done.returncode != 0:
            raise StageFailed(f"stage '{stage}' failed (exit {done.returncode}); its output is above.\n"
                              f"  command: {shlex.join(cmd)}")

    def stage(self, number: int, name: str, what: str, key: str | None, build) -> None:
        title = f"[{number}/7] {name}: {what}"
        if key is not None and self.state.get(name) == key:
            self.console.print(f"[bold green]✓[/] {title} [dim](already done, inputs unchanged)[/dim]")
            return
        self.console.rule(f"[bold]{title}")
        t0 = time.time()
        build()
        self.console.print(f"[bold green]✓[/] {name} done in {time.time() - t0:.0f} s")
        if key is not None:
            self.state[name] = key
            write_json(self.state_file, self.state)

    def prepare_inputs(self) -> None:
        if self.embedded:
            ensure_embedded_default(model=True, data=self.data_root == paths.demo_data_dir(),
                                    log=lambda line: self.console.print(f"[dim]{line}[/dim]"))
        elif not (self.model / "config.json").is_file():
            raise StageFailed(f"MODEL={self.model}: no config.json there. Point MODEL at the InternVL2-2B "
                              "checkpoint folder (see docs/guide_gpu.md, 'Get the model').")
        if not self.data_root.is_dir():
            raise StageFailed(f"DATA={self.data_root}: not a folder. Point DATA at the FoodieQA folder (images/, "
                              "sivqa_tidy.json, ...); see docs/guide_gpu.md, 'Get the gated dataset'.")
        if not self.train_root.is_dir():
            raise StageFailed(f"TRAIN_DATA={self.train_root}: not a folder. Point it at a data set in the FoodieQA "
                              "schema or at a folder of dish photos (one subfolder per dish).")
        from foodie.foodieqa import DownloadError, locate_data_root, looks_like_photo_folder

        separate = self.separate
        try:  # the folder `hf download` wrote holds FoodieQA.zip: unpack it, use the folder inside
            self.data_root = locate_data_root(self.data_root, unpack=True)
            self.train_root = locate_data_root(self.train_root, unpack=True) if separate else self.data_root
        except DownloadError as e:
            raise StageFailed(str(e)) from None
        if separate and looks_like_photo_folder(self.train_root):
            photos, self.train_root = self.train_root, self.work / f"{self.train_root.name}-foodieqa"
            key = fingerprint("photos", photos, REPO_ROOT / "foodie" / "own_photos.py")
            if self.state.get("photos") != key or not self.train_root.is_dir():  # else: converted, unchanged
                self.run("data", [PY, "tools/photos_to_foodieqa.py", str(photos), "--out", str(self.train_root)])
                self.state["photos"] = key
                write_json(self.state_file, self.state)

    @property
    def separate(self) -> bool:  # trained on one source, evaluated on another
        return self.train_root != self.data_root

    def convert_data(self) -> None:
        self.run("data", [PY, "tools/process_food.py", "--data-root", str(self.train_root), "--out",
                          str(self.xtuner_data), "--lang", self.lang, "--tasks", self.tasks, "--tokenizer", str(self.model)]
                 + (["--accept-foodieqa-terms"] if self.accept_terms else []))

    def eval_cmd(self, models: list[tuple[str, Path]]) -> list[str]:
        # Two sources: every question of DATA (none was trained on); one: the held-out split of it.
        items = [] if self.separate else ["--items", str(self.xtuner_data / "held_out.json")]
        cmd = [PY, "tools/eval_food.py", "--data-root", str(self.data_root), *items, "--lang", self.lang,
               "--tasks", self.tasks, "--out", str(self.eval_dir)]
        if self.max_tiles is not None:
            cmd += ["--max-tiles", str(self.max_tiles)]
        if self.max_new_tokens is not None:
            cmd += ["--max-new-tokens", str(self.max_new_tokens)]
        for label, model in models:
            cmd += ["--model", str(model), "--label", label]
        return cmd

    def train(self, key: str) -> None:
        from foodie.checkpoints import list_checkpoints

        cmd = [PY, "tools/train.py", "--config", str(self.config), "--work-dir", str(self.train_dir)]
        if self.deepspeed:
            cmd += ["--deepspeed", self.deepspeed]
        marker = self.train_dir / TRAIN_INPUTS_FILE
        if list_checkpoints(self.train_dir):
            if marker.is_file() and marker.read_text().strip() == key:  # an interrupted run of these inputs
                cmd.append("--resume")
            else:  # checkpoints of other inputs (config, data or model changed): never resume those
                stale = self.train_dir.with_name(self.train_dir.name + ".stale")
                shutil.rmtree(stale, ignore_errors=True)
                self.train_dir.rename(stale)
                self.console.print(f"[yellow]{self.train_dir} held a run of other inputs: moved to {stale}; "
                                   f"training from the start[/]")
        self.train_dir.mkdir(parents=True, exist_ok=True)
        write_text(marker, key + "\n")
        self.run("train", cmd)

    def merge(self) -> None:
        self.run("merge", [PY, "tools/convert_to_official.py", str(self.config), "latest", str(self.merged),
                           "--work-dir", str(self.train_dir), "--base-model", str(self.model), "--force"])

    def go(self) -> dict:
        self.console.print(f"[bold]internvl-foodie quickstart[/] — model {self.model}, data {self.data_root}"
                           + (f" (evaluation), training data {self.train_root}" if self.separate else "") + ", "
                           f"config {self.config.relative_to(REPO_ROOT) if self.config.is_relative_to(REPO_ROOT) else self.config}")
        self.stage(1, "inputs", "the model and FoodieQA folders", None, self.prepare_inputs)
        # The model's config.json and tokenizer set the token counts and the collage tile size of the data.
        data_key = fingerprint("data", self.train_root, self.accept_terms, self.lang, self.tasks, REPO_ROOT / "foodie" / "data_conversion.py",
                               REPO_ROOT / "foodie" / "prompts.py", self.model / "config.json")
        self.stage(2, "data", "FoodieQA -> XTuner training data + held-out split", data_key, self.convert_data)
        # The model folder by its files (a rebuilt embedded model has new weights under the same config.json).
        base_key = fingerprint("base", data_key, self.data_root, self.model, self.max_tiles, self.max_new_tokens or "")
        self.stage(3, "eval-base", "held-out accuracy of the base model", base_key,
                   lambda: self.run("eval", self.eval_cmd([("base", self.model)])))
        train_key = fingerprint("train", data_key, self.config, self.model, self.deepspeed or "")
        self.stage(4, "train", "LoRA fine-tune with xtuner train", train_key, lambda: self.train(train_key))
        merge_key = fingerprint("merge", train_key)
        self.stage(5, "merge", "LoRA merged into an official InternVL2 checkpoint", merge_key, self.merge)
        tuned_key = fingerprint("eval-tuned", base_key, merge_key)
        self.stage(6, "eval-tuned", "held-out accuracy, base vs tuned", tuned_key,
                   lambda: self.run("eval", self.eval_cmd([("base", self.model), ("tuned", self.merged)])))
        return self.summary()

    def sources_line(self) -> str:
        from foodie.terms import describe_source

        trained = describe_source(self.train_root)["name"]
        if not self.separate:
            return (f"trained on: {trained} ({self.train_root}); evaluated on: its held-out split "
                    f"({self.xtuner_data / 'held_out.json'}), never trained on")
        return (f"trained on: {trained} ({self.train_root}); evaluated on: every question of "
                f"{describe_source(self.data_root)['name']} ({self.data_root}), never trained on")

    def summary(self) -> dict:
        from foodie.report import print_summary

        metrics = json.loads((self.eval_dir / "metrics.json").read_text())
        acc = {m["label"]: m["overall"] for m in metrics["models"]}
        self.console.rule("[bold][7/7] held-out accuracy, before vs after fine-tuning")
        self.console.print(self.sources_line())
        print_summary(metrics, self.console)
        self.console.print(f"[dim]accuracy: {metrics['protocol']}; "
                           f"predictions with raw answers and gold letters: {self.eval_dir / 'predictions'}/[/dim]")
        demo = f"{PY if not PY.startswith(str(REPO_ROOT)) else os.path.relpath(PY, REPO_ROOT)} demo/app.py " \
               f"--model {self.merged} --compare {self.model} --data-root {self.data_root}"
        self.console.print(f"chart:  {self.eval_dir / 'accuracy.png'}\nreport: {self.eval_dir / 'report.md'}\n"
                           f"merged checkpoint: {self.merged}\nopen the demo in compare mode:\n  [bold]{demo}[/]")
        self.console.print(f"[dim]quickstart took {time.time() - self.started:.0f} s[/dim]")
        result = {"before": acc["base"]["accuracy"], "after": acc["tuned"]["accuracy"],
                  "train_data": str(self.train_root), "eval_data": str(self.data_root),
                  "eval_questions": "all of eval_data" if self.separate else "held-out split of train_data",
                  "chart": str(self.eval_dir / "accuracy.png"), "merged": str(self.merged), "demo": demo}
        write_json(self.work / "quickstart-result.json", result)
        return result


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="tools/quickstart.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="InternVL2 checkpoint folder (default: the embedded tiny model, built on first use)")
    p.add_argument("--data-root", help="FoodieQA folder (default: the synthetic FoodieQA, built on first use)")
    p.add_argument("--train-data", help="training source (default: --data-root): a data set in the FoodieQA "
                                        "schema or a folder of dish photos; then --data-root is evaluated whole")
    p.add_argument("--accept-foodieqa-terms", action="store_true",
                   help="train on the real FoodieQA, whose terms allow evaluation only (needs the authors' permission)")
    p.add_argument("--config", help="XTuner config (default: the CPU variant for the embedded model, "
                                    "the real run's config when --model is given)")
    p.add_argument("--lang", choices=["zh", "en"], default="zh", help="question language (default zh)")
    p.add_argument("--tasks", default="sivqa",
                   help="FoodieQA tasks to train on and evaluate, comma-separated (default sivqa: single-image "
                        "questions; mivqa is trained on a 2x2 collage, see docs/TRAINING.md)")
    p.add_argument("--deepspeed", default=None,
                   help="e.g. deepspeed_zero2 (default: deepspeed_zero2 when a CUDA GPU is visible)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length cap of the evaluations (default: the authors' 512 on a GPU; 64 on CPU, where "
                        "a model that never ends its turn would spend minutes on 512)")
    args = p.parse_args(argv)
    if args.deepspeed is None or args.max_new_tokens is None:
        import torch

        gpu = torch.cuda.is_available()
        args.deepspeed = ("deepspeed_zero2" if gpu else "") if args.deepspeed is None else args.deepspeed
        args.max_new_tokens = 64 if args.max_new_tokens is None and not gpu else args.max_new_tokens
    try:
        Pipeline(args).go()
    except StageFailed as e:
        print(f"\nquickstart stopped: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
