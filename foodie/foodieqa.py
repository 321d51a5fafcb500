"""The FoodieQA schema: read a FoodieQA folder, validate it, and hand out clean items.

A FoodieQA folder (lyan62/FoodieQA) holds ``images/`` and one ``{task}_tidy.json`` (or JSON lines) per task
(foodie.tasks). The reader is tolerant of shape (``question_id`` or ``qid``, extra or missing optional fields) and
strict about meaning: every problem is reported with the file, the item, the field and the fix, or with
``skip_bad=True`` the bad items are dropped and listed in ``FoodieQA.skipped``.

    data = load_foodieqa("work/foodieqa-synthetic")
    for item in data.sivqa:
        item.question, item.choices, item.answer, data.root / item.image, item.cuisine
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from foodie.image_tiling import ImageError, verify_image
from foodie.tasks import NUM_CHOICES, TASKS, Task, get_task

UNKNOWN = "unknown"
# food_meta keys that name the cuisine/region, most specific first (FoodieQA's survey data: ``food_type``).
CUISINE_KEYS = ("cuisine", "cuisine_type", "food_type", "cuisine_zh", "region", "food_region", "province")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one item (or a whole file when ``index`` is None)."""
    file: str
    message: str
    index: int | None = None
    item_id: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.index is not None:
            where += f": item {self.index}" + (f" (id {self.item_id})" if self.item_id is not None else "")
        if self.field:
            where += f": field '{self.field}'"
        return f"{where}: {self.message}"


class FoodieQAError(ValueError):
    """The data cannot be used as is. ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem], header: str = "cannot read FoodieQA"):
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        hint = ("\nFix the items above, or pass skip_bad=True (--skip-bad) to drop them and get a report."
                if any(p.index is not None for p in problems) else "")
        super().__init__(f"{header} ({len(problems)}):\n{shown}{more}{hint}")


@dataclass
class QAItem:
    """One FoodieQA question, of any task (foodie.tasks). ``answer`` is an int 0-3; ``raw`` is the item as read."""
    task: str
    question_id: str
    index: int  # position in its file
    question: str
    answer: int
    question_en: str | None = None
    question_type: str = UNKNOWN
    food_name: str | None = None
    cuisine: str = UNKNOWN
    choices: list[str] | None = None  # None when the options are the images
    choices_en: list[str] | None = None
    images: list[str] = field(default_factory=list)  # relative to the data root, in order A-D
    food_meta: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def image(self) -> str:
        return self.images[0]

    @property
    def answer_image(self) -> str | None:
        """The image the answer is about: the chosen image, or the question's only one."""
        if not get_task(self.task).choices:
            return self.images[self.answer] if self.images else None
        return self.images[0] if len(self.images) == 1 else None


