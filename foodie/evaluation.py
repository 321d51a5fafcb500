"""FoodieQA evaluation: ask each model the questions, write ``predictions/<label>.jsonl`` and ``metrics.json``
(then foodie.report's report.md and accuracy.png). Prompts: the authors' templates (``--template N``) through the
model's chat template (foodie.inference), greedy up to ``--max-new-tokens`` (the authors generate 500-1024).

Predictions (JSON lines, one row per question; re-scorable by anyone): ``item_id``, ``task``, ``question_id``,
``template``, ``prompt`` (user text), ``reply_prefix`` (start of the reply the model continued, usually ""),
``images``, ``choices`` (option texts; null when the options are the images), ``response`` (the raw generated
text), ``answer`` (the gold letter A-D), then our reading (foodie.scoring.read_response): ``letter``, ``score``
(1, 0 or 0.25), ``guess``, ``option_text``. Accuracy of a task = mean ``score`` over its rows. Each row's ``key``
(model content, backend, generation settings, prompt, images) lets a re-run reuse it; rows are fsynced after
every batch, so a killed run loses at most one batch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from foodie import held_out, report, scoring, stats
from foodie.atomic import atomic_path, write_json, write_text
from foodie.model_spec import PROVENANCE_FILE, ModelSpec

DEFAULT_MAX_NEW_TOKENS = 512  # the authors generate 500-512 new tokens (1024 for Yi-VL); generation ends with the turn
PREDICTIONS_VERSION = 1


@dataclass
class Question:
    """One multiple-choice question as the model is asked it."""
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

    @property
    def item_id(self) -> str:
        return f"{self.task}:{self.question_id}"


def build_questions(data_root: str | os.PathLike, tasks: Sequence[str] | None = None,
                    lang: str = "zh", items: str | os.PathLike | None = None, limit: int | None = None,
                    skip_bad: bool = False, template: int = 0) -> tuple[list[Question], Path]:
    """The FoodieQA questions of the tasks (None: every task the folder has), only those of the held-out
    manifest ``items`` if given, each in the authors' template ``template``."""
    from foodie import prompts
    from foodie.foodieqa import load_foodieqa, question_file
    from foodie.tasks import TASKS

    tasks = tasks or tuple(t for t in TASKS if question_file(data_root, t) is not None)
    if not tasks:
        raise ValueError(f"{data_root}: no FoodieQA question files ({', '.join(t + '_tidy.json' for t in TASKS)}); "
                         f"point --data-root at the FoodieQA folder")
    for t in tasks:  # a bad task, language or template fails before any data is read
        prompts.get_template(t, lang, template)
    data = load_foodieqa(data_root, tasks, skip_bad=skip_bad)
    wanted = held_out.read_held_out(items, tasks) if items else None
    questions = []
    for task in tasks:
        chosen = getattr(data, task)
        if wanted is not None:
            chosen = held_out.select(chosen, wanted[task], items, data_root, task)
        if limit is not None and len(chosen) > limit:  # spread over the file (it is grouped by dish)
            chosen = [chosen[i * len(chosen) // limit] for i in range(limit)]
        for it in chosen:
            text, images, prefix = prompts.question_prompt(it, lang, template)
            choices = prompts.item_text(it, lang)[1]  # None when the options are the images
            questions.append(Question(task=task, question_id=it.question_id, question_type=it.question_type,
                                      cuisine=it.cuisine, answer=it.answer, prompt=text, images=list(images),
                                      choices=choices, template=template, reply_prefix=prefix))
    return questions, data.root


_HASHED = (".json", ".py", ".safetensors", ".bin", ".model", ".txt", ".tiktoken")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """A content hash of a checkpoint folder: config, code, tokenizer and every weight byte (two fine-tunes
    have the same shapes and sizes; seconds for 2B parameters)."""
    model_dir = Path(model_dir).resolve()
    total = hashlib.sha256()
    for f in sorted(model_dir.rglob("*")):
        relative = f.relative_to(model_dir)
        if f.is_file() and f.suffix in _HASHED and not any(part.startswith(".") for part in relative.parts):
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
            total.update(f"{relative.as_posix()}\0{h.hexdigest()}\n".encode())
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


def write_rows(path: Path, rows: list[dict], mode: str = "a") -> None:
    """Append (or write) rows and force them to disk: a kill afterwards loses nothing of them."""
    with open(path, mode, encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())


def score_row(row: dict, q: Question) -> dict:
    """Our reading of a response (foodie.scoring), written into its row beside the gold answer."""
    row.setdefault("template", q.template)
    row.setdefault("reply_prefix", q.reply_prefix)
    return dict(row, **scoring.read_response(row["response"], q.answer, q.item_id, q.choices))


@dataclass
class ModelRun:
    """One model's predictions on the questions, in question order."""
    label: str
    model_dir: str
    backend: str
    fingerprint: str
    rows: list[dict]
    reused: int = 0
    computed: int = 0
    seconds: float = 0.0  # model load + answering
    load_seconds: float = 0.0
    max_tiles: int = 0  # tile budget per question: --max-tiles, else the checkpoint's own

    @property
    def questions_per_s(self) -> float | None:
        """Answering throughput, model load excluded (None when nothing was asked)."""
        answering = self.seconds - self.load_seconds
        return self.computed / answering if self.computed and answering > 0 else None


def estimated_tiles(q: Question, data_root: Path, spec: ModelSpec, max_tiles: int | None = None) -> int:
    """Tiles the question's images will take (image headers only; load_foodieqa checked every image)."""
    from foodie.image_tiling import image_size_of
    from foodie.inference import tiles_per_image

    budget = tiles_per_image(max_tiles or spec.max_tiles, len(q.images))
    return sum(spec.tiles(*image_size_of(data_root / p), max_tiles=budget) for p in q.images)


def safe_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "model"


def run_model(model_dir: str | os.PathLike, label: str, questions: Sequence[Question], data_root: Path,
              out_dir: Path, *, backend: str = "auto", batch_size: int = 8,
              max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, load: Callable | None = None,
              on_batch: Callable[[int], None] = lambda n: None, dtype: str = "auto",
              max_tiles: int | None = None) -> ModelRun:
    """Ask one model every question, reusing finished predictions; returns all rows in order."""
    from foodie.inference import GenerationParams, Message, answer_all, load_backend, resolve_backend

    backend_name, spec = resolve_backend(backend), ModelSpec.from_checkpoint(model_dir)
    fingerprint = model_fingerprint(model_dir)
    params = GenerationParams(max_new_tokens=max_new_tokens, do_sample=False)
    settings = asdict(params) | ({"max_tiles": max_tiles} if max_tiles is not None else {})  # what the model sees
    keys = [prediction_key(fingerprint, backend_name, settings, q) for q in questions]
    path = out_dir / "predictions" / f"{safe_label(label)}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {r["key"]: r for r in read_predictions(path) if r["key"] in set(keys)}
    with atomic_path(path) as tmp:  # only the reusable rows stay (drops stale rows and a torn last line)
        write_rows(tmp, [done[k] for k in keys if k in done], mode="w")
    # Similar lengths share a batch (less padding); the order of the rows does not matter (keys).
    todo = sorted(((k, q) for k, q in zip(keys, questions) if k not in done),
                  key=lambda kq: (len(kq[1].images), estimated_tiles(kq[1], data_root, spec, max_tiles)))
    run = ModelRun(label=label, model_dir=str(model_dir), backend=backend_name, fingerprint=fingerprint, rows=[],
                   reused=len(questions) - len(todo), computed=len(todo), max_tiles=max_tiles or spec.max_tiles)
    on_batch(run.reused)
    start = time.perf_counter()
    if todo:
        chat = (load or load_backend)(model_dir, backend=backend_name, dtype=dtype, max_tiles=max_tiles,
                                      devices="all")  # several GPUs: one replica each, questions dealt out
        run.load_seconds = time.perf_counter() - start
        try:
            requests = [[Message("user", q.prompt, images=[data_root / p for p in q.images])]
                        + ([Message("assistant", q.reply_prefix)] if q.reply_prefix else []) for _, q in todo]
            # Images are prepared ahead of the model; answers come a batch at a time (LMDeploy: as they finish).
            for idx, answers in answer_all(chat, requests, params, batch_size):
                new = []
                for (k, q), response in zip((todo[i] for i in idx), answers):
                    done[k] = score_row(dict(key=k, item_id=q.item_id, **asdict(q), response=response, model=label,
                                             backend=backend_name, fingerprint=fingerprint), q)
                    new.append(done[k])
                write_rows(path, new)
                on_batch(len(idx))
        finally:
            chat.close()
    run.seconds = time.perf_counter() - start
    run.rows = [score_row(done[k], q) for k, q in zip(keys, questions)]
    return run


# ---------------------------------------------------------------------------------------------
# Metrics (metrics.json)
# ---------------------------------------------------------------------------------------------

def _grouped(rows: Sequence[dict], key: str) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[r[key]].append(r)
    return {g: scoring.accuracy(rs) for g, rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))}


