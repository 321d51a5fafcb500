"""Write files and folders so that a failure never leaves half an output behind.

Every output is written under a temporary name next to its destination and renamed
into place only when complete; an earlier output stays untouched until then.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``.

    On an exception the temporary path is removed and ``dest`` is left as it was.
    For folders an existing ``dest`` is replaced only after the new one is complete.
    """
    dest = Path(dest)
    if is_dir and dest.is_symlink():  # replace the folder the link points at, not the link
        dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dest)
    prefix = f".{dest.name}.tmp-{os.getpid()}-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            if dest.exists():
                old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
                os.replace(dest, old)
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dest)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(dest: str | os.PathLike) -> list[Path]:
    """Delete the staging copies (``.NAME.tmp-PID-*``, ``.NAME.old-PID``) of ``dest`` that a killed run left
    behind: those whose process is gone. A live writer's staging copy is left alone."""
    dest = Path(dest)
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.(?:tmp|old)-(\d+)(?:-.*)?")
    removed = []
    try:
        siblings = list(dest.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        m = pattern.fullmatch(p.name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def write_text(dest: str | os.PathLike, text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_json(dest: str | os.PathLike, obj, *, indent: int | None = 2) -> Path:
    return write_text(dest, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def write_jsonl(dest: str | os.PathLike, rows) -> Path:
    return write_text(dest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