@dataclass
class FoodieQA:
    """A validated FoodieQA folder; ``data.sivqa`` (any task's name) lists that task's items."""
    root: Path
    by_task: dict[str, list[QAItem]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # task -> question file read
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # rel path -> upright (w, h)
    skipped: list[Problem] = field(default_factory=list)  # problems of items dropped by skip_bad

    def __getattr__(self, name: str) -> list[QAItem]:
        if name in TASKS:
            return self.by_task.get(name, [])
        raise AttributeError(name)

    def items(self) -> Iterator[QAItem]:
        for task in TASKS:
            yield from getattr(self, task)

    def __len__(self) -> int:
        return sum(map(len, self.by_task.values()))

    def image_paths(self) -> list[str]:
        return sorted({p for item in self.items() for p in item.images})

    def path(self, rel: str) -> Path:
        return (self.root / rel).resolve()


def cuisine_of(food_meta: dict | None) -> str:
    for key in CUISINE_KEYS if isinstance(food_meta, dict) else ():
        value = food_meta.get(key)
        value = (value or [None])[0] if isinstance(value, list) else value
        if isinstance(value, str) and value.strip():
            return value.strip()
    return UNKNOWN


def question_file(data_root: str | os.PathLike, task: str) -> Path | None:
    """The question file of a task in a FoodieQA folder (``{task}_tidy.json`` or ``.jsonl``), if any."""
    return next((p for p in (Path(data_root) / f"{task}_tidy.json", Path(data_root) / f"{task}_tidy.jsonl")
                 if p.is_file()), None)


def read_json_items(path: Path) -> list:
    """A JSON list (or JSON lines) file as a list; strict UTF-8; errors name the file and the place."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise FoodieQAError([Problem(str(path), f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}, "
                                                f"line {line}); re-save the file as UTF-8 (e.g. iconv -f GB18030 -t "
                                                f"UTF-8)")]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as first:
        try:  # JSON lines
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise FoodieQAError([Problem(str(path), f"invalid JSON at line {first.lineno}, column {first.colno}: "
                                                    f"{first.msg}")]) from None
    if not isinstance(data, list):
        raise FoodieQAError([Problem(str(path), f"expected a JSON list of questions, found {type(data).__name__}")])
    return data


def _bad_text(value: Any) -> str | None:
    """Why a value is not usable text, or None."""
    if not isinstance(value, str):
        return f"expected text, found {type(value).__name__} {value!r:.60}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains characters that are not valid UTF-8 (lone surrogate escapes); fix the text"
    return None if value.strip() else "is empty"


def _bad_relpath(value: Any) -> str | None:
    """Why a value is not a safe image path relative to the data root, or None."""
    if not isinstance(value, str) or not value.strip():
        return f"expected an image path relative to the data root, found {value!r:.60}"
    text = value.strip().replace("\\", "/")
    if text.startswith("/") or text[1:2] == ":":
        return f"image path {value!r} is absolute; give it relative to the data root (e.g. images/xxx.jpg)"
    if ".." in PurePosixPath(text).parts:
        return f"image path {value!r} climbs out of the data root ('..'); keep images under the folder"
    return None


class _ItemCheck:
    """Reads the fields of one item, collecting its problems."""

    def __init__(self, file: str, index: int, raw: dict):
        self.file, self.index, self.raw = file, index, raw
        self.item_id: str | None = None
        self.problems: list[Problem] = []

    def fail(self, field_name: str | None, message: str) -> None:
        self.problems.append(Problem(self.file, message, self.index, self.item_id, field_name))

    def text(self, key: str, required: bool = True) -> str | None:
        value = self.raw.get(key)
        why = ("missing; every question needs it" if required else None) if value is None else _bad_text(value)
        if why:
            self.fail(key, why)
        return None if why or value is None else value.strip()

    def choices(self, key: str, required: bool = True) -> list[str] | None:
        value = self.raw.get(key)
        if value is None:
            if required:
                self.fail(key, f"missing; give a list of {NUM_CHOICES} choices")
            return None
        if not isinstance(value, list) or len(value) != NUM_CHOICES:
            n = len(value) if isinstance(value, list) else type(value).__name__
            self.fail(key, f"expected a list of {NUM_CHOICES} choices, found {n}; FoodieQA questions have "
                           f"exactly {NUM_CHOICES} options (A-D)")
            return None
        bad = next(((k, why) for k, c in enumerate(value) if (why := _bad_text(c))), None)
        if bad:
            self.fail(f"{key}[{bad[0]}]", bad[1])
            return None
        return [c.strip() for c in value]

    def answer(self) -> int | None:
        value = self.raw.get("answer")
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if text not in [str(k) for k in range(NUM_CHOICES)]:
            self.fail("answer", 'missing; give the index of the correct option as "0"-"3"' if value is None else
                      f'value {value!r} is out of range; use "0"-"3" (the index of the correct option)')
            return None
        return int(text)

    def images(self, task: Task) -> list[str]:
        """The task's images (foodie.tasks: ``image_key``, a path or a list of ``task.images`` paths)."""
        if not task.images:
            return []
        *parents, leaf = task.image_key.split(".")
        holder = self.raw
        for name in parents:  # food_meta.food_file: the path sits in an object
            holder = holder.get(name)
            if not isinstance(holder, dict):
                self.fail(name, f"missing; {task.title} questions need {task.image_key} (the image)" if holder is None
                          else f"expected an object with {leaf}, found {type(holder).__name__}")
                return []
        value = holder.get(leaf)
        if task.images > 1 and (not isinstance(value, list) or len(value) != task.images):
            n = len(value) if isinstance(value, list) else ("missing" if value is None else type(value).__name__)
            self.fail(task.image_key, f"expected a list of {task.images} image paths, found {n}")
            return []
        paths = [value] if task.images == 1 else value
        for k, p in enumerate(paths):
            if why := _bad_relpath(p):
                self.fail(task.image_field(k), why)
        return [PurePosixPath(str(p).strip().replace("\\", "/")).as_posix() for p in paths]


def _parse_item(task: str, file: str, index: int, raw: Any,
                seen: dict[str, int]) -> tuple[QAItem | None, list[Problem]]:
    """Parse one item; ``seen`` maps ids met so far in the file to their index (updated here)."""
    if not isinstance(raw, dict):
        return None, [Problem(file, f"expected a JSON object, found {type(raw).__name__}", index)]
    spec = get_task(task)
    check = _ItemCheck(file, index, raw)
    qid = raw.get("question_id", raw.get("qid"))
    if qid is None or (isinstance(qid, str) and not qid.strip()) or isinstance(qid, (dict, list, bool)):
        check.fail("question_id", "missing; give every question a unique 'question_id' (or 'qid')")
        qid = None
    else:
        qid = check.item_id = str(qid).strip()
        if qid in seen:
            check.fail("question_id", f"duplicate id, also used by item {seen[qid]}; ids must be unique within a file")
        seen.setdefault(qid, index)
    food_meta = raw.get("food_meta") if isinstance(raw.get("food_meta"), dict) else {}
    food_name = raw.get("food_name") or food_meta.get("food_name")
    item = QAItem(
        task=task, question_id=qid, index=index, question=check.text("question"), answer=check.answer(),
        question_en=check.text("question_en", required=False), question_type=str(raw.get("question_type") or UNKNOWN),
        food_name=food_name.strip() if isinstance(food_name, str) and food_name.strip() else None,
        cuisine=cuisine_of(food_meta) if food_meta else cuisine_of(raw),
        choices=check.choices("choices") if spec.choices else None,
        choices_en=check.choices("choices_en", required=False) if spec.choices else None,
        images=check.images(spec), food_meta=food_meta, raw=raw)
    return (None if check.problems else item), check.problems


def load_foodieqa(data_root: str | os.PathLike, tasks: Iterable[str] | None = None, *, check_images: bool = True,
                  skip_bad: bool = False) -> FoodieQA:
    """Read and validate a FoodieQA folder: ``tasks`` None reads whichever task files exist (naming tasks makes
    their files required); ``check_images``: every image must exist and decode completely (its size is recorded).
    Raises ``FoodieQAError`` listing every problem (file, item, field, fix)."""
    from foodie.foodieqa_download import DownloadError, locate_data_root

    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FoodieQAError([Problem(str(root), "data root is not a folder; point it at the FoodieQA folder that "
                                                "holds sivqa_tidy.json and images/")])
    try:  # the folder `hf download` wrote: FoodieQA.zip, unpacked into a folder below (or not yet: say what to run)
        root = locate_data_root(root).resolve()
    except DownloadError as e:
        raise FoodieQAError([Problem(str(root), str(e))]) from None
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks or ())
    for t in tasks:
        get_task(t)
    data = FoodieQA(root=root)
    problems: list[Problem] = []
    for task in tasks or TASKS:
        path = question_file(root, task)
        if path is None:
            if tasks:
                problems.append(Problem(str(root / f"{task}_tidy.json"),
                                        f"file not found; the {task} task needs it (or leave {task} out of tasks)"))
            continue
        data.files[task] = path
        try:
            raws = read_json_items(path)
        except FoodieQAError as e:
            problems.extend(e.problems)
            continue
        seen: dict[str, int] = {}
        data.by_task[task] = []
        for index, raw in enumerate(raws):
            item, item_problems = _parse_item(task, str(path), index, raw, seen)
            data.by_task[task] += [item] if item else []
            problems.extend(item_problems)
    if not data.files:
        raise FoodieQAError([Problem(str(root), "no question files found ("
                                     + ", ".join(f"{t}_tidy.json" for t in TASKS) + ")")])

    # Images: every distinct image checked once; every item using a bad image reported. An image whose
    # resolved path leaves the data root (a symlink out of it) is never read, served or trained on.
    paths = data.image_paths()
    image_problem = {rel: f"{rel}: a symlink to {data.path(rel)}, outside the data root: refused (nothing outside "
                          f"the folder is read or served); copy the image into the folder instead of linking it"
                     for rel in paths if not data.path(rel).is_relative_to(root)}

    def check(rel: str):
        try:
            data.image_sizes[rel] = verify_image(root / rel)
        except ImageError as e:
            image_problem[rel] = str(e).replace(str(root / rel), rel)

    if check_images:
        with ThreadPoolExecutor() as pool:
            list(pool.map(check, [p for p in paths if p not in image_problem]))
    for task, items in data.by_task.items():
        for item in items:
            problems += [Problem(str(data.files[task]), image_problem[p], item.index, item.question_id,
                                 get_task(task).image_field(k))
                         for k, p in enumerate(item.images) if p in image_problem]
        data.by_task[task] = [it for it in items if not any(p in image_problem for p in it.images)]

    # Cuisine of items without metadata of their own (multi-image, some text-only): from the single-image
    # questions' metadata, through the answer's image, else the dish's name.
    known = [it for it in data.items() if len(it.images) == 1 and it.cuisine != UNKNOWN]
    by_image = {it.image: it.cuisine for it in known}
    by_name = {it.food_name: it.cuisine for it in known if it.food_name}
    for item in data.items():
        if item.cuisine == UNKNOWN:
            item.cuisine = by_image.get(item.answer_image) or by_name.get(item.food_name, UNKNOWN)

    if any(p.index is None for p in problems) or (problems and not skip_bad):
        raise FoodieQAError(problems, f"FoodieQA data in {root} has problems")
    data.skipped = problems
    return data
