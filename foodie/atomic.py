"""Write files and folders so that a failure never leaves half an output behind.

Every output is written under a temporary name next to its destination and renamed
into place only when complete; an earlier output stays untouched until then.
"""
from __future__ import annotations

import contextlib
import json
import os
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{dest.name}.tmp-"
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


def write_text(dest: str | os.PathLike, text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_json(dest: str | os.PathLike, obj, *, indent: int | None = 2) -> Path:
    return write_text(dest, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def write_jsonl(dest: str | os.PathLike, rows) -> Path:
    return write_text(dest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
