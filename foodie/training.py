"""Run ``xtuner train`` so that a failure is reported as one, and resume from a complete checkpoint.

``xtuner train`` exits 0 even when training crashed, and MMEngine's ``last_checkpoint`` can name a checkpoint a
kill cut short. A run succeeds only when xtuner exited 0, printed no traceback and wrote a complete checkpoint of
the final iteration. The trainer runs in its own process group under ``foodie.process_guard`` (recorded in
``<work_dir>/.foodie-trainer.pid``): it ends with the launcher, and a second trainer in the same work dir is refused.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from foodie import paths
from foodie.atomic import atomic_path, write_json, write_text
from foodie.checkpoints import checkpoint_iter, is_complete_checkpoint, latest_complete_checkpoint, list_checkpoints
from foodie.process_guard import group_commands

DEFAULT_CONFIG = paths.REPO_ROOT / "xtuner_configs" / "internvl_v2_tiny_lora_cpu.py"
TRACEBACK = "Traceback (most recent call last)"
ITER_LINE = re.compile(r"Iter\(train\)\s*\[\s*(\d+)/(\d+)\]")
ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b")  # also json.decoder.JSONDecodeError
TRAINER_PID_FILE = ".foodie-trainer.pid"  # process group of the trainer running in this work dir
DONE_FILE = ".foodie-train-done.json"  # the final checkpoint of a finished run


class TrainingFailed(RuntimeError):
    pass


@dataclass
class TrainPlan:
    config: Path
    work_dir: Path
    model_path: str
    data_path: Path
    resume_from: Path | None
    command: list[str]
    env: dict
    finished: Path | None = None  # --resume of a run that already finished: its final checkpoint


def _log(line: str) -> None:
    print(f"[train] {line}", flush=True)


def _load_config(config: Path):
    from mmengine.config import Config

    if not config.is_file():
        raise TrainingFailed(f"config not found: {config}. Configs live in {paths.REPO_ROOT / 'xtuner_configs'}; "
                             f"pass one with --config (make train CONFIG=...).")
    try:
        return Config.fromfile(str(config))
    except Exception as e:  # syntax errors, bad _base_/read_base, missing env-derived files
        raise TrainingFailed(f"cannot read config {config}: {type(e).__name__}: {e}") from e


def ensure_inputs(model_path: str, data_path: Path) -> None:
    """Build the embedded default model/data when the config points at them and they are missing;
    any other missing path is an error naming the variable to set."""
    from foodie.tiny_model import ensure_embedded_default

    model_dir = Path(model_path)
    if model_dir.resolve() == paths.tiny_model_dir():
        ensure_embedded_default(model=True, log=_log)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model_path) and not model_dir.exists():
        _log(f"FOODIE_MODEL is not a folder: loading {model_path!r} from the model hub "
             f"(needs network; set FOODIE_MODEL=/path/to/InternVL2-2B for a local copy)")
    elif not (model_dir / "config.json").is_file():
        raise TrainingFailed(f"model folder not found or without config.json: {model_path}. Set FOODIE_MODEL to "
                             f"an InternVL2 checkpoint folder (embedded one: python tools/make_tiny_model.py).")
    if not data_path.is_file() and data_path.parent.resolve() == paths.work_dir() / "foodieqa-xtuner":
        _, demo = ensure_embedded_default(model=False, data=True, log=_log)  # process_food's default --out
        cmd = [sys.executable, str(paths.REPO_ROOT / "tools" / "process_food.py"), "--data-root", str(demo),
               "--out", str(data_path.parent)]
        _log(f"building the XTuner training data from the synthetic FoodieQA: {shlex.join(cmd)}")
        if subprocess.run(cmd, cwd=paths.REPO_ROOT).returncode != 0:
            raise TrainingFailed(f"building the training data failed: {shlex.join(cmd)}")
    if not data_path.is_file():
        raise TrainingFailed(f"training data not found: {data_path}. Set FOODIE_DATA to the output folder of "
                             f"`python tools/process_food.py --data-root <FoodieQA folder> --out <folder>`.")


def plan_training(config: str | os.PathLike | None = None, *, resume: bool = False,
                  work_dir: str | os.PathLike | None = None, deepspeed: str | None = None,
                  extra_args: list[str] | None = None, nproc: int | None = None) -> TrainPlan:
    config = Path(config or DEFAULT_CONFIG).resolve()
    cfg = _load_config(config)
    work_dir = Path(work_dir or cfg.get("work_dir") or paths.work_dir() / "train" / config.stem).resolve()
    check_no_running_trainer(work_dir)
    resume_from = latest_complete_checkpoint(work_dir) if resume else None
    for ckpt in list_checkpoints(work_dir) if resume_from else []:
        if checkpoint_iter(ckpt) > checkpoint_iter(resume_from):
            _log(f"skipping incomplete checkpoint {ckpt}")

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if nproc:
        env["NPROC_PER_NODE"] = str(nproc)
    xtuner = shutil.which("xtuner", path=env["PATH"])
    if xtuner is None:
        raise TrainingFailed(f"`xtuner` not found next to {sys.executable} or on PATH: install the project "
                             f"(make venv), or put the folder holding XTuner's `xtuner` script on PATH.")
    if shutil.which("python", path=env["PATH"]) is None:
        # XTuner's CLI starts `python` from PATH; some machines only have `python3`.
        shim = work_dir / ".bin"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (shim / "python").chmod(0o755)
        env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    cmd = [xtuner, "train", str(config), "--work-dir", str(work_dir)]
    cmd += ["--deepspeed", deepspeed] if deepspeed else []
    if resume_from is not None:
        # Not `--resume PATH`: for a DeepSpeed folder xtuner first torch.loads a shard itself to read the
        # seed, which fails under weights_only=True; MMEngine's resume (load_from) goes through
        # DeepSpeed's loader there and through our plain-data checkpoints otherwise.
        cmd += ["--cfg-options", "resume=True", f"load_from={resume_from}"]
    finished = resume_from if resume_from is not None and finished_checkpoint(work_dir) == resume_from else None
    return TrainPlan(config, work_dir, str(cfg.get("path", "")), Path(str(cfg.get("data_path", ""))), resume_from,
                     cmd + list(extra_args or []), env, finished)


def check_no_running_trainer(work_dir: Path) -> None:
    try:
        pgid = int((work_dir / TRAINER_PID_FILE).read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return
    mine = [c for c in group_commands(pgid).values() if str(work_dir) in c]  # a reused group id is not ours
    if mine:
        raise TrainingFailed(f"a trainer is still running in {work_dir} (process group {pgid}: {mine[0][:160]}). "
                             f"Two trainers in one work dir overwrite each other's checkpoints: wait for it to end, "
                             f"or stop it with `kill -- -{pgid}`, then run this again.")


def finished_checkpoint(work_dir: Path) -> Path | None:
    """The final checkpoint recorded by a run that finished in ``work_dir``, if it is still there unchanged."""
    try:
        done = json.loads((work_dir / DONE_FILE).read_text(encoding="utf-8"))
        ckpt = work_dir / done["checkpoint"]
        return ckpt if ckpt.exists() and ckpt.stat().st_mtime_ns == done["mtime_ns"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_training(plan: TrainPlan, *, build_inputs: bool = True) -> Path:
    """Run the plan; return the final checkpoint or raise TrainingFailed naming the reason and the log.
    A failed run puts back the config copies in the work dir it overwrote (they name what the last good run used)."""
    if build_inputs:
        ensure_inputs(plan.model_path, plan.data_path)
    if plan.resume_from is not None:
        _log(f"resuming from {plan.resume_from} (iteration {checkpoint_iter(plan.resume_from)})")
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    check_no_running_trainer(plan.work_dir)
    record_data_source(plan.data_path, plan.work_dir)
    log_path = plan.work_dir / f"train-{time.strftime('%Y%m%d-%H%M%S')}.log"
    before = {p: p.stat().st_mtime_ns for p in list_checkpoints(plan.work_dir)}
    configs_before = {p: p.read_bytes() for p in plan.work_dir.glob("*.py") if p.is_file()}
    (plan.work_dir / DONE_FILE).unlink(missing_ok=True)
    nproc = plan.env.get("NPROC_PER_NODE")
    _log(f"running:{' NPROC_PER_NODE=' + nproc if nproc else ''} {shlex.join(plan.command)}")
    _log(f"log: {log_path}")

    saw_traceback, total_iters, errors = False, None, []
    guard = [sys.executable, "-m", "foodie.process_guard", str(os.getpid()), "--"]
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(guard + plan.command, cwd=paths.REPO_ROOT, env=plan.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                start_new_session=True)
        (plan.work_dir / TRAINER_PID_FILE).write_text(f"{proc.pid}\n", encoding="utf-8")
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
                saw_traceback |= TRACEBACK in line
                if m := ITER_LINE.search(line):
                    total_iters = int(m.group(2))
                if ERROR_LINE.match(line):
                    errors = (errors + [line.rstrip()])[-200:]
            rc = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM: the guard ends the trainer's whole group; wait for it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            raise
    (plan.work_dir / TRAINER_PID_FILE).unlink(missing_ok=True)

    final = latest_complete_checkpoint(plan.work_dir)
    reasons = [f"xtuner exited with status {rc}"] if rc != 0 else []
    if saw_traceback:
        reasons.append("a Python traceback was printed")
    if final is None or before.get(final) == final.stat().st_mtime_ns:
        reasons.append("no new complete checkpoint was written")
    elif total_iters is not None and checkpoint_iter(final) != total_iters:
        reasons.append(f"the newest checkpoint is {final.name}, not iteration {total_iters}")
    if reasons:
        for path, text in configs_before.items():
            if not path.is_file() or path.read_bytes() != text:
                with atomic_path(path) as tmp:
                    tmp.write_bytes(text)
        error = last_error(errors)
        raise TrainingFailed("training failed: " + "; ".join(reasons)
                             + (f"\n  last error: {error}" if error else "")
                             + f"\n  full log: {log_path}\n  command: {shlex.join(plan.command)}"
                             + ("\n  after fixing it, continue with: make train RESUME=1"
                                f" CONFIG={plan.config}" if list_checkpoints(plan.work_dir) else ""))
    write_json(plan.work_dir / DONE_FILE, {"checkpoint": final.name, "mtime_ns": final.stat().st_mtime_ns})
    return final


def record_data_source(data_path: Path, work_dir: Path) -> None:
    """Keep process_food's summary.json (the data's source, licence and terms; foodie.terms) in the work dir, so
    the merge names what this run trained on even if the data folder is rebuilt from other data later."""
    from foodie.terms import DATA_SOURCE_FILE

    summary = Path(data_path).parent / "summary.json"
    if summary.is_file():
        write_text(work_dir / DATA_SOURCE_FILE, summary.read_text(encoding="utf-8"))
    else:
        (work_dir / DATA_SOURCE_FILE).unlink(missing_ok=True)


def last_error(lines: list[str]) -> str | None:
    """The error that explains a failed run: a missing file (the root cause a DataLoader's follow-up errors
    hide), else the last exception line."""
    errors = [ln for ln in lines if ERROR_LINE.match(ln)]
    missing = [ln for ln in errors if ln.startswith("FileNotFoundError") or "No such file" in ln]
    return (missing or errors or [None])[-1]


def describe_checkpoint(ckpt: Path) -> str:
    kind = "DeepSpeed folder (ZeRO shards)" if ckpt.is_dir() else "file"
    return f"{ckpt} ({kind}, iteration {checkpoint_iter(ckpt)}, complete={is_complete_checkpoint(ckpt)})"
