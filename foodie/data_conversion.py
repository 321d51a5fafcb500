"""FoodieQA -> XTuner training data, with an honest held-out split: ``convert_foodieqa(data_root, out, opts)``
writes one folder, all or nothing: ``train.json`` (XTuner's LLaVA format for ``InternVL_V1_5_Dataset``),
``held_out.json`` (the evaluation manifest, foodie.held_out), ``summary.json``/``.md`` (counts per split, task,
cuisine, question type; tokens per sample; the source), ``collages/`` (2x2 collages of multi-image questions: XTuner
takes one image a sample) and ``normalised/`` (upright RGB copies of images XTuner's ``Image.open().convert("RGB")``
would misread). The split is made on images (or dishes), stratified by cuisine, so no held-out image (or dish) is
trained on (each task's rule: foodie.tasks); part of the held-out budget first takes whole multi-image questions.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from foodie import prompts
from foodie.atomic import atomic_path
from foodie.foodieqa import UNKNOWN, FoodieQA, QAItem, load_foodieqa
from foodie.held_out import FORMAT as HELD_OUT_FORMAT
from foodie.image_tiling import IMAGE_SIZE, MAX_TILES, MIN_TILES, num_tiles, open_image, tokens_per_tile
from foodie.tasks import TASKS
from foodie.terms import describe_source, json_or_empty

FORMAT_VERSION = 1
LANG_CHOICES = ("zh", "en", "both")
SPLIT_BY = ("image", "dish")
TEMPLATE_OVERHEAD_TOKENS = 64  # system prompt + chat roles around one turn: a generous allowance
OUTPUT_MARKER = ".foodie-process-food.json"  # lists the files of our output: only such a folder is replaced
OUR_FILES = ("train.json", "held_out.json", "summary.json", "summary.md")


@dataclass
class ConversionOptions:
    tasks: tuple[str, ...] = ("sivqa",)  # what goes into train.json
    lang: str = "zh"  # zh | en | both (one sample per language)
    style: str = "letter"  # foodie.prompts.ANSWER_STYLES
    eval_ratio: float = 0.2  # share of images (or dishes) held out
    seed: int = 0
    split_by: str = "image"  # image | dish
    mivqa_eval_share: float = 0.5  # of the held-out image budget, filled with whole multi-image questions
    skip_bad: bool = False
    check_images: bool = True
    max_length: int = 8192  # longer samples are counted in the summary (XTuner truncates them)
    option_orders: int = 1  # each training question written in this many option orders (option_orders())
    # The model's tiling (foodie.model_spec; process_food --tokenizer MODEL): collage cells and token counts.
    min_tiles: int = MIN_TILES
    max_tiles: int = MAX_TILES
    tile_size: int = IMAGE_SIZE
    image_tokens_per_tile: int = tokens_per_tile()

    def validate(self) -> None:
        checks = [(self.tasks and all(t in TASKS for t in self.tasks), "tasks", f"some of {', '.join(TASKS)}"),
                  (self.lang in LANG_CHOICES, "lang", f"one of {', '.join(LANG_CHOICES)}"),
                  (self.style in prompts.ANSWER_STYLES, "style", f"one of {', '.join(prompts.ANSWER_STYLES)}"),
                  (0.0 < self.eval_ratio < 1.0, "eval_ratio", "between 0 and 1 (exclusive)"),
                  (self.split_by in SPLIT_BY, "split_by", "'image' or 'dish'"),
                  (0.0 <= self.mivqa_eval_share <= 1.0, "mivqa_eval_share", "between 0 and 1"),
                  (isinstance(self.option_orders, int) and 1 <= self.option_orders <= MAX_OPTION_ORDERS,
                   "option_orders", f"a whole number from 1 to {MAX_OPTION_ORDERS} (4 options have 4! orders)")]
        for ok, name, want in checks:
            if not ok:
                raise ValueError(f"{name} must be {want}; got {getattr(self, name)!r}")


MAX_OPTION_ORDERS = math.factorial(4)


def option_orders(item: QAItem, n: int, seed: int = 0) -> list[QAItem]:
    """The item in ``n`` distinct orders of its text options, the first its own; the answer moves with its option.
    A model trained on one fixed order per question can tie a letter to the question or photo; over several it can
    only find where the answer stands in the list. Options that are images (a collage) keep their order."""
    if n <= 1 or not item.choices:
        return [item]
    identity = tuple(range(len(item.choices)))
    others = [p for p in itertools.permutations(identity) if p != identity]
    drawn = _stable_rng(seed, "option-orders", item.task, item.question_id).sample(others, min(n, len(others) + 1) - 1)

    def reorder(options, order):
        return [options[i] for i in order] if options and len(options) == len(order) else options
    return [item] + [replace(item, choices=reorder(item.choices, p), choices_en=reorder(item.choices_en, p),
                             answer=p.index(item.answer)) for p in drawn]


@dataclass
class Split:
    eval_images: set[str]
    train: dict[str, list[QAItem]]
    held_out: dict[str, list[QAItem]]
    dropped: dict[str, list[QAItem]]  # images in both splits


def image_dishes(data: FoodieQA) -> dict[str, str]:  # ``food_names`` (one per image), else the answer's dish
    out: dict[str, str] = {}
    for item in data.items():
        names = item.raw.get("food_names")
        if isinstance(names, list) and len(names) == len(item.images) > 1:
            pairs = zip(item.images, names)
        else:
            pairs = [(item.answer_image, item.food_meta.get("food_name") or item.food_name)]
        for p, name in pairs:
            if p and isinstance(name, str) and name.strip():
                out.setdefault(p, name.strip())
    return out


def _stable_rng(seed: int, *parts: str) -> random.Random:  # a str seed is hashed (SHA-512): stable across runs
    return random.Random("\0".join([str(seed), *parts]))


def make_split(data: FoodieQA, opts: ConversionOptions) -> Split:
    cuisine = {it.answer_image: it.cuisine for it in reversed(list(data.items()))  # the first question's wins
               if it.answer_image and it.cuisine != UNKNOWN}
    dish = image_dishes(data)
    unit_of = {p: (f"dish:{dish[p]}" if opts.split_by == "dish" and p in dish else f"image:{p}")
               for p in data.image_paths()}
    unit_images: dict[str, list[str]] = defaultdict(list)
    for p, u in unit_of.items():
        unit_images[u].append(p)
    rng = random.Random(opts.seed)
    budget = round(opts.eval_ratio * len(unit_images))
    eval_units: set[str] = set()

    # 1. Whole multi-image questions first (their images must all be held out to be evaluable).
    multi = sorted((it for t in TASKS if TASKS[t].collage for it in getattr(data, t)),
                   key=lambda it: (it.task, it.question_id))
    rng.shuffle(multi)
    for item in multi:
        new = {unit_of[p] for p in item.images} - eval_units
        if len(eval_units) + len(new) <= math.floor(budget * opts.mivqa_eval_share):
            eval_units |= new

    # 2. Fill the rest, per cuisine, so each cuisine is held out in proportion: the total budget is
    #    shared out by largest remainder (small cuisines still get their turn), ties in seeded order.
    groups: dict[str, list[str]] = defaultdict(list)
    for u in sorted(unit_images):
        groups[Counter(cuisine.get(p, UNKNOWN) for p in unit_images[u]).most_common(1)[0][0]].append(u)
    quota = {g: opts.eval_ratio * len(units) for g, units in groups.items()}
    want = {g: math.floor(q) for g, q in quota.items()}
    by_remainder = sorted(groups, key=lambda g: (-(quota[g] - want[g]), _stable_rng(opts.seed, "tie", g).random()))
    for g in by_remainder[: max(0, budget - sum(want.values()))]:
        want[g] += 1
    for g in sorted(groups):
        free = [u for u in groups[g] if u not in eval_units]
        _stable_rng(opts.seed, g).shuffle(free)
        eval_units.update(free[: max(0, want[g] - (len(groups[g]) - len(free)))])

    eval_images = {p for u in eval_units for p in unit_images[u]}
    split = Split(eval_images, *({t: [] for t in TASKS} for _ in range(3)))
    dish_sides: dict[str, set[bool]] = defaultdict(set)  # a dish's images: held out, trained on, or both
    for p, d in dish.items():
        dish_sides[d].add(p in eval_images)
    for item in data.items():
        if TASKS[item.task].held_out == "images":
            sides = {p in eval_images for p in item.images}
        else:  # with its dish when the dish's images are on one side, else a seeded coin
            sides = dish_sides.get(item.food_name or "", set())
            if len(sides) != 1:
                sides = {_stable_rng(opts.seed, item.task, item.question_id).random() < opts.eval_ratio}
        target = split.dropped if len(sides) > 1 else split.held_out if sides == {True} else split.train
        target[item.task].append(item)
    return split


def estimate_text_tokens(text: str) -> int:  # without a tokenizer: one per CJK character, one per 4 others
    cjk = sum(1 for ch in text if ord(ch) > 0x2E7F)
    return cjk + math.ceil((len(text) - cjk) / 4)


def make_collage(data: FoodieQA, item: QAItem, cache: dict, cell_size: int = IMAGE_SIZE) -> Image.Image:
    """A multi-image question's pictures on 2x2 tile-sized cells (A B / C D), stretched as InternVL's thumbnail is:
    the model's tiling cuts it back into exactly these four tiles + a thumbnail."""
    canvas = Image.new("RGB", (2 * cell_size, 2 * cell_size), (255, 255, 255))
    for k, rel in enumerate(item.images):
        if rel not in cache:
            img = open_image(data.path(rel), draft_size=(cell_size, cell_size))
            cache[rel] = img.resize((cell_size, cell_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        canvas.paste(cache[rel], ((k % 2) * cell_size, (k // 2) * cell_size))
    return canvas


def needs_normalising(path: Path) -> bool:  # XTuner's Image.open(p).convert("RGB") would differ from open_image
    with Image.open(path) as img:
        return (img.mode in ("RGBA", "LA", "PA", "RGBa", "La", "I", "F") or img.mode.startswith("I;16")
                or (img.mode == "P" and "transparency" in img.info) or img.getexif().get(0x0112, 1) != 1)


def convert_foodieqa(data_root: str | os.PathLike, out: str | os.PathLike, opts: ConversionOptions | None = None, *,
                     tokenizer=None, source: dict | None = None, eval_only: bool = False) -> dict:
    """Returns summary.json's content. ``tokenizer`` counts text tokens exactly (else estimated); ``source``
    (foodie.terms.describe_source) goes into the summary; ``eval_only``: every question held out, no train.json."""
    opts = opts or ConversionOptions()
    opts.validate()
    out = Path(out).expanduser().resolve()
    check_out_folder(out, Path(data_root))
    data = load_foodieqa(data_root, None, check_images=opts.check_images, skip_bad=opts.skip_bad)
    missing = [t for t in opts.tasks if t not in data.files]
    if missing:
        raise FileNotFoundError(f"{data.root}: no {', '.join(f'{t}_tidy.json' for t in missing)}; "
                                f"drop {', '.join(missing)} from --tasks")
    if eval_only:
        split = Split(set(data.image_paths()), {t: [] for t in TASKS}, {t: getattr(data, t) for t in TASKS},
                      {t: [] for t in TASKS})
    else:
        split = make_split(data, opts)
    langs = ("zh", "en") if opts.lang == "both" else (opts.lang,)

    def count_tokens(sample: dict, wh) -> int:
        text = "\n".join(c["value"].replace("<image>", "") for c in sample["conversations"])
        n = len(tokenizer(text, add_special_tokens=False).input_ids) if tokenizer else estimate_text_tokens(text)
        if wh is not None:  # <img> + tokens per tile x tiles (thumbnail included) + </img>
            n += num_tiles(*wh, min_num=opts.min_tiles, max_num=opts.max_tiles,
                           image_size=opts.tile_size) * opts.image_tokens_per_tile + 2
        return n + TEMPLATE_OVERHEAD_TOKENS

    with atomic_path(out, is_dir=True) as tmp, ThreadPoolExecutor() as pool:
        def training_image(rel: str) -> tuple[str, tuple[int, int]]:
            """The file XTuner reads and its size: an upright RGB copy where its own reading would differ."""
            if opts.check_images and needs_normalising(data.path(rel)):
                (tmp / "normalised" / rel).parent.mkdir(parents=True, exist_ok=True)
                open_image(data.path(rel)).save(tmp / "normalised" / f"{rel}.png")
                return str(out / "normalised" / f"{rel}.png"), data.image_sizes[rel]
            with Image.open(data.path(rel)) as img:
                return str(data.path(rel)), img.size

        trained = sorted({p for t in opts.tasks if not TASKS[t].collage for it in split.train[t] for p in it.images})
        jobs = tqdm(pool.map(training_image, trained), "training images", len(trained), leave=False, disable=None)
        image_for = dict(zip(trained, jobs))
        normalised = sum(path != str(data.path(rel)) for rel, (path, _) in image_for.items())
        samples, tokens, skipped_lang, collages = [], defaultdict(list), Counter(), {}
        for task in opts.tasks:
            questions = tqdm(split.train[task], f"converting {task}", leave=False, disable=None)
            for order, item in ((k, v) for q in questions
                                for k, v in enumerate(option_orders(q, opts.option_orders, opts.seed))):
                for lang in langs:
                    if not prompts.has_lang(item, lang):
                        skipped_lang[f"{task}:{lang}"] += 1 if order == 0 else 0  # counted once a question
                        continue
                    suffix = f":order{order}" if order else ""
                    sample, wh = {"id": f"{task}:{item.question_id}:{lang}{suffix}"}, None
                    if TASKS[task].collage:
                        name = f"collages/{_safe_name(item.question_id)}.jpg"
                        collages[name], sample["image"] = item, str(out / name)
                        wh = (2 * opts.tile_size, 2 * opts.tile_size)
                    elif item.images:
                        sample["image"], wh = image_for[item.image]
                    if wh:
                        sample["image_wh"] = [list(wh)]
                    sample["conversations"] = [
                        {"from": "human", "value": prompts.training_prompt(item, lang, opts.style)},
                        {"from": "gpt", "value": prompts.answer_text(item, lang, opts.style)}]
                    samples.append(sample)
                    tokens[task].append(count_tokens(sample, wh))
        if collages:
            (tmp / "collages").mkdir()
            cache: dict = {}
            jobs = pool.map(lambda kv: make_collage(data, kv[1], cache, opts.tile_size).save(tmp / kv[0], quality=90),
                            collages.items())
            list(tqdm(jobs, "multi-image collages", len(collages), leave=False, disable=None))
        if not samples and not eval_only:
            raise ValueError(f"{data.root}: 0 training samples for tasks {', '.join(opts.tasks)} (lang {opts.lang}; "
                             f"{len(data)} items read, {len(data.skipped)} bad ones skipped); XTuner cannot train on "
                             f"nothing. Check --tasks/--lang and the data; nothing was written to {out}")
        summary = build_summary(data, split, opts, len(samples), tokens, skipped_lang, normalised,
                                "tokenizer" if tokenizer else "estimate (1 per CJK character, 1 per 4 others)")
        summary.update(source=source or describe_source(data.root), eval_only=eval_only)
        present = [t for t in TASKS if t in data.files]
        held_out = {"format": HELD_OUT_FORMAT, "version": FORMAT_VERSION, "data_root": str(data.root),
                    "seed": opts.seed, "split_by": opts.split_by, "eval_ratio": opts.eval_ratio,
                    "images": sorted(split.eval_images),
                    "question_ids": {t: [it.question_id for it in split.held_out[t]] for t in present},
                    "items": {t: [it.raw for it in split.held_out[t]] for t in present}}
        for name, obj, indent in (("train.json", None if eval_only else samples, 1), ("held_out.json", held_out, 1),
                                  ("summary.json", summary, 2)):
            if obj is not None:
                (tmp / name).write_text(json.dumps(obj, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")
        (tmp / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
        marker = {"format": "foodie-process-food-output", "version": FORMAT_VERSION, "files": _files_under(tmp)}
        (tmp / OUTPUT_MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return summary


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


def _safe_name(qid: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in qid)
    return keep if keep == qid else f"{keep}-{hashlib.sha1(qid.encode()).hexdigest()[:8]}"


def check_out_folder(out: Path, data_root: Path) -> None:
    """Refuse an output folder that is, holds or sits inside the data, or is not exactly an earlier output of this
    tool (its marker lists every file in it; an output older than the marker holds only our names)."""
    inp = Path(data_root).expanduser().resolve()
    if out == inp or inp.is_relative_to(out) or out.is_relative_to(inp):
        where = "is" if out == inp else "contains" if inp.is_relative_to(out) else "is inside"
        raise ValueError(f"--out {out} {where} the input {inp}: replacing it could delete the data. "
                         f"Choose an output folder outside the data (default: work/foodieqa-xtuner)")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    files = set(_files_under(out)) - {OUTPUT_MARKER}
    marker = json_or_empty(out / OUTPUT_MARKER)
    if marker.get("format") == "foodie-process-food-output" and isinstance(marker.get("files"), list):
        listed = set(marker["files"])
    elif (not (out / OUTPUT_MARKER).exists() and json_or_empty(out / "summary.json").get("format")
          == "foodie-conversion-summary" and all(f in OUR_FILES or f.split("/")[0] in ("collages", "normalised")
                                                 for f in files)):
        listed = files  # an output written before the marker existed
    else:
        raise FileExistsError(f"--out {out} exists and is not an output of process_food (no valid {OUTPUT_MARKER}); "
                              f"it is never replaced: choose another --out, or empty or delete it yourself")
    extra = sorted(files - listed)
    if extra:
        raise FileExistsError(f"--out {out} holds files process_food did not write ({', '.join(extra[:3])}"
                              f"{f' and {len(extra) - 3} more' if len(extra) > 3 else ''}), so it is not replaced: "
                              f"move them out or choose another --out")


def _token_stats(values: list[int]) -> dict:
    values = sorted(values)
    return {"min": values[0], "median": int(statistics.median(values)),  # p95: nearest rank
            "p95": values[math.ceil(0.95 * len(values)) - 1], "max": values[-1]} if values else {}


def build_summary(data, split: Split, opts: ConversionOptions, n_samples: int, tokens: dict[str, list[int]],
                  skipped_lang, n_normalised: int, counted_with: str) -> dict:
    present = [t for t in TASKS if t in data.files]
    by_cuisine: dict[str, Counter] = defaultdict(Counter)
    by_type: dict[str, Counter] = defaultdict(Counter)
    for side, groups in (("train", split.train), ("held_out", split.held_out)):
        for item in (it for t in present for it in groups[t]):
            by_cuisine[item.cuisine][f"{item.task}:{side}"] += 1
            by_type[f"{item.task}:{item.question_type}"][side] += 1
    every = [n for t in opts.tasks for n in tokens[t]]
    total, held = len(data.image_paths()), len(split.eval_images)
    return {
        "format": "foodie-conversion-summary", "version": FORMAT_VERSION, "data_root": str(data.root),
        "options": asdict(opts),
        "images": {"total": total, "held_out": held, "train": total - held, "normalised_copies": n_normalised},
        "items": {t: {"train": len(split.train[t]), "held_out": len(split.held_out[t]),
                      "dropped_straddling": len(split.dropped[t])} for t in present},
        "train_samples": n_samples,
        "skipped_no_translation": dict(skipped_lang),
        "skipped_bad_items": [str(p) for p in data.skipped],
        "by_cuisine": {c: dict(v) for c, v in sorted(by_cuisine.items())},
        "by_question_type": {k: dict(v) for k, v in sorted(by_type.items())},
        "tokens_per_sample": {"all": _token_stats(every), **{t: _token_stats(tokens[t]) for t in opts.tasks},
                              "counted_with": counted_with, "max_length": opts.max_length,
                              "over_max_length": sum(n > opts.max_length for n in every),
                              "suggested_max_length": max(512, math.ceil(max(every, default=0) / 256) * 256)},
    }


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["", f"| {' | '.join(head)} |", "|---|" + "---:|" * (len(head) - 1),
            *(f"| {' | '.join(map(str, r))} |" for r in rows), ""]


def summary_markdown(s: dict) -> str:
    o, im, tk, src = s["options"], s["images"], s["tokens_per_sample"], s["source"]
    acknowledged = "yes" if src.get("terms_accepted") else "no"
    terms = f"; its terms allow evaluation only (training acknowledged: {acknowledged})" if src.get("terms") else ""
    tasks, sides = list(s["items"]), ("train", "held_out")
    lines = ["# FoodieQA conversion summary", "", f"Data: `{s['data_root']}`  ",
             f"Source: {src['name']}; licence: {src['licence']}{terms}"
             + ("; evaluation only: no training data written" if s["eval_only"] else "") + "  ",
             f"Options: tasks {', '.join(o['tasks'])}, lang {o['lang']}, style {o['style']}, split by {o['split_by']} "
             f"(held out {o['eval_ratio']:.0%}, seed {o['seed']}, stratified by cuisine)"
             + (f"; each training question in {o['option_orders']} option orders" if o.get("option_orders", 1) > 1
                else ""), "",
             f"Images: {im['total']} total, {im['train']} train, {im['held_out']} held out (no image in both); "
             f"{im['normalised_copies']} upright/RGB copies written for training.",
             *_table(["task", "train", "held out", "dropped (images in both splits)"],
                     [[t, c["train"], c["held_out"], c["dropped_straddling"]] for t, c in s["items"].items()]),
             f"Training samples: {s['train_samples']}", "", "## Per cuisine",
             *_table(["cuisine"] + [f"{t} {side.replace('_', ' ')}" for t in tasks for side in sides],
                     [[c] + [v.get(f"{t}:{side}", 0) for t in tasks for side in sides]
                      for c, v in s["by_cuisine"].items()]),
             "## Per question type",
             *_table(["task:type", "train", "held out"],
                     [[k, v.get("train", 0), v.get("held_out", 0)] for k, v in s["by_question_type"].items()]),
             "## Token budget per training sample (text + image tokens)", "",
             f"Counted with: {tk['counted_with']}. Image tokens: {o['image_tokens_per_tile']} per {o['tile_size']}-px "
             f"tile, up to {o['max_tiles']} tiles + a thumbnail, + 2.",
             *_table(["samples", "min", "median", "p95", "max"],
                     [[k, *tk[k].values()] for k in ["all", *o["tasks"]] if tk.get(k)]),
             f"Samples over max_length {tk['max_length']}: {tk['over_max_length']} (XTuner would truncate them). "
             f"Suggested max_length: {tk['suggested_max_length']}."]
    if s["skipped_no_translation"]:
        lines += ["", f"Skipped for lack of an English translation: {s['skipped_no_translation']}"]
    if s["skipped_bad_items"]:
        bad = s["skipped_bad_items"]
        lines += ["", f"## Skipped bad items ({len(bad)})", "", *(f"- {p}" for p in bad)]
    return "\n".join(lines) + "\n"
