"""FoodieQA evaluation: ask each model the multiple-choice questions, score, compare, report.

    python tools/eval_food.py --model work/tiny-internvl2 --model work/tuned --data-root DIR \\
        --items work/held_out.json --out work/eval

For every model it writes ``predictions/<label>.jsonl``, then ``metrics.json``, ``report.md`` and
``accuracy.png`` for all models together.

* Prompts: the FoodieQA authors' templates (``foodie.prompts``; ``--template N``, default 0, recorded in
  the output), rendered through the model's own chat template by the inference backend
  (``foodie.inference``). Greedy decoding up to ``--max-new-tokens`` (default 512: the authors generate
  500-512 new tokens, 1024 for Yi-VL); generation stops at the end of the model's turn (<|im_end|> or
  </s>), so short answers cost nothing more.
* Scoring: the authors' protocol (``foodie.scoring``) is the headline -- the first capital A-D anywhere
  in the response; a response without one counts 1/4, the expected value of their random guess.
  Beside it: the same with one seeded guess per question (whole right answers), strict (no letter =
  wrong) and, as a diagnostic only, the option-text reading (a standalone letter, else the option whose
  text the answer names).
* Predictions file (JSON lines, one row per question; re-scorable by anyone): ``item_id``, ``task``,
  ``question_id``, ``template``, ``prompt`` (user text), ``reply_prefix`` (start of the reply the model
  continued, usually ""), ``images``, ``response`` (the raw generated text), ``answer`` (the gold letter
  A-D), then our reading of it: ``letter`` (authors' rule; null = none), ``score`` (1, 0 or 0.25),
  ``guess`` (the seeded guess when there is no letter), ``option_text`` (diagnostic). Accuracy of a task
  = mean ``score`` over its rows.
* Resume: every prediction carries a key (model content fingerprint, backend, generation settings,
  prompt, images). A re-run reuses rows whose key matches and computes only the rest; rows are
  appended and fsynced after every batch, so a killed run loses at most one batch.
* Statistics: Wilson 95% intervals, the range a guessing model would reach, and for two or more models
  the paired difference to the first model with a paired-bootstrap 95% interval and an exact McNemar
  test on the seeded-guess outcomes (the held-out set is small: differences of a few points are noise).
* Published numbers (``foodie.published``, the authors' full test set) appear only beside a run on the
  real FoodieQA, never beside the synthetic stand-in or the user's own photos (``foodie.terms`` markers).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from foodie.atomic import atomic_path, write_json, write_text
from foodie.scoring import (GUESS_SEED, LETTERS, NO_LETTER_CREDIT, authors_letter, credit, option_text_reading,
                            seeded_guess)

CHANCE = 0.25  # four options
TASK_NAMES = {"sivqa": "single-image VQA", "mivqa": "multi-image VQA", "textqa": "text-only QA"}
DEFAULT_TASKS = ("sivqa", "mivqa", "textqa")
DEFAULT_MAX_NEW_TOKENS = 512  # the authors generate 500-512 new tokens (1024 for Yi-VL); generation ends with the turn
PREDICTIONS_VERSION = 1
PROTOCOL = ("FoodieQA authors' protocol: first capital A-D anywhere in the response; a response without one "
            "counts 1/4 (the expected value of their random guess)")

parse_choice = option_text_reading  # the diagnostic reading, under its former name (training probes use it)


# ---------------------------------------------------------------------------------------------
# Statistics (pure Python; n is a few hundred)
# ---------------------------------------------------------------------------------------------

def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _binom_pmf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 1.0 if k == 0 else 0.0
    if p >= 1:
        return 1.0 if k == n else 0.0
    return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                    + k * math.log(p) + (n - k) * math.log(1 - p))


def binomial_test(k: int, n: int, p: float = CHANCE) -> float:
    """Exact two-sided binomial test: probability of an outcome at most as likely as k (minlike)."""
    if n == 0:
        return 1.0
    pk = _binom_pmf(k, n, p)
    return min(1.0, sum(q for q in (_binom_pmf(i, n, p) for i in range(n + 1)) if q <= pk * (1 + 1e-7)))


def chance_range(n: int, p: float = CHANCE, level: float = 0.95) -> tuple[int, int]:
    """Central range of correct answers (of n) that a model guessing uniformly reaches with prob. >= level."""
    if n == 0:
        return (0, 0)
    tail = (1 - level) / 2
    cdf, lo = 0.0, 0
    for i in range(n + 1):
        cdf += _binom_pmf(i, n, p)
        if cdf > tail:
            lo = i
            break
    cdf, hi = 0.0, n
    for i in range(n, -1, -1):
        cdf += _binom_pmf(i, n, p)
        if cdf > tail:
            hi = i
            break
    return (lo, hi)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact McNemar test (two-sided) on the discordant pairs: a right & b wrong vs. a wrong & b right."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    return min(1.0, 2 * sum(_binom_pmf(i, n, 0.5) for i in range(k + 1)))


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], n_boot: int = 10000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean difference b - a of per-item scores (bools or credits) on the same items, with a
    paired-bootstrap percentile interval."""
    if len(a) != len(b):
        raise ValueError("paired bootstrap needs results on the same items")
    n = len(a)
    if n == 0:
        return (0.0, 0.0, 0.0)
    d = [float(y) - float(x) for x, y in zip(a, b)]
    diff = sum(d) / n
    rng = random.Random(seed)
    stats = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    tail = (1 - level) / 2
    lo = stats[int(math.floor(tail * (n_boot - 1)))]
    hi = stats[int(math.ceil((1 - tail) * (n_boot - 1)))]
    return (diff, lo, hi)


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------

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


