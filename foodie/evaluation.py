"""FoodieQA evaluation: ask each model the multiple-choice questions, score, compare, report.

    python tools/eval_food.py --model work/tiny-internvl2 --model work/tuned --data-root DIR \\
        --items work/held_out.json --out work/eval

For every model it writes ``predictions/<label>.jsonl`` (one row per question: ids, prompt, raw
response, parsed answer, correct), then ``metrics.json``, ``report.md`` and ``accuracy.png`` for all
models together.

* Prompts are the FoodieQA authors' templates (``foodie.prompts``), rendered through the model's
  own chat template by the inference backend (``foodie.inference``).
* Answers are parsed as the authors do -- the first letter A-D -- made a little stricter (a letter
  must stand alone, not be part of a Latin word) with a fallback that matches the choice text
  (``parse_choice``). An answer that cannot be parsed counts as wrong and is shown in the report;
  it is never replaced by a random guess (the authors' scripts did that).
* Resume: every prediction carries a key (model content fingerprint, backend, generation settings,
  prompt, images). A re-run reuses rows whose key matches and computes only the rest; rows are
  appended and fsynced after every batch, so a killed run loses at most one batch.
* Statistics: Wilson 95% intervals for accuracies, the range a guessing model would reach, and for
  two or more models the paired difference to the first model with a paired-bootstrap 95% interval
  and an exact McNemar test (the held-out set is small: differences of a few points are noise).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import time
import unicodedata
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from foodie.atomic import atomic_path, write_json, write_text

LETTERS = "ABCD"
CHANCE = 0.25  # four options
TASK_NAMES = {"sivqa": "single-image VQA", "mivqa": "multi-image VQA"}
DEFAULT_TASKS = ("sivqa", "mivqa")
PREDICTIONS_VERSION = 1

# Published FoodieQA accuracy (%), measured by the authors on the FULL sets (256 single-image, 403
# multi-image questions); Li et al., "FoodieQA", EMNLP 2024. Our numbers come from the held-out split.
PUBLISHED = {
    "sivqa": {
        "zh": {"Human": 74.41, "GPT-4o": 72.66, "GPT-4V": 63.67, "Yi-VL-34B": 52.73, "Yi-VL-6B": 49.61,
               "Qwen-VL-12B": 48.83, "Idefics2-8B": 46.87, "Phi-3-vision": 42.58, "Mantis-8B": 41.80},
        "en": {"Human": 46.53, "GPT-4o": 67.97, "GPT-4V": 60.16, "Yi-VL-34B": 48.05, "Yi-VL-6B": 41.41,
               "Qwen-VL-12B": 42.97, "Idefics2-8B": 52.73, "Phi-3-vision": 44.53, "Mantis-8B": 47.66},
    },
    "mivqa": {"zh": {"GPT-4o": 86.35, "Idefics2-8B": 50.87}},
}


# ---------------------------------------------------------------------------------------------
# Answer parsing
# ---------------------------------------------------------------------------------------------

_UPPER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")
# A lone lower-case letter counts only at the very start and followed by punctuation or the end
# ("b.", "(c) ...", "d"): "a dish of noodles" must not read as A.
_LOWER_START = re.compile(r"^[\s(\[{（【<「『\"'“‘]*([a-d])\s*(?:$|[)\]}）】>」』.:,;!?。．、:：，；！？\"'”’])")
# Where a reply states its conclusion ("...。答案是粤菜。"): option text after it is searched first.
_ANSWER_MARKER = re.compile(r"答案[是为：:]|the answer is", re.IGNORECASE)


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def parse_choice(response: str, choices: Sequence[str] | None = None) -> int | None:
    """The option (0-3) a free-text answer picks, or None when it cannot be told.

    1. The first capital letter A-D standing alone ("答案是（B）", "选项D", "The answer is C because",
       "图B"); a lone lower-case letter at the start ("b.", "(c)").
    2. Otherwise the choice whose text the answer contains ("北京烤鸭" -> the option reading 北京烤鸭);
       when several do, the one that is not part of a longer matching choice; still several: None.
       Text after the last answer marker ("答案是", "答案为", "the answer is") is searched first, so
       "图中的菜是猪肉炖粉条。答案是粉条。" picks 粉条, not 猪肉, though both are options.
    """
    if not isinstance(response, str):
        return None
    text = unicodedata.normalize("NFKC", response).strip()
    if not text:
        return None
    m = _UPPER.search(text)
    if m:
        return LETTERS.index(m.group(1))
    m = _LOWER_START.search(text)
    if m:
        return LETTERS.index(m.group(1).upper())
    if choices:
        marked = [m.end() for m in _ANSWER_MARKER.finditer(text)]
        for haystack in ([text[marked[-1]:]] if marked else []) + [text]:
            found = _choice_in_text(_normalise(haystack), choices)
            if found is not None:
                return found
    return None


def _choice_in_text(haystack: str, choices: Sequence[str]) -> int | None:
    hits = {i: _normalise(c).strip() for i, c in enumerate(choices) if isinstance(c, str)}
    hits = {i: c for i, c in hits.items() if c and c in haystack}
    # Drop a hit that is only part of a longer hit ("鸭" inside "北京烤鸭").
    hits = {i: c for i, c in hits.items() if not any(c != d and c in d for d in hits.values())}
    distinct = set(hits.values())
    return min(hits) if len(distinct) == 1 else None


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
    """Accuracy difference b - a on the same items, with a paired-bootstrap percentile interval."""
    if len(a) != len(b):
        raise ValueError("paired bootstrap needs results on the same items")
    n = len(a)
    if n == 0:
        return (0.0, 0.0, 0.0)
    d = [int(y) - int(x) for x, y in zip(a, b)]
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
    answer: int  # 0-3: the correct option (SIVQA) or image (MIVQA)
    prompt: str  # user text; <image> placeholders where the images go
    images: list[str]  # paths relative to the data root
    choices: list[str] | None = None  # option texts, for the choice-text fallback (None for MIVQA)

    @property
    def item_id(self) -> str:
        return f"{self.task}:{self.question_id}"


def build_questions(data_root: str | os.PathLike, tasks: Sequence[str] = DEFAULT_TASKS, lang: str = "zh",
                    items: str | os.PathLike | None = None, limit: int | None = None,
                    skip_bad: bool = False) -> tuple[list[Question], Path]:
    """The questions to ask: FoodieQA items of the tasks (only those of the manifest, if given)."""
    from foodie import prompts
    from foodie.foodieqa import load_foodieqa

    for t in tasks:
        if t not in TASK_NAMES:
            raise ValueError(f"unknown task {t!r}: the evaluation covers {', '.join(TASK_NAMES)}")
    if lang not in ("zh", "en"):
        raise ValueError(f"unknown language {lang!r}: use zh or en")
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
            text, images = prompts.question_prompt(it, lang)
            choices = None
            if task == "sivqa":
                choices = it.choices_en if lang == "en" and it.choices_en else it.choices
            questions.append(Question(task=task, question_id=it.question_id, question_type=it.question_type,
                                      cuisine=it.cuisine, answer=it.answer, prompt=text, images=list(images),
                                      choices=choices))
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
    blob = json.dumps([PREDICTIONS_VERSION, fingerprint, backend, settings, q.task, q.question_id, q.prompt,
                       q.images], ensure_ascii=False, sort_keys=True)
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
    parsed = parse_choice(row["response"], q.choices)
    row.update(parsed=None if parsed is None else LETTERS[parsed], answer=LETTERS[q.answer],
               correct=parsed == q.answer)
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
    seconds: float = 0.0


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
              out_dir: Path, *, backend: str = "auto", batch_size: int = 8, max_new_tokens: int = 32,
              load: Callable | None = None, on_batch: Callable[[int], None] | None = None,
              device: str = "auto", dtype: str = "auto", max_tiles: int | None = None) -> ModelRun:
    """Ask one model every question, reusing finished predictions; returns all rows in order."""
    from foodie.inference import GenerationParams, Message, load_backend, resolve_backend

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
        try:
            for i in range(0, len(todo), batch_size):
                batch = todo[i:i + batch_size]
                requests = [[Message("user", q.prompt, images=[data_root / p for p in q.images])] for _, q in batch]
                answers = chat.generate(requests, params)
                new = []
                for (k, q), response in zip(batch, answers):
                    row = dict(key=k, item_id=q.item_id, task=q.task, question_id=q.question_id,
                               question_type=q.question_type, cuisine=q.cuisine, prompt=q.prompt,
                               images=q.images, response=response, model=label, backend=backend_name,
                               fingerprint=fingerprint)
                    new.append(score_row(row, q))
                    done[k] = row
                append_rows(path, new)
                if on_batch:
                    on_batch(len(batch))
        finally:
            chat.close()
    run.seconds = time.perf_counter() - start
    run.rows = [score_row(dict(done[k]), q) for k, q in zip(keys, questions)]
    return run


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def _acc(rows: Sequence[dict]) -> dict:
    n = len(rows)
    k = sum(bool(r["correct"]) for r in rows)
    unparsed = sum(r["parsed"] is None for r in rows)
    lo, hi = wilson_interval(k, n)
    return dict(n=n, correct=k, accuracy=k / n if n else 0.0, ci95=[lo, hi], unparsed=unparsed)


def _grouped(rows: Sequence[dict], key: str) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[r[key]].append(r)
    return {g: _acc(rs) for g, rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))}


def model_metrics(run: ModelRun) -> dict:
    rows = run.rows
    by_task = {t: [r for r in rows if r["task"] == t] for t in dict.fromkeys(r["task"] for r in rows)}
    out = dict(label=run.label, model_dir=run.model_dir, backend=run.backend, fingerprint=run.fingerprint,
               overall=_acc(rows), tasks={})
    for task, rs in by_task.items():
        m = _acc(rs)
        lo, hi = chance_range(len(rs))
        m.update(by_question_type=_grouped(rs, "question_type"), by_cuisine=_grouped(rs, "cuisine"),
                 chance=dict(accuracy=CHANCE, range95=[lo, hi], binomial_p=binomial_test(m["correct"], len(rs))),
                 unparsed_examples=[dict(item_id=r["item_id"], response=r["response"])
                                    for r in rs if r["parsed"] is None][:10])
        out["tasks"][task] = m
    return out


def compare(base: ModelRun, other: ModelRun) -> dict:
    """Paired comparison of other against base on the questions both answered, overall and per task."""
    a = {r["item_id"]: bool(r["correct"]) for r in base.rows}
    b = {r["item_id"]: bool(r["correct"]) for r in other.rows}
    tasks = {r["item_id"]: r["task"] for r in base.rows}
    out = {}
    for scope in ["overall"] + sorted(set(tasks.values())):
        ids = [i for i in a if i in b and (scope == "overall" or tasks[i] == scope)]
        xa, xb = [a[i] for i in ids], [b[i] for i in ids]
        diff, lo, hi = paired_bootstrap(xa, xb)
        only_a = sum(x and not y for x, y in zip(xa, xb))
        only_b = sum(y and not x for x, y in zip(xa, xb))
        out[scope] = dict(n=len(ids), difference=diff, ci95=[lo, hi], base_only_correct=only_a,
                          other_only_correct=only_b, mcnemar_p=mcnemar_exact(only_a, only_b))
    return dict(base=base.label, other=other.label, **out)


def build_metrics(runs: Sequence[ModelRun], lang: str, data_root: Path, items: str | None) -> dict:
    return dict(
        lang=lang, data_root=str(data_root), items_manifest=str(items) if items else None,
        models=[model_metrics(r) for r in runs],
        comparisons=[compare(runs[0], r) for r in runs[1:]],
        published=dict(note="Accuracy (%) published by the FoodieQA authors (Li et al., EMNLP 2024), measured on "
                            "the FULL sets (256 single-image / 403 multi-image questions), not on our held-out "
                            "split; for context only.",
                       results={t: PUBLISHED[t].get(lang, {}) for t in PUBLISHED}),
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


def render_report(metrics: dict, chart_name: str | None = "accuracy.png") -> str:
    models = metrics["models"]
    lang = metrics["lang"]
    L = ["# FoodieQA evaluation", ""]
    L.append(f"Language: **{lang}**; data: `{metrics['data_root']}`"
             + (f"; questions: held-out manifest `{metrics['items_manifest']}`" if metrics["items_manifest"]
                else "; questions: all items of the data folder") + ".")
    L.append("Answers are parsed as the FoodieQA authors do (first letter A-D) with a fallback on the choice "
             "text; **unparsed answers count as wrong** (never replaced by a random guess). "
             "Intervals are 95% (Wilson for accuracy).")
    L.append("")
    L += ["## Accuracy", "", "| model | task | accuracy % | 95% CI | correct / n | unparsed | guessing range (95%) |",
          "|---|---|---:|---|---:|---:|---|"]
    for m in models:
        for task, t in m["tasks"].items():
            lo, hi = t["chance"]["range95"]
            n = t["n"]
            L.append(f"| {_md_cell(m['label'])} | {TASK_NAMES[task]} | {_pct(t['accuracy'])} | {_ci(t['ci95'])} | "
                     f"{t['correct']} / {n} | {t['unparsed']} | {_pct(lo / n) if n else '-'}–"
                     f"{_pct(hi / n) if n else '-'} |")
        o = m["overall"]
        L.append(f"| {_md_cell(m['label'])} | **all** | **{_pct(o['accuracy'])}** | {_ci(o['ci95'])} | "
                 f"{o['correct']} / {o['n']} | {o['unparsed']} | |")
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
        L += ["", "A difference whose interval contains 0 (or McNemar p >= 0.05) is not established by this "
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
                    cells.append(f"{_pct(s['accuracy'])} ({s['correct']}/{s['n']})" if s else "-")
                    n = max(n, s["n"] if s else 0)
                L.append(f"| {_md_cell(g, 40)} | {n} | " + " | ".join(cells) + " |")
            L.append("")

    L += ["## Unparsed answers", ""]
    any_unparsed = False
    for m in models:
        for task, t in m["tasks"].items():
            if t["unparsed"]:
                any_unparsed = True
                L.append(f"**{_md_cell(m['label'])}**, {TASK_NAMES[task]}: {t['unparsed']} of {t['n']} answers name no "
                         f"option (counted wrong). Examples:")
                L.append("")
                for ex in t["unparsed_examples"]:
                    L.append(f"- `{ex['item_id']}`: {json.dumps(_md_cell(ex['response'], 120), ensure_ascii=False)}")
                L.append("")
    if not any_unparsed:
        L += ["None: every answer named an option.", ""]

    pub = metrics["published"]
    L += ["## Published FoodieQA results (for context)", "", pub["note"], ""]
    for task, res in pub["results"].items():
        if not res:
            continue
        ours = [(m["label"], m["tasks"][task]) for m in models if task in m["tasks"]]
        L += [f"**{TASK_NAMES[task]}, {lang}**", "", "| model | accuracy % | measured on |", "|---|---:|---|"]
        for name, acc in sorted(res.items(), key=lambda kv: -kv[1]):
            L.append(f"| {name} | {acc:.2f} | full set, by the authors |")
        for label, t in ours:
            L.append(f"| **{_md_cell(label)}** (ours) | {_pct(t['accuracy'])} | {t['n']} questions here |")
        L.append("")
    return "\n".join(L).rstrip() + "\n"


def _cjk_font() -> str | None:
    from matplotlib import font_manager
    for f in font_manager.fontManager.ttflist:
        if any(k in f.name for k in ("Noto Sans CJK SC", "Noto Sans CJK", "WenQuanYi", "SimHei", "Source Han Sans")):
            return f.name
    return None


def render_chart(metrics: dict, dest: str | os.PathLike) -> Path:
    """Bar chart: accuracy per task and model with 95% intervals and the chance line; beside it our
    single-image accuracy next to the published numbers (grey, full set)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = _cjk_font()
    rc = {"font.family": "sans-serif", "font.sans-serif": [font, "DejaVu Sans"]} if font else {}
    models = metrics["models"]
    tasks = list(dict.fromkeys(t for m in models for t in m["tasks"]))
    lang = metrics["lang"]
    pub_task = next((t for t in tasks if metrics["published"]["results"].get(t)), None)
    with plt.rc_context(rc):
        ncols = 2 if pub_task else 1
        fig, axes = plt.subplots(1, ncols, figsize=(6 + 5 * (ncols - 1) + 0.6 * len(models), 4.5), squeeze=False)
        ax = axes[0][0]
        width = 0.8 / max(1, len(models))
        for j, m in enumerate(models):
            xs, ys, errs = [], [], [[], []]
            for i, task in enumerate(tasks):
                t = m["tasks"].get(task)
                if not t:
                    continue
                xs.append(i + (j - (len(models) - 1) / 2) * width)
                ys.append(100 * t["accuracy"])
                errs[0].append(100 * (t["accuracy"] - t["ci95"][0]))
                errs[1].append(100 * (t["ci95"][1] - t["accuracy"]))
            ax.bar(xs, ys, width * 0.95, yerr=errs, capsize=3, label=m["label"])
            unparsed = [m["tasks"][t]["unparsed"] for t in tasks if t in m["tasks"]]
            for x, y, hi, u in zip(xs, ys, errs[1], unparsed):
                ax.text(x, y + hi + 1, f"{y:.1f}" + (f"\n{u} unparsed" if u else ""), ha="center", va="bottom",
                        fontsize=7)
        ax.axhline(100 * CHANCE, color="grey", linestyle="--", linewidth=1, label="chance (25%)")
        ax.set_xticks(range(len(tasks)), [f"{TASK_NAMES[t]}\n(n={models[0]['tasks'].get(t, {}).get('n', 0)})"
                                          for t in tasks])
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"FoodieQA accuracy, ours ({lang}), 95% CI")
        ax.legend(fontsize=8, loc="upper right")
        if pub_task:
            ax2 = axes[0][1]
            pub = metrics["published"]["results"][pub_task]
            names = [f"{m['label']} (ours)" for m in models if pub_task in m["tasks"]] + list(pub)
            vals = [100 * m["tasks"][pub_task]["accuracy"] for m in models if pub_task in m["tasks"]] + list(pub.values())
            ours_n = sum(pub_task in m["tasks"] for m in models)
            colors = [f"C{i}" for i in range(ours_n)] + ["0.75"] * len(pub)
            ys = range(len(names))
            ax2.barh(ys, vals, color=colors, hatch=None)
            for y, v in zip(ys, vals):
                ax2.text(v + 1, y, f"{v:.1f}", va="center", fontsize=8)
            ax2.set_yticks(list(ys), names, fontsize=8)
            ax2.invert_yaxis()
            ax2.axvline(100 * CHANCE, color="grey", linestyle="--", linewidth=1)
            ax2.set_xlim(0, 100)
            ax2.set_xlabel("accuracy (%)")
            ax2.set_title(f"{TASK_NAMES[pub_task]} ({lang}): grey = published,\nauthors' full set (not our split)",
                          fontsize=9)
        fig.tight_layout()
        dest = Path(dest)
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
    return dest


