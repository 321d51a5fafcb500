"""The FoodieQA schema: read a FoodieQA folder (``images/``, one ``{task}_tidy.json`` or JSON lines per task of
foodie.tasks), validate it, hand out clean items. Tolerant of shape (``question_id`` or ``qid``, extra or missing
optional fields), strict about meaning: every problem named with file, item, field and fix (``skip_bad=True``: the
bad items are dropped and listed in ``FoodieQA.skipped``).

As users download it (``hf download lyan62/FoodieQA --repo-type dataset --local-dir data/FoodieQA``), the question
files and images come inside ``data/FoodieQA/FoodieQA.zip``: ``locate_data_root(unpack=True)`` unpacks it safely (no
member with an absolute name, ``..``, a link, a device or a name used twice; written to a temporary folder, moved in
when complete).

    data = load_foodieqa("work/foodieqa-synthetic")
    for item in data.sivqa:
        item.question, item.choices, item.answer, data.root / item.image, item.cuisine
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from foodie.image_tiling import ImageError, verify_image
from foodie.tasks import NUM_CHOICES, TASKS, get_task

UNKNOWN = "unknown"
# food_meta keys that name the cuisine/region, most specific first (FoodieQA's survey data: ``food_type``).
CUISINE_KEYS = ("cuisine", "cuisine_type", "food_type", "cuisine_zh", "region", "food_region", "province")
ZIP_NAME = "FoodieQA.zip"
MAX_UNPACKED_BYTES = 20 * 1024 ** 3  # FoodieQA is well under 1 GB; a zip declaring more is refused
SKIPPED_MEMBERS = ("__MACOSX/",)  # resource forks that macOS's zip adds


@dataclass(frozen=True)
class Problem:  # one thing wrong with one item (or a whole file when ``index`` is None)
    file: str
    message: str
    index: int | None = None
    item_id: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        item = "" if self.index is None else f": item {self.index}" + (f" (id {self.item_id})" if self.item_id else "")
        return self.file + item + (f": field '{self.field}'" if self.field else "") + f": {self.message}"


class FoodieQAError(ValueError):
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
    def answer_image(self) -> str | None:  # the image the answer is about: the chosen one, or the only one
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
        return (item for task in TASKS for item in getattr(self, task))

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
    """A JSON list (or JSON lines) file; strict UTF-8; ValueError saying what is wrong where."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}, line {line}); re-save the "
                         f"file as UTF-8 (e.g. iconv -f GB18030 -t UTF-8)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as first:
        try:  # JSON lines
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise ValueError(f"invalid JSON at line {first.lineno}, column {first.colno}: {first.msg}") from None
    if not isinstance(data, list):
        raise ValueError(f"expected a JSON list of questions, found {type(data).__name__}")
    return data