def available_tasks(data_root: str | os.PathLike) -> tuple[str, ...]:
    """The FoodieQA tasks whose question file the folder has."""
    from foodie.foodieqa import question_file
    return tuple(t for t in DEFAULT_TASKS if question_file(data_root, t) is not None)


def build_questions(data_root: str | os.PathLike, tasks: Sequence[str] | None = DEFAULT_TASKS, lang: str = "zh",
                    items: str | os.PathLike | None = None, limit: int | None = None,
                    skip_bad: bool = False, template: int = 0) -> tuple[list[Question], Path]:
    """The questions to ask: FoodieQA items of the tasks (only those of the manifest, if given), each
    in the authors' template ``template``. ``tasks=None``: every task the folder has."""
    from foodie import prompts
    from foodie.foodieqa import load_foodieqa

    if tasks is None:
        tasks = available_tasks(data_root)
        if not tasks:
            raise ValueError(f"{data_root}: no FoodieQA question files (sivqa_tidy.json, mivqa_tidy.json, "
                             f"textqa_tidy.json); point --data-root at the FoodieQA folder")
    for t in tasks:
        if t not in TASK_NAMES:
            raise ValueError(f"unknown task {t!r}: the evaluation covers {', '.join(TASK_NAMES)}")
    if lang not in ("zh", "en"):
        raise ValueError(f"unknown language {lang!r}: use zh or en")
    for t in tasks:  # a bad template number fails before any data is read
        prompts.get_template(t, lang, template)
    data = load_foodieqa(data_root, tasks, skip_bad=skip_bad)
    wanted = read_manifest(items, tasks) if items else None
    questions = []
    for task in tasks:
        chosen = getattr(data, task)
        if wanted is not None:
            ids = wanted.get(task, set())
            known = {it.question_id for it in chosen}
            missing = sorted(ids - known)
            if missing:
                raise ValueError(f"{items}: {len(missing)} {task} question id(s) not found in {data_root} "
                                 f"(e.g. {', '.join(missing[:5])}); was the manifest made from this data folder? "
                                 f"Re-run tools/process_food.py on it.")
            chosen = [it for it in chosen if it.question_id in ids]
        if limit is not None and len(chosen) > limit:  # spread over the file (it is grouped by dish)
            chosen = [chosen[i * len(chosen) // limit] for i in range(limit)]
        for it in chosen:
            text, images, prefix = prompts.question_prompt(it, lang, template)
            choices = None if task == "mivqa" else prompts.item_text(it, lang)[1]
            questions.append(Question(task=task, question_id=it.question_id, question_type=it.question_type,
                                      cuisine=it.cuisine, answer=it.answer, prompt=text, images=list(images),
                                      choices=choices, template=template, reply_prefix=prefix))
    return questions, data.root


def read_manifest(path: str | os.PathLike, tasks: Sequence[str]) -> dict[str, set[str]]:
    """Question ids per task from a held-out manifest (tools/process_food.py)."""
    from foodie import data_conversion
    return data_conversion.read_held_out(path, tasks)


# ---------------------------------------------------------------------------------------------
# Identity of a model and of a prediction (for resuming)
# ---------------------------------------------------------------------------------------------

_HASHED_SUFFIXES = (".json", ".py", ".safetensors", ".bin", ".model", ".txt", ".tiktoken")


def model_fingerprint(model_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """A content hash of a checkpoint folder: config, code, tokenizer and every weight byte.

    Weights are hashed in full (a few seconds for 2B parameters) because two fine-tunes have the
    same shapes and sizes; the result is cached per file (path, size, mtime) in ``cache_dir``.
    """
    model_dir = Path(model_dir).resolve()
    cache_file = Path(cache_dir) / ".fingerprints.json" if cache_dir else None
    cache = {}
    if cache_file and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    total = hashlib.sha256()
    changed = False
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)):
        st = f.stat()
        stamp = f"{f}|{st.st_size}|{st.st_mtime_ns}"
        digest = cache.get(stamp)
        if digest is None:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
            digest = cache[stamp] = h.hexdigest()
            changed = True
        total.update(f"{f.relative_to(model_dir).as_posix()}\0{digest}\n".encode())
    if cache_file and changed:
        write_json(cache_file, cache)
    return total.hexdigest()[:20]


def prediction_key(fingerprint: str, backend: str, settings: dict, q: Question) -> str:
    asked = [q.prompt, q.images] + ([q.reply_prefix] if q.reply_prefix else [])
    blob = json.dumps([PREDICTIONS_VERSION, fingerprint, backend, settings, q.task, q.question_id, *asked],
                      ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# Predictions file: read what is there, append batch by batch
# ---------------------------------------------------------------------------------------------

def read_predictions(path: Path) -> list[dict]:
    """Rows of a predictions file; a torn last line (a killed run) is ignored."""
    rows = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn write of an interrupted run; that question is asked again
            if isinstance(row, dict) and "key" in row:
                rows.append(row)
    return rows


def append_rows(path: Path, rows: Iterable[dict]) -> None:
    """Append rows and force them to disk (a kill afterwards loses nothing of this batch)."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def score_row(row: dict, q: Question) -> dict:
    """Our reading of a response (foodie.scoring), written into its row beside the gold answer."""
    letter = authors_letter(row["response"])
    reading = option_text_reading(row["response"], q.choices)
    for stale in ("parsed", "correct"):  # rows written before the authors' rule was the headline
        row.pop(stale, None)
    row.setdefault("template", q.template)
    row.setdefault("reply_prefix", q.reply_prefix)
    row.update(answer=LETTERS[q.answer],
               letter=None if letter is None else LETTERS[letter],
               score=credit(letter, q.answer),
               guess=LETTERS[seeded_guess(q.item_id)] if letter is None else None,
               option_text=None if reading is None else LETTERS[reading])
    return row


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

    @property
    def questions_per_s(self) -> float | None:
        """Answering throughput, model load excluded (None when nothing was asked)."""
        answering = self.seconds - self.load_seconds
        return self.computed / answering if self.computed and answering > 0 else None


def estimated_tiles(q: Question, data_root: Path, max_tiles: int | None = None) -> int:
    """Tiles the question's images will take (image headers only)."""
    from foodie.image_tiling import MAX_TILES, ImageError, image_size_of, num_tiles
    from foodie.inference import tiles_per_image

    budget = tiles_per_image(max_tiles or MAX_TILES, len(q.images))
    total = 0
    for p in q.images:
        try:
            total += num_tiles(*image_size_of(data_root / p), max_num=budget)
        except (ImageError, OSError):
            total += budget
    return total


def safe_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "model"


def run_model(model_dir: str | os.PathLike, label: str, questions: Sequence[Question], data_root: Path,
              out_dir: Path, *, backend: str = "auto", batch_size: int = 8,
              max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
              load: Callable | None = None, on_batch: Callable[[int], None] | None = None,
              device: str = "auto", dtype: str = "auto", max_tiles: int | None = None) -> ModelRun:
    """Ask one model every question, reusing finished predictions; returns all rows in order."""
    from foodie.inference import GenerationParams, Message, answer_all, load_backend, resolve_backend

    backend_name = resolve_backend(backend)
    fingerprint = model_fingerprint(model_dir, cache_dir=out_dir)
    params = GenerationParams(max_new_tokens=max_new_tokens, do_sample=False)
    settings = asdict(params)
    if max_tiles is not None:  # a different tile budget changes what the model sees
        settings["max_tiles"] = max_tiles
    keys = [prediction_key(fingerprint, backend_name, settings, q) for q in questions]
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    path = pred_dir / f"{safe_label(label)}.jsonl"

    wanted = set(keys)
    done = {r["key"]: r for r in read_predictions(path) if r["key"] in wanted}
    # Rewrite the file with only the reusable rows (drops stale rows and a torn last line).
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for k in keys:
                if k in done:
                    f.write(json.dumps(done[k], ensure_ascii=False) + "\n")
    # Similar lengths share a batch (less padding); the order of the rows does not matter (keys).
    todo = sorted(((k, q) for k, q in zip(keys, questions) if k not in done),
                  key=lambda kq: (len(kq[1].images), estimated_tiles(kq[1], data_root, max_tiles)))
    run = ModelRun(label=label, model_dir=str(model_dir), backend=backend_name, fingerprint=fingerprint, rows=[],
                   reused=len(questions) - len(todo), computed=len(todo))
    if on_batch:
        on_batch(run.reused)
    start = time.perf_counter()
    if todo:
        chat = (load or load_backend)(model_dir, backend=backend_name, device=device, dtype=dtype, max_tiles=max_tiles)
        run.load_seconds = time.perf_counter() - start
        try:
            requests = [[Message("user", q.prompt, images=[data_root / p for p in q.images])]
                        + ([Message("assistant", q.reply_prefix)] if q.reply_prefix else []) for _, q in todo]
            # Images are prepared ahead of the model; answers come a batch at a time (LMDeploy: as they finish).
            for idx, answers in answer_all(chat, requests, params, batch_size):
                new = []
                for (k, q), response in zip((todo[i] for i in idx), answers):
                    row = dict(key=k, item_id=q.item_id, task=q.task, question_id=q.question_id,
                               question_type=q.question_type, cuisine=q.cuisine, template=q.template,
                               prompt=q.prompt, reply_prefix=q.reply_prefix, images=q.images,
                               response=response, model=label, backend=backend_name,
                               fingerprint=fingerprint)
                    new.append(score_row(row, q))
                    done[k] = row
                append_rows(path, new)
                if on_batch:
                    on_batch(len(idx))
        finally:
            chat.close()
    run.seconds = time.perf_counter() - start
    run.rows = [score_row(dict(done[k]), q) for k, q in zip(keys, questions)]
    return run


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def _acc(rows: Sequence[dict]) -> dict:
    """Accuracy of rows by the authors' protocol (the headline ``accuracy``), with the seeded-guess,
    strict and option-text (diagnostic) figures beside it."""
    n = len(rows)
    score = sum(r["score"] for r in rows)
    letter_right = sum(r["letter"] == r["answer"] for r in rows)
    no_letter = sum(r["letter"] is None for r in rows)
    guessed_right = sum((r["letter"] or r["guess"]) == r["answer"] for r in rows)
    read_right = sum(r["option_text"] == r["answer"] for r in rows)

    def share(k):
        return k / n if n else 0.0

    return dict(n=n, accuracy=share(score), score=score, ci95=list(wilson_interval(score, n)),
                letter_right=letter_right, no_letter=no_letter,
                seeded_guess=dict(accuracy=share(guessed_right), correct=guessed_right, seed=GUESS_SEED),
                strict=dict(accuracy=share(letter_right), correct=letter_right,
                            ci95=list(wilson_interval(letter_right, n))),
                option_text=dict(accuracy=share(read_right), correct=read_right,
                                 unread=sum(r["option_text"] is None for r in rows)))


def _grouped(rows: Sequence[dict], key: str) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[r[key]].append(r)
    return {g: _acc(rs) for g, rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))}


