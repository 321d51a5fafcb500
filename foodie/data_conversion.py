"""FoodieQA -> XTuner training data, with an honest held-out split.

    convert_foodieqa("FoodieQA/", "work/foodieqa-xtuner", ConversionOptions(tasks=("sivqa",), style="letter"))

writes one folder (atomically: all or nothing, an earlier output stays intact until the new one is complete):

    train.json        XTuner LLaVA format for ``InternVL_V1_5_Dataset``: ``image`` (absolute path, so
                      training runs from any working directory), ``image_wh``, ``conversations``
                      (human turn with ``<image>``, gpt turn)
    held_out.json     the evaluation manifest: ids and the untouched items of every task whose images
                      are all in the held-out split (``foodie.held_out`` reads it)
    summary.json/.md  counts per split, task, cuisine and question type; token budget per sample
    collages/         2x2 collages of multi-image questions (XTuner's dataset takes one image a sample)
    normalised/       upright RGB copies of images XTuner would read differently from our inference
                      (EXIF-rotated, transparent, 16-bit): XTuner calls ``Image.open().convert("RGB")``

The split is made on *images* (default) or *dishes*, stratified by cuisine, so no image (or dish) of
the held-out set is ever trained on -- the tutorial trained and tested on the same 256 questions.
Items whose images straddle both splits (multi-image questions) are dropped and counted. When the data
has multi-image questions, part of the held-out image budget is filled with the complete image sets of
randomly chosen multi-image questions, so that task has held-out questions too.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from PIL import Image

from foodie import prompts
from foodie.atomic import atomic_path
from foodie.foodieqa import UNKNOWN, FoodieQA, QAItem, load_foodieqa
from foodie.held_out import FORMAT as HELD_OUT_FORMAT
from foodie.image_tiling import IMAGE_SIZE, MAX_TILES, MIN_TILES, num_tiles, open_image, tokens_per_tile
from foodie.tasks import TASKS, get_task
from foodie.terms import describe_source

FORMAT_VERSION = 1
LANG_CHOICES = ("zh", "en", "both")
SPLIT_BY = ("image", "dish")
# System prompt + chat roles around one turn (<|im_start|>system ... <|im_start|>assistant\n, <|im_end|>):
# a generous allowance for the token budget when no tokenizer is given.
TEMPLATE_OVERHEAD_TOKENS = 64


@dataclass
class ConversionOptions:
    tasks: tuple[str, ...] = ("sivqa",)  # what goes into train.json
    lang: str = "zh"  # zh | en | both (both: one sample per language)
    style: str = "letter"  # letter | name | explain | tutorial (foodie.prompts.ANSWER_STYLES)
    eval_ratio: float = 0.2  # share of images (or dishes) held out
    seed: int = 0
    split_by: str = "image"  # image | dish
    stratify: bool = True  # by cuisine
    mivqa_eval_share: float = 0.5  # of the held-out image budget, filled with whole multi-image questions
    skip_bad: bool = False
    check_images: bool = True
    max_length: int = 8192  # samples longer than this are counted in the summary (XTuner truncates them)
    min_tiles: int = MIN_TILES
    max_tiles: int = MAX_TILES
    # The model's tile side and LLM tokens per tile (InternVL2-2B: 448 px, 256); process_food reads them from the
    # checkpoint's config.json (foodie.image_tiling.tiling_of) when given one (--tokenizer). They size the
    # multi-image collages' cells and the token counts.
    tile_size: int = IMAGE_SIZE
    image_tokens_per_tile: int = tokens_per_tile()
    workers: int = 2

    def validate(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"tasks must be some of {', '.join(TASKS)}; got {', '.join(self.tasks) or 'none'}")
        if self.lang not in LANG_CHOICES:
            raise ValueError(f"lang must be one of {', '.join(LANG_CHOICES)}; got {self.lang!r}")
        if self.style not in prompts.ANSWER_STYLES:
            raise ValueError(f"style must be one of {', '.join(prompts.ANSWER_STYLES)}; got {self.style!r}")
        if not 0.0 < self.eval_ratio < 1.0:
            raise ValueError(f"eval_ratio must be between 0 and 1 (exclusive); got {self.eval_ratio}")
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be 'image' or 'dish'; got {self.split_by!r}")
        if not 0.0 <= self.mivqa_eval_share <= 1.0:
            raise ValueError(f"mivqa_eval_share must be between 0 and 1; got {self.mivqa_eval_share}")


# ---------------------------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------------------------

@dataclass
class Split:
    """Which images are held out, and which items land where."""
    eval_images: set[str]
    train: dict[str, list[QAItem]]
    held_out: dict[str, list[QAItem]]
    dropped: dict[str, list[QAItem]]  # images in both splits


def image_cuisines(data: FoodieQA) -> dict[str, str]:
    """Cuisine of every image the answer of a question with a known cuisine is about."""
    out: dict[str, str] = {}
    for item in data.items():
        if item.answer_image and item.cuisine != UNKNOWN:
            out.setdefault(item.answer_image, item.cuisine)
    return out


def image_dishes(data: FoodieQA) -> dict[str, str]:
    """Dish name of every image that has one (``food_names``, one per image, else the answer's dish)."""
    out: dict[str, str] = {}
    for item in data.items():
        names = item.raw.get("food_names")
        if isinstance(names, list) and len(names) == len(item.images) > 1:
            for p, n in zip(item.images, names):
                if isinstance(n, str) and n.strip():
                    out.setdefault(p, n.strip())
            continue
        name = item.food_meta.get("food_name") or item.food_name
        if name and item.answer_image:
            out.setdefault(item.answer_image, str(name).strip())
    return out


def _stable_rng(seed: int, *parts: str) -> random.Random:
    h = hashlib.sha256("\0".join([str(seed), *parts]).encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def make_split(data: FoodieQA, opts: ConversionOptions) -> Split:
    """Assign images to train / held-out (by image or dish, stratified by cuisine), then items."""
    images = data.image_paths()
    cuisine = image_cuisines(data)
    dish = image_dishes(data)
    unit_of = {p: (f"dish:{dish[p]}" if opts.split_by == "dish" and p in dish else f"image:{p}") for p in images}
    unit_images: dict[str, list[str]] = defaultdict(list)
    for p in images:
        unit_images[unit_of[p]].append(p)
    unit_cuisine = {u: Counter(cuisine.get(p, UNKNOWN) for p in ps).most_common(1)[0][0]
                    for u, ps in unit_images.items()}
    rng = random.Random(opts.seed)
    budget = round(opts.eval_ratio * len(unit_images))
    eval_units: set[str] = set()

    # 1. Whole multi-image questions first (their images must all be held out to be evaluable).
    multi = [it for t in TASKS if get_task(t).collage for it in getattr(data, t)]
    if multi and opts.mivqa_eval_share > 0:
        mivqa_budget = math.floor(budget * opts.mivqa_eval_share)
        order = sorted(multi, key=lambda it: (it.task, it.question_id))
        rng.shuffle(order)
        for item in order:
            new = {unit_of[p] for p in item.images} - eval_units
            if len(eval_units) + len(new) <= mivqa_budget:
                eval_units |= new

    # 2. Fill the rest, per cuisine, so each cuisine is held out in proportion: the total budget is
    #    shared out by largest remainder (small cuisines still get their turn), ties in seeded order.
    groups: dict[str, list[str]] = defaultdict(list)
    for u in sorted(unit_images):
        groups[unit_cuisine[u] if opts.stratify else "all"].append(u)
    names = sorted(groups)
    quota = {g: opts.eval_ratio * len(groups[g]) for g in names}
    want = {g: math.floor(quota[g]) for g in names}
    by_remainder = sorted(names, key=lambda g: (-(quota[g] - want[g]), _stable_rng(opts.seed, "tie", g).random()))
    for g in by_remainder[: max(0, budget - sum(want.values()))]:
        want[g] += 1
    for g in names:
        members = groups[g]
        have = sum(u in eval_units for u in members)
        free = [u for u in members if u not in eval_units]
        _stable_rng(opts.seed, g).shuffle(free)
        eval_units.update(free[: max(0, want[g] - have)])

    eval_images = {p for u in eval_units for p in unit_images[u]}
    train: dict[str, list[QAItem]] = {t: [] for t in TASKS}
    held: dict[str, list[QAItem]] = {t: [] for t in TASKS}
    dropped: dict[str, list[QAItem]] = {t: [] for t in TASKS}
    # text-only questions follow their dish when its images are all on one side, else a seeded coin
    dish_sides: dict[str, set[bool]] = defaultdict(set)
    for p, d in dish.items():
        dish_sides[d].add(p in eval_images)
    for task in TASKS:
        for item in getattr(data, task):
            if get_task(task).held_out == "images":
                sides = {p in eval_images for p in item.images}
                target = dropped if len(sides) > 1 else (held if sides == {True} else train)
            else:
                sides = dish_sides.get(item.food_name or "", set())
                if len(sides) == 1:
                    target = held if sides == {True} else train
                else:
                    coin = _stable_rng(opts.seed, task, item.question_id).random()
                    target = held if coin < opts.eval_ratio else train
            target[task].append(item)
    return Split(eval_images, train, held, dropped)


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------

def estimate_text_tokens(text: str) -> int:
    """Rough token count without a tokenizer: one per CJK character, one per 4 other characters."""
    cjk = sum(1 for ch in text if ord(ch) > 0x2E7F)
    return cjk + math.ceil((len(text) - cjk) / 4)


def sample_for(item: QAItem, lang: str, style: str, image: str | None, image_wh: tuple[int, int] | None) -> dict:
    """One XTuner LLaVA-format training sample."""
    sample = {"id": f"{item.task}:{item.question_id}:{lang}"}
    if image is not None:
        sample["image"] = image
        sample["image_wh"] = [list(image_wh)] if image_wh else None
    sample["conversations"] = [
        {"from": "human", "value": prompts.training_prompt(item, lang, style)},
        {"from": "gpt", "value": prompts.answer_text(item, lang, style)},
    ]
    return sample


def make_collage(data: FoodieQA, item: QAItem, cache: dict, cell_size: int = IMAGE_SIZE) -> Image.Image:
    """The four pictures of a multi-image question on a 2x2 grid of tile-sized cells (A B / C D), stretched as
    InternVL's thumbnail is; the model's tiling cuts it back into exactly these four tiles + a thumbnail."""
    canvas = Image.new("RGB", (2 * cell_size, 2 * cell_size), (255, 255, 255))
    for k, rel in enumerate(item.images):
        cell = cache.get(rel)
        if cell is None:
            img = open_image(data.path(rel), draft_size=(cell_size, cell_size))
            cell = cache[rel] = img.resize((cell_size, cell_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        canvas.paste(cell, ((k % 2) * cell_size, (k // 2) * cell_size))
    return canvas


def needs_normalising(path: Path) -> bool:
    """True when XTuner's ``Image.open(p).convert("RGB")`` would differ from ``open_image``."""
    with Image.open(path) as img:
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La", "I", "F") or img.mode.startswith("I;16"):
            return True
        if img.mode == "P" and "transparency" in img.info:
            return True
        try:
            return img.getexif().get(0x0112, 1) not in (1, None)
        except Exception:
            return False


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------

@dataclass
class ConversionResult:
    out: Path
    summary: dict
    train_samples: int
    held_out_items: int


def _token_stats(values: list[int]) -> dict:
    if not values:
        return {}
    values = sorted(values)
    return {"min": values[0], "median": int(statistics.median(values)),
            "p95": values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)], "max": values[-1]}


def convert_foodieqa(data_root: str | os.PathLike, out: str | os.PathLike, opts: ConversionOptions | None = None, *,
                     tokenizer=None, progress: Callable[[Iterable, str, int], Iterable] | None = None,
                     data: FoodieQA | None = None, source: dict | None = None,
                     eval_only: bool = False) -> ConversionResult:
    """Convert a FoodieQA folder; see the module docstring for what is written.

    ``tokenizer``: a Hugging Face tokenizer to count text tokens exactly (else estimated).
    ``progress``: wraps long loops, e.g. ``lambda it, desc, total: tqdm(it, desc=desc, total=total)``.
    ``data``: an already loaded ``FoodieQA`` (skips reading and checking it again).
    ``source``: where the data came from and under which terms (``foodie.terms.describe_source``; worked out
    from the folder when not given), recorded in summary.json for the training run, the merge and publishing.
    ``eval_only``: every question goes to held_out.json and no train.json is written (FoodieQA's terms allow
    evaluation only).
    """
    opts = opts or ConversionOptions()
    opts.validate()
    wrap = progress or (lambda it, desc, total: it)
    out = Path(out).expanduser().resolve()
    check_out_folder(out, [Path(data.root if data is not None else data_root)])
    if data is None:
        data = load_foodieqa(data_root, None, check_images=opts.check_images, skip_bad=opts.skip_bad,
                             workers=opts.workers)
    missing = [t for t in opts.tasks if t not in data.files]
    if missing:
        raise FileNotFoundError(f"{data.root}: no {', '.join(f'{t}_tidy.json' for t in missing)}; "
                                f"drop {', '.join(missing)} from --tasks")
    split = make_split(data, opts) if not eval_only else Split(
        set(data.image_paths()), {t: [] for t in TASKS}, {t: list(getattr(data, t)) for t in TASKS},
        {t: [] for t in TASKS})
    langs = ("zh", "en") if opts.lang == "both" else (opts.lang,)

    def image_tokens(w: int, h: int) -> int:
        tiles = num_tiles(w, h, min_num=opts.min_tiles, max_num=opts.max_tiles, image_size=opts.tile_size)
        return tiles * opts.image_tokens_per_tile + 2  # + <img></img>

    def count_text(sample: dict) -> int:
        text = "\n".join(c["value"].replace("<image>", "") for c in sample["conversations"])
        if tokenizer is not None:
            return len(tokenizer(text, add_special_tokens=False).input_ids) + TEMPLATE_OVERHEAD_TOKENS
        return estimate_text_tokens(text) + TEMPLATE_OVERHEAD_TOKENS

    with atomic_path(out, is_dir=True) as tmp:
        # images XTuner would read differently (rotated, transparent, 16-bit): upright RGB copies
        train_images = sorted({p for t in opts.tasks if not get_task(t).collage for it in split.train[t] for p in it.images})
        if opts.check_images:
            with ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool:
                flags = list(pool.map(lambda p: needs_normalising(data.path(p)), train_images))
        else:
            flags = [False] * len(train_images)
        to_fix = [p for p, f in zip(train_images, flags) if f]
        image_for: dict[str, str] = {p: str(data.path(p)) for p in train_images}

        def normalise(rel: str) -> None:
            dest = tmp / "normalised" / (rel + ".png")
            dest.parent.mkdir(parents=True, exist_ok=True)
            open_image(data.path(rel)).save(dest)

        if to_fix:
            with ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool:
                list(wrap(pool.map(normalise, to_fix), "normalising images", len(to_fix)))
            for rel in to_fix:
                image_for[rel] = str(out / "normalised" / (rel + ".png"))

        samples, tokens, skipped_lang = [], [], Counter()
        sample_task = []
        collage_cache: dict = {}
        collage_jobs = []
        for task in opts.tasks:
            for item in wrap(split.train[task], f"converting {task}", len(split.train[task])):
                for lang in langs:
                    if not prompts.has_lang(item, lang):
                        skipped_lang[f"{task}:{lang}"] += 1
                        continue
                    if get_task(task).collage:
                        rel = f"collages/{_safe_name(item.question_id)}.jpg"
                        collage_jobs.append((item, tmp / rel))
                        image, wh = str(out / rel), (2 * opts.tile_size, 2 * opts.tile_size)
                    elif item.images:
                        image, wh = image_for[item.images[0]], data.image_sizes.get(item.images[0])
                    else:
                        image, wh = None, None
                    sample = sample_for(item, lang, opts.style, image, wh)
                    if image is not None and wh is None:  # image checks off: read the size now
                        with Image.open(data.path(item.images[0])) as im:
                            wh = im.size
                        sample["image_wh"] = [list(wh)]
                    n = count_text(sample) + (image_tokens(*wh) if image is not None else 0)
                    samples.append(sample)
                    tokens.append(n)
                    sample_task.append(task)
        if collage_jobs:
            (tmp / "collages").mkdir(exist_ok=True)
            unique = list({dest: (item, dest) for item, dest in collage_jobs}.values())  # zh and en share one

            def write_collage(job):
                item, dest = job
                make_collage(data, item, collage_cache, opts.tile_size).save(dest, quality=90)

            with ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool:
                list(wrap(pool.map(write_collage, unique), "multi-image collages", len(unique)))

        summary = build_summary(data, split, opts, samples, tokens, sample_task, skipped_lang, to_fix,
                                "tokenizer" if tokenizer is not None else "estimate (1 per CJK character, 1 per 4 others)")
        held_out = {
            "format": HELD_OUT_FORMAT, "version": FORMAT_VERSION, "data_root": str(data.root),
            "seed": opts.seed, "split_by": opts.split_by, "eval_ratio": opts.eval_ratio,
            "images": sorted(split.eval_images),
            "question_ids": {t: [it.question_id for it in split.held_out[t]] for t in TASKS if t in data.files},
            "items": {t: [it.raw for it in split.held_out[t]] for t in TASKS if t in data.files},
        }
        summary["source"] = source or describe_source(data.root)
        summary["eval_only"] = eval_only
        if not eval_only:
            _dump(tmp / "train.json", samples, indent=1)
        _dump(tmp / "held_out.json", held_out, indent=1)
        _dump(tmp / "summary.json", summary, indent=2)
        (tmp / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
        if not samples and not eval_only:
            raise ValueError(f"{data.root}: 0 training samples for tasks {', '.join(opts.tasks)} (lang {opts.lang}; "
                             f"{len(data)} items read, {len(data.skipped)} bad ones skipped); XTuner cannot train on "
                             f"nothing. Check --tasks/--lang and the data; nothing was written to {out}")
        write_marker(tmp)
    return ConversionResult(out, summary, len(samples), sum(len(v) for v in split.held_out.values()))


OUTPUT_MARKER = ".foodie-process-food.json"  # what makes a folder ours to replace


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if not p.is_dir() or p.is_symlink())


def write_marker(folder: Path) -> None:
    """Record every file of a finished output folder: a later run replaces the folder only if it holds
    exactly these files (nobody added anything of theirs)."""
    files = [f for f in _files_under(folder) if f != OUTPUT_MARKER]
    _dump(folder / OUTPUT_MARKER, {"format": "foodie-process-food-output", "version": FORMAT_VERSION, "files": files})


def _legacy_output(out: Path) -> set[str] | None:
    """The files of an output written before the marker existed: its summary.json is ours and it holds nothing
    but the names process_food writes. None for anything else."""
    try:
        if json.loads((out / "summary.json").read_text(encoding="utf-8")).get("format") != "foodie-conversion-summary":
            return None
    except (OSError, ValueError, AttributeError):
        return None
    files = set(_files_under(out))
    ours = {"train.json", "held_out.json", "summary.json", "summary.md"}
    return files if all(f in ours or f.split("/")[0] in ("collages", "normalised") for f in files) else None


def check_out_folder(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is, holds or sits inside an input, or that is not exactly an earlier
    output of this tool (its marker listing every file in it): such a folder is never replaced."""
    for given in inputs:
        inp = Path(given).expanduser().resolve()
        if out == inp or inp.is_relative_to(out) or out.is_relative_to(inp):
            where = "is" if out == inp else "contains" if inp.is_relative_to(out) else "is inside"
            raise ValueError(f"--out {out} {where} the input {inp}: replacing it could delete the data. "
                             f"Choose an output folder outside the data (default: work/foodieqa-xtuner)")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        marker = json.loads((out / OUTPUT_MARKER).read_text(encoding="utf-8"))
        listed = set(marker["files"]) if marker.get("format") == "foodie-process-food-output" else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        listed = _legacy_output(out)
    if listed is None:
        raise FileExistsError(f"--out {out} exists and is not an output of process_food (no valid {OUTPUT_MARKER}); "
                              f"it is never replaced: choose another --out, or empty or delete it yourself")
    extra = sorted(set(_files_under(out)) - listed - {OUTPUT_MARKER})
    if extra:
        raise FileExistsError(f"--out {out} holds files process_food did not write ({', '.join(extra[:3])}"
                              f"{f' and {len(extra) - 3} more' if len(extra) > 3 else ''}), so it is not replaced: move them out or choose another --out")


def _safe_name(qid: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in qid)
    return keep if keep == qid else f"{keep}-{hashlib.sha1(qid.encode()).hexdigest()[:8]}"


def _dump(path: Path, obj, indent=None) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")


def build_summary(data, split: Split, opts: ConversionOptions, samples, tokens, sample_task, skipped_lang, normalised,
                  counted_with: str = "estimate"):
    tasks_present = list(data.files)
    counts = {t: {"train": len(split.train[t]), "held_out": len(split.held_out[t]),
                  "dropped_straddling": len(split.dropped[t])} for t in tasks_present}
    by_cuisine: dict[str, Counter] = defaultdict(Counter)
    by_type: dict[str, Counter] = defaultdict(Counter)
    for side, groups in (("train", split.train), ("held_out", split.held_out)):
        for t in tasks_present:
            for item in groups[t]:
                by_cuisine[item.cuisine][f"{t}:{side}"] += 1
                by_type[f"{t}:{item.question_type}"][side] += 1
    all_images = data.image_paths()
    over = sum(n > opts.max_length for n in tokens)
    per_task_tokens = {t: _token_stats([n for n, s in zip(tokens, sample_task) if s == t]) for t in opts.tasks}
    return {
        "format": "foodie-conversion-summary", "version": FORMAT_VERSION,
        "data_root": str(data.root), "options": asdict(opts),
        "images": {"total": len(all_images), "held_out": len(split.eval_images),
                   "train": len(all_images) - len(split.eval_images), "normalised_copies": len(normalised)},
        "items": counts,
        "train_samples": len(samples),
        "skipped_no_translation": dict(skipped_lang),
        "skipped_bad_items": [str(p) for p in data.skipped],
        "by_cuisine": {c: dict(v) for c, v in sorted(by_cuisine.items())},
        "by_question_type": {k: dict(v) for k, v in sorted(by_type.items())},
        "tokens_per_sample": {"all": _token_stats(tokens), **per_task_tokens,
                              "counted_with": counted_with,
                              "max_length": opts.max_length, "over_max_length": over,
                              "suggested_max_length": _suggest(max(tokens) if tokens else 0)},
    }


def _suggest(n: int) -> int:
    return max(512, int(math.ceil(n / 256.0)) * 256)


def summary_markdown(s: dict) -> str:
    lines = [f"# FoodieQA conversion summary", "",
             f"Data: `{s['data_root']}`  ", f"Options: tasks {', '.join(s['options']['tasks'])}, lang {s['options']['lang']}, "
             f"style {s['options']['style']}, split by {s['options']['split_by']} (held out {s['options']['eval_ratio']:.0%}, "
             f"seed {s['options']['seed']}, stratified by cuisine: {s['options']['stratify']})", "",
             f"Images: {s['images']['total']} total, {s['images']['train']} train, {s['images']['held_out']} held out "
             f"(no image in both); {s['images']['normalised_copies']} upright/RGB copies written for training.", "",
             "| task | train | held out | dropped (images in both splits) |", "|---|---:|---:|---:|"]
    src = s.get("source")
    if src:
        terms = ("; its terms allow evaluation only (training acknowledged: "
                 f"{'yes' if src.get('terms_accepted') else 'no'})" if src.get("terms") else "")
        lines.insert(3, f"Source: {src['name']}; licence: {src['licence']}{terms}"
                        + ("; evaluation only: no training data written" if s.get("eval_only") else "") + "  ")
    for t, c in s["items"].items():
        lines.append(f"| {t} | {c['train']} | {c['held_out']} | {c['dropped_straddling']} |")
    lines += ["", f"Training samples: {s['train_samples']}", "", "## Per cuisine", "",
              "| cuisine | " + " | ".join(f"{t} train | {t} held out" for t in s["items"]) + " |",
              "|---|" + "---:|" * (2 * len(s["items"]))]
    for c, v in s["by_cuisine"].items():
        lines.append(f"| {c} | " + " | ".join(f"{v.get(t + ':train', 0)} | {v.get(t + ':held_out', 0)}"
                                               for t in s["items"]) + " |")
    lines += ["", "## Per question type", "", "| task:type | train | held out |", "|---|---:|---:|"]
    for k, v in s["by_question_type"].items():
        lines.append(f"| {k} | {v.get('train', 0)} | {v.get('held_out', 0)} |")
    tk = s["tokens_per_sample"]
    lines += ["", "## Token budget per training sample (text + image tokens)", "",
              f"Counted with: {tk['counted_with']}. Image tokens: 256 per 448 tile (+ thumbnail) + 2.", "",
              "| samples | min | median | p95 | max |", "|---|---:|---:|---:|---:|"]
    for k in ["all", *s["options"]["tasks"]]:
        v = tk.get(k) or {}
        if v:
            lines.append(f"| {k} | {v['min']} | {v['median']} | {v['p95']} | {v['max']} |")
    lines += ["", f"Samples over max_length {tk['max_length']}: {tk['over_max_length']} (XTuner would truncate them). "
              f"Suggested max_length: {tk['suggested_max_length']}."]
    if s["skipped_no_translation"]:
        lines += ["", f"Skipped for lack of an English translation: {s['skipped_no_translation']}"]
    if s["skipped_bad_items"]:
        lines += ["", f"## Skipped bad items ({len(s['skipped_bad_items'])})", ""]
        lines += [f"- {p}" for p in s["skipped_bad_items"]]
    return "\n".join(lines) + "\n"