def _bad_text(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected text, found {type(value).__name__} {value!r:.60}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains characters that are not valid UTF-8 (lone surrogate escapes); fix the text"
    return None if value.strip() else "is empty"


def _bad_relpath(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return (f"expected an image path relative to the data root, found {value!r:.60}" if value is not None
                else "missing; give the image path relative to the data root (e.g. images/xxx.jpg)")
    text = value.strip().replace("\\", "/")
    if text.startswith("/") or text[1:2] == ":":
        return f"image path {value!r} is absolute; give it relative to the data root (e.g. images/xxx.jpg)"
    if ".." in PurePosixPath(text).parts:
        return f"image path {value!r} climbs out of the data root ('..'); keep images under the folder"
    return None


def _parse_item(task: str, file: str, index: int, raw: Any,
                seen: dict[str, int]) -> tuple[QAItem | None, list[Problem]]:
    """Parse one item; ``seen`` maps ids met so far in the file to their index (updated here)."""
    if not isinstance(raw, dict):
        return None, [Problem(file, f"expected a JSON object, found {type(raw).__name__}", index)]
    spec, problems = get_task(task), []
    qid = raw.get("question_id", raw.get("qid"))
    qid = None if qid is None or isinstance(qid, (dict, list, bool)) or not str(qid).strip() else str(qid).strip()

    def fail(key: str, message: str) -> None:
        problems.append(Problem(file, message, index, qid, key))

    def texts(key: str, n: int | None = None, required: bool = True):
        value = raw.get(key)
        if value is None:
            if required:
                fail(key, "missing; every question needs it" if n is None else f"missing; give a list of {n} choices")
            return None
        if n is not None and (not isinstance(value, list) or len(value) != n):
            found = len(value) if isinstance(value, list) else type(value).__name__
            fail(key, f"expected a list of {n} choices, found {found}; FoodieQA questions have exactly {n} options "
                      f"(A-D)")
            return None
        for k, text in enumerate([value] if n is None else value):
            if why := _bad_text(text):
                return fail(key if n is None else f"{key}[{k}]", why)
        return value.strip() if n is None else [text.strip() for text in value]

    def answer() -> int | None:
        value = raw.get("answer")
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if text in [str(k) for k in range(NUM_CHOICES)]:
            return int(text)
        fail("answer", 'missing; give the index of the correct option as "0"-"3"' if value is None else
             f'value {value!r} is out of range; use "0"-"3" (the index of the correct option)')

    def images() -> list[str]:
        if not spec.images:
            return []
        value = raw
        for name in spec.image_key.split("."):  # food_meta.food_file: the path sits in an object
            value = value.get(name) if isinstance(value, dict) else None
        if spec.images > 1 and (not isinstance(value, list) or len(value) != spec.images):
            n = len(value) if isinstance(value, list) else ("missing" if value is None else type(value).__name__)
            fail(spec.image_key, f"expected a list of {spec.images} image paths, found {n}")
            return []
        paths = [value] if spec.images == 1 else value
        for k, p in enumerate(paths):
            if why := _bad_relpath(p):
                fail(spec.image_field(k), why)
        return [PurePosixPath(str(p).strip().replace("\\", "/")).as_posix() for p in paths]

    if qid is None:
        fail("question_id", "missing; give every question a unique 'question_id' (or 'qid')")
    elif qid in seen:
        fail("question_id", f"duplicate id, also used by item {seen[qid]}; ids must be unique within a file")
    else:
        seen[qid] = index
    food_meta = raw.get("food_meta") if isinstance(raw.get("food_meta"), dict) else {}
    food_name = raw.get("food_name") or food_meta.get("food_name")
    item = QAItem(
        task=task, question_id=qid, index=index, question=texts("question"), answer=answer(),
        question_en=texts("question_en", required=False), question_type=str(raw.get("question_type") or UNKNOWN),
        food_name=food_name.strip() if isinstance(food_name, str) and food_name.strip() else None,
        cuisine=cuisine_of(food_meta) if food_meta else cuisine_of(raw),
        choices=texts("choices", NUM_CHOICES) if spec.choices else None,
        choices_en=texts("choices_en", NUM_CHOICES, required=False) if spec.choices else None,
        images=images(), food_meta=food_meta, raw=raw)
    return (None if problems else item), problems


def load_foodieqa(data_root: str | os.PathLike, tasks: Iterable[str] | None = None, *, check_images: bool = True,
                  skip_bad: bool = False) -> FoodieQA:
    """``tasks`` None reads whichever task files exist (named tasks' files are required); ``check_images``: every
    image must exist and decode completely (its size is recorded). Raises ``FoodieQAError`` listing every problem."""
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FoodieQAError([Problem(str(root), "data root is not a folder; point it at the FoodieQA folder that "
                                                "holds sivqa_tidy.json and images/")])
    try:  # the folder `hf download` wrote: FoodieQA.zip, unpacked into a folder below (or not yet: say what to run)
        root = locate_data_root(root).resolve()
    except DownloadError as e:
        raise FoodieQAError([Problem(str(root), str(e))]) from None
    tasks = tuple(get_task(t).name for t in ([tasks] if isinstance(tasks, str) else tasks or ()))  # checked
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
        except ValueError as e:
            problems.append(Problem(str(path), str(e)))
            continue
        seen: dict[str, int] = {}
        parsed = [_parse_item(task, str(path), index, raw, seen) for index, raw in enumerate(raws)]
        data.by_task[task] = [item for item, _ in parsed if item]
        problems += [p for _, item_problems in parsed for p in item_problems]
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

    with ThreadPoolExecutor() as pool:
        list(pool.map(check, [p for p in paths if p not in image_problem] if check_images else []))
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


class DownloadError(ValueError):  # the download cannot be used as it is; the message says what to run
    pass


def _has_questions(folder: Path) -> bool:
    return any(question_file(folder, t) for t in TASKS)


def _zips(folder: Path) -> list[Path]:  # FoodieQA.zip first
    return sorted((p for p in folder.glob("*.zip") if p.is_file()), key=lambda p: (p.name != ZIP_NAME, p.name))


def locate_data_root(folder: str | os.PathLike, *, unpack: bool = False) -> Path:
    """The FoodieQA folder (with sivqa_tidy.json ...) at ``folder`` or the one below it its zip unpacked into."""
    folder = Path(folder).expanduser()
    if not folder.is_dir() or _has_questions(folder):
        return folder  # load_foodieqa names what is wrong with a missing folder
    roots = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _has_questions(p))
    if len(roots) == 1:
        return roots[0]
    zips = _zips(folder)
    if not roots and zips:
        if not unpack:
            raise DownloadError(f"{folder} holds {zips[0].name}, not yet unpacked: run python tools/process_food.py "
                                f"--data-root {folder} (it unpacks it) or unzip {zips[0]} -d {folder}")
        unpack_zip(zips[0], folder)
        return locate_data_root(folder, unpack=False)
    if len(roots) > 1:
        raise DownloadError(f"{folder}: several folders hold FoodieQA question files "
                            f"({', '.join(p.name for p in roots)}); point --data-root at one of them")
    return folder


def looks_like_photo_folder(folder: str | os.PathLike) -> bool:
    """No question files and no zip, but subfolders: photos for tools/photos_to_foodieqa.py."""
    folder = Path(folder)
    return (folder.is_dir() and not _has_questions(folder) and not _zips(folder)
            and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()))