def trained_on(model_dir: str | os.PathLike) -> dict | None:
    """What a merged model was trained on (foodie_provenance.json's ``data``: name, kind, source folder);
    None for a model without one (a base model)."""
    try:
        data = json.loads((Path(model_dir) / PROVENANCE_FILE).read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return data if isinstance(data, dict) and data.get("name") else None


def model_metrics(run: ModelRun) -> dict:
    out = dict(label=run.label, model_dir=run.model_dir, backend=run.backend, fingerprint=run.fingerprint,
               trained_on=trained_on(run.model_dir), overall=scoring.accuracy(run.rows), tasks={})
    for task in dict.fromkeys(r["task"] for r in run.rows):
        rs = [r for r in run.rows if r["task"] == task]
        m = out["tasks"][task] = scoring.accuracy(rs)
        m.update(by_question_type=_grouped(rs, "question_type"), by_cuisine=_grouped(rs, "cuisine"),
                 chance=dict(accuracy=stats.CHANCE, range95=list(stats.chance_range(len(rs))),
                             binomial_p=stats.binomial_test(m["seeded_guess"]["correct"], len(rs))),
                 no_letter_examples=[dict(item_id=r["item_id"], response=r["response"])
                                     for r in rs if r["letter"] is None][:10])
    return out


def compare(base: ModelRun, other: ModelRun) -> dict:
    """other against base on the questions both answered, overall and per task: the headline difference with
    a paired-bootstrap interval; McNemar's test on the seeded-guess outcomes (right or wrong per question)."""
    def outcomes(run):
        return {r["item_id"]: (r["score"], (r["letter"] or r["guess"]) == r["answer"]) for r in run.rows}

    a, b = outcomes(base), outcomes(other)
    tasks = {r["item_id"]: r["task"] for r in base.rows}
    out = dict(base=base.label, other=other.label)
    for scope in ["overall"] + sorted(set(tasks.values())):
        ids = [i for i in a if i in b and scope in ("overall", tasks[i])]
        diff, lo, hi = stats.paired_bootstrap([a[i][0] for i in ids], [b[i][0] for i in ids])
        only_a = sum(a[i][1] and not b[i][1] for i in ids)
        only_b = sum(b[i][1] and not a[i][1] for i in ids)
        out[scope] = dict(n=len(ids), difference=diff, ci95=[lo, hi], base_only_correct=only_a,
                          other_only_correct=only_b, mcnemar_p=stats.mcnemar_exact(only_a, only_b))
    return out


def question_set(data_root: Path, items: str | None, limit: int | None) -> dict:
    """What the questions were: FoodieQA, the synthetic stand-in or own photos (foodie.terms' markers);
    held-out split, a subset, or every question (for FoodieQA: the full test set)."""
    from foodie.terms import FOODIEQA, OWN_PHOTOS, dataset_kind

    kind = dataset_kind(data_root)
    data = {FOODIEQA: "FoodieQA", OWN_PHOTOS: "own photos"}.get(kind, "synthetic")
    if items:
        return dict(data=data, scope="held-out split")
    if limit:
        return dict(data=data, scope=f"subset (first {limit} per task, spread)")
    return dict(data=data, scope="full test set" if kind == FOODIEQA else f"every question of the {data} set")


def build_metrics(runs: Sequence[ModelRun], lang: str, data_root: Path, items: str | None,
                  limit: int | None = None, template: int = 0) -> dict:
    from foodie import published

    asked = question_set(data_root, items, limit)
    tasks = dict.fromkeys(r["task"] for run in runs for r in run.rows)
    real = asked["data"] == "FoodieQA"  # the paper's models are never set beside other data
    pub = {t: published.published(t, lang) for t in tasks if real and published.published(t, lang)}
    why_not = None if pub else (
        "the authors published none for these tasks" if real else
        f"these questions are {asked['data']} data, and published FoodieQA results are shown only beside the "
        "real FoodieQA")
    return dict(lang=lang, template=template, protocol=scoring.PROTOCOL, no_letter_credit=scoring.NO_LETTER_CREDIT,
                data_root=str(data_root), items_manifest=str(items) if items else None, questions=asked,
                models=[model_metrics(r) for r in runs], comparisons=[compare(runs[0], r) for r in runs[1:]],
                published=dict(source=published.SOURCE, scope=published.SCOPE, marks=published.DAGGER_NOTE,
                               textqa_note=published.TEXTQA_NOTE, results=pub, shown=bool(pub), why_not=why_not))


# ---------------------------------------------------------------------------------------------
# The whole evaluation
# ---------------------------------------------------------------------------------------------

@dataclass
class EvalConfig:
    models: list[str]
    data_root: str
    out: str
    labels: list[str] = field(default_factory=list)
    items: str | None = None
    tasks: tuple[str, ...] | None = None  # None: every task the data folder has
    lang: str = "zh"
    template: int = 0  # the number of the authors' prompt template (foodie.tasks: each task's templates)
    backend: str = "auto"
    batch_size: int = 8
    limit: int | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    dtype: str = "auto"
    skip_bad: bool = False
    max_tiles: int | None = None


def default_labels(models: Sequence[str], labels: Sequence[str]) -> list[str]:
    """One label per model (default: folder names), unique also as file names (they name the predictions)."""
    if labels and len(labels) != len(models):
        raise ValueError(f"got {len(labels)} --label for {len(models)} --model; give one label per model or none")
    out, used = [], set()
    for lab in labels or [Path(m).resolve().name or "model" for m in models]:
        n, candidate = 1, lab
        while safe_label(candidate) in used:
            n += 1
            candidate = f"{lab}-{n}"
        out.append(candidate)
        used.add(safe_label(candidate))
    return out


def evaluate(cfg: EvalConfig, console=None, load: Callable | None = None) -> dict:
    """Run the evaluation described by cfg; writes predictions, metrics.json, report.md, accuracy.png."""
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

    from foodie.inference import BACKENDS, resolve_backend

    console = console or Console(stderr=True)
    for m in cfg.models:  # an unreadable checkpoint fails before any data is read
        ModelSpec.from_checkpoint(m)
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    labels = default_labels(cfg.models, cfg.labels)
    questions, data_root = build_questions(cfg.data_root, cfg.tasks, cfg.lang, cfg.items, cfg.limit, cfg.skip_bad,
                                           cfg.template)
    tasks = tuple(cfg.tasks or dict.fromkeys(q.task for q in questions))
    if any(q.reply_prefix for q in questions) and not BACKENDS[resolve_backend(cfg.backend)].continues_reply:
        raise ValueError(f"--template {cfg.template} starts the model's reply, which the "
                         f"{resolve_backend(cfg.backend)} backend cannot continue: add --backend transformers")
    if not questions:
        raise ValueError(f"no questions to ask in {cfg.data_root} for tasks {', '.join(tasks)}"
                         + (f" and manifest {cfg.items}" if cfg.items else ""))
    for task in tasks:
        if not any(q.task == task for q in questions):
            console.print(f"[yellow]warning: no {task} questions to ask"
                          + (f" (the manifest {cfg.items} holds none)" if cfg.items else "") + "[/yellow]")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bars:
        for model_dir, label in zip(cfg.models, labels):
            bar = bars.add_task(label, total=len(questions))
            run = run_model(model_dir, label, questions, data_root, out, backend=cfg.backend,
                            batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, load=load,
                            on_batch=lambda n, bar=bar: bars.advance(bar, n), dtype=cfg.dtype,
                            max_tiles=cfg.max_tiles)
            speed = f", {run.backend} {run.questions_per_s:.2f} questions/s" if run.questions_per_s else ""
            bars.update(bar, description=f"{label} ({run.reused} reused, {run.computed} asked{speed})")
            runs.append(run)
    metrics = build_metrics(runs, cfg.lang, data_root, cfg.items, cfg.limit, cfg.template)
    metrics["runs"] = [dict(label=r.label, backend=r.backend, max_tiles=r.max_tiles, reused=r.reused,
                            computed=r.computed, seconds=round(r.seconds, 2), load_seconds=round(r.load_seconds, 2),
                            questions_per_s=r.questions_per_s and round(r.questions_per_s, 3)) for r in runs]
    metrics["settings"] = dict(tasks=list(tasks), template=cfg.template, backend=cfg.backend,
                               batch_size=cfg.batch_size, limit=cfg.limit, max_new_tokens=cfg.max_new_tokens,
                               decoding="greedy, stops at the end of the turn",
                               max_tiles=cfg.max_tiles or "checkpoint's max_dynamic_patch")
    write_json(out / "metrics.json", metrics)
    report.render_chart(metrics, out / "accuracy.png")
    write_text(out / "report.md", report.render_report(metrics, "accuracy.png"))
    report.print_summary(metrics, console)
    console.print(f"wrote {out / 'report.md'}, {out / 'metrics.json'}, {out / 'accuracy.png'} and "
                  f"{out / 'predictions'}/")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    from foodie import cli, inference, paths, tasks

    p = cli.ArgumentParser(prog="tools/eval_food.py", description="Measure FoodieQA accuracy of InternVL2 "
                           "checkpoints and compare them (predictions JSONL, metrics.json, report.md, accuracy.png); "
                           "a re-run reuses finished predictions.")
    p.add_argument("--model", action="append", dest="models", metavar="DIR",
                   help="checkpoint folder (official format); repeat to compare models, the first is the "
                        f"baseline (default: the embedded tiny model {paths.tiny_model_dir()})")
    p.add_argument("--label", action="append", dest="labels", default=[], metavar="NAME",
                   help="a name per --model, in order (default: folder names)")
    p.add_argument("--data-root", default=str(paths.demo_data_dir()),
                   help="FoodieQA folder (default: the synthetic one, %(default)s)")
    p.add_argument("--items", metavar="MANIFEST", help="held-out manifest (tools/process_food.py): only its questions")
    p.add_argument("--tasks", type=tasks.parse_tasks, help=f"comma-separated, of {','.join(tasks.TASKS)} "
                                                           "(default: every task the data folder has)")
    p.add_argument("--lang", choices=("zh", "en"), default="zh", help="question language (authors' templates)")
    p.add_argument("--template", type=int, default=0, metavar="N",
                   help="the authors' prompt template: single-image zh 0-4 / en 0-3, multi-image and text-only 0-3 "
                        "(default 0, theirs; single-image 2-4 start the reply: transformers backend only)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backend", choices=inference.CHOICES, default="auto",
                   help="auto: LMDeploy when importable and a GPU is visible, else transformers")
    p.add_argument("--batch-size", type=int, default=8,
                   help="transformers: questions per generate call; LMDeploy: answers per fsync (default 8)")
    p.add_argument("--limit", type=int, help="only N questions of each task, spread evenly over its file (smoke runs)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="answer length cap (default %(default)s, as the authors'; generation stops with the turn)")
    p.add_argument("--dtype", default="auto", help="transformers backend: float32, bfloat16, float16 (default auto)")
    p.add_argument("--max-tiles", type=int, help="tile budget per question, shared by its images (default: the "
                                                  "checkpoint's max_dynamic_patch, the budget it was trained with)")
    p.add_argument("--skip-bad", action="store_true", help="drop FoodieQA items with problems instead of stopping")
    a = p.parse_args(argv)
    a.models = a.models or [str(paths.tiny_model_dir())]
    try:
        evaluate(EvalConfig(**vars(a)))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        import sys
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