def console_table(metrics: dict):
    from rich.table import Table
    table = Table(title=f"FoodieQA accuracy ({metrics['lang']}), 95% CI")
    for col, kw in (("model", {"overflow": "fold"}), ("task", {}), ("acc %", {"justify": "right"}),
                    ("95% CI", {"no_wrap": True}), ("right/n", {"justify": "right"}),
                    ("unparsed", {"justify": "right"}), ("Δ vs 1st [95% CI]", {"no_wrap": True})):
        table.add_column(col, **kw)
    comps = {c["other"]: c for c in metrics["comparisons"]}
    for m in metrics["models"]:
        c = comps.get(m["label"])
        for task, t in list(m["tasks"].items()) + [("overall", m["overall"])]:
            diff = ""
            if c and task in c:
                s = c[task]
                diff = f"{100 * s['difference']:+.1f} [{100 * s['ci95'][0]:+.1f}, {100 * s['ci95'][1]:+.1f}]"
            table.add_row(m["label"], "all" if task == "overall" else task, _pct(t["accuracy"]),
                          _ci(t["ci95"]), f"{t['correct']}/{t['n']}", str(t["unparsed"]), diff)
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
    tasks: tuple[str, ...] = DEFAULT_TASKS
    lang: str = "zh"
    backend: str = "auto"
    batch_size: int = 8
    limit: int | None = None
    max_new_tokens: int = 32
    device: str = "auto"
    dtype: str = "auto"
    skip_bad: bool = False
    max_tiles: int | None = None