def unpack_zip(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Unpack ``archive`` into ``dest`` safely (module docstring); returns the top-level paths created."""
    archive, dest = Path(archive), Path(dest).resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{archive}: not a readable zip ({e}); download it again "
                            f"(hf download lyan62/FoodieQA --repo-type dataset --local-dir {dest})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.filename.startswith(SKIPPED_MEMBERS)]
        seen: set[str] = set()
        for info in members:  # (zipfile itself cuts a name at a NUL byte)
            name, mode = info.filename, info.external_attr >> 16
            why = ("is a symbolic link" if stat.S_ISLNK(mode) else
                   "is not a regular file or folder" if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) else
                   "has an absolute path" if name.startswith(("/", "\\")) or name[1:2] == ":" else
                   "climbs out of the folder ('..')" if ".." in PurePosixPath(name.replace("\\", "/")).parts else
                   "appears twice" if name in seen else None)  # a second one would silently replace the first
            if why:
                raise DownloadError(f"{archive}: member {name!r} {why}; refusing to unpack it. Unpack the archive by "
                                    f"hand after checking it, or download it again")
            seen.add(name)
        total = sum(m.file_size for m in members)
        if total > MAX_UNPACKED_BYTES:
            raise DownloadError(f"{archive}: declares {total / 1024 ** 3:.1f} GiB unpacked (FoodieQA is under 1 GB); "
                                f"refusing to unpack it. Download it again")
        tops = sorted({parts[0] for m in members if (parts := PurePosixPath(m.filename.replace("\\", "/")).parts)})
        clash = [t for t in tops if (dest / t).exists() or (dest / t).is_symlink()]
        if clash:
            raise DownloadError(f"{archive}: unpacking would overwrite {', '.join(str(dest / t) for t in clash)}; "
                                f"move it away or unpack by hand")
        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.stem}.unpack-", dir=dest))
        try:  # every name was checked above, so zipfile's own extraction stays inside tmp
            zf.extractall(tmp, members)
            for t in tops:
                os.replace(tmp / t, dest / t)
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{archive}: corrupt ({e}); download it again") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [dest / t for t in tops]
