"""Your own dish photos -> a data set in the FoodieQA schema, which you may train on and share.

``build_dataset("my-photos/", out)``: one subfolder of photos per dish, optionally ``dishes.csv`` (UTF-8; columns
``COLUMNS``, Chinese, ``_en`` English; ``folder`` defaults to the dish's name). Writes FoodieQA's layout and
``own_photos_manifest.json`` (every photo's source and SHA-256), the marker of your own data (foodie.terms).
Questions are made as in the synthetic set (foodie.synthetic_data); nothing is written unless all is usable.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from foodie.atomic import atomic_path
from foodie.image_tiling import ImageError, verify_image
from foodie.synthetic_data import multi_image_questions, single_image_questions
from foodie.terms import MANIFEST_FILE

DISHES_CSV = "dishes.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MIN_DISHES_MULTI_IMAGE = 4  # four photos of four dishes per multi-image question
# CSV column (Chinese name; English adds "_en") -> FoodieQA question type
COLUMNS = {"dish": "dish", "cuisine": "cuisine_type", "region": "region", "main_ingredient": "main-ingredient",
           "cooking_method": "cooking-skills"}


class PhotosError(ValueError):  # one line per problem, naming the file and the fix
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class OwnDish:
    key: str  # the subfolder's name
    photos: list[Path] = field(default_factory=list)
    values: dict[str, tuple[str, str]] = field(default_factory=dict)  # question type -> (zh, en)

    def attr(self, qtype: str) -> tuple[str, str] | None:  # what foodie.synthetic_data's question builders ask
        return self.values.get(qtype)


def _bad_name(path: Path) -> str | None:
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        return (f"{os.fsencode(path)!r}: the name is not valid UTF-8; rename it "
                f"(e.g. convmv -f GBK -t UTF-8 --notest -r {os.fsdecode(os.fsencode(path.parent))!r})")
    return None


def scan_photos(folder: Path, problems: list[str]) -> list[OwnDish]:
    if not folder.is_dir():
        problems.append(f"{folder}: not a folder; give the folder that holds one subfolder of photos per dish")
        return []
    dishes = []
    for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if why := _bad_name(entry):
            problems.append(why)
        elif entry.is_dir():
            dish = OwnDish(entry.name, values={"dish": (entry.name, entry.name)})  # its name, in either language
            for path in sorted(entry.rglob("*")):
                parts = path.relative_to(entry).parts
                if any(part.startswith(".") for part in parts) or any(map(_bad_name, path.parents[:len(parts) - 1])):
                    continue  # hidden, or inside a folder whose bad name is reported
                if why := _bad_name(path):
                    problems.append(why)
                elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    dish.photos.append(path)
            if not dish.photos:
                problems.append(f"{entry}: no photos in this dish folder ({', '.join(IMAGE_SUFFIXES)}); add some or "
                                f"remove the folder")
            dishes.append(dish)
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            problems.append(f"{entry}: a photo outside the dish folders; move it into the subfolder of its dish")
    if not dishes and not problems:
        problems.append(f"{folder}: empty: no dish subfolders; put each dish's photos in a subfolder named after "
                        f"the dish (e.g. {folder / '麻婆豆腐' / '1.jpg'})")
    return dishes


def check_photos(dishes: list[OwnDish], problems: list[str]) -> dict[Path, str]:
    """photo -> SHA-256 of every photo; empty, undecodable or twice-given ones are problems."""
    digests: dict[Path, str] = {}
    first: dict[str, Path] = {}
    for path in (p for dish in dishes for p in dish.photos):
        try:
            data = path.read_bytes()
            if not data:
                raise ImageError(f"{path}: empty file (0 bytes); replace or remove it")
            verify_image(path)
        except OSError as e:
            problems.append(f"{path}: cannot be read ({e.strerror or e}); fix its permissions or remove it")
            continue
        except ImageError as e:
            problems.append(str(e))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in first:
            where = "in two dish folders" if first[digest].parent != path.parent else "twice"
            problems.append(f"{path}: the same photo (same bytes) as {first[digest]}, {where}; keep one copy, in the "
                            f"folder of its dish")
            continue
        first[digest], digests[path] = path, digest
    return digests


def _column(name: str) -> tuple[str, str] | None:
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    lang = "en" if key.endswith("_en") else "zh"
    key = key[:-3] if key.endswith(("_en", "_zh")) else key
    return (key, lang) if key in COLUMNS or key == "folder" else None


def read_dishes_csv(path: Path, dishes: list[OwnDish], problems: list[str]) -> set[str]:
    """Fill the dishes' metadata from dishes.csv; returns the languages it gives."""
    raw = path.read_bytes()
    try:
        rows = [r for r in csv.reader(io.StringIO(raw.decode("utf-8-sig"))) if any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        problems.append(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save it as UTF-8 "
                        f"(e.g. iconv -f GB18030 -t UTF-8)")
        return set()
    header = [_column(h) for h in rows[0]] if rows else []
    if not rows or None in header:
        unknown = ", ".join(repr(h) for h, c in zip(rows[0], header) if c is None) if rows else ""
        problems.append(f"{path}: " + (f"line 1: unknown column(s) {unknown}; use " if unknown else "empty; give a "
                        "header of ") + "folder, " + ", ".join(COLUMNS) + " (Chinese) and/or the same with _en "
                        "(English), and one row per dish folder")
        return set()
    by_key = {d.key: d for d in dishes}
    langs: set[str] = set()
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        cells = {c: v.strip() for c, v in zip(header, row) if v.strip()}
        folder = cells.get(("folder", "zh")) or cells.get(("dish", "zh")) or cells.get(("dish", "en")) or ""
        why = ("no folder or dish name; every row needs one" if not folder else
               f"no subfolder {folder!r} in {path.parent}; fix the name or delete the row" if folder not in by_key else
               f"dish folder {folder!r} already described on line {seen[folder]}; keep one row per dish"
               if folder in seen else None)
        if why:
            problems.append(f"{path}: line {line}: {why}")
            continue
        seen[folder], dish = line, by_key[folder]
        langs |= {lang for column, lang in cells if column != "folder"}
        for column, qtype in COLUMNS.items():
            zh, en = cells.get((column, "zh")), cells.get((column, "en"))
            if zh or en:  # a missing language takes the other's text
                dish.values[qtype] = (zh or en, en or zh)
    problems += [f"{path}: no row for the dish folder {d.key!r} ({path.parent / d.key}); add one "
                 f"(folder,dish,cuisine,...) or remove the folder" for d in dishes if d.key not in seen]
    return langs


def _food_meta(dish: OwnDish, rel: str, meta_id: int, langs: set[str]) -> dict:
    meta: dict = {"id": meta_id, "food_file": rel}
    for column, qtype in COLUMNS.items():
        key = "food_name" if column == "dish" else column
        for lang, value in zip(("zh", "en"), dish.attr(qtype) or ()):
            if lang in langs or lang == "zh":
                meta[key + ("_en" if lang == "en" else "")] = [value] if key == "main_ingredient" else value
    return meta


def _in_languages(items: list[dict], langs: set[str]) -> list[dict]:
    """Without English no *_en fields; without Chinese the Chinese fields (the schema needs them) carry English."""
    for item in items:
        if "zh" not in langs:
            item["question"] = item["question_en"]
            if "choices_en" in item:
                item["choices"] = item["choices_en"]
        if "en" not in langs:
            for key in ("question_en", "choices_en", "food_name_en"):
                item.pop(key, None)
    return items


def build_dataset(photos_dir: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0,
                  questions_per_photo: int = 2, mivqa_per_dish: int = 5, force: bool = False) -> dict:
    """Returns counts; an ``out`` is replaced only if it is an earlier output (or ``force``)."""
    photos_dir, out = Path(photos_dir).expanduser().resolve(), Path(out).expanduser().resolve()
    if not 1 <= questions_per_photo <= len(COLUMNS):
        raise PhotosError([f"questions per photo must be 1..{len(COLUMNS)} (one per question type); "
                           f"got {questions_per_photo}"])
    if out == photos_dir or photos_dir in out.parents:
        raise PhotosError([f"{out}: the output folder is inside the photo folder {photos_dir}; choose one outside "
                           f"it (e.g. work/my-photos-dataset)"])
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())) and not (out / MANIFEST_FILE).is_file():
        raise PhotosError([f"{out}: exists and is no output of tools/photos_to_foodieqa.py "
                           f"({MANIFEST_FILE} missing); choose another --out, or --force to replace it"])
    problems: list[str] = []
    dishes = scan_photos(photos_dir, problems)
    digests = check_photos(dishes, problems)
    csv_path = photos_dir / DISHES_CSV
    langs = (read_dishes_csv(csv_path, dishes, problems) or {"zh"}) if csv_path.is_file() else {"zh", "en"}
    if problems:
        raise PhotosError(problems)

    rng = random.Random(seed)
    photos: dict[str, list[str]] = {d.key: [] for d in dishes}
    all_photos, metas, records = [], {}, []
    for i, dish in enumerate(dishes):
        for k, src in enumerate(dish.photos):
            rel = f"images/d{i:03d}/{k:03d}{src.suffix.lower()}"
            photos[dish.key].append(rel)
            all_photos.append((dish, rel))
            metas[rel] = _food_meta(dish, rel, len(metas) + 1, langs)
            records.append({"file": rel, "dish": dish.key, "source": src.relative_to(photos_dir).as_posix(),
                            "sha256": digests[src]})
    sivqa = _in_languages(single_image_questions(dishes, all_photos, metas, questions_per_photo, rng), langs)
    if not sivqa:
        raise PhotosError([f"{photos_dir}: no 4-option question can be asked with {len(dishes)} dishes and this "
                           f"metadata; add dishes (at least {MIN_DISHES_MULTI_IMAGE}) or cuisine/region columns to "
                           f"{DISHES_CSV}"])
    enough = len(dishes) >= MIN_DISHES_MULTI_IMAGE
    mivqa = _in_languages(multi_image_questions(dishes, photos, mivqa_per_dish, rng) if enough else [], langs)
    counts = {"dishes": len(dishes), "images": len(all_photos), "sivqa": len(sivqa), "mivqa": len(mivqa)}
    manifest = {
        "format": "foodie-own-photos", "version": 1, "generator": "tools/photos_to_foodieqa.py",
        "source": str(photos_dir), "dishes_csv": str(csv_path) if csv_path.is_file() else None,
        "languages": sorted(langs), "seed": seed, "questions_per_photo": questions_per_photo,
        "mivqa_per_dish": mivqa_per_dish, "counts": counts,
        "dishes": [{"folder": d.key, "images": f"images/d{i:03d}", **{q: list(v) for q, v in sorted(d.values.items())}}
                   for i, d in enumerate(dishes)],
        "photos": records,
    }
    with atomic_path(out, is_dir=True) as tmp:
        for record in records:
            (tmp / record["file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photos_dir / record["source"], tmp / record["file"])
        for name, obj in (("sivqa_tidy.json", sivqa), ("mivqa_tidy.json", mivqa), (MANIFEST_FILE, manifest)):
            if obj:
                (tmp / name).write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return counts
