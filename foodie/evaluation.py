"""FoodieQA evaluation: ask each model the questions in the authors' templates (``--template N``, through the
model's chat template), greedy up to ``--max-new-tokens``; write ``predictions/<label>.jsonl`` and metrics.json
(foodie.report draws report.md and accuracy.png from it).

Predictions, one JSON line per question (re-scorable by anyone): ``item_id``, ``task``, ``question_id``, ``template``,
``prompt`` (user text), ``reply_prefix`` (start of the reply the model continued, usually ""), ``images``, ``choices``
(option texts; null when the options are images), ``response`` (the raw generated text), ``answer`` (gold letter
A-D), then our reading (foodie.scoring.read_response): ``letter``, ``score`` (1, 0 or 0.25), ``guess``,
``option_text``. A row's ``key`` (model content, backend, generation settings, prompt, images) lets a re-run reuse
it; rows are fsynced after every batch, so a killed run loses at most one batch.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from foodie import held_out, published, report, scoring, stats
from foodie.atomic import write_json, write_text
from foodie.model_spec import PROVENANCE_FILE, ModelSpec

DEFAULT_MAX_NEW_TOKENS = 512  # the authors generate 500-512 new tokens (1024 for Yi-VL); generation ends with the turn
PREDICTIONS_VERSION = 1
_HASHED = (".json", ".py", ".safetensors", ".bin", ".model", ".txt", ".tiktoken")  # not a card or a log


@dataclass
class Question:
    """One multiple-choice question as the model is asked it."""
    item_id: str  # task:question_id
    task: str
    question_id: str
    question_type: str
    cuisine: str
    answer: int  # 0-3: the correct option (SIVQA, TextQA) or image (MIVQA)
    prompt: str  # user text; <image> placeholders where the images go, in the order of ``images``
    images: list[str]  # paths relative to the data root (empty for TextQA)
    choices: list[str] | None = None  # option texts, for the option-text diagnostic (None for MIVQA)
    template: int = 0  # the authors' template number the prompt was made with
    reply_prefix: str = ""  # start of the reply the model continues ("" for most templates)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # upright (width, height) of each image


def build_questions(data_root: str | os.PathLike, tasks: Sequence[str] | None = None, lang: str = "zh",
                    items: str | os.PathLike | None = None, limit: int | None = None, skip_bad: bool = False,
                    template: int = 0) -> tuple[list[Question], Path]:
    """The FoodieQA questions of the tasks (None: every task the folder has), only those of the held-out
    manifest ``items`` if given, each in the authors' template ``template``."""
    from foodie import prompts
    from foodie.foodieqa import load_foodieqa

    for t in tasks or ():  # a bad task, language or template fails before any data is read
        prompts.get_template(t, lang, template)
    data = load_foodieqa(data_root, tasks, skip_bad=skip_bad)  # tasks None: the question files the folder has
    wanted = held_out.read_held_out(items, tasks) if items else None
    questions = []
    for task in tasks or data.files:
        chosen = getattr(data, task)
        if wanted is not None:
            chosen = held_out.select(chosen, wanted[task], items, data_root, task)
        if limit is not None and len(chosen) > limit:  # spread over the file (it is grouped by dish)
            chosen = [chosen[i * len(chosen) // limit] for i in range(limit)]
        for it in chosen:
            text, images, prefix = prompts.question_prompt(it, lang, template)
            choices = prompts.item_text(it, lang)[1]  # None when the options are the images
            questions.append(Question(f"{task}:{it.question_id}", task, it.question_id, it.question_type, it.cuisine,
                                      it.answer, text, images, choices, template, prefix,
                                      [data.image_sizes[p] for p in images]))
    if not questions:
        raise ValueError(f"no questions to ask in {data_root} for tasks {', '.join(tasks or data.files)}"
                         + (f" and the manifest {items}" if items else ""))
    return questions, data.root


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """A content hash of a checkpoint folder: config, code, tokenizer and every weight byte (two fine-tunes
    have the same shapes and sizes; seconds for 2B parameters)."""
    root, total = Path(model_dir).resolve(), hashlib.sha256()
    for f in sorted(root.rglob("*")):
        relative = f.relative_to(root)
        if f.is_file() and f.suffix in _HASHED and not any(part.startswith(".") for part in relative.parts):
            with open(f, "rb") as fh:
                total.update(f"{relative.as_posix()}\0{hashlib.file_digest(fh, 'sha256').hexdigest()}\n".encode())
    return total.hexdigest()[:20]


def prediction_key(fingerprint: str, backend: str, settings: dict, q: Question) -> str:
    asked = [q.prompt, q.images] + ([q.reply_prefix] if q.reply_prefix else [])
    blob = json.dumps([PREDICTIONS_VERSION, fingerprint, backend, settings, q.task, q.question_id, *asked],
                      ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_predictions(path: Path) -> list[dict]:
    """Rows of a predictions file; a torn last line (a killed run) is skipped: that question is asked again."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return [r for r in rows if isinstance(r, dict) and "key" in r]


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows and force them to disk: a kill afterwards loses nothing of them."""
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())


def score_row(row: dict, q: Question) -> dict:  # today's reading of the response (foodie.scoring)
    return dict(row, **scoring.read_response(row["response"], q.answer, q.item_id, q.choices))


def estimated_tiles(q: Question, spec: ModelSpec, max_tiles: int | None = None) -> int:
    from foodie.inference import tiles_per_image

    budget = tiles_per_image(max_tiles or spec.max_tiles, len(q.images))
    return sum(spec.tiles(w, h, max_tiles=budget) for w, h in q.image_sizes)


def safe_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "model"


def run_model(cfg: argparse.Namespace, model_dir: str, label: str, questions: Sequence[Question], data_root: Path,
              load: Callable | None = None, on_batch: Callable[[int], None] = lambda n: None) -> dict:
    """Ask one model every question, reusing finished predictions: metrics.json's ``runs`` entry, with ``rows``
    (every question's, in order), ``model_dir`` and ``fingerprint``."""
    from foodie.inference import GenerationParams, Message, answer_all, load_backend, resolve_backend

    backend, spec, fingerprint = resolve_backend(cfg.backend), ModelSpec.from_checkpoint(model_dir), \
        model_fingerprint(model_dir)
    params = GenerationParams(max_new_tokens=cfg.max_new_tokens, do_sample=False)
    settings = asdict(params) | ({"max_tiles": cfg.max_tiles} if cfg.max_tiles is not None else {})  # what it sees
    keys = [prediction_key(fingerprint, backend, settings, q) for q in questions]
    path = Path(cfg.out) / "predictions" / f"{safe_label(label)}.jsonl"
    done = {r["key"]: r for r in read_predictions(path) if r["key"] in set(keys)}
    # Only the reusable rows stay (drops stale rows and a torn last line).
    write_text(path, "".join(json.dumps(done[k], ensure_ascii=False) + "\n" for k in keys if k in done))
    # Similar lengths share a batch (less padding); the order of the rows does not matter (keys).
    todo = sorted(((k, q) for k, q in zip(keys, questions) if k not in done),
                  key=lambda kq: (len(kq[1].images), estimated_tiles(kq[1], spec, cfg.max_tiles)))
    reused = len(questions) - len(todo)
    run = dict(label=label, model_dir=str(model_dir), backend=backend, fingerprint=fingerprint, reused=reused,
               computed=len(todo), max_tiles=cfg.max_tiles or spec.max_tiles, questions_per_s=None)
    on_batch(reused)
    start = time.perf_counter()
    if todo:
        chat = (load or load_backend)(model_dir, backend=backend, dtype=cfg.dtype, max_tiles=cfg.max_tiles,
                                      devices="all", per_gpu=cfg.replicas_per_gpu)  # questions dealt out
        loaded = time.perf_counter()
        try:
            requests = [[Message("user", q.prompt, images=[data_root / p for p in q.images])]
                        + ([Message("assistant", q.reply_prefix)] if q.reply_prefix else []) for _, q in todo]
            for idx, answers in answer_all(chat, requests, params, cfg.batch_size):  # a batch at a time, any order
                new = [score_row(dict(key=k, **asdict(q), response=response, model=label,
                                      backend=backend, fingerprint=fingerprint), q)
                       for (k, q), response in zip((todo[i] for i in idx), answers)]
                done.update((row["key"], row) for row in new)
                append_rows(path, new)
                on_batch(len(idx))
        finally:
            chat.close()
        run["questions_per_s"] = round(len(todo) / max(time.perf_counter() - loaded, 1e-9), 3)
    run["seconds"] = round(time.perf_counter() - start, 2)  # model load + answering
    return run | dict(rows=[score_row(done[k], q) for k, q in zip(keys, questions)])


def _grouped(rows: Sequence[dict], key: str) -> dict:
    """Accuracy per value of ``key``, the largest group first."""
    sizes = Counter(r[key] for r in rows)
    return {g: scoring.accuracy([r for r in rows if r[key] == g]) for g in sorted(sizes, key=lambda g: (-sizes[g], g))}


def trained_on(model_dir: str | os.PathLike) -> dict | None:
    """What a merged model was trained on (foodie_provenance.json's ``data``: name, kind, source folder)."""
    try:
        data = json.loads((Path(model_dir) / PROVENANCE_FILE).read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        return None  # a base model
    return data if isinstance(data, dict) and data.get("name") else None


def model_metrics(run: dict) -> dict:
    tasks = {}
    for task in dict.fromkeys(r["task"] for r in run["rows"]):
        rs = [r for r in run["rows"] if r["task"] == task]
        m = tasks[task] = scoring.accuracy(rs)
        m.update(by_question_type=_grouped(rs, "question_type"), by_cuisine=_grouped(rs, "cuisine"),
                 chance=dict(accuracy=stats.CHANCE, range95=list(stats.chance_range(len(rs))),
                             binomial_p=stats.binomial_test(m["seeded_guess"]["correct"], len(rs))),
                 no_letter_examples=[dict(item_id=r["item_id"], response=r["response"])
                                     for r in rs if r["letter"] is None][:10])
    return {k: run[k] for k in ("label", "model_dir", "backend", "fingerprint")} | dict(
        trained_on=trained_on(run["model_dir"]), overall=scoring.accuracy(run["rows"]), tasks=tasks)


def compare(base: dict, other: dict) -> dict:
    """other against base on the questions both answered, overall and per task: the headline difference with
    a paired-bootstrap interval; McNemar's test on the seeded-guess outcomes (right or wrong per question)."""
    a, b = ({r["item_id"]: r for r in run["rows"]} for run in (base, other))
    out = dict(base=base["label"], other=other["label"])
    for scope in ["overall", *sorted({r["task"] for r in base["rows"]})]:
        ids = [i for i in a if i in b and scope in ("overall", a[i]["task"])]
        diff, lo, hi = stats.paired_bootstrap([a[i]["score"] for i in ids], [b[i]["score"] for i in ids])
        only_a, only_b = (sum(scoring.guessed_right(x[i]) and not scoring.guessed_right(y[i]) for i in ids)
                          for x, y in ((a, b), (b, a)))
        out[scope] = dict(n=len(ids), difference=diff, ci95=[lo, hi], base_only_correct=only_a,
                          other_only_correct=only_b, mcnemar_p=stats.mcnemar_exact(only_a, only_b))
    return out


def build_metrics(runs: Sequence[dict], lang: str, data_root: Path, items: str | None,
                  limit: int | None = None, template: int = 0) -> dict:
    """metrics.json without the run settings. The questions: FoodieQA, the synthetic stand-in or own photos
    (foodie.terms' markers); held-out split, a subset, or every question (of FoodieQA: the full test set)."""
    from foodie.terms import FOODIEQA, OWN_PHOTOS, dataset_kind

    kind = dataset_kind(data_root)
    data = {FOODIEQA: "FoodieQA", OWN_PHOTOS: "own photos"}.get(kind, "synthetic")
    scope = ("held-out split" if items else f"subset (first {limit} per task, spread)" if limit
             else "full test set" if kind == FOODIEQA else f"every question of the {data} set")
    pub = {t: rows for t in dict.fromkeys(r["task"] for run in runs for r in run["rows"])  # only beside real FoodieQA
           if kind == FOODIEQA and (rows := published.PUBLISHED.get(t, {}).get(lang))}
    why_not = None if pub else "the authors published none for these tasks" if kind == FOODIEQA else (
        f"these questions are {data} data, and published FoodieQA results are shown only beside the real FoodieQA")
    return dict(lang=lang, template=template, protocol=scoring.PROTOCOL, no_letter_credit=scoring.NO_LETTER_CREDIT,
                data_root=str(data_root), items_manifest=str(items) if items else None,
                questions=dict(data=data, scope=scope), models=[model_metrics(r) for r in runs],
                comparisons=[compare(runs[0], r) for r in runs[1:]],
                published=dict(source=published.SOURCE, scope=published.SCOPE, marks=published.DAGGER_NOTE,
                               textqa_note=published.TEXTQA_NOTE, results=pub, why_not=why_not))


def default_labels(models: Sequence[str], labels: Sequence[str]) -> list[str]:
    """One label per model (default: folder names), unique also as file names (they name the predictions)."""
    if labels and len(labels) != len(models):
        raise ValueError(f"got {len(labels)} --label for {len(models)} --model; give one label per model or none")
    out = []
    for lab in labels or [Path(m).resolve().name or "model" for m in models]:
        n, candidate = 1, lab
        while safe_label(candidate) in map(safe_label, out):
            n += 1
            candidate = f"{lab}-{n}"
        out.append(candidate)
    return out


def evaluate(cfg: argparse.Namespace, console=None, load: Callable | None = None) -> dict:
    """Run the evaluation of ``cfg`` (eval_settings); writes predictions, metrics.json, report.md, accuracy.png."""
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

    from foodie.inference import BACKENDS, resolve_backend
    from foodie.paths import tiny_model_dir

    console, out, backend = console or Console(stderr=True), Path(cfg.out), resolve_backend(cfg.backend)
    models = cfg.models or [str(tiny_model_dir())]
    for m in models:  # an unreadable checkpoint fails before any data is read
        ModelSpec.from_checkpoint(m)
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    labels = default_labels(models, cfg.labels)
    questions, data_root = build_questions(cfg.data_root, cfg.tasks, cfg.lang, cfg.items, cfg.limit, cfg.skip_bad,
                                           cfg.template)
    if any(q.reply_prefix for q in questions) and not BACKENDS[backend].continues_reply:
        raise ValueError(f"--template {cfg.template} starts the model's reply, which the {backend} backend cannot "
                         "continue: add --backend transformers")
    tasks = list(cfg.tasks or dict.fromkeys(q.task for q in questions))
    for task in [t for t in tasks if t not in {q.task for q in questions}]:
        console.print(f"[yellow]warning: no {task} questions to ask (none left in {cfg.items or data_root})[/yellow]")
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bars:
        for model_dir, label in zip(models, labels):
            bar = bars.add_task(label, total=len(questions))
            runs.append(run := run_model(cfg, model_dir, label, questions, data_root, load,
                                         lambda n, bar=bar: bars.advance(bar, n)))
            speed = f", {run['backend']} {run['questions_per_s']:.2f} questions/s" if run["questions_per_s"] else ""
            bars.update(bar, description=f"{label} ({run['reused']} reused, {run['computed']} asked{speed})")
    metrics = build_metrics(runs, cfg.lang, data_root, cfg.items, cfg.limit, cfg.template)
    metrics["runs"] = [{k: v for k, v in r.items() if k not in ("rows", "model_dir", "fingerprint")} for r in runs]
    metrics["settings"] = {k: v for k, v in vars(cfg).items() if k not in ("models", "labels", "data_root", "out")} \
        | dict(tasks=tasks, decoding="greedy, stops at the end of the turn",
               max_tiles=cfg.max_tiles or "checkpoint's max_dynamic_patch")
    write_json(out / "metrics.json", metrics)
    report.render_chart(metrics, out / "accuracy.png")
    write_text(out / "report.md", report.render_report(metrics, "accuracy.png"))
    report.print_summary(metrics, console)
    console.print(f"wrote {out / 'report.md'}, {out / 'metrics.json'}, {out / 'accuracy.png'}, {out / 'predictions'}/")
    return metrics


def parser() -> argparse.ArgumentParser:
    """tools/eval_food.py's options; their defaults are every evaluation's (eval_settings)."""
    from foodie import cli, inference, paths, tasks

    p = cli.ArgumentParser(prog="tools/eval_food.py", description="FoodieQA accuracy of InternVL2 checkpoints, "
                           "compared (predictions, metrics.json, report.md, accuracy.png); a re-run reuses answers.")
    p.add_argument("--model", action="append", dest="models", metavar="DIR", help="checkpoint folder (official "
                   f"format); repeat to compare, the first is the baseline (default {paths.tiny_model_dir()})")
    p.add_argument("--label", action="append", dest="labels", default=[], help="a name per --model (default: folder)")
    p.add_argument("--data-root", default=str(paths.demo_data_dir()), help="FoodieQA folder (default %(default)s)")
    p.add_argument("--items", metavar="MANIFEST", help="held-out manifest (tools/process_food.py): only its questions")
    p.add_argument("--tasks", type=tasks.parse_tasks, help=f"of {','.join(tasks.TASKS)} (default: the folder's)")
    p.add_argument("--lang", choices=("zh", "en"), default="zh", help="question language (authors' templates)")
    p.add_argument("--template", type=int, default=0, metavar="N", help="the authors' prompt template: single-image "
                   "zh 0-4 / en 0-3, others 0-3 (default 0; single-image 2-4 start the reply: transformers only)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backend", choices=inference.CHOICES, default="auto", help="auto: LMDeploy on a GPU if installed")
    p.add_argument("--batch-size", type=int, default=8, help="questions per generate call (LMDeploy: per fsync)")
    p.add_argument("--limit", type=int, help="only N questions of each task, spread over its file (smoke runs)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="answer length cap (default %(default)s, as the authors'; generation stops with the turn)")
    p.add_argument("--dtype", default="auto", help="float32 (transformers only), bfloat16, float16 (default auto: "
                   "bfloat16 on a GPU, float32 on a CPU)")
    p.add_argument("--replicas-per-gpu", type=int, metavar="N", help="backends per GPU, each in its own process "
                   "(default: 2 LMDeploy engines on a card of 48 GiB or more, else 1)")
    p.add_argument("--max-tiles", type=int, help="tile budget per question (default: the checkpoint's own)")
    p.add_argument("--skip-bad", action="store_true", help="drop FoodieQA items with problems instead of stopping")
    return p


def eval_settings(out: str | os.PathLike, **given) -> argparse.Namespace:
    """An evaluation's settings: the command line's defaults, then ``given`` (named as parsed: data_root, models)."""
    return argparse.Namespace(**vars(parser().parse_args(["--out", str(out)])) | given)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parser().parse_args(argv)
    try:
        evaluate(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