def default_labels(models: Sequence[str], labels: Sequence[str]) -> list[str]:
    if labels and len(labels) != len(models):
        raise ValueError(f"got {len(labels)} --label for {len(models)} --model; give one label per model or none")
    out = list(labels) or [Path(m).resolve().name or "model" for m in models]
    seen: dict[str, int] = {}
    for i, lab in enumerate(out):  # make labels unique: they name the predictions files
        if lab in seen:
            seen[lab] += 1
            out[i] = f"{lab}-{seen[lab]}"
        else:
            seen[lab] = 1
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
    questions, data_root = build_questions(cfg.data_root, cfg.tasks, cfg.lang, cfg.items, cfg.limit, cfg.skip_bad)
    if not questions:
        raise ValueError(f"no questions to ask in {cfg.data_root} for tasks {', '.join(cfg.tasks)}"
                         + (f" and manifest {cfg.items}" if cfg.items else ""))
    for task in cfg.tasks:
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
            progress.update(bar, description=f"{label} ({run.reused} reused, {run.computed} asked)")
            runs.append(run)
    metrics = build_metrics(runs, cfg.lang, data_root, cfg.items)
    metrics["runs"] = [dict(label=r.label, reused=r.reused, computed=r.computed, seconds=round(r.seconds, 2))
                       for r in runs]
    metrics["settings"] = dict(tasks=list(cfg.tasks), backend=cfg.backend, batch_size=cfg.batch_size,
                               limit=cfg.limit, max_new_tokens=cfg.max_new_tokens, decoding="greedy",
                               max_tiles=cfg.max_tiles or "checkpoint's max_dynamic_patch")
    write_json(out / "metrics.json", metrics)
    render_chart(metrics, out / "accuracy.png")
    write_text(out / "report.md", render_report(metrics, "accuracy.png"))
    console.print(console_table(metrics))
    console.print(f"wrote {out / 'report.md'}, {out / 'metrics.json'}, {out / 'accuracy.png'} and "
                  f"{out / 'predictions'}/")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from foodie import paths

    p = argparse.ArgumentParser(
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
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated: sivqa,mivqa")
    p.add_argument("--lang", choices=("zh", "en"), default="zh", help="question language (authors' templates)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backend", choices=("auto", "transformers", "lmdeploy"), default="auto",
                   help="auto: LMDeploy when importable and a GPU is visible, else transformers")
    p.add_argument("--batch-size", type=int, default=8,
                   help="questions per generate call, and per fsync of the predictions (default 8; with LMDeploy "
                        "on a GPU use 64 or more: its engine batches them itself)")
    p.add_argument("--limit", type=int, help="only N questions of each task, spread evenly over its file (smoke runs)")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="answer length cap (default 32: a letter answer needs one token, a name-style answer "
                        "naming the dish and then the option about 10-25)")
    p.add_argument("--device", default="auto", help="transformers backend: cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--dtype", default="auto", help="transformers backend: float32, bfloat16, float16 (default auto)")
    p.add_argument("--max-tiles", type=int, help="tile budget per question (default: the checkpoint's "
                                                  "max_dynamic_patch; use what training used; several images share it)")
    p.add_argument("--skip-bad", action="store_true", help="drop FoodieQA items with problems instead of stopping")
    a = p.parse_args(argv)
    tasks = tuple(t.strip() for t in a.tasks.split(",") if t.strip())
    cfg = EvalConfig(models=a.models or [str(paths.tiny_model_dir())], labels=a.labels, data_root=a.data_root,
                     out=a.out, items=a.items, tasks=tasks, lang=a.lang, backend=a.backend, batch_size=a.batch_size,
                     limit=a.limit, max_new_tokens=a.max_new_tokens, device=a.device, dtype=a.dtype,
                     skip_bad=a.skip_bad, max_tiles=a.max_tiles)
    try:
        evaluate(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        import sys
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