def trained_on(model_dir: str | os.PathLike) -> dict | None:
    """What a merged model was trained on, from its provenance note (foodie_provenance.json's ``data``: name,
    kind, source folder); None for a model without one (a base model)."""
    try:
        note = json.loads((Path(model_dir) / "foodie_provenance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    data = note.get("data") if isinstance(note, dict) else None
    return data if isinstance(data, dict) and data.get("name") else None


def model_metrics(run: ModelRun) -> dict:
    rows = run.rows
    by_task = {t: [r for r in rows if r["task"] == t] for t in dict.fromkeys(r["task"] for r in rows)}
    out = dict(label=run.label, model_dir=run.model_dir, backend=run.backend, fingerprint=run.fingerprint,
               trained_on=trained_on(run.model_dir), overall=_acc(rows), tasks={})
    for task, rs in by_task.items():
        m = _acc(rs)
        lo, hi = chance_range(len(rs))
        m.update(by_question_type=_grouped(rs, "question_type"), by_cuisine=_grouped(rs, "cuisine"),
                 chance=dict(accuracy=CHANCE, range95=[lo, hi],
                             binomial_p=binomial_test(m["seeded_guess"]["correct"], len(rs))),
                 no_letter_examples=[dict(item_id=r["item_id"], response=r["response"])
                                     for r in rs if r["letter"] is None][:10])
        out["tasks"][task] = m
    return out


def compare(base: ModelRun, other: ModelRun) -> dict:
    """Paired comparison of other against base on the questions both answered, overall and per task:
    the difference of the headline (per-question credit 1 / 0 / 1/4) with a paired-bootstrap interval;
    McNemar's test on the seeded-guess outcomes (right or wrong per question)."""
    def outcomes(run):
        return {r["item_id"]: (r["score"], (r["letter"] or r["guess"]) == r["answer"]) for r in run.rows}

    a, b = outcomes(base), outcomes(other)
    tasks = {r["item_id"]: r["task"] for r in base.rows}
    out = {}
    for scope in ["overall"] + sorted(set(tasks.values())):
        ids = [i for i in a if i in b and (scope == "overall" or tasks[i] == scope)]
        diff, lo, hi = paired_bootstrap([a[i][0] for i in ids], [b[i][0] for i in ids])
        only_a = sum(a[i][1] and not b[i][1] for i in ids)
        only_b = sum(b[i][1] and not a[i][1] for i in ids)
        out[scope] = dict(n=len(ids), difference=diff, ci95=[lo, hi], base_only_correct=only_a,
                          other_only_correct=only_b, mcnemar_p=mcnemar_exact(only_a, only_b))
    return dict(base=base.label, other=other.label, **out)


def question_set(data_root: Path, items: str | None, limit: int | None) -> dict:
    """What the questions were: FoodieQA, the synthetic stand-in or the user's own photos (foodie.terms'
    markers); held-out split, a subset, or every question (for FoodieQA: the full test set)."""
    from foodie.terms import FOODIEQA, OWN_PHOTOS, dataset_kind

    kind = dataset_kind(data_root)
    data = {FOODIEQA: "FoodieQA", OWN_PHOTOS: "own photos"}.get(kind, "synthetic")
    if items:
        scope = "held-out split"
    elif limit:
        scope = f"subset (first {limit} per task, spread)"
    else:
        scope = "full test set" if kind == FOODIEQA else f"every question of the {data} set"
    return dict(data=data, scope=scope)


def build_metrics(runs: Sequence[ModelRun], lang: str, data_root: Path, items: str | None,
                  limit: int | None = None, template: int = 0) -> dict:
    from foodie import published

    asked = question_set(data_root, items, limit)
    tasks = list(dict.fromkeys(r["task"] for run in runs for r in run.rows))
    pub = {}
    if asked["data"] == "FoodieQA":  # never beside results on the synthetic stand-in
        pub = {t: published.published(t, lang) for t in tasks if published.published(t, lang)}
    return dict(
        lang=lang, template=template, protocol=PROTOCOL, no_letter_credit=NO_LETTER_CREDIT,
        data_root=str(data_root), items_manifest=str(items) if items else None, questions=asked,
        models=[model_metrics(r) for r in runs],
        comparisons=[compare(runs[0], r) for r in runs[1:]],
        published=dict(source=published.SOURCE, scope=published.SCOPE, marks=published.DAGGER_NOTE,
                       textqa_note=published.TEXTQA_NOTE, results=pub,
                       shown=bool(pub), why_not=None if pub else (
                           f"these questions are {asked['data']} data, and published FoodieQA results are shown "
                           f"only beside the real FoodieQA"
                           if asked["data"] != "FoodieQA" else "the authors published none for these tasks")),
    )


# ---------------------------------------------------------------------------------------------
# Report, chart, console
# ---------------------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(ci: Sequence[float]) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _md_cell(text: str, width: int = 80) -> str:
    text = str(text).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def _scope_label(metrics: dict, n: int) -> str:
    """How a result of ours is labelled beside others: which questions, how many."""
    q = metrics.get("questions") or {}
    return f"{q.get('scope', 'questions here')}, {q.get('data', 'FoodieQA')}, n={n}"


def comparability(metrics: dict) -> str:
    """One true sentence on whether these numbers can be set against the published ones."""
    q = metrics.get("questions") or {}
    if q.get("data") == "synthetic":
        return ("These questions are the synthetic stand-in (drawings, not food): the numbers show the pipeline "
                "works and say nothing about FoodieQA; no published result is shown beside them.")
    if q.get("data") not in (None, "FoodieQA"):
        return (f"These questions are not FoodieQA ({q['data']}): no published result is shown beside them.")
    cap = (metrics.get("settings") or {}).get("max_new_tokens")
    if q.get("scope") == "full test set" and isinstance(cap, int) and cap < 500:
        return (f"Measured on the full test set with the authors' template {metrics.get('template', 0)} and their "
                f"scoring rule, but answers were cut at {cap} new tokens (the authors allow 500-1024): close to "
                f"the published protocol, not the same.")
    if q.get("scope") == "full test set":
        return (f"Measured on the full test set with the authors' template {metrics.get('template', 0)} and their "
                "scoring rule: the same protocol as the published numbers (the prompt each published model got "
                "is in the paper).")
    return (f"Measured on a {q.get('scope', 'part of the test set')}, not the full test set the published numbers "
            "use: the scoring rule is the authors', the questions are not all theirs, so differences of a few "
            "points against a published number mean nothing.")


def _training_data_lines(metrics: dict) -> list[str]:
    """Which data trained each model (its provenance note), and whether that is the data evaluated here."""
    trained = [(m["label"], m["trained_on"]) for m in metrics["models"] if m.get("trained_on")]
    if not trained:
        return []
    here = Path(metrics["data_root"]).resolve()
    lines = ["", "Training data: " + "; ".join(f"{_md_cell(label)}: {t['name']} (`{t.get('source', '?')}`)"
                                               for label, t in trained) + "."]
    same = [label for label, t in trained if t.get("source") and Path(t["source"]).resolve() == here]
    if same and not metrics["items_manifest"]:
        lines.append(f"**These questions include training data of {', '.join(same)}**: evaluate its held-out "
                     "manifest (--items) or another data set.")
    elif not same:
        lines.append("The evaluated data is not the training data of any model here.")
    return lines


def render_report(metrics: dict, chart_name: str | None = "accuracy.png") -> str:
    models = metrics["models"]
    lang = metrics["lang"]
    q = metrics.get("questions") or {}
    L = ["# FoodieQA evaluation", ""]
    cap = (metrics.get("settings") or {}).get("max_new_tokens")
    L.append(f"Language: **{lang}**; prompt: the authors' template **{metrics.get('template', 0)}**"
             + (f"; answers up to {cap} new tokens, greedy"
                + (" (**below the authors' 500**: a longer answer is cut there)" if cap < 500 else "")
                if isinstance(cap, int) else "") + "; data: "
             f"`{metrics['data_root']}` ({q.get('data', 'FoodieQA')}); questions: **{q.get('scope', '?')}**"
             + (f" (manifest `{metrics['items_manifest']}`)" if metrics["items_manifest"] else "") + ".")
    L += _training_data_lines(metrics)
    L.append("")
    L.append(f"**Accuracy** is the {PROTOCOL}. Beside it: *seeded guess* (one fixed random letter per letterless "
             "response: whole right answers), *strict* (no letter = wrong) and *option text*, a diagnostic that "
             "also reads the option an answer names in words (never FoodieQA accuracy). Intervals are 95% "
             "(Wilson). " + comparability(metrics))
    L.append("")
    L += ["## Accuracy", "",
          "| model | task | accuracy % | 95% CI | letter right / no letter / n | seeded guess % | strict % | "
          "option text % (diagnostic) | guessing range (95%) |",
          "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for m in models:
        for task, t in list(m["tasks"].items()) + [("overall", m["overall"])]:
            n = t["n"]
            if task == "overall":
                if len(m["tasks"]) < 2:
                    continue
                name, acc, rng = "**all**", f"**{_pct(t['accuracy'])}**", ""
            else:
                lo, hi = t["chance"]["range95"]
                name, acc = TASK_NAMES[task], _pct(t["accuracy"])
                rng = f"{_pct(lo / n) if n else '-'}–{_pct(hi / n) if n else '-'}"
            L.append(f"| {_md_cell(m['label'])} | {name} | {acc} | {_ci(t['ci95'])} | "
                     f"{t['letter_right']} / {t['no_letter']} / {n} | {_pct(t['seeded_guess']['accuracy'])} | "
                     f"{_pct(t['strict']['accuracy'])} | {_pct(t['option_text']['accuracy'])} | {rng} |")
    L.append("")
    L.append("*Guessing range*: the accuracies a model answering at random (25%) reaches 95% of the time on "
             "this many questions; a result inside it is indistinguishable from chance.")
    L.append("")
    if chart_name:
        L += [f"![accuracy by model and task]({chart_name})", ""]

    if metrics["comparisons"]:
        L += ["## Differences (paired, same questions)", "",
              "| model | vs. | scope | difference (points) | 95% CI (paired bootstrap) | only base right | "
              "only model right | McNemar p |", "|---|---|---|---:|---|---:|---:|---:|"]
        for c in metrics["comparisons"]:
            for scope in ["overall"] + [k for k in c if k in TASK_NAMES]:
                s = c[scope]
                L.append(f"| {_md_cell(c['other'])} | {_md_cell(c['base'])} | "
                         f"{'all' if scope == 'overall' else TASK_NAMES[scope]} | "
                         f"{100 * s['difference']:+.1f} | [{100 * s['ci95'][0]:+.1f}, {100 * s['ci95'][1]:+.1f}] | "
                         f"{s['base_only_correct']} | {s['other_only_correct']} | {s['mcnemar_p']:.3g} |")
        L += ["", "Difference: of the accuracy above. Right/wrong counts and McNemar's test use the seeded guess. "
                  "A difference whose interval contains 0 (or McNemar p >= 0.05) is not established by this "
                  "many questions.", ""]

    for key, title in (("by_question_type", "question type"), ("by_cuisine", "cuisine")):
        L += [f"## Accuracy by {title}", ""]
        for task in dict.fromkeys(t for m in models for t in m["tasks"]):
            groups = list(dict.fromkeys(g for m in models if task in m["tasks"] for g in m["tasks"][task][key]))
            L += [f"**{TASK_NAMES[task]}**", "", "| " + title + " | n | " + " | ".join(_md_cell(m["label"], 30)
                                                                                      for m in models) + " |",
                  "|---|---:|" + "---:|" * len(models)]
            for g in groups:
                cells, n = [], 0
                for m in models:
                    s = m["tasks"].get(task, {}).get(key, {}).get(g)
                    cells.append(f"{_pct(s['accuracy'])} ({s['letter_right']} right, {s['no_letter']} no letter)"
                                 if s else "-")
                    n = max(n, s["n"] if s else 0)
                L.append(f"| {_md_cell(g, 40)} | {n} | " + " | ".join(cells) + " |")
            L.append("")

    L += ["## Responses without a letter", ""]
    any_missing = False
    for m in models:
        for task, t in m["tasks"].items():
            if t["no_letter"]:
                any_missing = True
                L.append(f"**{_md_cell(m['label'])}**, {TASK_NAMES[task]}: {t['no_letter']} of {t['n']} responses have "
                         f"no capital A-D (each counts 1/4). Examples:")
                L.append("")
                for ex in t["no_letter_examples"]:
                    L.append(f"- `{ex['item_id']}`: {json.dumps(_md_cell(ex['response'], 120), ensure_ascii=False)}")
                L.append("")
    if not any_missing:
        L += ["None: every response has a capital A-D.", ""]

    pub = metrics["published"]
    if pub.get("results"):
        L += ["## Published FoodieQA results (full test set)", "",
              f"By the authors on the **full test set** ({pub['source']}); {pub['marks']}. "
              + comparability(metrics), ""]
        for task, rows in pub["results"].items():
            ours = [(m["label"], m["tasks"][task]) for m in models if task in m["tasks"]]
            L += [f"**{TASK_NAMES[task]}, {lang}**" + (f" ({pub['textqa_note']})" if task == "textqa" else ""), "",
                  "| model | accuracy % | measured on |", "|---|---:|---|"]
            for r in rows:
                L.append(f"| {r['model']} | {r['accuracy']:.2f}{r['mark']} | full test set, by the authors"
                         + (f"; {r['note']}" if r["note"] else "") + " |")
            for label, t in ours:
                L.append(f"| **{_md_cell(label)}** (ours) | {_pct(t['accuracy'])} | {_scope_label(metrics, t['n'])} |")
            L.append("")
    elif pub.get("why_not"):
        L += ["## Published FoodieQA results", "", f"Not shown: {pub['why_not']}.", ""]
    return "\n".join(L).rstrip() + "\n"


def _cjk_font() -> str | None:
    from matplotlib import font_manager
    for f in font_manager.fontManager.ttflist:
        if any(k in f.name for k in ("Noto Sans CJK SC", "Noto Sans CJK", "WenQuanYi", "SimHei", "Source Han Sans")):
            return f.name
    return None


def render_chart(metrics: dict, dest: str | os.PathLike) -> Path:
    """Bar chart of the headline accuracy per task and model, with 95% intervals and the chance line.
    Beside it, only for a run on the real FoodieQA, the published numbers of one task (grey, labelled
    full test set) with ours labelled by the questions they were measured on."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = _cjk_font()
    rc = {"font.family": "sans-serif", "font.sans-serif": [font, "DejaVu Sans"]} if font else {}
    models = metrics["models"]
    tasks = list(dict.fromkeys(t for m in models for t in m["tasks"]))
    lang = metrics["lang"]
    results = metrics["published"].get("results") or {}
    pub_task = next((t for t in tasks if results.get(t)), None)
    q = metrics.get("questions") or {}
    with plt.rc_context(rc):
        ncols = 2 if pub_task else 1
        fig, axes = plt.subplots(1, ncols, figsize=(6 + 5 * (ncols - 1) + 0.6 * len(models), 4.8), squeeze=False)
        ax = axes[0][0]
        width = 0.8 / max(1, len(models))
        for j, m in enumerate(models):
            xs, ys, errs, missing = [], [], [[], []], []
            for i, task in enumerate(tasks):
                t = m["tasks"].get(task)
                if not t:
                    continue
                xs.append(i + (j - (len(models) - 1) / 2) * width)
                ys.append(100 * t["accuracy"])
                errs[0].append(max(0.0, 100 * (t["accuracy"] - t["ci95"][0])))  # rounding at 0% / 100%
                errs[1].append(max(0.0, 100 * (t["ci95"][1] - t["accuracy"])))
                missing.append(t["no_letter"])
            ax.bar(xs, ys, width * 0.95, yerr=errs, capsize=3, label=m["label"])
            for x, y, hi, u in zip(xs, ys, errs[1], missing):
                ax.text(x, min(y + hi + 1, 101), f"{y:.1f}" + (f"\n{u} no letter" if u else ""), ha="center",
                        va="bottom", fontsize=7)
        ax.axhline(100 * CHANCE, color="grey", linestyle="--", linewidth=1, label="chance (25%)")
        ax.set_xticks(range(len(tasks)), [f"{TASK_NAMES[t]}\n(n={models[0]['tasks'].get(t, {}).get('n', 0)})"
                                          for t in tasks])
        ax.set_ylim(0, 130)  # room above 100 for the value labels, under the legend and the title
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("accuracy (%), authors' rule")
        ax.set_title(f"FoodieQA accuracy ({lang}, template {metrics.get('template', 0)}), 95% CI\n"
                     f"{q.get('scope', '')}, {q.get('data', '')} data", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", ncol=len(models) + 1, frameon=False)
        if pub_task:
            ax2 = axes[0][1]
            pub = results[pub_task]
            ours = [(f"{m['label']} (ours, {q.get('scope', '')}, n={m['tasks'][pub_task]['n']})",
                     100 * m["tasks"][pub_task]["accuracy"]) for m in models if pub_task in m["tasks"]]
            rows = ours + [(f"{r['model']}{r['mark']}", r["accuracy"]) for r in pub]
            rows.sort(key=lambda nv: -nv[1])
            own = {name for name, _ in ours}
            colors = [f"C{[n for n, _ in ours].index(name)}" if name in own else "0.75" for name, _ in rows]
            ys = range(len(rows))
            ax2.barh(ys, [v for _, v in rows], color=colors)
            for y, (_, v) in zip(ys, rows):
                ax2.text(v + 1, y, f"{v:.1f}", va="center", fontsize=8)
            ax2.set_yticks(list(ys), [name for name, _ in rows], fontsize=8)
            ax2.invert_yaxis()
            ax2.axvline(100 * CHANCE, color="grey", linestyle="--", linewidth=1)
            ax2.set_xlim(0, 110)
            ax2.set_xlabel("accuracy (%)")
            ax2.set_title(f"{TASK_NAMES[pub_task]} ({lang}): grey = published by the authors,\nfull test set",
                          fontsize=9)
        fig.tight_layout()
        dest = Path(dest)
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
    return dest


def console_table(metrics: dict):
    from rich.table import Table
    q = metrics.get("questions") or {}
    table = Table(title=f"FoodieQA accuracy ({metrics['lang']}, template {metrics.get('template', 0)}, "
                        f"{q.get('scope', '')}), authors' rule, 95% CI")
    for col, kw in (("model", {"overflow": "fold"}), ("task", {}), ("acc %", {"justify": "right"}),
                    ("95% CI", {"no_wrap": True}), ("seeded %", {"justify": "right"}),
                    ("strict %", {"justify": "right"}), ("no letter", {"justify": "right"}),
                    ("option text % (diag.)", {"justify": "right"}), ("Δ vs 1st [95% CI]", {"no_wrap": True})):
        table.add_column(col, **kw)
    comps = {c["other"]: c for c in metrics["comparisons"]}
    for m in metrics["models"]:
        c = comps.get(m["label"])
        for task, t in list(m["tasks"].items()) + [("overall", m["overall"])]:
            if task == "overall" and len(m["tasks"]) < 2:
                continue
            diff = ""
            if c and task in c:
                s = c[task]
                diff = f"{100 * s['difference']:+.1f} [{100 * s['ci95'][0]:+.1f}, {100 * s['ci95'][1]:+.1f}]"
            table.add_row(m["label"], "all" if task == "overall" else task, _pct(t["accuracy"]), _ci(t["ci95"]),
                          _pct(t["seeded_guess"]["accuracy"]), _pct(t["strict"]["accuracy"]),
                          f"{t['no_letter']}/{t['n']}", _pct(t["option_text"]["accuracy"]), diff)
    return table


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
    template: int = 0  # the authors' prompt template (foodie.prompts.TEMPLATES)
    backend: str = "auto"
    batch_size: int = 8
    limit: int | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    device: str = "auto"
    dtype: str = "auto"
    skip_bad: bool = False
    max_tiles: int | None = None


def default_labels(models: Sequence[str], labels: Sequence[str]) -> list[str]:
    if labels and len(labels) != len(models):
        raise ValueError(f"got {len(labels)} --label for {len(models)} --model; give one label per model or none")
    out = list(labels) or [Path(m).resolve().name or "model" for m in models]
    used: set[str] = set()
    for i, lab in enumerate(out):  # unique as file names too: they name the predictions files
        n, candidate = 1, lab
        while safe_label(candidate) in used:
            n += 1
            candidate = f"{lab}-{n}"
        out[i] = candidate
        used.add(safe_label(candidate))
    return out


def evaluate(cfg: EvalConfig, console=None, load: Callable | None = None) -> dict:
    """Run the evaluation described by cfg; writes predictions, metrics.json, report.md, accuracy.png."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    for m in cfg.models:
        if not (Path(m) / "config.json").is_file():
            raise FileNotFoundError(f"--model {m}: no config.json there; pass an InternVL2 checkpoint folder "
                                    f"(official format), e.g. tools/make_tiny_model.py or tools/convert_to_official.py output")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    labels = default_labels(cfg.models, cfg.labels)
    questions, data_root = build_questions(cfg.data_root, cfg.tasks, cfg.lang, cfg.items, cfg.limit, cfg.skip_bad,
                                           cfg.template)
    tasks = tuple(cfg.tasks or dict.fromkeys(q.task for q in questions))
    if any(q.reply_prefix for q in questions):
        from foodie.inference import resolve_backend
        if resolve_backend(cfg.backend) == "lmdeploy":
            raise ValueError(f"--template {cfg.template} starts the model's reply, which the LMDeploy backend cannot "
                             f"continue: add --backend transformers")
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
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as progress:
        for model_dir, label in zip(cfg.models, labels):
            bar = progress.add_task(f"{label}", total=len(questions))
            run = run_model(model_dir, label, questions, data_root, out, backend=cfg.backend,
                            batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, load=load,
                            on_batch=lambda n, bar=bar: progress.advance(bar, n), device=cfg.device, dtype=cfg.dtype,
                            max_tiles=cfg.max_tiles)
            speed = f", {run.backend} {run.questions_per_s:.2f} questions/s" if run.questions_per_s else ""
            progress.update(bar, description=f"{label} ({run.reused} reused, {run.computed} asked{speed})")
            runs.append(run)
    metrics = build_metrics(runs, cfg.lang, data_root, cfg.items, cfg.limit, cfg.template)
    metrics["runs"] = [dict(label=r.label, backend=r.backend, reused=r.reused, computed=r.computed,
                            seconds=round(r.seconds, 2), load_seconds=round(r.load_seconds, 2),
                            questions_per_s=r.questions_per_s and round(r.questions_per_s, 3)) for r in runs]
    metrics["settings"] = dict(tasks=list(tasks), template=cfg.template, backend=cfg.backend,
                               batch_size=cfg.batch_size, limit=cfg.limit, max_new_tokens=cfg.max_new_tokens,
                               decoding="greedy, stops at the end of the turn",
                               max_tiles=cfg.max_tiles or "checkpoint's max_dynamic_patch")
    write_json(out / "metrics.json", metrics)
    render_chart(metrics, out / "accuracy.png")
    write_text(out / "report.md", render_report(metrics, "accuracy.png"))
    console.print(console_table(metrics))
    console.print(f"wrote {out / 'report.md'}, {out / 'metrics.json'}, {out / 'accuracy.png'} and "
                  f"{out / 'predictions'}/")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    from foodie import cli, paths

    p = cli.ArgumentParser(
        prog="tools/eval_food.py",
        description="Measure FoodieQA multiple-choice accuracy of one or more InternVL2 checkpoints and compare "
                    "them (predictions JSONL, metrics.json, report.md, accuracy.png). Re-running reuses "
                    "finished predictions.")
    p.add_argument("--model", action="append", dest="models", metavar="DIR",
                   help="checkpoint folder (official format); repeat to compare models, the first is the "
                        f"baseline (default: the embedded tiny model {paths.tiny_model_dir()})")
    p.add_argument("--label", action="append", dest="labels", default=[], metavar="NAME",
                   help="a name per --model, in order (default: folder names)")
    p.add_argument("--data-root", default=str(paths.demo_data_dir()),
                   help="FoodieQA folder (default: the synthetic one, %(default)s)")
    p.add_argument("--items", metavar="MANIFEST", help="held-out manifest from tools/process_food.py: evaluate "
                                                       "only its questions (default: every question)")
    p.add_argument("--tasks", help="comma-separated, of " + ",".join(DEFAULT_TASKS)
                   + " (default: every task whose question file the data folder has)")
    p.add_argument("--lang", choices=("zh", "en"), default="zh", help="question language (authors' templates)")
    p.add_argument("--template", type=int, default=0, metavar="N",
                   help="the authors' prompt template: single-image zh 0-4 / en 0-3, multi-image 0-3, text-only "
                        "0-3 (default 0, their scripts' default; templates 2-4 of single-image start the reply, "
                        "which needs the transformers backend). Recorded in metrics.json and the report.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backend", choices=("auto", "transformers", "lmdeploy"), default="auto",
                   help="auto: LMDeploy when importable and a GPU is visible, else transformers")
    p.add_argument("--batch-size", type=int, default=8,
                   help="transformers: questions per generate call; both: answers per fsync of the predictions "
                        "(default 8; LMDeploy gets every question at once and batches them itself)")
    p.add_argument("--limit", type=int, help="only N questions of each task, spread evenly over its file (smoke runs)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="answer length cap (default %(default)s, as the authors' scripts; generation stops "
                        "at the end of the model's turn, so a short answer costs no more)")
    p.add_argument("--device", default="auto", help="transformers backend: cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--dtype", default="auto", help="transformers backend: float32, bfloat16, float16 (default auto)")
    p.add_argument("--max-tiles", type=int, help="tile budget per question (default: the checkpoint's "
                                                  "max_dynamic_patch; use what training used; several images share it)")
    p.add_argument("--skip-bad", action="store_true", help="drop FoodieQA items with problems instead of stopping")
    a = p.parse_args(argv)
    tasks = tuple(t.strip() for t in a.tasks.split(",") if t.strip()) if a.tasks else None
    cfg = EvalConfig(models=a.models or [str(paths.tiny_model_dir())], labels=a.labels, data_root=a.data_root,
                     out=a.out, items=a.items, tasks=tasks, lang=a.lang, template=a.template, backend=a.backend,
                     batch_size=a.batch_size,
                     limit=a.limit, max_new_tokens=a.max_new_tokens, device=a.device, dtype=a.dtype,
                     skip_bad=a.skip_bad, max_tiles=a.max_tiles)
    try:
        evaluate(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        import sys
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
